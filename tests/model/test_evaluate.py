"""The evaluate stage end to end: a real YOLOv10n checkpoint, real images, pycocotools, a real MLflow store."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import mlflow
import numpy as np
import pytest
from pycocotools.coco import COCO
from typer.testing import CliRunner

from anonbench.analysis.cocoeval import STAT_NAMES, score
from anonbench.cli import app
from anonbench.coco import CategoryTable, CocoError
from anonbench.coco_classes import COCO_CATEGORIES, COCO_NAMES
from anonbench.config import Config
from anonbench.offline import configure_ultralytics
from anonbench.predict import PredictSettings, predict, sort_results
from anonbench.stages import evaluate as stage
from anonbench.study import load_evaluations, rematch_resamples, stored_resamples
from anonbench.yolo import chosen_weights, load_net, use_one2one

PARAMS = Path(__file__).resolve().parents[2] / "params.yaml"
MODEL_ID = "org-n"
METADATA = {"model_id", "train_data", "model_size", "eval_data", "combination", "mlflow_run_id", "conf", "backend"}
METADATA |= {"void", "void_reason", "protocol", "scorer", "checkpoint", "predictions", "batch", "max_det"}
METADATA |= {"head", "nms", "head_topk"}


@pytest.fixture(scope="module")
def untrained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """YOLOv10n as its yaml builds it: the class prior (about 1e-5) keeps every score below conf 0.001."""
    import torch
    from ultralytics import YOLO

    configure_ultralytics()
    torch.manual_seed(0)
    model = YOLO("yolov10n.yaml")
    model.model.names = dict(enumerate(COCO_NAMES))  # type: ignore[union-attr]
    path = tmp_path_factory.mktemp("untrained") / "last.pt"
    model.save(path)
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A YOLOv10n checkpoint built from yaml, saved as Ultralytics saves trained weights.

    Training one that finds anything takes far longer than this suite allows, and a freshly initialized head
    scores every class below conf 0.001 (its bias prior), so it would predict nothing. The class biases are
    raised to 0 so that it predicts up to 100 boxes per image: the format, ids and scoring path are what is
    tested here, not detection quality (tests/code/test_cocoeval.py checks the numbers).
    """
    import torch
    from ultralytics import YOLO

    configure_ultralytics()
    torch.manual_seed(0)
    model = YOLO("yolov10n.yaml")
    head = model.model.model[-1]  # type: ignore[union-attr]
    for branch in (head.one2many, head.one2one):
        for cls_head in branch["cls_head"]:
            cls_head[-1].bias.data[:] = 0.0
    model.model.names = dict(enumerate(COCO_NAMES))  # type: ignore[union-attr]
    path = tmp_path_factory.mktemp("checkpoint") / "last.pt"
    model.save(path)
    return path


@pytest.fixture(scope="module")
def one2one_only(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A YOLOv10n checkpoint whose two branches disagree: only the one-to-one branch scores above conf 0.001.

    Fresh from its yaml, the network's features are nearly zero in eval mode (batch norms at mean 0, variance
    1) and every anchor gets the same score. One pass in training mode sets the running statistics to a
    batch of noise images, so scores differ by anchor and class and the top 300 have a strict order. The
    class layers' weights are scaled to 1 %; the one-to-one biases set to 0 (scores near 0.5-0.8), the
    one-to-many ones to -20 (near 2e-9): predictions from the one-to-many branch plus NMS would be none.
    """
    import torch
    from ultralytics import YOLO

    configure_ultralytics()
    torch.manual_seed(0)
    model = YOLO("yolov10n.yaml")
    net = model.model
    norms = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]  # type: ignore[union-attr]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # running statistics = the statistics of the one batch below
    net.train()  # type: ignore[union-attr]
    with torch.no_grad():
        net(torch.rand(4, 3, 128, 128))  # type: ignore[misc,operator]
    head = net.model[-1]  # type: ignore[union-attr,index]
    for branch, bias in ((head.one2many, -20.0), (head.one2one, 0.0)):
        for cls_head in branch["cls_head"]:
            cls_head[-1].weight.data *= 0.01
            cls_head[-1].bias.data[:] = bias
    net.eval().names = dict(enumerate(COCO_NAMES))  # type: ignore[union-attr]
    path = tmp_path_factory.mktemp("one2one") / "last.pt"
    model.save(path)
    return path


def test_predictions_come_from_the_nms_free_one2one_head(one2one_only: Path, tmp_path: Path) -> None:
    """predict's boxes are the one-to-one branch's top 100 as the model computes them; the one-to-many
    branch plus NMS (Ultralytics' default) finds nothing in the same checkpoint on the same image."""
    import cv2
    import torch
    from ultralytics import YOLO

    pixels = np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    image = tmp_path / "noise.png"
    cv2.imwrite(str(image), pixels)  # 128 x 128 at imgsz 128: no resize, no padding; 336 anchors
    categories = CategoryTable(tuple(cid for cid, _ in COCO_CATEGORIES), tuple(COCO_NAMES))
    settings = PredictSettings(conf=0.001, iou=0.7, max_det=100, imgsz=128, batch=1, device="cpu")
    ours = predict(one2one_only, [(7, image)], categories, settings)

    net = use_one2one(load_net(one2one_only))
    rgb = torch.from_numpy(pixels[..., ::-1].copy()).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        direct = net(rgb)[0][0]  # (300, 6): x1, y1, x2, y2, score, class, best score first
    direct = direct[direct[:, 4] > settings.conf][: settings.max_det].numpy()
    assert len(ours) == len(direct) == settings.max_det
    assert [p["score"] for p in ours] == pytest.approx(direct[:, 4].tolist(), abs=1e-4)
    assert [p["category_id"] for p in ours] == [categories.ids[int(c)] for c in direct[:, 5]]
    xyxy = direct[:, :4].clip(0, 128)  # Ultralytics clips boxes to the image
    xywh = np.column_stack([xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]])
    assert np.allclose([p["bbox"] for p in ours], xywh, atol=0.01)

    one2many = YOLO(str(one2one_only)).predict(str(image), conf=settings.conf, imgsz=128, max_det=100, verbose=False)
    assert len(one2many[0].boxes) == 0


@pytest.fixture
def evaluation_config(
    make_config: Callable[..., Config],
    tiny_coco: Path,
    checkpoint: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Callable[..., Config]:
    """Config on the tiny slice with the checkpoint placed where train leaves org-n's chosen weights.

    Runs in tmp_path: MLflow's sqlite store puts artifacts in ./mlruns of the working folder.
    """
    monkeypatch.chdir(tmp_path)

    def _make(*overrides: str, source: Path = tiny_coco, weights: Path = checkpoint) -> Config:
        cfg = make_config("train.imgsz=64", *overrides, source=source)
        target = chosen_weights(cfg, MODEL_ID)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(weights, target)
        return cfg

    return _make


def test_cli_writes_coco_predictions_metrics_and_an_mlflow_run(evaluation_config: Callable[..., Config]) -> None:
    cfg = evaluation_config()
    sets = [f"paths.{p}={getattr(cfg.paths, p)}" for p in ("data", "models", "metrics")]
    sets += [f"tracking.uri={cfg.tracking.uri}", "train.imgsz=64"]
    result = CliRunner().invoke(
        app,
        [
            "evaluate",
            "--model",
            MODEL_ID,
            "--on",
            "org",
            "--params",
            str(PARAMS),
            *(a for s in sets for a in ("--set", s)),
        ],
    )
    assert result.exit_code == 0, result.output
    out = stage.output_dir(cfg, MODEL_ID, "org")
    assert f"wrote {out / 'predictions.json'}" in result.output

    # predictions: COCO results that pycocotools takes, mapped to the JSON's image and category ids
    annotation_file = cfg.annotation_file("org", cfg.data.val_split)
    instances = json.loads(annotation_file.read_text())
    predictions = json.loads((out / "predictions.json").read_text())
    assert predictions, "the checkpoint predicts boxes at conf 0.001"
    COCO(str(annotation_file)).loadRes([dict(p) for p in predictions])
    assert {p["image_id"] for p in predictions} == {image["id"] for image in instances["images"]}
    assert {p["category_id"] for p in predictions} <= {cid for cid, _ in COCO_CATEGORIES}
    assert max(Counter(p["image_id"] for p in predictions).values()) <= cfg.evaluate.max_det
    assert all(isinstance(v, float) for p in predictions for v in p["bbox"])
    assert min(p["score"] for p in predictions) >= cfg.evaluate.conf
    assert predictions == sort_results(predictions)

    # metrics: the 12 stats, per-class AP by name, what was evaluated; equal to scoring the file with pycocotools
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(STAT_NAMES) | METADATA | {"per_class"} <= metrics.keys()
    reference = score(instances, predictions, "pycocotools")
    assert {name: metrics[name] for name in STAT_NAMES} == pytest.approx(reference.stats, abs=1e-12)
    assert set(metrics["per_class"]) == set(COCO_NAMES)
    assert metrics["combination"] == "org on org"
    assert (metrics["conf"], metrics["backend"], metrics["images"]) == (0.001, "faster-coco-eval", 6)
    assert (metrics["head"], metrics["nms"], metrics["head_topk"]) == ("one2one", False, 300)
    assert (metrics["void"], metrics["void_reason"], metrics["protocol"], metrics["checkpoint"]) == (
        False,
        None,
        "coco",
        "last",
    )
    assert metrics["scorer"] == "coco"
    assert metrics["predictions"] == len(predictions)

    # one MLflow run with the tags, metrics and artifacts
    mlflow.set_tracking_uri(cfg.tracking.uri)
    run = mlflow.get_run(metrics["mlflow_run_id"])
    tags = run.data.tags
    assert {k: tags[k] for k in ("stage", "train_data", "eval_data", "model_size", "combination", "void")} == {
        "stage": "evaluate",
        "train_data": "org",
        "eval_data": "org",
        "model_size": "n",
        "combination": "org on org",
        "void": "false",
    }
    assert tags["protocol"] == tags["scorer"] == "coco"
    assert {f"coco/{name}" for name in STAT_NAMES} <= run.data.metrics.keys()
    assert run.data.metrics["AP/person"] == pytest.approx(metrics["per_class"]["person"]["AP"])
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)}
    assert {"predictions.json", "metrics.json", "manifest.json"} <= artifacts

    # resamples: what the report would get by matching the stored predictions again, drawn as configured
    record = next(e for e in load_evaluations(cfg) if e.key == (MODEL_ID, "org"))
    stored = stored_resamples(record, cfg.report.bootstrap_samples, cfg.seed)
    assert stored is not None and metrics["bootstrap"]["images"] == len(stored[0]) == len(instances["images"])
    ids, again = rematch_resamples((out, annotation_file, cfg.report.bootstrap_samples, cfg.seed))
    assert stored[0] == ids and stored[1].classes == again.classes
    assert stored[1].ap.shape == (cfg.report.bootstrap_samples, len(again.classes))
    np.testing.assert_array_equal(stored[1].ap, again.ap)
    np.testing.assert_array_equal(stored[1].ap50, again.ap50)
    assert stored_resamples(record, cfg.report.bootstrap_samples + 1, cfg.seed) is None, "other settings: re-match"

    # a rerun with nothing changed does nothing: same files, no second run
    before = {p: p.read_bytes() for p in out.iterdir()}
    files = [out / name for name in ("predictions.json", "metrics.json", "manifest.json", "resamples.npy")]
    assert stage.run(cfg, MODEL_ID, "org") == files
    assert {p: p.read_bytes() for p in out.iterdir()} == before
    assert (
        len(mlflow.search_runs(experiment_names=[cfg.tracking.experiment], filter_string="tags.stage = 'evaluate'"))
        == 1
    )


def test_authors_conf_warns_and_reevaluates(evaluation_config: Callable[..., Config]) -> None:
    stage.run(evaluation_config(), MODEL_ID, "org")
    cfg = evaluation_config("evaluate.conf=0.25")
    with pytest.warns(UserWarning, match="not the COCO protocol"):
        stage.run(cfg, MODEL_ID, "org")
    out = stage.output_dir(cfg, MODEL_ID, "org")
    assert json.loads((out / "metrics.json").read_text())["conf"] == 0.25
    assert min(p["score"] for p in json.loads((out / "predictions.json").read_text())) >= 0.25


def test_the_authors_protocol_is_recorded_and_scored_their_way(evaluation_config: Callable[..., Config]) -> None:
    import warnings

    cfg = evaluation_config("evaluate.protocol=authors")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # chosen by name: recorded, not warned about
        stage.run(cfg, MODEL_ID, "org")
    out = stage.output_dir(cfg, MODEL_ID, "org")
    metrics = json.loads((out / "metrics.json").read_text())
    predictions = json.loads((out / "predictions.json").read_text())
    assert (metrics["protocol"], metrics["conf"], metrics["max_det"], metrics["batch"]) == ("authors", 0.25, 300, 1)
    assert (metrics["head"], metrics["nms"], metrics["head_topk"]) == ("one2one", False, 300)
    assert predictions and min(p["score"] for p in predictions) >= 0.25
    assert max(Counter(p["image_id"] for p in predictions).values()) <= 300
    assert all(v == int(v) for p in predictions for v in p["bbox"]), "boxes truncated to integers"
    truth = json.loads(cfg.annotation_file("org", cfg.data.val_split).read_text())
    assert (metrics["scorer"], metrics["backend"]) == ("authors", "pycocotools")
    authors = score(truth, predictions, "pycocotools", scorer="authors")
    assert metrics["AP"] == pytest.approx(authors.stats["AP"], abs=1e-12)
    run = mlflow.MlflowClient(cfg.tracking.uri).get_run(metrics["mlflow_run_id"])
    assert run.data.tags["protocol"] == "authors" and run.data.params["protocol"] == "authors"
    assert run.data.tags["scorer"] == "authors" and run.data.params["scorer"] == "authors"


def test_no_detection_is_void_not_zero(evaluation_config: Callable[..., Config], untrained: Path) -> None:
    cfg = evaluation_config(weights=untrained)
    stage.run(cfg, MODEL_ID, "org")
    out = stage.output_dir(cfg, MODEL_ID, "org")
    metrics = json.loads((out / "metrics.json").read_text())
    assert json.loads((out / "predictions.json").read_text()) == []
    assert (metrics["void"], metrics["void_reason"], metrics["predictions"]) == (True, "no detections", 0)
    assert metrics["bootstrap"] is None and np.load(out / "resamples.npy").shape == (2, 0, 0)
    assert all(metrics[name] is None for name in STAT_NAMES), "never 0.0"
    assert set(metrics["per_class"]) == set(COCO_NAMES)
    assert all(v is None for values in metrics["per_class"].values() for v in values.values())
    run = mlflow.MlflowClient(cfg.tracking.uri).get_run(metrics["mlflow_run_id"])
    assert run.data.tags["void"] == "true"
    assert not any(key.startswith(("coco/", "AP/", "AP50/")) for key in run.data.metrics), "a void run logs no AP"
    assert run.data.params["predictions"] == "0"


def test_missing_image_stops_or_is_a_counted_skip(
    evaluation_config: Callable[..., Config], tiny_coco: Path, tmp_path: Path
) -> None:
    broken = shutil.copytree(tiny_coco, tmp_path / "broken")
    missing = sorted((broken / "val2017").iterdir())[0]
    missing.unlink()
    cfg = evaluation_config(source=broken)
    with pytest.raises(CocoError, match=f"{missing.name}: image file of image id"):
        stage.run(cfg, MODEL_ID, "org")

    cfg = evaluation_config("policy=skip", source=broken)
    out = stage.output_dir(cfg, MODEL_ID, "org")
    stage.run(cfg, MODEL_ID, "org")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"] == {"ok": 5, "skipped": 1, "error": 0}
    assert [r["key"] for r in manifest["records"] if r["status"] == "skipped"] == [missing.name]
    assert json.loads((out / "metrics.json").read_text())["images"] == 5


def test_unknown_model_or_missing_weights_fail_clearly(evaluation_config: Callable[..., Config]) -> None:
    cfg = evaluation_config()
    with pytest.raises(FileNotFoundError, match="no trained weights for model 'blur-n'"):
        stage.run(cfg, "blur-n", "org")
    with pytest.raises(ValueError, match="evaluation variant 'dp2_face'"):
        stage.run(cfg, MODEL_ID, "dp2_face")
