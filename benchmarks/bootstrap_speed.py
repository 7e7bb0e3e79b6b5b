"""Bootstrap resampling of COCO AP: the vectorized accumulate against one COCOeval accumulate per resample.

Same ground truth and detections as benchmarks/cocoeval_speed.py (coco-mini val replicated under fresh ids,
jittered detections with random scores plus false positives). Both sides start from one per-image matching
pass and score the same resampled image multisets: :func:`anonbench.analysis.bootstrap.accumulate` (all resamples at
once, numpy) and :func:`anonbench.analysis.cocoeval.rescore` per resample with the configured backend
(faster-coco-eval's C++ accumulate), the obvious alternative. Their AP must agree to 1e-12.

Run: ``.venv/bin/python benchmarks/bootstrap_speed.py [--copies 10 --samples 40]``; writes
``benchmarks/results/bootstrap_speed.json``.
"""

from __future__ import annotations

import json
import time
from importlib.metadata import version

import numpy as np
from cocoeval_speed import detections, replicate
from common import arguments, machine, write_results

from anonbench.analysis.bootstrap import accumulate, evaluate, resample_counts
from anonbench.analysis.cocoeval import evaluate_images, rescore


def main() -> None:
    parser = arguments(__doc__ or "")
    parser.add_argument("--copies", type=int, default=10)
    parser.add_argument("--samples", type=int, default=40)
    args = parser.parse_args()
    source = json.loads((args.coco_mini / "annotations" / "instances_val2017.json").read_text())
    instances = replicate(source, args.copies)
    preds = detections(instances, seed=0)

    start = time.perf_counter()
    results = evaluate(instances, preds)
    match_pycocotools = time.perf_counter() - start
    counts = resample_counts(len(results.image_ids), args.samples, seed=0)
    start = time.perf_counter()
    fast = accumulate(results, counts).mean()
    vectorized = time.perf_counter() - start

    start = time.perf_counter()
    core = evaluate_images(instances, preds, "faster-coco-eval")
    match_faster = time.perf_counter() - start
    start = time.perf_counter()
    slow = [rescore(core, np.repeat(np.arange(len(row)), row)).stats["AP"] for row in counts]
    per_resample = time.perf_counter() - start

    difference = float(np.max(np.abs(fast - np.array(slow, dtype=float))))
    result = {
        "what": "AP of bootstrap resamples (image multisets) from stored per-image COCOeval matches",
        "data": f"coco-mini val2017 ground truth x{args.copies} under fresh ids; detections as in cocoeval_speed",
        "images": len(instances["images"]),
        "detections": len(preds),
        "resamples": args.samples,
        "seconds": {
            "vectorized_accumulate": round(vectorized, 3),
            "rescore_per_resample_faster_coco_eval": round(per_resample, 3),
        },
        "seconds_per_resample": {
            "vectorized_accumulate": round(vectorized / args.samples, 4),
            "rescore_per_resample_faster_coco_eval": round(per_resample / args.samples, 4),
        },
        "speedup_vectorized_over_rescore": round(per_resample / vectorized, 1),
        "one_off_matching_seconds": {
            "pycocotools": round(match_pycocotools, 3),
            "faster-coco-eval": round(match_faster, 3),
        },
        "max_abs_difference_AP": difference,
        "equal_within_1e-12": difference <= 1e-12,
        "versions": {pkg: version(pkg) for pkg in ("faster-coco-eval", "pycocotools", "numpy")},
        "machine": machine(),
    }
    write_results("bootstrap_speed", result)


if __name__ == "__main__":
    main()
