"""SSIM of a whole image plus all its boxes: anonbench.ssim_fast against skimage, in the same run.

On coco-mini val, a synthetic variant blurs every ground-truth person inside its
segmentation mask (grown by 3 px, Gaussian sigma 0.1 * sqrt(box area), at least
2: the mini profile's blur). For each image that differs from the original
(the images with a person), both sides produce the whole-image SSIM and the
SSIM of every ground-truth box: :class:`anonbench.ssim_fast.SsimIndex` (one
pass, then O(1) per box) against ``skimage.metrics.structural_similarity`` on
the whole image and then on each box's crop (the obvious way). Images are
decoded once beforehand, so both sides time the SSIM work only; every number
must agree to 1e-6. A second scenario re-encodes each image as JPEG (quality
90), which changes nearly every pixel: the fast path's worst case. Both in one
process, the best of ``--rounds`` interleaved rounds. Finally the stage's own
per-split run (decode included, every core, progress bar) on the blurred
variant written as PNG. Target: at least 10x on the blurred variant.

    .venv/bin/python benchmarks/ssim_speed.py [--coco-mini DIR] [--rounds 3]
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import skimage
from common import REPO, arguments, machine, write_results
from pycocotools import mask as mask_utils
from skimage.metrics import structural_similarity

from anonbench.coco import annotations_by_image, person_category_id, read_instances
from anonbench.config import load_config
from anonbench.images import encode_image, read_image
from anonbench.offline import go_offline
from anonbench.ssim_fast import SsimIndex, crop_bounds
from anonbench.stages.ssim import measure_split

SPLIT = "val2017"
TARGET = 10.0
Pair = tuple[np.ndarray, np.ndarray, list[tuple[int, int, int, int]]]


def blur_persons(image: np.ndarray, persons: list[dict[str, Any]]) -> np.ndarray:
    """Blur each (non-crowd, so polygon) person inside its dilated segmentation mask."""
    height, width = image.shape[:2]
    out = image.copy()
    grow = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (7, 7))
    for ann in persons:
        rle = mask_utils.merge(mask_utils.frPyObjects(ann["segmentation"], height, width))
        region = cv2.dilate(mask_utils.decode(rle), grow) > 0
        sigma = max(0.1 * math.sqrt(ann["bbox"][2] * ann["bbox"][3]), 2.0)
        out[region] = cv2.GaussianBlur(image, (0, 0), sigma)[region]
    return out


def fast(pairs: list[Pair]) -> list[float]:
    scores = []
    for original, variant, boxes in pairs:
        index = SsimIndex(original, variant)
        scores += [index.whole().ssim, *(index.region(b).ssim for b in boxes)]
    return scores


def slow(pairs: list[Pair]) -> list[float]:
    scores = []
    for original, variant, boxes in pairs:
        scores.append(structural_similarity(original, variant, data_range=255, channel_axis=2))
        for x0, y0, x1, y1 in boxes:
            if min(x1 - x0, y1 - y0) < 7:  # skimage refuses; the fast side answers NaN
                scores.append(math.nan)
                continue
            crop = np.s_[y0:y1, x0:x1]
            scores.append(structural_similarity(original[crop], variant[crop], data_range=255, channel_axis=2))
    return scores


def compare(pairs: list[Pair], rounds: int) -> dict[str, Any]:
    """Best-of-rounds time of both sides on the same pairs, and their largest disagreement."""
    runs: dict[str, Callable[[list[Pair]], list[float]]] = {"ssim_fast": fast, "skimage": slow}
    best = dict.fromkeys(runs, math.inf)
    scores: dict[str, list[float]] = {}
    for _ in range(rounds):
        for name, fn in runs.items():
            start = time.perf_counter()
            scores[name] = fn(pairs)
            best[name] = min(best[name], time.perf_counter() - start)
    difference = np.nanmax(np.abs(np.array(scores["ssim_fast"]) - np.array(scores["skimage"])))
    assert np.array_equal(np.isnan(scores["ssim_fast"]), np.isnan(scores["skimage"]))
    assert difference < 1e-6, difference
    n = len(pairs)
    return {
        "images": n,
        "boxes": sum(len(boxes) for _, _, boxes in pairs),
        "ssim_fast_images_per_s": round(n / best["ssim_fast"], 2),
        "skimage_images_per_s": round(n / best["skimage"], 2),
        "speedup": round(best["skimage"] / best["ssim_fast"], 2),
        "max_abs_difference": float(difference),
    }


def main() -> None:
    parser = arguments(__doc__ or "")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    go_offline()
    instances = read_instances(args.coco_mini / "annotations" / f"instances_{SPLIT}.json")
    person = person_category_id(instances["categories"])
    by_image = annotations_by_image(instances)
    blurred: list[Pair] = []
    recoded: list[Pair] = []
    variant_files = {}
    start = time.perf_counter()
    for info in sorted(instances["images"], key=lambda im: im["id"]):
        original = read_image(args.coco_mini / SPLIT / info["file_name"])
        anns = by_image[info["id"]]
        boxes = [crop_bounds(a["bbox"], info["width"], info["height"]) for a in anns]
        variant = blur_persons(original, [a for a in anns if a["category_id"] == person and not a["iscrowd"]])
        variant_files[info["file_name"]] = variant
        if (variant != original).any():
            blurred.append((original, variant, boxes))
        jpeg = cv2.imdecode(np.frombuffer(encode_image(original, "jpeg", 90), np.uint8), cv2.IMREAD_COLOR)
        recoded.append((original, jpeg, boxes))
    print(f"decoded and made variants in {time.perf_counter() - start:.1f} s")
    load_before = os.getloadavg()
    blur_result = compare(blurred, args.rounds)
    print("blurred persons:", blur_result)
    jpeg_result = compare(recoded, args.rounds)
    print("JPEG re-encode:", jpeg_result)
    load_after = os.getloadavg()

    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(REPO / "params.yaml", None, [f"paths.data={tmp}"])
        cfg.source_root.parent.mkdir(parents=True)
        cfg.source_root.symlink_to(args.coco_mini.resolve(), target_is_directory=True)
        (cfg.image_dir("blur", SPLIT)).mkdir(parents=True)
        for name, variant in variant_files.items():
            (cfg.image_dir("blur", SPLIT) / f"{Path(name).stem}.png").write_bytes(encode_image(variant))
        renamed = [{**im, "file_name": f"{Path(im['file_name']).stem}.png"} for im in instances["images"]]
        cfg.annotation_file("blur", SPLIT).parent.mkdir(parents=True)
        cfg.annotation_file("blur", SPLIT).write_text(json.dumps({**instances, "images": renamed}))
        start = time.perf_counter()
        measure_split(cfg, "blur", SPLIT)
        stage_seconds = time.perf_counter() - start

    result = {
        "benchmark": "ssim_speed",
        "command": "python benchmarks/ssim_speed.py",
        "data": f"coco-mini {SPLIT}: the {len(blurred)} images with a person (of {len(instances['images'])})",
        "what": (
            "whole-image SSIM plus every ground-truth box's SSIM per image: SsimIndex (one pass, O(1) per box) "
            "vs skimage structural_similarity on the whole image then on each crop; decoding excluded, one process"
        ),
        "blurred_persons": {**blur_result, "target_speedup": TARGET, "meets_target": blur_result["speedup"] >= TARGET},
        "jpeg_reencoded_every_pixel_changes": jpeg_result,
        "stage": {
            "what": f"measure_split, {len(instances['images'])} val PNGs: decode, SSIM, tables; worker start included",
            "workers": cfg.n_workers,
            "images_per_s": round(len(instances["images"]) / stage_seconds, 2),
        },
        "rounds": args.rounds,
        "machine": machine(
            numpy=np.__version__,
            opencv=cv2.__version__,
            scikit_image=skimage.__version__,
            loadavg_1min_before_after=[round(load_before[0], 2), round(load_after[0], 2)],
            note="best of the rounds counts; loadavg shows how busy the 2-core machine was",
        ),
    }
    write_results("ssim_speed", result)


if __name__ == "__main__":
    main()
