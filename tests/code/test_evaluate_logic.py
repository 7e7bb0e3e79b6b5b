"""Pure logic of the evaluate stage: model ids, MLflow names, detections to COCO results."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from anonbench.coco_classes import COCO_NAMES
from anonbench.cocoeval import STAT_NAMES, CocoScores
from anonbench.config import Config
from anonbench.predict import _check_classes, check_conf, coco_results, sort_results
from anonbench.stages.evaluate import ModelInfo, metric_key, mlflow_metrics, parse_model_id


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
    results = coco_results(42, xyxy, np.array([0.0, 79.0]), np.array([0.9, 0.0012345678]))
    assert results == [
        {"image_id": 42, "category_id": 1, "bbox": [10.25, 20.5, 100.5, 199.5], "score": 0.9},
        {"image_id": 42, "category_id": 90, "bbox": [0.0, 0.0, 640.0, 480.0], "score": 0.00123},
    ]
    assert all(isinstance(v, float) for r in results for v in r["bbox"])
    assert coco_results(1, np.zeros((0, 4)), np.zeros(0), np.zeros(0)) == []


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


def test_model_classes_must_be_cocos_in_order() -> None:
    _check_classes(dict(enumerate(COCO_NAMES)), Path("best.pt"))
    swapped = dict(enumerate(COCO_NAMES)) | {1: "car", 2: "bicycle"}
    with pytest.raises(ValueError, match=r"best\.pt: .* class 1 is 'car', not 'bicycle'"):
        _check_classes(swapped, Path("best.pt"))
    with pytest.raises(ValueError, match="3 classes are not COCO's 80"):
        _check_classes({0: "person", 1: "bicycle", 2: "car"}, Path("best.pt"))
