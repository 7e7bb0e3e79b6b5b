"""Drift stage on real anonymized coco-mini images with an untrained YOLOv10n checkpoint.

An untrained network stands in for the Org model (training one is the train stage's test); CKA
needs only a forward pass, and the stage must treat the checkpoint as train leaves it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from anonbench.config import Config
from anonbench.offline import configure_ultralytics
from anonbench.stages import anonymize, drift
from anonbench.yolo import chosen_weights


def untrained_checkpoint(path: Path) -> Path:
    configure_ultralytics()
    from ultralytics import YOLO

    path.parent.mkdir(parents=True)
    YOLO("yolov10n.yaml").save(path)
    return path


def test_drift_per_layer(make_config: Callable[..., Config], tiny_coco: Path, mlflow_db: Path) -> None:
    cfg = make_config("workers=1", "report.cka_images=4", "train.imgsz=64", source=tiny_coco)
    anonymize.run(cfg, "mask", splits=[cfg.data.val_split])
    untrained_checkpoint(chosen_weights(cfg, drift.base_model_id(cfg)))
    json_path, png_path = drift.run(cfg, "mask")
    doc = json.loads(json_path.read_text())
    assert [layer["layer"] for layer in doc["layers"]] == list(range(24))
    assert [layer["part"] for layer in doc["layers"]][9:12] == ["backbone", "PSA", "neck"]
    assert all(-1.0 <= layer["cka"] <= 1.0 + 1e-9 for layer in doc["layers"])  # debiased: may dip below 0
    assert doc["checkpoint"] == "last" and doc["inputs"]["estimator"].startswith("debiased linear CKA")
    assert min(layer["cka"] for layer in doc["layers"]) < 0.999, "masking people must move some layer"
    assert len(doc["inputs"]["images"]) == 4 and png_path.read_bytes()[:4] == b"\x89PNG"
    assert drift.run(cfg, "mask") == [json_path, png_path]
    assert json.loads(json_path.read_text())["mlflow_run_id"] == doc["mlflow_run_id"], "unchanged inputs: no rerun"


def test_drift_refuses_without_model(make_config: Callable[..., Config]) -> None:
    cfg = make_config()
    with pytest.raises(FileNotFoundError, match="no trained Org model"):
        drift.run(cfg, "mask")
