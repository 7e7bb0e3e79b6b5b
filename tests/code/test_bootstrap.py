"""Bootstrap AP from stored per-image matches equals pycocotools run on the resampled images."""

from __future__ import annotations

import contextlib
import io
from typing import Any

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from anonbench.analysis.bootstrap import Resampled, accumulate, evaluate, interval, resample_counts
from anonbench.analysis.cocoeval import evaluate_images, rescore

CATEGORIES = [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}, {"id": 37, "name": "sports ball"}]


def synthetic_case(seed: int = 3, n_images: int = 9) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Ground truth with crowds and small objects; detections: jittered truths, misses and false alarms."""
    rng = np.random.default_rng(seed)
    images, anns, dets = [], [], []
    for image_id in range(1, n_images + 1):
        images.append({"id": image_id, "file_name": f"{image_id:012d}.jpg", "width": 200, "height": 150})
        for _ in range(rng.integers(0, 5)):
            cat = CATEGORIES[rng.integers(0, len(CATEGORIES))]["id"]
            w, h = rng.uniform(4, 60, size=2)
            x, y = rng.uniform(0, 200 - w), rng.uniform(0, 150 - h)
            ann_id = len(anns) + 1
            anns.append({"id": ann_id, "image_id": image_id, "category_id": cat, "bbox": [x, y, w, h],
                         "area": w * h, "iscrowd": int(rng.random() < 0.1)})  # fmt: skip
            if rng.random() < 0.8:
                jitter = rng.normal(0, 0.12 * min(w, h), size=4)
                dets.append({"image_id": image_id, "category_id": cat, "score": float(rng.random()),
                             "bbox": [x + jitter[0], y + jitter[1], w + jitter[2], h + jitter[3]]})  # fmt: skip
        for _ in range(rng.integers(0, 4)):
            w, h = rng.uniform(4, 60, size=2)
            cat = CATEGORIES[rng.integers(0, len(CATEGORIES))]["id"]
            dets.append({"image_id": image_id, "category_id": cat, "score": float(rng.random()),
                         "bbox": [float(rng.uniform(0, 140)), float(rng.uniform(0, 90)), w, h]})  # fmt: skip
    return {"images": images, "annotations": anns, "categories": CATEGORIES}, dets


def pycocotools_eval(gt: dict[str, Any], dets: list[dict[str, Any]]) -> COCOeval:
    coco = COCO()
    coco.dataset = gt
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
        evaluator = COCOeval(coco, coco.loadRes(dets), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator


def copied(gt: dict[str, Any], dets: list[dict[str, Any]], counts: np.ndarray) -> tuple[dict, list]:
    """The resample done directly: each image copied ``count`` times under new ids, in image order."""
    images, anns, new_dets = [], [], []
    for image, count in zip(gt["images"], counts, strict=True):
        for _ in range(count):
            new_id = len(images) + 1
            images.append({**image, "id": new_id})
            for ann in (a for a in gt["annotations"] if a["image_id"] == image["id"]):
                anns.append({**ann, "id": len(anns) + 1, "image_id": new_id})
            new_dets += [{**d, "image_id": new_id} for d in dets if d["image_id"] == image["id"]]
    return {"images": images, "annotations": anns, "categories": gt["categories"]}, new_dets


def per_class_ap(evaluator: COCOeval, k: int) -> float:
    values = evaluator.eval["precision"][:, :, k, 0, -1]
    return float(values[values > -1].mean()) if (values > -1).any() else float("nan")


def test_all_images_once_is_the_plain_evaluation() -> None:
    gt, dets = synthetic_case()
    results = evaluate(gt, dets)
    plain = accumulate(results, np.ones((1, len(gt["images"])), dtype=int))
    reference = pycocotools_eval(gt, dets)
    assert plain.mean()[0] == pytest.approx(reference.stats[0], abs=1e-12)
    assert plain.mean(iou50=True)[0] == pytest.approx(reference.stats[1], abs=1e-12)
    for k in range(len(plain.classes)):  # both in the ground truth's category order
        np.testing.assert_allclose(plain.ap[0, k], per_class_ap(reference, k), atol=1e-12)


def test_resamples_match_pycocotools_on_the_copied_images() -> None:
    gt, dets = synthetic_case()
    results = evaluate(gt, dets)
    counts = resample_counts(len(gt["images"]), samples=6, seed=0)
    fast = accumulate(results, counts)
    assert (counts == 0).any() and (counts > 1).any(), "the case must drop and repeat images"
    for row, sample in enumerate(counts):
        reference = pycocotools_eval(*copied(gt, dets, sample))
        assert fast.mean()[row] == pytest.approx(reference.stats[0], abs=1e-12)
        assert fast.mean(iou50=True)[row] == pytest.approx(reference.stats[1], abs=1e-12)


def test_per_class_resamples_match_the_scoring_core() -> None:
    gt, dets = synthetic_case(seed=5)
    counts = resample_counts(len(gt["images"]), samples=3, seed=4)
    fast = accumulate(evaluate(gt, dets), counts)
    core = evaluate_images(gt, dets, "faster-coco-eval")
    for row, sample in enumerate(counts):
        scores = rescore(core, np.repeat(np.arange(len(sample)), sample))
        for k, name in enumerate(fast.classes):
            expected = scores.per_class[name]
            for got, key in ((fast.ap[row, k], "AP"), (fast.ap50[row, k], "AP50")):
                assert (np.isnan(got) and expected[key] is None) or got == pytest.approx(expected[key], abs=1e-12)


def test_no_detections_scores_zero_and_absent_classes_are_nan() -> None:
    gt, _ = synthetic_case()
    resampled = accumulate(evaluate(gt, []), np.ones((1, len(gt["images"])), dtype=int))
    present = {c["name"] for c in CATEGORIES if any(a["category_id"] == c["id"] for a in gt["annotations"])}
    for k, name in enumerate(resampled.classes):
        assert (resampled.ap[0, k] == 0.0) if name in present else np.isnan(resampled.ap[0, k])


def test_resample_counts_are_seeded_and_complete() -> None:
    counts = resample_counts(7, samples=50, seed=1)
    assert counts.shape == (50, 7) and (counts.sum(axis=1) == 7).all()
    np.testing.assert_array_equal(counts, resample_counts(7, samples=50, seed=1))
    assert not np.array_equal(counts, resample_counts(7, samples=50, seed=2))


def test_interval_and_subset_means() -> None:
    low, high = interval(np.arange(101, dtype=float), 0.9)
    assert (low, high) == pytest.approx((5.0, 95.0))
    assert all(np.isnan(interval(np.array([np.nan]), 0.95)))
    resampled = Resampled(("a", "b"), np.array([[0.2, np.nan], [0.4, 0.6]]), np.zeros((2, 2)))
    np.testing.assert_allclose(resampled.mean(), [0.2, 0.5])
    np.testing.assert_allclose(resampled.mean(["b"]), [np.nan, 0.6])
