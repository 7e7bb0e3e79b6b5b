"""The KFP run workspace: resolved parameters, the fan-out grids, stages run by reference."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from anonbench.config import ConfigError, load_config
from anonbench.workspace import PARAMS, WorkspaceError, grid, prepare, run_stage

REPO = Path(__file__).resolve().parents[2]
PARAMS_FILE = REPO / "params.yaml"


def test_prepare_writes_the_resolved_profile_as_a_plain_params_file(tmp_path: Path) -> None:
    written = prepare(tmp_path, PARAMS_FILE, "paper", ["train.epochs=7"])

    raw = yaml.safe_load(written.read_text())
    assert raw["profile"] == "paper" and raw["profiles"] == {"paper": {}}
    assert raw["train"]["sizes"] == ["n", "s", "m", "l", "x"] and raw["train"]["epochs"] == 7
    cfg = load_config(written)  # no profile or override needed any more
    assert cfg.train.epochs == 7 and cfg.data.source == "coco2017"
    assert (tmp_path / "mlflow.db").is_file()  # the store the stages use, made before they race for it


def test_prepare_resumes_the_same_parameters_and_refuses_others(tmp_path: Path) -> None:
    first = prepare(tmp_path, PARAMS_FILE, "mini", ["train.epochs=1"]).read_bytes()
    assert prepare(tmp_path, PARAMS_FILE, "mini", ["train.epochs=1"]).read_bytes() == first
    with pytest.raises(WorkspaceError, match="other parameters"):
        prepare(tmp_path, PARAMS_FILE, "mini", ["train.epochs=2"])
    assert (tmp_path / PARAMS).read_bytes() == first


def test_prepare_rejects_invalid_parameters_before_any_task_runs(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"train\.batch"):
        prepare(tmp_path, PARAMS_FILE, None, ["train.batch=0"])
    assert not (tmp_path / PARAMS).exists()


def test_grid_fans_out_the_configured_study() -> None:
    cfg = load_config(PARAMS_FILE, overrides=["train.sizes=[n,s]", "train.variants=[org,mask]"])

    assert grid(cfg, "anonymize_classic") == ["blur", "pixelate", "mask"]
    assert grid(cfg, "anonymize_dp2") == []
    assert grid(cfg, "train") == [
        {"variant": "org", "size": "n"},
        {"variant": "org", "size": "s"},
        {"variant": "mask", "size": "n"},
        {"variant": "mask", "size": "s"},
    ]
    evaluations = grid(cfg, "evaluate_trained")
    assert len(evaluations) == 4 * len(cfg.evaluate.variants)
    assert {"model": "mask-s", "on": "blur"} in evaluations
    assert grid(cfg, "evaluate_finetuned")[0] == {"model": f"ft-{next(iter(cfg.finetune.freeze))}", "on": "org"}
    assert grid(cfg, "export") == ["org", *cfg.anonymize.methods]
    assert grid(cfg, "relabel") == grid(cfg, "drift") == cfg.anonymize.methods
    with pytest.raises(KeyError, match="unknown grid axis"):
        grid(cfg, "sizes")


def test_grid_sends_deepprivacy2_methods_to_their_own_image() -> None:
    paper = load_config(PARAMS_FILE, profile="paper")
    assert grid(paper, "anonymize_dp2") == ["dp2_fullbody"]
    assert "dp2_fullbody" not in grid(paper, "anonymize_classic")
    detector = load_config(PARAMS_FILE, overrides=["anonymize.mask_source=detector"])
    assert grid(detector, "anonymize_classic") == []  # DP2's detector runs only in the DP2 image


def test_run_stage_runs_the_cli_in_the_workspace_and_returns_what_it_wrote(tmp_path: Path, coco_mini: Path) -> None:
    prepare(tmp_path, PARAMS_FILE, None, [f"data.local_copy={coco_mini}"])

    assert run_stage(tmp_path, "fetch") == "data/raw/coco-mini"
    assert (tmp_path / "data/raw/coco-mini/annotations/instances_val2017.json").is_file()


def test_run_stage_fails_loudly_when_the_stage_fails(tmp_path: Path) -> None:
    prepare(tmp_path, PARAMS_FILE, None, [])
    with pytest.raises(WorkspaceError, match="anonbench anonymize --method nope failed"):
        run_stage(tmp_path, "anonymize", "--method", "nope")


def test_kfp_grid_and_dvc_matrix_agree_on_the_default_study() -> None:
    cfg = load_config(PARAMS_FILE)
    listed = subprocess.run(
        [str(Path(sys.executable).with_name("dvc")), "stage", "list", "--name-only"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        env={"DVC_NO_ANALYTICS": "1", "PATH": "/usr/bin:/bin"},
    ).stdout.split()
    kfp = ["fetch", "prepare"]
    kfp += [f"{stage}@{m}" for stage in ("anonymize", "ssim") for m in grid(cfg, "anonymize_classic")]
    kfp += [f"export@{v}" if v != "org" else "export-org" for v in grid(cfg, "export")]
    kfp += [f"train@{c['variant']}-{c['size']}" for c in grid(cfg, "train")]
    kfp += [f"finetune@{name}" for name in grid(cfg, "finetune")]
    kfp += [f"evaluate@{c['model']}-{c['on']}" for c in grid(cfg, "evaluate_trained")]
    kfp += [f"evaluate-ft@{c['model'].removeprefix('ft-')}-{c['on']}" for c in grid(cfg, "evaluate_finetuned")]
    kfp += [f"{stage}@{m}" for stage in ("relabel", "drift") for m in grid(cfg, stage)]
    kfp += ["report"]

    assert grid(cfg, "anonymize_dp2") == []
    assert sorted(listed) == sorted(kfp)
