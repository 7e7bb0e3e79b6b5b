"""Stage runs against a real MLflow tracking server: they span the work, nest under one study run, end
FAILED on an error, and a killed stage's rerun continues its run (no second RUNNING run).

The server is ``mlflow server`` from this environment on a free local port, started by the module in
its own process group (sqlite backend, artifacts in a folder, no job workers) and stopped after it.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import mlflow
import pytest
from mlflow.entities import Run

from anonbench.config import Config
from anonbench.stages import anonymize, evaluate, export, report, ssim, train
from anonbench.tracking import PARENT_TAG, STUDY_TAG
from tests.conftest import kill_when
from tests.pipeline.conftest import mlflow_server

REPO = Path(__file__).resolve().parents[2]
VAL, TRAIN = "val2017", "train2017"
VS = ("org", "blur")  # the evaluation variants of the mini run
TINY_TRAIN = ("train.epochs=1", "train.imgsz=64", "train.batch=4", "train.workers=0")
# What a run may miss of its stage's call: the checks before the run opens (the up-to-date test, input
# hashes) and the calls that open it (experiment, study run, an unfinished run to continue).
MAX_OUTSIDE_S = 1.5


@pytest.fixture(scope="module")
def served_store(tmp_path_factory: pytest.TempPathFactory, mlflow_template: Path) -> Iterator[str]:
    """A real MLflow tracking server for the module (sqlite store, artifacts in a folder); yields its URI."""
    folder = tmp_path_factory.mktemp("mlflow-server")
    database = Path(shutil.copyfile(mlflow_template, folder / "mlflow.db"))  # tables made once per session
    with mlflow_server(f"sqlite:///{database}", folder, "--artifacts-destination", str(folder / "artifacts")) as uri:
        yield uri


@pytest.fixture
def served(
    make_config: Callable[..., Config], served_store: str, request: pytest.FixtureRequest
) -> Callable[..., Config]:
    """make_config logging to the test server, in an experiment of the test's own."""

    def _make(*overrides: str, source: Path | None = None) -> Config:
        experiment = f"tracking.experiment={request.node.name}"
        sets = [f"tracking.uri={served_store}", experiment, "workers=1", *overrides]
        return make_config(*sets, source=source)

    return _make


def stage_runs(cfg: Config) -> list[Run]:
    """Every run of the config's experiment, study run included, oldest first (none before it exists)."""
    client = mlflow.MlflowClient(cfg.tracking.uri)
    experiment = client.get_experiment_by_name(cfg.tracking.experiment)
    if experiment is None:
        return []
    return client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])


def timed(call: Callable[[], object]) -> tuple[int, int]:
    """Start and end of a call in milliseconds since the epoch, as MLflow records run times."""
    start = int(time.time() * 1000)
    call()
    return start, int(time.time() * 1000)


def test_stage_runs_span_their_work_under_one_study_run(served: Callable[..., Config], tiny_coco: Path) -> None:
    cfg = served(*TINY_TRAIN, "report.bootstrap_samples=20", source=tiny_coco)
    calls = {
        "anonymize-blur": lambda: anonymize.run(cfg, "blur"),
        "ssim-blur": lambda: ssim.run(cfg, "blur"),
        "export": lambda: export.run(cfg, "org"),
        "org-n": lambda: train.run(cfg, "org", "n"),
        "org-n on org": lambda: evaluate.run(cfg, "org-n", "org"),
        "org-n on blur": lambda: evaluate.run(cfg, "org-n", "blur"),
    }
    walls = {name: timed(call) for name, call in calls.items()}
    runs = {run.info.run_name: run for run in stage_runs(cfg)}
    (study,) = (run for run in runs.values() if run.data.tags["stage"] == "study")
    del walls["export"]  # logs no run
    assert set(runs) == {*walls, study.info.run_name}
    outside = {}
    for name, (start, end) in walls.items():
        run = runs[name]
        assert run.info.status == "FINISHED", name
        assert start <= run.info.start_time <= run.info.end_time <= end, name
        outside[name] = (end - start) - (run.info.end_time - run.info.start_time)
        print(f"{name}: stage call {end - start} ms, its run {run.info.end_time - run.info.start_time} ms")
        assert run.data.tags[PARENT_TAG] == study.info.run_id, name
        assert run.data.tags[STUDY_TAG] == study.data.tags[STUDY_TAG], name
    assert max(outside.values()) <= MAX_OUTSIDE_S * 1000, f"ms of a stage's call outside its run: {outside}"
    # The training (many seconds) has MLflow's system metrics, sampled while it ran.
    assert "system/cpu_utilization_percentage" in runs["org-n"].data.metrics
    assert "system/system_memory_usage_megabytes" in runs["org-n"].data.metrics
    tags = study.data.tags
    assert (tags["profile"], tags["code_revision"]) == (cfg.profile, runs["org-n"].data.tags["code_revision"])
    assert len(tags["params_hash"]) == 12 and study.info.status == "RUNNING"  # until the report

    # Up to date: no run opened. Then the report ends the study run with the headline numbers.
    for call in calls.values():
        call()
    assert len(stage_runs(cfg)) == len(runs)
    report.run(cfg)
    study = mlflow.MlflowClient(cfg.tracking.uri).get_run(study.info.run_id)
    assert study.info.status == "FINISHED"
    evaluated = [json.loads((cfg.paths.metrics / "eval" / f"org-n_on_{v}" / "metrics.json").read_text()) for v in VS]
    headline = {f"AP/org-n on {v}": e["AP"] for v, e in zip(VS, evaluated, strict=True) if not e["void"]}
    assert {k: v for k, v in study.data.metrics.items() if k.startswith("AP/")} == pytest.approx(headline)
    assert (study.data.metrics["evaluations"], study.data.metrics["void_evaluations"]) == (2, 2 - len(headline))
    (report_run,) = (run for run in stage_runs(cfg) if run.data.tags["stage"] == "report")
    assert report_run.data.tags[PARENT_TAG] == study.info.run_id and report_run.info.status == "FINISHED"


def test_a_failing_stage_ends_its_run_failed_with_the_error(
    served: Callable[..., Config], tiny_coco: Path, tmp_path: Path
) -> None:
    broken = Path(shutil.copytree(tiny_coco, tmp_path / "broken"))
    victim = sorted((broken / VAL).iterdir())[0]
    victim.write_bytes(b"not a jpeg")
    cfg = served(source=broken)
    with pytest.raises(anonymize.AnonymizeError, match=victim.name):
        anonymize.run(cfg, "blur", splits=[VAL])
    (run,) = (run for run in stage_runs(cfg) if run.data.tags["stage"] == "anonymize")
    assert run.info.status == "FAILED"
    assert run.data.tags["error"].startswith("AnonymizeError:") and victim.name in run.data.tags["error"]
    assert run.data.tags[PARENT_TAG] in {r.info.run_id for r in stage_runs(cfg)}
    text = mlflow.MlflowClient(cfg.tracking.uri).download_artifacts(run.info.run_id, "error.txt", str(tmp_path))
    assert "Traceback" in Path(text).read_text()


def test_a_killed_stage_rerun_continues_its_run(served: Callable[..., Config], tmp_path: Path) -> None:
    cfg = served()
    records = cfg.variant_root("pixelate") / "records" / TRAIN
    command = [sys.executable, "-m", "anonbench", "anonymize", "--method", "pixelate", "--split", TRAIN]
    command += ["--params", str(REPO / "params.yaml"), "--set", "workers=1", "--set", f"paths.data={cfg.paths.data}"]
    command += ["--set", f"tracking.uri={cfg.tracking.uri}", "--set", f"tracking.experiment={cfg.tracking.experiment}"]
    kill_when(command, tmp_path, lambda: len(list(records.glob("*.json"))) >= 5)
    total = len(json.loads(cfg.annotation_file("org", TRAIN).read_text())["images"])
    assert 5 <= len(list(records.glob("*.json"))) < total, "the stage was not killed mid-way"
    (killed,) = (run for run in stage_runs(cfg) if run.data.tags["stage"] == "anonymize")
    assert killed.info.status == "RUNNING"  # nobody ended it: the process was killed

    anonymize.run(cfg, "pixelate", splits=[TRAIN])
    (run,) = (run for run in stage_runs(cfg) if run.data.tags["stage"] == "anonymize")
    assert run.info.run_id == killed.info.run_id and run.info.status == "FINISHED"
    assert run.info.start_time == killed.info.start_time  # the run spans the killed attempt and the rerun
    assert run.data.metrics[f"{TRAIN}/images"] == total


def test_a_training_killed_before_its_first_checkpoint_starts_over_in_its_run(
    served: Callable[..., Config], tiny_coco: Path, tmp_path: Path
) -> None:
    cfg = served(*TINY_TRAIN, source=tiny_coco)
    export.run(cfg, "org")
    out = cfg.paths.models / "org-n"
    command = [sys.executable, "-m", "anonbench", "train", "--variant", "org", "--size", "n", "--params"]
    command += [str(REPO / "params.yaml")]
    for pair in (*(f"paths.{p}={getattr(cfg.paths, p)}" for p in ("data", "models", "metrics")), *TINY_TRAIN):
        command += ["--set", pair]
    command += ["--set", f"tracking.uri={cfg.tracking.uri}", "--set", f"tracking.experiment={cfg.tracking.experiment}"]
    kill_when(command, tmp_path, lambda: any(r.data.tags["stage"] == "train" for r in stage_runs(cfg)))
    assert not (out / "weights" / "last.pt").exists(), "killed too late: a checkpoint exists"

    (killed,) = (run for run in stage_runs(cfg) if run.data.tags["stage"] == "train")
    assert killed.info.status == "RUNNING"

    train.run(cfg, "org", "n")
    (run,) = (run for run in stage_runs(cfg) if run.data.tags["stage"] == "train")
    assert run.info.run_id == killed.info.run_id and run.info.status == "FINISHED"
    assert json.loads((out / "train.json").read_text())["mlflow_run_id"] == run.info.run_id
    history = mlflow.MlflowClient(cfg.tracking.uri).get_metric_history(run.info.run_id, "train/box_loss")
    assert [m.step for m in history] == [0]  # the one epoch, trained once
