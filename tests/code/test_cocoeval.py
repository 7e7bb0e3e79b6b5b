"""COCO scoring on real coco-mini val ground truth: sanity cases, backend equality, bootstrap rescoring."""

from __future__ import annotations

import contextlib
import copy
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from anonbench.analysis.bootstrap import accumulate, evaluate
from anonbench.analysis.cocoeval import (
    BACKENDS,
    STAT_NAMES,
    CocoScores,
    PredictionError,
    evaluate_images,
    rescore,
    score,
)

SPLIT = "val2017"


@pytest.fixture(scope="module")
def ground_truth(coco_mini: Path) -> dict[str, Any]:
    return json.loads((coco_mini / "annotations" / f"instances_{SPLIT}.json").read_text())


def gt_as_predictions(instances: dict[str, Any]) -> list[dict[str, Any]]:
    """Every non-crowd box as a detection (COCO ignores crowd regions, so they are not objects to find)."""
    return [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": list(a["bbox"]), "score": 1.0}
        for a in instances["annotations"]
        if not a["iscrowd"]
    ]


def noisy_predictions(instances: dict[str, Any], seed: int = 0) -> list[dict[str, Any]]:
    """Ground-truth boxes jittered, with random scores, some missed, plus false positives: a plausible detector."""
    rng = np.random.default_rng(seed)
    preds = []
    for pred in gt_as_predictions(instances):
        if rng.random() < 0.2:
            continue
        x, y, w, h = pred["bbox"]
        jitter = rng.normal(0.0, 0.1, 4) * [w, h, w, h]
        box = [x + jitter[0], y + jitter[1], max(w + jitter[2], 1.0), max(h + jitter[3], 1.0)]
        preds.append({**pred, "bbox": [float(v) for v in box], "score": float(rng.random())})
    images = instances["images"]
    category_ids = [c["id"] for c in instances["categories"]]
    for _ in range(len(preds)):
        image = images[rng.integers(len(images))]
        w, h = rng.uniform(5, 200, 2)
        x, y = rng.uniform(0, image["width"] - w), rng.uniform(0, image["height"] - h)
        preds.append(
            {
                "image_id": image["id"],
                "category_id": int(rng.choice(category_ids)),
                "bbox": [float(x), float(y), float(w), float(h)],
                "score": float(rng.random() * 0.5),
            }
        )
    return preds


def assert_same_scores(a: CocoScores, b: CocoScores, tol: float = 1e-12) -> None:
    assert a.stats.keys() == b.stats.keys() == set(STAT_NAMES)
    assert a.per_class.keys() == b.per_class.keys()
    pairs = [(a.stats[k], b.stats[k], k) for k in STAT_NAMES]
    pairs += [(a.per_class[c][m], b.per_class[c][m], f"{m}/{c}") for c in a.per_class for m in ("AP", "AP50")]
    for x, y, key in pairs:
        assert (x is None) == (y is None), key
        if x is not None and y is not None:
            assert x == pytest.approx(y, abs=tol), key


@pytest.mark.parametrize("backend", BACKENDS)
def test_ground_truth_as_predictions_scores_one(ground_truth: dict[str, Any], backend: Any) -> None:
    scores = score(ground_truth, gt_as_predictions(ground_truth), backend)
    for name in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100", "ARs", "ARm", "ARl"):
        assert scores.stats[name] == pytest.approx(1.0), name
    present = {a["category_id"] for a in ground_truth["annotations"] if not a["iscrowd"]}
    names = {c["id"]: c["name"] for c in ground_truth["categories"]}
    defined = {n: v for n, v in scores.per_class.items() if v["AP"] is not None}
    assert set(defined) == {names[i] for i in present}
    for name, values in defined.items():
        assert values == pytest.approx({"AP": 1.0, "AP50": 1.0}), name


@pytest.mark.parametrize("backend", BACKENDS)
def test_classes_without_ground_truth_are_undefined(ground_truth: dict[str, Any], backend: Any) -> None:
    only_people = {**ground_truth, "annotations": [a for a in ground_truth["annotations"] if a["category_id"] == 1]}
    scores = score(only_people, gt_as_predictions(only_people), backend)
    assert scores.per_class["person"] == {"AP": 1.0, "AP50": 1.0}
    assert scores.per_class["dog"] == {"AP": None, "AP50": None}


@pytest.mark.parametrize("backend", BACKENDS)
def test_boxes_moved_to_random_places_score_about_zero(ground_truth: dict[str, Any], backend: Any) -> None:
    rng = np.random.default_rng(1)
    sizes = {im["id"]: (im["width"], im["height"]) for im in ground_truth["images"]}
    moved = []
    for pred in gt_as_predictions(ground_truth):
        width, height = sizes[pred["image_id"]]
        w, h = pred["bbox"][2:]
        x, y = rng.uniform(0, max(width - w, 1)), rng.uniform(0, max(height - h, 1))
        moved.append({**pred, "bbox": [float(x), float(y), w, h]})
    scores = score(ground_truth, moved, backend)
    assert scores.stats["AP"] is not None
    assert scores.stats["AP"] < 0.05
    assert scores.stats["AP75"] is not None
    assert scores.stats["AP75"] < 0.05


@pytest.mark.parametrize("seed", [0, 1])
def test_backends_agree_on_every_number(ground_truth: dict[str, Any], seed: int) -> None:
    preds = noisy_predictions(ground_truth, seed)
    faster, reference = (score(ground_truth, preds, backend) for backend in BACKENDS)
    assert 0.1 < (reference.stats["AP"] or 0.0) < 0.9  # a case where matching and ranking both matter
    assert_same_scores(faster, reference)


def test_pycocotools_path_is_the_plain_coco_api(ground_truth: dict[str, Any]) -> None:
    """The pycocotools backend gives exactly what the textbook COCO API calls give."""
    preds = noisy_predictions(ground_truth)
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = copy.deepcopy(ground_truth)
        gt.createIndex()
        coco_eval = COCOeval(gt, gt.loadRes(copy.deepcopy(preds)), "bbox")
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    ours = score(ground_truth, preds, "pycocotools")
    assert [ours.stats[name] for name in STAT_NAMES] == [float(v) for v in coco_eval.stats]


def test_scoring_leaves_its_inputs_alone(ground_truth: dict[str, Any]) -> None:
    gt, preds = copy.deepcopy(ground_truth), noisy_predictions(ground_truth)
    before = json.dumps([gt, preds], sort_keys=True)
    for backend in BACKENDS:
        score(gt, preds, backend)
    assert json.dumps([gt, preds], sort_keys=True) == before


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_predictions_score_zero(ground_truth: dict[str, Any], backend: Any) -> None:
    assert score(ground_truth, [], backend).stats["AP"] == 0.0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"image_id": 999_999_999}, "image_id 999999999 is not in the ground truth"),
        ({"category_id": 12}, "category_id 12 is not in the ground truth"),
        ({"bbox": [1.0, 2.0, 3.0]}, "is not four finite numbers"),
        ({"bbox": [1.0, 2.0, -3.0, 4.0]}, "negative width or height"),
        ({"score": float("nan")}, "score nan is not a finite number"),
    ],
)
def test_bad_predictions_are_named(ground_truth: dict[str, Any], change: dict[str, Any], message: str) -> None:
    preds = gt_as_predictions(ground_truth)[:3]
    preds[2] = {**preds[2], **change}
    with pytest.raises(PredictionError, match=rf"prediction 2: .*{message}"):
        score(ground_truth, preds)


def duplicate_images(
    instances: dict[str, Any], preds: list[dict[str, Any]], picks: list[int]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The bootstrap sample ``picks`` made real: each pick a new image (fresh id) with its boxes and detections."""
    images = sorted(instances["images"], key=lambda im: im["id"])
    out_images, out_anns, out_preds = [], [], []
    for new_id, pick in enumerate(picks, start=1):
        old_id = images[pick]["id"]
        out_images.append({**images[pick], "id": new_id})
        out_anns += [{**a, "image_id": new_id} for a in instances["annotations"] if a["image_id"] == old_id]
        out_preds += [{**p, "image_id": new_id} for p in preds if p["image_id"] == old_id]
    for ann_id, ann in enumerate(out_anns, start=1):
        ann["id"] = ann_id
    return {**instances, "images": out_images, "annotations": out_anns}, out_preds


@pytest.mark.parametrize("backend", BACKENDS)
def test_rescore_of_a_resample_equals_scoring_the_resampled_images(ground_truth: dict[str, Any], backend: Any) -> None:
    """The bootstrap contract: per-image results reused == a direct pycocotools run on the duplicated images."""
    preds = noisy_predictions(ground_truth)
    evaluation = evaluate_images(ground_truth, preds, backend)
    assert_same_scores(rescore(evaluation), score(ground_truth, preds, "pycocotools"))
    n = len(evaluation.image_ids)
    picks = [int(i) for i in np.random.default_rng(3).integers(0, n, n)]
    assert len(set(picks)) < n  # repeats present
    resampled = rescore(evaluation, picks)
    assert_same_scores(resampled, score(*duplicate_images(ground_truth, preds, picks), "pycocotools"))
    assert rescore(evaluation).stats == rescore(evaluation).stats  # rescoring left the evaluation unchanged


def test_evaluation_can_be_restricted_to_some_images(ground_truth: dict[str, Any]) -> None:
    preds = gt_as_predictions(ground_truth)
    keep = sorted(im["id"] for im in ground_truth["images"])[:10]
    evaluation = evaluate_images(ground_truth, [p for p in preds if p["image_id"] in keep], image_ids=keep)
    assert evaluation.image_ids == tuple(keep)
    assert evaluation.per_image().shape == (80, 4, 10)
    assert rescore(evaluation).stats["AP"] == pytest.approx(1.0)


# One 300x100 image. A: a crowd person region [0, 0, 100, 100]; B: an ordinary person [200, 0, 50, 100].
# d2 [0, 0, 50, 100] (score 0.9) and d3 [50, 0, 50, 100] (0.8) lie inside A; d1 [200, 0, 50, 100] (0.7) is B.
CROWD_CASE = {
    "images": [{"id": 1, "width": 300, "height": 100, "file_name": "1.jpg"}],
    "categories": [{"id": 1, "name": "person", "supercategory": "person"}],
    "annotations": [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 100, 100], "area": 10000, "iscrowd": 1},
        {"id": 2, "image_id": 1, "category_id": 1, "bbox": [200, 0, 50, 100], "area": 5000, "iscrowd": 0},
    ],
}
CROWD_DETECTIONS = [
    {"image_id": 1, "category_id": 1, "bbox": [0, 0, 50, 100], "score": 0.9},
    {"image_id": 1, "category_id": 1, "bbox": [50, 0, 50, 100], "score": 0.8},
    {"image_id": 1, "category_id": 1, "bbox": [200, 0, 50, 100], "score": 0.7},
]
# Worked by hand. Both rules: A is ignored (ignore = iscrowd), so the recall denominator is 1 (B), and d1 is a
# true positive at every IoU threshold (IoU 1 with B). Precision at the 101 recall points is the best precision
# at or after the first detection whose recall reaches the point, over detections in score order d2, d3, d1.
# COCO API: a crowd region is compared by the detection's area inside it (5000 / 5000 = 1 for d2 and d3) and
#   absorbs any number of detections: d2, d3 ignored, d1 TP. tp = 0, 0, 1; fp = 0, 0, 0; recall 0, 0, 1;
#   precision after d1 is 1, so all 101 points are 1 at every threshold: AP = AP50 = AP75 = 1.
# Authors' rule: A is compared by IoU (5000 / 10000 = 0.5 for d2 and d3) and absorbs one detection.
#   IoU threshold 0.50 (0.5 >= 0.5 matches): d2 -> A (ignored); d3 finds A taken -> FP; d1 TP.
#     tp = 0, 0, 1; fp = 0, 1, 1; precision at d1 = 1/2; all 101 points 1/2: AP@0.50 = 1/2.
#   Thresholds 0.55 ... 0.95 (nine): d2 and d3 match nothing -> FP, FP; d1 TP.
#     tp = 0, 0, 1; fp = 1, 2, 2; precision at d1 = 1/3; all 101 points 1/3: AP@t = 1/3.
#   AP = (1/2 + 9 * 1/3) / 10 = 0.35; AP50 = 0.5; AP75 = 1/3.
# (Were A counted in the recall denominator as well, AP50 would be (51 * 1 + 50 * 2/3) / 101: not this rule.)
CROWD_EXPECTED = {"coco": (1.0, 1.0, 1.0), "authors": (0.35, 0.5, 1 / 3)}


@pytest.mark.parametrize("scorer", ["coco", "authors"])
def test_crowd_region_known_answer(scorer: Any) -> None:
    scores = score(CROWD_CASE, CROWD_DETECTIONS, "pycocotools", scorer=scorer)
    ap, ap50, ap75 = CROWD_EXPECTED[scorer]
    assert scores.stats["AP"] == pytest.approx(ap, abs=1e-12)
    assert scores.stats["AP50"] == pytest.approx(ap50, abs=1e-12)
    assert scores.stats["AP75"] == pytest.approx(ap75, abs=1e-12)
    assert scores.per_class["person"]["AP"] == pytest.approx(ap, abs=1e-12)
    assert scores.stats["AR100"] == 1.0  # d1 finds B at every threshold under both rules


def test_authors_rule_keeps_coco_numbers_without_crowd(ground_truth: dict[str, Any]) -> None:
    """Without crowd regions the authors' rule is the COCO API (on coco-mini: crowd-free images only)."""
    crowded = {a["image_id"] for a in ground_truth["annotations"] if a["iscrowd"]}
    assert crowded  # coco-mini has crowd regions: the full set differs, the crowd-free subset must not
    clear = sorted({im["id"] for im in ground_truth["images"]} - crowded)
    preds = noisy_predictions(ground_truth)
    coco, authors = (score(ground_truth, preds, "pycocotools", clear, scorer) for scorer in ("coco", "authors"))
    assert_same_scores(coco, authors)
    full = [score(ground_truth, preds, "pycocotools", scorer=scorer).stats["AP"] for scorer in ("coco", "authors")]
    assert full[0] != full[1]


def test_authors_bootstrap_matches_by_the_authors_rule() -> None:
    """The intervals of the authors' protocol resample the authors' matches: a row of ones gives its AP."""
    results = evaluate(CROWD_CASE, CROWD_DETECTIONS, scorer="authors")
    resampled = accumulate(results, np.ones((1, 1), dtype=np.int64))
    assert resampled.ap[0, 0] == pytest.approx(0.35, abs=1e-12)
    assert resampled.ap50[0, 0] == pytest.approx(0.5, abs=1e-12)


def test_authors_scorer_needs_pycocotools() -> None:
    with pytest.raises(ValueError, match="runs on pycocotools"):
        score(CROWD_CASE, CROWD_DETECTIONS, "faster-coco-eval", scorer="authors")
