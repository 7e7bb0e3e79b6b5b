"""Pure logic of the evaluate stage: model ids, MLflow names, detections to COCO results."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from anonbench.analysis.cocoeval import STAT_NAMES, CocoScores, void_scores
from anonbench.coco import CategoryTable, CocoError
from anonbench.coco_classes import COCO_CATEGORIES, COCO_NAMES
from anonbench.config import Config
from anonbench.predict import PredictSettings, check_classes, check_conf, coco_results, sort_results
from anonbench.stages.evaluate import ModelInfo, metric_key, mlflow_metrics, parse_model_id

COCO_TABLE = CategoryTable(tuple(cid for cid, _ in COCO_CATEGORIES), COCO_NAMES)


@pytest.mark.parametrize(
    ("model_id", "expected"),
    [
        ("org-n", ModelInfo("org-n", "org", "n")),
        ("blur-x", ModelInfo("blur-x", "blur", "x")),
        ("ft-neck_head", ModelInfo("ft-neck_head", "mask", "n", "neck_head")),
    ],
)
def test_model_ids(make_config: Callable[..., Config], model_id: str, expected: ModelInfo) -> None:
    assert parse_model_id(make_config(), model_id) == expected


@pytest.mark.parametrize(
    ("model_id", "message"),
    [("org", "expected <variant>-<size>"), ("org-q", "expected"), ("dp2_fullbody-n", "expected"), ("ft-x", "freeze")],
)
def test_bad_model_ids(make_config: Callable[..., Config], model_id: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_model_id(make_config(), model_id)


def test_tags_name_the_matrix_cell() -> None:
    assert ModelInfo("blur-s", "blur", "s").tags("org")["combination"] == "blur on org"
    assert ModelInfo("ft-neck", "mask", "n", "neck").tags("mask")["freeze"] == "neck"
    assert "freeze" not in ModelInfo("org-n", "org", "n").tags("org")


def test_mlflow_metric_names() -> None:
    scores = CocoScores(
        dict.fromkeys(STAT_NAMES, 0.5) | {"APs": None},
        {"traffic light": {"AP": 0.25, "AP50": 0.5}, "dog": {"AP": None, "AP50": None}},
    )
    metrics = mlflow_metrics(scores)
    assert metrics["coco/AP"] == 0.5
    assert "coco/APs" not in metrics  # undefined: left out, not logged as -1
    assert metrics["AP/traffic light"] == 0.25
    assert metrics["AP50/traffic light"] == 0.5
    assert not any("dog" in key for key in metrics)
    assert metric_key("AP", "a/b:c&d") == "AP/a_b_c_d"


def test_detections_become_coco_results_with_float_boxes() -> None:
    xyxy = np.array([[10.25, 20.5, 110.75, 220.0], [0.0, 0.0, 639.9998, 480.0]], dtype=np.float32)
    results = coco_results(42, xyxy, np.array([0.0, 79.0]), np.array([0.9, 0.0012345678]), COCO_TABLE)
    assert results == [
        {"image_id": 42, "category_id": 1, "bbox": [10.25, 20.5, 100.5, 199.5], "score": 0.9},
        {"image_id": 42, "category_id": 90, "bbox": [0.0, 0.0, 640.0, 480.0], "score": 0.00123},
    ]
    assert all(isinstance(v, float) for r in results for v in r["bbox"])
    assert coco_results(1, np.zeros((0, 4)), np.zeros(0), np.zeros(0), COCO_TABLE) == []


def test_class_indices_follow_the_datasets_own_table() -> None:
    # Renumbered ids, one COCO category missing: class k is the k-th category by ascending id.
    table = CategoryTable.of(
        {"categories": [{"id": 700, "name": "dog"}, {"id": 5, "name": "person"}, {"id": 42, "name": "wheelchair"}]},
        "x.json",
    )
    assert (table.ids, table.names) == ((5, 42, 700), ("person", "wheelchair", "dog"))
    xyxy = np.array([[0, 0, 1, 1], [0, 0, 2, 2], [0, 0, 3, 3]], dtype=np.float32)
    results = coco_results(1, xyxy, np.array([2.0, 0.0, 1.0]), np.array([0.5, 0.4, 0.3]), table)
    assert [r["category_id"] for r in results] == [700, 5, 42]
    assert CategoryTable.of({"categories": COCO_TABLE_RECORDS}, "coco.json") == COCO_TABLE


COCO_TABLE_RECORDS = [{"id": cid, "name": name} for cid, name in reversed(COCO_CATEGORIES)]


@pytest.mark.parametrize(
    ("categories", "message"),
    [
        ([], "no categories"),
        ([{"id": 1, "name": "person"}, {"id": 1, "name": "dog"}], "category id 1 appears twice"),
        ([{"id": 1, "name": "dog"}, {"id": 2, "name": "dog"}], "category name 'dog' appears twice"),
        ([{"id": "1", "name": "dog"}], "needs an integer 'id' and a non-empty 'name'"),
        ([{"id": 1}], "needs an integer 'id'"),
    ],
)
def test_bad_category_tables_are_refused(categories: list[dict], message: str) -> None:
    with pytest.raises(CocoError, match=f"x.json: .*{message}"):
        CategoryTable.of({"categories": categories}, "x.json")


def test_tables_of_two_splits_must_agree() -> None:
    a = CategoryTable((1, 2), ("person", "dog"))
    a.check_same(CategoryTable((1, 2), ("person", "dog")), "val.json")
    with pytest.raises(CocoError, match=r"val.json: .*category id 2: 'cat' here, 'dog' there"):
        a.check_same(CategoryTable((1, 2), ("person", "cat")), "val.json")


def test_the_authors_protocol_truncates_every_box_number() -> None:
    # The authors' YoloHandler: x_min = int(...), y_min = int(...), width = int(...), height = int(...).
    xyxy = np.array([[10.75, 20.5, 110.25, 220.9], [0.4, 0.9, 3.3, 2.0]], dtype=np.float32)
    results = coco_results(7, xyxy, np.array([0.0, 1.0]), np.array([0.9, 0.5]), COCO_TABLE, truncate=True)
    assert [r["bbox"] for r in results] == [[10.0, 20.0, 99.0, 200.0], [0.0, 0.0, 2.0, 1.0]]


def test_protocol_settings(make_config: Callable[..., Config]) -> None:
    coco = PredictSettings.of(make_config("evaluate.batch=8", "train.imgsz=96"))
    assert (coco.protocol, coco.conf, coco.max_det, coco.batch, coco.imgsz, coco.truncate) == (
        "coco",
        0.001,
        100,
        8,
        96,
        False,
    )
    authors = PredictSettings.of(make_config("evaluate.protocol=authors", "evaluate.conf=0.5", "evaluate.batch=8"))
    assert (authors.protocol, authors.conf, authors.max_det, authors.batch, authors.iou, authors.truncate) == (
        "authors",
        0.25,
        300,
        1,
        0.7,
        True,
    )


def test_a_void_evaluation_has_no_numbers() -> None:
    scores = void_scores({"categories": [{"id": 3, "name": "car"}, {"id": 9, "name": "dog"}]})
    assert scores.stats == dict.fromkeys(STAT_NAMES) and set(STAT_NAMES) == set(scores.stats)
    assert scores.per_class == {"car": {"AP": None, "AP50": None}, "dog": {"AP": None, "AP50": None}}
    assert mlflow_metrics(scores) == {}


def test_results_sort_deterministically() -> None:
    preds = [
        {"image_id": 2, "category_id": 1, "bbox": [0.0, 0, 1, 1], "score": 0.5},
        {"image_id": 1, "category_id": 3, "bbox": [0.0, 0, 1, 1], "score": 0.5},
        {"image_id": 1, "category_id": 1, "bbox": [0.0, 0, 1, 1], "score": 0.5},
        {"image_id": 1, "category_id": 9, "bbox": [0.0, 0, 1, 1], "score": 0.9},
    ]
    ordered = sort_results(preds)
    assert [(p["image_id"], p["category_id"]) for p in ordered] == [(1, 9), (1, 1), (1, 3), (2, 1)]
    assert sort_results(list(reversed(preds))) == ordered


def test_conf_above_the_coco_protocol_warns() -> None:
    with pytest.warns(UserWarning, match=r"evaluate.conf=0.25 is not the COCO protocol"):
        check_conf(0.25)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_conf(0.001)


def test_model_classes_must_be_the_datasets_in_order() -> None:
    check_classes(dict(enumerate(COCO_NAMES)), COCO_TABLE, Path("last.pt"))
    swapped = dict(enumerate(COCO_NAMES)) | {1: "car", 2: "bicycle"}
    with pytest.raises(ValueError, match=r"last\.pt: .* class 1 is 'car', not 'bicycle'"):
        check_classes(swapped, COCO_TABLE, Path("last.pt"))
    with pytest.raises(ValueError, match="3 classes are not the dataset's 80 categories"):
        check_classes({0: "person", 1: "bicycle", 2: "car"}, COCO_TABLE, Path("last.pt"))
    own = CategoryTable((5, 42), ("person", "wheelchair"))
    check_classes({0: "person", 1: "wheelchair"}, own, Path("last.pt"))
