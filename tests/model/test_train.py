"""train: real YOLOv10n training from yaml on the tiny slice, its MLflow run, rerun skip, resume after a kill."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import mlflow
from typer.testing import CliRunner

from anonbench.cli import app
from anonbench.config import Config
from anonbench.stages import export, train
from anonbench.yolo import load_net
from tests.conftest import cli_args

# YOLOv10's own criterion (Ultralytics 8.4 would build E2ELoss, YOLO26's schedule), as train.json records it.
V10_CRITERION = {
    "class": "E2EDetectLoss",
    "one2many": {"tal_topk": 10, "weight": 1.0},
    "one2one": {"tal_topk": 1, "weight": 1.0},
    "text": "E2EDetectLoss: one2many tal_topk 10 weight 1.0 + one2one tal_topk 1 weight 1.0",
}
TINY = ("workers=1", "train.epochs=1", "train.imgsz=64", "train.batch=4", "train.workers=0")
# A preempted pod: the process dies by SIGKILL right after writing the first epoch's checkpoint.
KILL_AFTER_FIRST_CHECKPOINT = """
import os, signal, sys
from anonbench.offline import go_offline
go_offline()
from ultralytics.engine.trainer import BaseTrainer
save_model = BaseTrainer.save_model
def save_then_die(self):
    save_model(self)
    os.kill(os.getpid(), signal.SIGKILL)
BaseTrainer.save_model = save_then_die
from anonbench.cli import app
app(sys.argv[1:])
"""


def runs(cfg: Config) -> list[mlflow.entities.Run]:
    mlflow.set_tracking_uri(cfg.tracking.uri)
    return mlflow.search_runs(  # the stage runs, not the study run they nest under
        experiment_names=[cfg.tracking.experiment], filter_string="tags.stage != 'study'", output_format="list"
    )


def test_cli_trains_yolov10n_from_yaml_into_one_tracked_run(
    make_config: Callable[..., Config], tiny_coco: Path, mlflow_db: Path, tmp_path: Path
) -> None:
    cfg = make_config(*TINY, source=tiny_coco)
    export.run(cfg, "org")
    result = CliRunner().invoke(app, ["train", "--variant", "org", "--size", "n", *cli_args(cfg, *TINY)])
    assert result.exit_code == 0, result.output
    out = cfg.paths.models / "org-n"
    for name in ("weights/best.pt", "weights/last.pt", "train.json"):
        assert f"wrote {out / name}" in result.output

    summary = json.loads((out / "train.json").read_text())
    assert (summary["model_id"], summary["train_data"], summary["model_size"]) == ("org-n", "org", "n")
    assert (summary["epochs"], summary["epochs_done"], summary["start_epoch"]) == (1, 1, 0)
    # shared/notes/environment.md: yolov10n from yaml with nc=80; the fused count is the paper's 2.3 M
    assert (summary["params"], summary["params_fused"]) == (2_775_520, 2_299_264)
    assert summary["frozen_parameters"] == 1  # Ultralytics always freezes the DFL convolution
    assert "metrics/mAP50-95B" in summary["metrics"]
    assert summary["criterion"] == V10_CRITERION  # read from the criterion the trainer's model trained with
    net = load_net(out / "weights/best.pt")
    assert len(net.names) == 80 and net.yaml["yaml_file"] == "yolov10n.yaml"

    (run,) = runs(cfg)
    assert run.info.run_id == summary["mlflow_run_id"] and run.info.status == "FINISHED"
    tags = run.data.tags
    assert (
        tags.items()
        >= {
            "stage": "train",
            "model_id": "org-n",
            "model_size": "n",
            "train_data": "org",
            "profile": "mini",
            "seed": "0",
        }.items()
    )
    assert tags["git_commit"] and tags["dvc_revision"]
    params = run.data.params
    expected = {"model": "yolov10n.yaml", "epochs": "1", "imgsz": "64", "batch": "4", "optimizer": "SGD"}
    assert params.items() >= {**expected, "deterministic": "True", "seed": "0"}.items()
    assert (params["params"], params["params_fused"]) == ("2775520", "2299264")
    assert params["criterion"] == V10_CRITERION["text"]
    assert tags["criterion"] == "E2EDetectLoss" and params["nms"] == "False"  # validation on the one-to-one head
    client = mlflow.MlflowClient(cfg.tracking.uri)
    for metric in ("train/box_loss", "val/box_loss", "metrics/mAP50-95B", "lr/pg0"):
        assert [m.step for m in client.get_metric_history(run.info.run_id, metric)] == [0], metric
    assert "final/metrics/mAP50-95B" in run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    artifacts |= {a.path for a in client.list_artifacts(run.info.run_id, "weights")}
    assert {"train.json", "frozen_parameters.txt", "weights/best.pt", "weights/last.pt"} <= artifacts

    # The weights are a version of the registered model of YOLOv10-n trained on org, with the run's lineage.
    (version,) = client.search_model_versions("name = 'anonbench-yolov10-n-org'")
    assert summary["registered_model"] == {"name": "anonbench-yolov10-n-org", "version": str(version.version)}
    assert version.run_id == run.info.run_id and version.source.endswith("/weights")
    lineage = ("git_commit", "dvc_revision", "image", "image_digest", "image_revision", "model_id", "train_data")
    assert {key: version.tags[key] for key in lineage} == {key: tags[key] for key in lineage}
    assert version.tags["train_data_digest"] == "unknown"  # a bare CLI run outside DVC: no recorded digest
    fetched = CliRunner().invoke(
        app, ["model", "fetch", "--name", "anonbench-yolov10-n-org", "--version", str(version.version),
              "--dest", str(tmp_path / "fetched"), *cli_args(cfg)],
    )  # fmt: skip
    assert fetched.exit_code == 0, fetched.output
    for name in ("best.pt", "last.pt"):
        assert (tmp_path / "fetched" / name).read_bytes() == (out / "weights" / name).read_bytes()
    missing = CliRunner().invoke(app, ["model", "fetch", "--name", "anonbench-yolov10-n-org", "--version", "9",
                                       "--dest", str(tmp_path / "none"), *cli_args(cfg)])  # fmt: skip
    assert missing.exit_code == 1 and "error:" in missing.output

    stamp = (out / "train.json").stat().st_mtime_ns
    again = CliRunner().invoke(app, ["train", "--variant", "org", "--size", "n", *cli_args(cfg, *TINY)])
    assert again.exit_code == 0, again.output
    assert (out / "train.json").stat().st_mtime_ns == stamp and len(runs(cfg)) == 1  # complete: skipped


def test_a_killed_training_resumes_from_last_pt_in_the_same_run(
    make_config: Callable[..., Config], tiny_coco: Path, mlflow_db: Path, tmp_path: Path
) -> None:
    settings = (*TINY, "train.epochs=2")
    cfg = make_config(*settings, source=tiny_coco)
    export.run(cfg, "org")
    out = cfg.paths.models / "org-n"
    command = [sys.executable, "-c", KILL_AFTER_FIRST_CHECKPOINT, "train", "--variant", "org", "--size", "n"]
    killed = subprocess.run([*command, *cli_args(cfg, *settings)], cwd=tmp_path, capture_output=True, timeout=300)
    assert killed.returncode == -9, killed.stderr.decode()[-2000:]
    assert (out / "weights/last.pt").is_file() and not (out / "train.json").exists()
    (interrupted,) = runs(cfg)
    assert interrupted.info.status == "RUNNING"  # nobody closed it: the process was killed

    train.run(cfg, "org", "n")
    summary = json.loads((out / "train.json").read_text())
    assert (summary["start_epoch"], summary["epochs_done"]) == (1, 2)
    assert summary["criterion"] == V10_CRITERION  # Ultralytics' resume rebuilds E2ELoss; the trainer replaces it
    (run,) = runs(cfg)
    assert run.info.run_id == interrupted.info.run_id == summary["mlflow_run_id"] and run.info.status == "FINISHED"
    history = mlflow.MlflowClient(cfg.tracking.uri).get_metric_history(run.info.run_id, "train/box_loss")
    assert sorted(m.step for m in history) == [0, 1]  # epoch 0 from the killed process, epoch 1 after resuming
    with (out / "results.csv").open() as handle:
        assert [int(float(row["epoch"])) for row in csv.DictReader(handle)] == [1, 2]
