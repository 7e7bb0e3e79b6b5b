"""The whole study pipeline under the KFP local runner on coco-mini, publishing to a real S3 store.

Every component runs for real (the SubprocessRunner, in this environment instead of the images),
and the publish tasks push to Ceph's RADOS Gateway (tests/pipeline/s3/start_rgw.sh). Only
Kubernetes is missing: its settings (GPUs, volumes, secrets, time limits), which the local
runner ignores, are checked on the compiled YAML in test_kfp_compile.py. The tests share one
run and build on it in order: the run itself, a resubmission of the finished run, a
resubmission after its last GPU result was lost, and a fresh clone that pulls what it published.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kfp import local

from anonbench.codebase import SOURCE_ROOT
from anonbench.config import load_config
from anonbench.stages.publish import IGNORE
from anonbench.workspace import STAMPS, needed_branches
from pipelines.settings import load_settings
from pipelines.study import build
from tests.pipeline.conftest import s3_bucket, s3_objects

REPO = Path(__file__).resolve().parents[2]
MODELS = ("org-n", "ft-neck")  # the Org model and its fine-tune on the anonymized subset
VARIANTS = ("org", "mask")
# Tasks that ask for a GPU on a cluster (pipelines/cluster.yaml: dp2, train, evaluate kinds).
GPU_TASKS = {"anonymize-shard", "train", "finetune", "evaluate", "drift"}
BUCKET = "anonbench-kfp"
RUN = "study-mini"  # the workspace folder's name: the run's name in the remote (runs/<run>/)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.s3,
    # The SubprocessRunner runs the components here, not in the images they name: that is the point.
    pytest.mark.filterwarnings("ignore:You may be attemping to run a task that uses custom:RuntimeWarning"),
]


@dataclass
class LocalStudy:
    """One workspace, the KFP local runner's folder, the S3 bucket, and a way to submit the study again."""

    workspace: Path
    root: Path
    bucket: Any
    env: dict[str, str]
    submit: Callable[[], Path]

    def ran(self, run: Path) -> list[tuple[str, Any]]:
        """Tasks one local run executed (a task that ran left its executor output): name, its output value."""
        tasks = []
        for output in sorted(run.rglob("executor_output.json")):
            name = output.parent.name.rstrip("-0123456789")
            tasks.append((name, json.loads(output.read_text()).get("parameterValues", {}).get("Output")))
        return tasks


def files(folder: Path) -> dict[str, bytes]:
    """Every file below ``folder``: relative path -> bytes."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def tiny_params(folder: Path) -> Path:
    """params.yaml with one method, one model, one freeze config and one-epoch 64 px trainings."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["anonymize"]["methods"] = ["mask"]
    params["train"].update(variants=["org"], epochs=1, imgsz=64)
    params["evaluate"]["variants"] = list(VARIANTS)
    params["finetune"].update(variant="mask", epochs=1, freeze={"neck": [11, 22]})
    params["report"].update(bootstrap_samples=20, cka_images=4)  # the debiased CKA needs at least 4
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory, coco_mini: Path, rgw: dict[str, str]) -> Iterator[LocalStudy]:
    tmp = tmp_path_factory.mktemp("kfp-local")
    params = tiny_params(tmp)
    overrides = [f"data.local_copy={coco_mini}", f"publish.remote=s3://{BUCKET}/dvc"]
    settings = load_settings()
    # One task at a time on the test machine's cores; a failure fails the test now, not after retries.
    no_retries = settings.retries.model_copy(update={"count": 0})
    settings = settings.model_copy(update={"parallelism": 1, "retries": no_retries})
    # The pipeline as `python -m pipelines.study` compiles it for these parameters: no DP2 branch.
    pipeline = build(settings, needed_branches(load_config(params, "mini", overrides)))
    workspace = tmp / RUN
    env = {key: rgw[key] for key in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}

    def submit() -> Path:
        local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp / "kfp-root"))
        before = set((tmp / "kfp-root").glob("*"))
        pipeline(workspace=str(workspace), profile="mini", overrides=overrides, params_file=str(params))
        (run,) = set((tmp / "kfp-root").glob("*")) - before
        return run

    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():  # the cluster's Secret anonbench-s3, as the tasks' environment
            patch.setenv(key, value)
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)  # each run logs to its workspace's store
        yield LocalStudy(workspace, tmp / "kfp-root", s3_bucket(rgw, BUCKET), env, submit)


@pytest.fixture(scope="module")
def first_run(study: LocalStudy) -> Path:
    return study.submit()


def test_study_pipeline_runs_locally_end_to_end(study: LocalStudy, first_run: Path) -> None:
    from mlflow import MlflowClient

    workspace = study.workspace
    expected = [
        "data/raw/coco-mini/annotations/instances_val2017.json",
        "data/prepared/val2017/stats.json",
        "data/variants/mask/annotations/instances_val2017.json",
        "data/variants/mask/coverage_val2017.json",
        "data/ssim/mask/summary.json",
        *(f"metrics/privacy/{variant}.json" for variant in VARIANTS),  # the privacy audit: org and every method
        *(f"data/privacy/{variant}/faces.parquet" for variant in VARIANTS),
        "data/yolo/org/dataset.yaml",
        "data/yolo/mask/dataset.yaml",
        "data/finetune_subset/summary.json",
        *(f"models/{model}/weights/best.pt" for model in MODELS),
        *(f"metrics/eval/{model}_on_{variant}/metrics.json" for model in MODELS for variant in VARIANTS),
        "metrics/drift/mask.json",
        "reports/study.md",
        "reports/study.html",
    ]
    assert [path for path in expected if not (workspace / path).is_file()] == []
    assert any((workspace / "data/relabel/mask").iterdir())
    assert Counter(name for name, _ in study.ran(first_run) if name in GPU_TASKS) == Counter(
        train=1,
        finetune=1,
        evaluate=len(MODELS),
        drift=1,  # one evaluate task per model, over both variants
    )

    client = MlflowClient(f"sqlite:///{workspace / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("anonbench-mini")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    assert all(run.info.status == "FINISHED" for run in runs)
    stages = Counter(run.data.tags["stage"] for run in runs)
    assert stages == Counter(
        anonymize=1,
        ssim=1,
        privacy=len(VARIANTS),  # org, the identity control, and mask
        train=1,
        finetune=1,
        evaluate=len(MODELS) * len(VARIANTS),
        relabel=1,
        drift=1,
        report=1,
        publish=4,  # source (hash only), prepared, the mask variant, models
        study=1,  # every task's run nests under it; the report ends it
    )
    (parent,) = (run.info.run_id for run in runs if run.data.tags["stage"] == "study")
    assert all(run.data.tags["mlflow.parentRunId"] == parent for run in runs if run.info.run_id != parent)
    evaluations = {run.data.tags["combination"] for run in runs if run.data.tags["stage"] == "evaluate"}
    assert "org on mask" in evaluations and all(run.data.tags["profile"] == "mini" for run in runs)


def test_every_mlflow_run_carries_code_image_and_data_lineage(study: LocalStudy, first_run: Path) -> None:
    from mlflow import MlflowClient

    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    source, prepared, mask = "data/raw/coco-mini", "data/prepared", "data/variants/mask"
    pointers = {
        path: yaml.safe_load((study.workspace / f"{path}.dvc").read_text())["outs"][0]["md5"]
        for path in (source, prepared, mask, "models")
    }
    variant = {"org": source, "mask": mask}
    published = {"source": source, "prepared": prepared, "mask": mask, "models": "models"}

    def read(tags: dict[str, str]) -> set[str]:
        """The published datasets a run read (the models are published last, after the report)."""
        match tags["stage"]:
            case "anonymize":
                return {source}
            case "ssim" | "drift":
                return {source, mask}
            case "privacy":  # the originals' faces, and the variant's images
                return {source, variant[tags["variant"]]}
            case "train":
                return {variant[tags["train_data"]]}
            case "finetune" | "relabel":
                return {mask}
            case "evaluate":
                return {variant[tags["eval_data"]]}
            case "report":  # all published then: the prepared statistics may be published after it
                return {source, mask} | ({prepared} & {key.removeprefix("dvc.") for key in tags})
        return {published[tags["target"]]}

    client = MlflowClient(f"sqlite:///{study.workspace / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("anonbench-mini")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id], "tags.stage != 'study'")  # the study run: no data of its own
    for run in runs:
        tags = run.data.tags
        assert tags["git_commit"] == commit, tags["stage"]
        assert tags["image"].startswith(("anonbench-cpu:", "anonbench-train:")), tags["stage"]
        # Each run names the published datasets it read, and only those.
        named = {key.removeprefix("dvc."): md5 for key, md5 in tags.items() if key.startswith("dvc.")}
        assert named == {path: pointers[path] for path in read(tags)}, tags["stage"]
        assert tags["dvc_revision"] not in ("", "none"), tags["stage"]
    trainings = [run for run in runs if run.data.tags["stage"] == "train"]
    assert trainings[0].data.tags["image"].startswith("anonbench-train:")


def test_the_run_shows_metrics_report_and_evaluation_matrix_in_the_kfp_ui(study: LocalStudy, first_run: Path) -> None:
    outputs = {
        path.parent.relative_to(first_run).as_posix(): json.loads(path.read_text())
        for path in first_run.rglob("executor_output.json")
    }
    evaluations = [doc for task, doc in outputs.items() if task.split("/")[-1].startswith("evaluate")]
    assert len(evaluations) == len(MODELS)
    for doc in evaluations:
        (metrics,) = doc["artifacts"]["metrics"]["artifacts"]
        numbers = metrics["metadata"]
        for variant in VARIANTS:  # one task per model: its numbers by evaluation variant
            assert numbers[f"{variant}/metrics/images"] == 50.0
            # A model that detected nothing shows no AP at all, never 0.
            assert (f"{variant}/metrics/AP" in numbers) == (numbers[f"{variant}/metrics/predictions"] > 0)
    (ssim,) = [doc for task, doc in outputs.items() if task.endswith("/ssim")]
    assert any(key.startswith("summary/") for key in ssim["artifacts"]["metrics"]["artifacts"][0]["metadata"])

    report = first_run / "report"
    assert (report / "html").read_bytes() == (study.workspace / "reports/study.html").read_bytes()
    assert (report / "markdown").read_bytes() == (study.workspace / "reports/study.md").read_bytes()
    matrix = (report / "matrix").read_text()
    assert "| model | org | mask |" in matrix
    assert {
        line.split(" | ")[0].strip("| ")
        for line in matrix.splitlines()
        if line.startswith("| ") and "model" not in line
    } == set(MODELS)


def test_resubmitting_a_finished_run_schedules_no_gpu_task_and_uploads_nothing(
    study: LocalStudy, first_run: Path
) -> None:
    stored = s3_objects(study.bucket)
    assert any(key.startswith(f"dvc/runs/{RUN}/") for key in stored)

    again = study.submit()

    assert {name for name, _ in study.ran(again)} & GPU_TASKS == set()
    assert {name for name, _ in study.ran(again)} >= {"plan", "publish", "report"}  # the CPU tasks still run
    assert s3_objects(study.bucket) == stored  # the second publish uploaded nothing


def test_resubmitting_a_half_finished_run_reruns_only_the_missing_gpu_work(study: LocalStudy, first_run: Path) -> None:
    # As if the first run had been cut off during its last evaluation.
    shutil.rmtree(study.workspace / "metrics/eval/ft-neck_on_mask")
    others = ("org-n_on_mask", "ft-neck_on_org")  # the same model on the other variant is not redone either
    kept = {name: (study.workspace / f"metrics/eval/{name}/metrics.json").stat().st_mtime_ns for name in others}

    again = study.submit()

    assert [(name, output) for name, output in study.ran(again) if name in GPU_TASKS] == [("evaluate", "metrics/eval")]
    assert (study.workspace / "metrics/eval/ft-neck_on_mask/metrics.json").is_file()
    assert {name: (study.workspace / f"metrics/eval/{name}/metrics.json").stat().st_mtime_ns for name in others} == kept


def test_a_fix_in_the_report_code_reruns_the_report_and_no_training_or_evaluation(
    study: LocalStudy, first_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A new image whose only change is in the report: here, the tasks import a copy of the code with it.
    code = tmp_path / "src"
    shutil.copytree(SOURCE_ROOT / "anonbench", code / "anonbench", ignore=shutil.ignore_patterns("__pycache__"))
    report = code / "anonbench/stages/report.py"
    report.write_text(report.read_text() + "# a fix in the report\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(code), os.environ.get("PYTHONPATH", "")]))

    def tokens() -> dict[str, str]:
        return {p.name: json.loads(p.read_text())["token"] for p in (study.workspace / STAMPS).glob("*.json")}

    before = tokens()
    again = study.submit()

    assert {name for name, _ in study.ran(again)} & GPU_TASKS == set()
    after = tokens()
    assert sorted(name.split("@")[0] for name in after if after[name] != before.get(name)) == ["report"]


def test_a_fresh_clone_pulls_the_published_variant_byte_identical(
    study: LocalStudy, first_run: Path, tmp_path: Path
) -> None:
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    env = {**os.environ, **study.env, "DVC_NO_ANALYTICS": "1"}
    bin_dir = Path(sys.executable).parent
    # The documented set-up of the committed `s3` remote (README.md), then the one command.
    for key, value in (("url", f"s3://{BUCKET}/dvc"), ("endpointurl", study.env["AWS_ENDPOINT_URL"])):
        subprocess.run(
            [bin_dir / "dvc", "remote", "modify", "--local", "s3", key, value], cwd=clone, env=env, check=True
        )
    result = subprocess.run(
        [bin_dir / "anonbench", "pull", RUN, "mask"], cwd=clone, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr

    pulled = clone / "published" / RUN / "mask"
    assert result.stdout.strip() == f"wrote {pulled.relative_to(clone)}"
    # The variant as the run wrote it, less its resume records and timings (publish.IGNORE, they hold seconds).
    assert {"**/variants/*/records/", "**/variants/*/timings_*.json"} <= set(IGNORE)
    expected = {
        name: data
        for name, data in files(study.workspace / "data/variants/mask").items()
        if not name.startswith(("records/", "timings_"))
    }
    assert len(expected) > 200  # images and masks of both splits, annotations, manifests, coverage
    assert files(pulled) == expected
    # Only the pointer is for git; the data folder beside it is ignored.
    status = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=all"], cwd=clone, capture_output=True, text=True
    ).stdout
    assert status.split() == ["??", f"published/{RUN}/mask.dvc"]
