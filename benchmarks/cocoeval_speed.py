"""faster-coco-eval against pycocotools on the same ground truth and detections, in the same run.

coco-mini's val ground truth (real COCO boxes, crowd regions included) is
replicated under fresh image ids to reach a full-COCO-like image count, and
detections are made from it: every box jittered with a random score, a fifth of
them missed, plus false positives, up to about 45 per image. Both backends score
the same list through :func:`anonbench.analysis.cocoeval.score`; the numbers must agree
to 1e-12. Also timed: one bootstrap resample through :func:`rescore`.

Run: ``.venv/bin/python benchmarks/cocoeval_speed.py [--copies 40]``; writes
``benchmarks/results/cocoeval_speed.json``.
"""

from __future__ import annotations

import json
import time
from importlib.metadata import version
from typing import Any

import numpy as np
from common import arguments, machine, write_results

from anonbench.analysis.cocoeval import BACKENDS, STAT_NAMES, CocoScores, evaluate_images, rescore, score

FALSE_POSITIVES_PER_IMAGE = 35


def replicate(instances: dict[str, Any], copies: int) -> dict[str, Any]:
    """The split repeated ``copies`` times, each copy's images and annotations under fresh ids."""
    images, annotations = [], []
    for copy_index in range(copies):
        offset = copy_index * 10_000_000
        images += [{**im, "id": im["id"] + offset} for im in instances["images"]]
        annotations += [
            {**a, "id": len(annotations) + i + 1, "image_id": a["image_id"] + offset}
            for i, a in enumerate(instances["annotations"])
        ]
    return {**instances, "images": images, "annotations": annotations}


def detections(instances: dict[str, Any], seed: int) -> list[dict[str, Any]]:
    """Jittered ground truth (80 % of it) with random scores, plus random false positives."""
    rng = np.random.default_rng(seed)
    preds = []
    for ann in instances["annotations"]:
        if ann["iscrowd"] or rng.random() < 0.2:
            continue
        x, y, w, h = ann["bbox"]
        dx, dy, dw, dh = rng.normal(0.0, 0.1, 4) * [w, h, w, h]
        box = [x + dx, y + dy, max(w + dw, 1.0), max(h + dh, 1.0)]
        preds.append(
            {
                "image_id": ann["image_id"],
                "category_id": ann["category_id"],
                "bbox": [float(v) for v in box],
                "score": float(rng.random()),
            }
        )
    category_ids = [c["id"] for c in instances["categories"]]
    for image in instances["images"]:
        for _ in range(FALSE_POSITIVES_PER_IMAGE):
            w, h = rng.uniform(4, min(image["width"], image["height"]) / 2, 2)
            preds.append(
                {
                    "image_id": image["id"],
                    "category_id": int(rng.choice(category_ids)),
                    "bbox": [
                        float(rng.uniform(0, image["width"] - w)),
                        float(rng.uniform(0, image["height"] - h)),
                        float(w),
                        float(h),
                    ],
                    "score": float(rng.random() * 0.6),
                }
            )
    return preds


def max_difference(a: CocoScores, b: CocoScores) -> float:
    """Largest absolute difference over the 12 stats and every per-class AP / AP50 (inf if one is undefined)."""
    pairs = [(a.stats[name], b.stats[name]) for name in STAT_NAMES]
    pairs += [(a.per_class[c][m], b.per_class[c][m]) for c in a.per_class for m in ("AP", "AP50")]
    return max(
        (0.0 if x is None and y is None else abs(x - y) if x is not None and y is not None else float("inf"))
        for x, y in pairs
    )


def main() -> None:
    parser = arguments(__doc__ or "")
    parser.add_argument("--copies", type=int, default=40)
    args = parser.parse_args()
    source = json.loads((args.coco_mini / "annotations" / "instances_val2017.json").read_text())
    instances = replicate(source, args.copies)
    preds = detections(instances, seed=0)

    seconds: dict[str, float] = {}
    scores: dict[str, CocoScores] = {}
    rescore_seconds: dict[str, float] = {}
    for backend in BACKENDS:
        start = time.perf_counter()
        scores[backend] = score(instances, preds, backend)
        seconds[backend] = time.perf_counter() - start
        evaluation = evaluate_images(instances, preds, backend)
        n = len(evaluation.image_ids)
        sample = np.random.default_rng(1).integers(0, n, n)
        start = time.perf_counter()
        rescore(evaluation, sample)
        rescore_seconds[backend] = time.perf_counter() - start

    difference = max_difference(*scores.values())
    result = {
        "what": "COCO bbox scoring (index, loadRes, evaluate, accumulate, summarize) of the same detections",
        "data": f"coco-mini val2017 ground truth x{args.copies} under fresh ids; detections: jittered ground truth"
        " with random scores plus false positives",
        "images": len(instances["images"]),
        "ground_truth_boxes": len(instances["annotations"]),
        "detections": len(preds),
        "seconds": {backend: round(s, 3) for backend, s in seconds.items()},
        "speedup_faster_over_pycocotools": round(seconds["pycocotools"] / seconds["faster-coco-eval"], 2),
        "bootstrap_rescore_seconds_per_sample": {backend: round(s, 3) for backend, s in rescore_seconds.items()},
        "max_abs_difference": difference,
        "equal_within_1e-12": difference <= 1e-12,
        "AP": scores["pycocotools"].stats["AP"],
        "versions": {pkg: version(pkg) for pkg in ("faster-coco-eval", "pycocotools", "numpy")},
        "machine": machine(),
    }
    write_results("cocoeval_speed", result)


if __name__ == "__main__":
    main()
