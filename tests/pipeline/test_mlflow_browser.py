"""The MLflow UI as a user meets it: a real ``mlflow server`` on a study's store, looked at in headless chromium.

The store is the synthetic study's (tests/report_study.py) with one real evaluate run per evaluation,
logged through ``anonbench.tracking`` as the evaluate stage logs them; the report is rebuilt on it with
``report.tracking_ui`` pointing at the server. Checked by what the pages show: the address ``anonbench
tracking-url`` prints opens the runs table (Model training) with the documented columns, and a question's
"compare in MLflow" link opens the compare view on exactly the runs that question cites. Screenshots are
kept under ``build/test-artifacts/mlflow/`` (git-ignored).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import unquote

import mlflow
import pytest
from typer.testing import CliRunner

from anonbench.cli import app
from anonbench.config import Config
from anonbench.stages import report
from anonbench.tracking import mlflow_run
from anonbench.tracking_ui import COLUMNS
from tests.conftest import PARAMS
from tests.pipeline.conftest import free_port, mlflow_server
from tests.report_study import copy_study

pytestmark = pytest.mark.browser

ARTIFACTS = Path(__file__).resolve().parents[2] / "build" / "test-artifacts" / "mlflow"
WINDOW = "--window-size=1800,1000"
PAGE_TIME = "--virtual-time-budget=20000"  # the UI's requests to the server finish inside it
COMPARE_LINK = re.compile(r"\[Compare these (\d+) runs in MLflow\]\((\S+)\)")
RUN_LINK = re.compile(r"#/experiments/\d+/runs/([0-9a-f]{32})\)")


def log_evaluations(cfg: Config) -> None:
    """One evaluate run per evaluation of the study, as the stage logs it; its metrics.json then names it."""
    for metrics_file in sorted((cfg.paths.metrics / "eval").glob("*/metrics.json")):
        metrics = json.loads(metrics_file.read_text())
        tags = {key: metrics[key] for key in ("model_id", "train_data", "eval_data")}
        name = f"{metrics['model_id']} on {metrics['eval_data']}"
        with mlflow_run(cfg, name, "evaluate", {**tags, "void": str(metrics["void"]).lower()}, reads=None) as run:
            if not metrics["void"]:
                mlflow.log_metrics({"coco/AP": metrics["AP"], "coco/AP50": metrics["AP50"]})
        metrics_file.write_text(json.dumps({**metrics, "mlflow_run_id": run.info.run_id}))


@pytest.fixture(scope="module")
def served_study(
    built_report: tuple[Config, list[Path]], tmp_path_factory: pytest.TempPathFactory, coco_mini: Path, tiny_coco: Path
) -> Iterator[tuple[Config, str]]:
    """The synthetic study with real evaluate runs, its report rebuilt, and an MLflow server on its store."""
    root = tmp_path_factory.mktemp("served") / "study"
    port = free_port()
    ui = f"http://127.0.0.1:{port}"
    cfg = copy_study(built_report[0], root, coco_mini, tiny_coco, f"report.tracking_ui={ui}")
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)  # an earlier test's store would win over tracking.uri
        log_evaluations(cfg)
        report.run(cfg)
    with mlflow_server(cfg.tracking.uri, root, port=port):
        yield cfg, ui


def look(chromium: Callable[..., str], url: str, name: str) -> str:
    """The page's DOM once the UI has loaded, and its screenshot kept as ``<name>.png``."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    chromium(WINDOW, PAGE_TIME, f"--screenshot={ARTIFACTS / name}.png", url)
    return chromium(WINDOW, PAGE_TIME, "--dump-dom", url)


def test_the_printed_address_opens_the_runs_table_with_the_documented_columns(
    served_study: tuple[Config, str], chromium: Callable[..., str]
) -> None:
    cfg, ui = served_study
    sets = [f"tracking.uri={cfg.tracking.uri}", f"report.tracking_ui={ui}"]
    printed = CliRunner().invoke(
        app, ["tracking-url", "--params", str(PARAMS), *(a for s in sets for a in ("--set", s))]
    )
    assert printed.exit_code == 0, printed.output
    dom = look(chromium, printed.output.strip(), "runs-table")
    shown = re.findall(r'role="columnheader"[^>]*col-id="([^"]+)"', dom)
    assert [column for column in shown if column in COLUMNS] == list(COLUMNS), shown
    assert "Model registry" in dom and "Judges" not in dom, "the Model training side bar, not the GenAI one"
    # Stage runs nest under their study's run (the table lists study runs, each expandable), all counted.
    client = mlflow.MlflowClient(cfg.tracking.uri)
    experiment = client.get_experiment_by_name(cfg.tracking.experiment)
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    studies = [run for run in runs if run.data.tags.get("stage") == "study"]
    assert studies and all(run.info.run_name in dom for run in studies), "the study runs are listed"
    text = re.sub(r"<!--.*?-->|<[^>]+>", "", dom)  # what the page reads as, React's text-node markers left out
    assert f"{len(runs)} matching runs" in text, "every run, the nested evaluate runs included, is counted"


def test_a_question_compare_link_opens_the_compare_view_on_its_runs(
    served_study: tuple[Config, str], chromium: Callable[..., str]
) -> None:
    cfg, _ = served_study
    study = (cfg.paths.reports / "study.md").read_text()
    q1 = study[study.index("## Q1") :]
    found = COMPARE_LINK.search(q1)
    assert found, "Q1 ends with a compare link"
    cited = list(dict.fromkeys(RUN_LINK.findall(q1[: found.start()])))
    url = found.group(2)
    runs = json.loads(unquote(url).split("runs=", 1)[1].split("&", 1)[0])
    assert runs == cited and int(found.group(1)) == len(cited) >= 4, "exactly the runs Q1 cites"
    assert "compare-runs" in (cfg.paths.reports / "study.html").read_text(), "the HTML report carries it too"

    dom = look(chromium, url, "compare-q1")
    assert f"Comparing {len(runs)} Runs from 1 Experiment" in dom
    client = mlflow.MlflowClient(cfg.tracking.uri)
    names = [client.get_run(run_id).info.run_name for run_id in runs]
    assert all(run_id in dom for run_id in runs) and all(f">{name}<" in dom for name in names), names
