"""The privacy audit's attacks against the face detector's own throughput, on coco-mini val.

Every val image is decoded once beforehand. The detector (params.yaml's ``privacy`` setting, or
``--detector``/``--upsample``) runs on every image: its images/s is the yardstick. Then, on the
faces it found, each attack's own work: the naive linkage's embedding (landmarks plus ResNet at
each face's box), the inversions of blur and pixelation (the whole image's persons undone, then
the embedding; the variants made in memory with the classic methods and the mini parameters),
and the appearance descriptor of every ground-truth person (twice an image: original and
variant). Reported as faces/s or persons/s, images/s, and the share of the detector's time each
adds per image (ratio of the detector's images/s to the attack's). One process; models loaded
before timing.

    .venv/bin/python benchmarks/privacy_speed.py [--coco-mini DIR] [--detector hog|cnn] [--upsample N]
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import cv2
import dlib
import numpy as np
from common import REPO, arguments, machine, write_results

from anonbench import faces
from anonbench.analysis import privacy as attacks
from anonbench.anonymizers import plugins
from anonbench.anonymizers.masks import decode_segmentation, person_masks
from anonbench.coco import annotations_by_image, person_category_id, read_instances
from anonbench.config import load_config
from anonbench.images import read_image
from anonbench.offline import go_offline

SPLIT = "val2017"


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def rates(count: int, images: int, seconds: float, detector_images_per_s: float, unit: str) -> dict[str, Any]:
    images_per_s = images / seconds if seconds else float("inf")
    return {
        unit: count,
        "images": images,
        "seconds": round(seconds, 3),
        f"{unit}_per_s": round(count / seconds, 2) if seconds else None,
        "images_per_s": round(images_per_s, 2),
        "share_of_detector_time": round(detector_images_per_s / images_per_s, 4),
    }


def main() -> None:
    parser = arguments(__doc__ or "")
    cfg = load_config(REPO / "params.yaml", None, [])
    parser.add_argument("--detector", choices=["hog", "cnn"], default=cfg.privacy.detector)
    parser.add_argument("--upsample", type=int, default=cfg.privacy.upsample)
    args = parser.parse_args()
    go_offline()
    instances = read_instances(args.coco_mini / "annotations" / f"instances_{SPLIT}.json")
    person = person_category_id(instances["categories"])
    by_image = annotations_by_image(instances)
    infos = sorted(instances["images"], key=lambda im: im["id"])
    images = [read_image(args.coco_mini / SPLIT / info["file_name"]) for info in infos]
    anns = [[a for a in by_image[info["id"]] if a["category_id"] == person] for info in infos]
    faces.models(args.detector)  # loaded before timing

    found, detect_seconds = timed(lambda: [faces.detect(im, args.detector, args.upsample) for im in images])
    n_faces = sum(len(f) for f in found)
    detector_rate = len(images) / detect_seconds
    with_faces = [i for i, f in enumerate(found) if f]
    result: dict[str, Any] = {
        "detector": {"faces": n_faces, "images": len(images), "images_per_s": round(detector_rate, 3)},
    }
    _, seconds = timed(lambda: [faces.embed(images[i], found[i], args.detector) for i in with_faces])
    result["naive_linkage"] = rates(n_faces, len(with_faces), seconds, detector_rate, "faces")

    params = cfg.anonymize
    for method in attacks.INVERSIONS:
        variants = {}
        for i in with_faces:
            height, width = images[i].shape[:2]
            persons = person_masks(anns[i], person, height, width, params.dilation_px, params.min_person_px).persons
            painted = plugins.get(method)(images[i], persons, params.settings(method), np.random.default_rng(0))
            variants[i] = (painted.image, persons)

        def undo(method: str = method, variants: dict[int, Any] = variants) -> None:
            for i, (variant, persons) in variants.items():
                inverted = attacks.invert(method, variant, persons, params, cfg.privacy.inversion_iterations)
                faces.embed(inverted, found[i], args.detector)

        _, seconds = timed(undo)
        result[f"inversion_{method}"] = {
            **rates(n_faces, len(with_faces), seconds, detector_rate, "faces"),
            "how": attacks.INVERSIONS[method],
        }

    def describe() -> int:
        count = 0
        for image, people in zip(images, anns, strict=True):
            height, width = image.shape[:2]
            for ann in people:
                mask = decode_segmentation(ann.get("segmentation"), height, width)
                if ann.get("iscrowd") or mask is None:
                    continue
                attacks.appearance(image, mask, cfg.privacy.appearance_bins)
                attacks.appearance(image, mask, cfg.privacy.appearance_bins)
                count += 1
        return count

    n_persons, seconds = timed(describe)
    result["appearance_linkage"] = rates(n_persons, len(images), seconds, detector_rate, "persons")
    write_results(
        "privacy_speed",
        {
            "benchmark": "privacy_speed",
            "command": "python benchmarks/privacy_speed.py",
            "data": f"coco-mini {SPLIT}: {len(images)} images, {len(with_faces)} with faces",
            "settings": {"detector": args.detector, "upsample": args.upsample},
            "what": (
                "each attack's own work per image against the detector's (share_of_detector_time: the attack's "
                "seconds per image over the detector's); decoding excluded, one process"
            ),
            **result,
            "machine": machine(
                dlib=dlib.__version__,
                opencv=cv2.__version__,
                numpy=np.__version__,
                loadavg_1min=round(os.getloadavg()[0], 2),
            ),
        },
    )


if __name__ == "__main__":
    main()
