"""The MLflow pieces a user meets first: the experiment's kind and view, registry names, data digests, links."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from urllib.parse import unquote

import mlflow
import pytest

from anonbench.config import Config
from anonbench.registry import dataset_digest, link_evaluation, model_name
from anonbench.study import RunLinks
from anonbench.tracking import ensure_experiment
from anonbench.tracking_ui import COLUMNS, KIND_TAG, MODEL_TRAINING, VIEW_KEY, VIEW_TAG_PREFIX, compare_url, runs_url

LOCK = """schema: '2.0'
stages:
  export@blur:
    cmd: anonbench export --variant blur
    outs:
    - path: data/yolo/blur
      hash: md5
      md5: 0123456789abcdef0123456789abcdef.dir
"""


def test_the_experiment_is_model_training_with_the_default_view(
    make_config: Callable[..., Config], mlflow_db: Path
) -> None:
    cfg = make_config()
    mlflow.set_tracking_uri(cfg.tracking.uri)
    mlflow.create_experiment(cfg.tracking.experiment)  # made by an earlier anonbench, without the tags
    ensure_experiment(cfg)
    tags = mlflow.get_experiment_by_name(cfg.tracking.experiment).tags
    assert tags[KIND_TAG] == MODEL_TRAINING
    view = json.loads(tags[VIEW_TAG_PREFIX + VIEW_KEY])
    assert view["selectedColumns"] == list(COLUMNS)
    assert [c.split("`")[1] for c in COLUMNS] == [
        "coco/AP", "coco/AP50", "stage", "model_id", "train_data", "eval_data", "void"
    ]  # fmt: skip


def test_registered_model_names_tell_family_size_and_training() -> None:
    assert model_name({"model_size": "m", "train_data": "org"}) == "anonbench-yolov10-m-org"
    ft = {"model_size": "n", "train_data": "blur", "freeze": "backbone", "base_model": "org-n"}
    assert model_name(ft) == "anonbench-yolov10-n-blur-ft-backbone"


def test_the_dataset_digest_comes_from_dvc_lock_or_is_unknown(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dvc.lock").write_text(LOCK)
    assert dataset_digest(Path("data/yolo/blur")) == "0123456789abcdef0123456789abcdef.dir"
    assert dataset_digest(tmp_path / "data" / "yolo" / "blur") == "0123456789abcdef0123456789abcdef.dir"
    assert dataset_digest(Path("data/yolo/mask")) == "unknown"
    assert dataset_digest(Path("/elsewhere/data/yolo/blur")) == "unknown"


def test_links_open_the_runs_table_and_the_compare_view() -> None:
    assert runs_url("http://ui:5000/", "3") == (
        "http://ui:5000/#/experiments/3/runs?workflowType=machine_learning&viewStateShareKey=anonbench"
    )
    url = compare_url("http://ui:5000", ["a1", "b2"], ["3"])
    assert unquote(url) == 'http://ui:5000/#/compare-runs?runs=["a1","b2"]&experiments=["3"]'


def test_a_section_compare_link_names_exactly_its_runs_in_the_store(
    make_config: Callable[..., Config], mlflow_db: Path
) -> None:
    cfg = make_config()
    client = mlflow.MlflowClient(cfg.tracking.uri)
    experiment = client.create_experiment(cfg.tracking.experiment)
    first, second, other = (client.create_run(experiment).info.run_id for _ in range(3))
    links = RunLinks(cfg)
    links.text("1.0", other)
    links.section = []  # a new section starts
    for run_id in (second, first, second, "not-in-the-store"):
        links.text("x", run_id)
    link = links.compare()
    assert link is not None and link.startswith("[Compare these 2 runs in MLflow](")
    assert unquote(link).endswith(f'#/compare-runs?runs=["{second}","{first}"]&experiments=["{experiment}"])')
    links.text("y", first)
    assert links.compare() is None, "one run is nothing to compare"


def test_an_evaluation_of_weights_the_store_has_not_registered_is_left_unlinked(
    make_config: Callable[..., Config], mlflow_db: Path
) -> None:
    cfg = make_config()
    client = mlflow.MlflowClient(cfg.tracking.uri)
    run_id = client.create_run(client.create_experiment(cfg.tracking.experiment)).info.run_id
    mlflow.set_tracking_uri(cfg.tracking.uri)
    assert not link_evaluation({"name": "anonbench-yolov10-n-org", "version": "1"}, "org", run_id)
    assert "registered_model" not in client.get_run(run_id).data.tags
    client.create_registered_model("anonbench-yolov10-n-org")
    client.create_model_version("anonbench-yolov10-n-org", source="file:///nowhere/weights", run_id=run_id)
    assert link_evaluation({"name": "anonbench-yolov10-n-org", "version": "1"}, "org", run_id)
    assert client.get_run(run_id).data.tags["registered_model"] == "anonbench-yolov10-n-org/1"
    assert client.get_model_version("anonbench-yolov10-n-org", "1").tags == {"eval.org": run_id}
