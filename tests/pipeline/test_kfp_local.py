"""The whole study pipeline under the KFP local runner on coco-mini, with tiny settings.

Every component runs for real (SubprocessRunner in this environment instead of the images);
only the Kubernetes settings (GPUs, volumes, secrets), which the local runner ignores, are
left to tests/pipeline/test_kfp_compile.py.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import yaml
from kfp import local

from pipelines.settings import load_settings
from pipelines.study import build

REPO = Path(__file__).resolve().parents[2]
MODELS = ("org-n", "ft-neck")  # the Org model and its fine-tune on the anonymized subset
VARIANTS = ("org", "mask")


@pytest.fixture
def tiny_study(tmp_path: Path) -> Path:
    """params.yaml with one method, one model, one freeze config and one-epoch 64 px trainings."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["anonymize"]["methods"] = ["mask"]
    params["train"].update(variants=["org"], epochs=1, imgsz=64)
    params["evaluate"]["variants"] = list(VARIANTS)
    params["finetune"].update(variant="mask", epochs=1, freeze={"neck": [11, 22]})
    params["report"].update(bootstrap_samples=20, cka_images=4)  # the debiased CKA needs at least 4
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


@pytest.mark.slow
def test_study_pipeline_runs_locally_end_to_end(tmp_path: Path, tiny_study: Path, coco_mini: Path) -> None:
    from mlflow import MlflowClient

    workspace = tmp_path / "workspace"
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "kfp-root"))
    settings = load_settings()
    # One task at a time on the test machine's cores; a failure fails the test now, not after retries;
    # no DeepPrivacy2 branch (not installable here, and the local runner cannot join an empty fan-out).
    no_retries = settings.retries.model_copy(update={"count": 0})
    study = build(settings.model_copy(update={"parallelism": 1, "retries": no_retries, "deepprivacy2": False}))

    study(
        workspace=str(workspace),
        profile="mini",
        overrides=[f"data.local_copy={coco_mini}"],
        params_file=str(tiny_study),
        download=False,
    )

    expected = [
        "data/raw/coco-mini/annotations/instances_val2017.json",
        "data/prepared/val2017/stats.json",
        "data/variants/mask/annotations/instances_val2017.json",
        "data/variants/mask/coverage_val2017.json",
        "data/ssim/mask/summary.json",
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

    client = MlflowClient(f"sqlite:///{workspace / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("anonbench-mini")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    assert all(run.info.status == "FINISHED" for run in runs)
    stages = Counter(run.data.tags["stage"] for run in runs)
    assert stages == Counter(
        anonymize=1, ssim=1, train=1, finetune=1, evaluate=len(MODELS) * len(VARIANTS), relabel=1, drift=1, report=1
    )
    evaluations = {run.data.tags["combination"] for run in runs if run.data.tags["stage"] == "evaluate"}
    assert "org on mask" in evaluations and all(run.data.tags["profile"] == "mini" for run in runs)
