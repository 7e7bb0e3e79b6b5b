"""Detector families: each trains one epoch on a coco-mini slice through ``anonbench train`` and is scored
through ``anonbench evaluate``, with its own criterion, head, model id, tags and registered model."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import mlflow
import pytest
from typer.testing import CliRunner

from anonbench.cli import app
from anonbench.config import Config
from anonbench.stages import export
from anonbench.yolo import load_net
from tests.code.test_families import PARAM_COUNTS
from tests.conftest import cli_args
from tests.model.test_train import TINY, runs

# Each family's smallest size, the criterion Ultralytics trains it with, and its inference head.
FAMILIES = {
    "yolov8": ("n", "org-yolov8-n", "v8DetectionLoss", {"head": "detect", "nms": True, "head_topk": None}),
    "yolo11": ("n", "org-yolo11-n", "v8DetectionLoss", {"head": "detect", "nms": True, "head_topk": None}),
    "rtdetr": ("l", "org-rtdetr-l", "RTDETRDetectionLoss", {"head": "decoder", "nms": False, "head_topk": 300}),
}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_each_family_trains_and_evaluates_through_the_cli(
    family: str, make_config: Callable[..., Config], tiny_coco: Path, mlflow_db: Path
) -> None:
    size, model_id, criterion, head = FAMILIES[family]
    cfg = make_config(*TINY, source=tiny_coco)
    export.run(cfg, "org")
    args = cli_args(cfg, *TINY)
    trained = CliRunner().invoke(app, ["train", "--variant", "org", "--family", family, "--size", size, *args])
    assert trained.exit_code == 0, trained.output
    out = cfg.paths.models / model_id
    summary = json.loads((out / "train.json").read_text())
    assert (summary["model_id"], summary["family"], summary["model_size"]) == (model_id, family, size)
    assert (summary["params"], summary["params_fused"]) == PARAM_COUNTS[family][size]
    assert summary["criterion"]["class"] == criterion  # Ultralytics' own for the family, read from the trainer
    assert summary["epochs_done"] == 1 and summary["registered_model"]["name"] == f"anonbench-{family}-{size}-org"
    assert load_net(out / "weights/last.pt").yaml["yaml_file"].startswith(family.replace("rtdetr", "rtdetr-"))
    (run,) = runs(cfg)
    assert run.data.tags["family"] == family and run.data.tags["criterion"] == criterion
    assert run.data.params["model"] == (f"{family}{size}.yaml" if family != "rtdetr" else "rtdetr-l.yaml")

    evaluated = CliRunner().invoke(app, ["evaluate", "--model", model_id, "--on", "org", *args])
    assert evaluated.exit_code == 0, evaluated.output
    folder = cfg.paths.metrics / "eval" / f"{model_id}_on_org"
    metrics = json.loads((folder / "metrics.json").read_text())
    assert (metrics["model_id"], metrics["family"], metrics["model_size"]) == (model_id, family, size)
    assert {key: metrics[key] for key in head} == head
    eval_run = mlflow.MlflowClient(cfg.tracking.uri).get_run(metrics["mlflow_run_id"])
    assert eval_run.data.tags["family"] == family
    predictions = json.loads((folder / "predictions.json").read_text())
    assert metrics["predictions"] == len(predictions) and metrics["void"] == (not predictions)
    if family == "rtdetr":  # its queries score about 0.01 from the start: real output through our predict
        assert predictions, "RT-DETR's decoder gives every image candidates above conf 0.001"
        truth = json.loads(cfg.annotation_file("org", cfg.data.val_split).read_text())
        sizes = {im["id"]: (im["width"], im["height"]) for im in truth["images"]}
        assert max(Counter(p["image_id"] for p in predictions).values()) <= cfg.evaluate.max_det
        for p in predictions:  # [x, y, w, h] in the original image's pixels, not normalized, not corners
            x, y, w, h = p["bbox"]
            width, height = sizes[p["image_id"]]
            assert w > 0 and h > 0 and x >= -1 and x + w <= width + 1 and y >= -1 and y + h <= height + 1
        assert max(p["bbox"][0] + p["bbox"][2] for p in predictions) > 64  # scaled past the 64 px input
