"""The KFP run workspace: resolved parameters, the fan-out grids, stages run by reference, its stamps."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from anonbench import workspace
from anonbench.config import ConfigError, load_config
from anonbench.workspace import (
    DONE,
    PARAMS,
    RUN,
    WorkspaceError,
    check_branches,
    check_publish,
    commands,
    grid,
    is_current,
    needed_branches,
    pending,
    prepare,
    run_stage,
    stage_metrics,
    upstream,
)

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
        {"variant": "org", "family": "yolov10", "size": "n"},
        {"variant": "org", "family": "yolov10", "size": "s"},
        {"variant": "mask", "family": "yolov10", "size": "n"},
        {"variant": "mask", "family": "yolov10", "size": "s"},
    ]
    assert grid(cfg, "evaluate_trained") == [{"model": m} for m in ("org-n", "org-s", "mask-n", "mask-s")]
    families = load_config(PARAMS_FILE, overrides=["train.variants=[org]", "train.families=[yolov10,yolov8]"])
    assert grid(families, "train")[1] == {"variant": "org", "family": "yolov8", "size": "n"}
    assert grid(families, "evaluate_trained") == [{"model": "org-n"}, {"model": "org-yolov8-n"}]
    # An evaluation reads the training of its own family only.
    assert upstream(families, "evaluate", {"model": "org-yolov8-n", "on": "org"})[0] == (
        "train",
        {"variant": "org", "family": "yolov8", "size": "n"},
    )
    assert upstream(families, "evaluate", {"model": "org-n", "on": "org"})[0][1]["family"] == "yolov10"
    assert grid(cfg, "evaluate_finetuned")[0] == {"model": f"ft-{next(iter(cfg.finetune.freeze))}"}
    assert commands(cfg, "evaluate", ["--model", "mask-s"])[1] == ["--model", "mask-s", "--on", "blur"]
    assert commands(cfg, "evaluate", ["--model", "org-n", "--on", "org"]) == [["--model", "org-n", "--on", "org"]]
    assert grid(cfg, "export") == ["org", *cfg.anonymize.methods]
    assert grid(cfg, "finetune") == [{"freeze": name} for name in cfg.finetune.freeze]
    assert grid(cfg, "relabel") == [cell["variant"] for cell in grid(cfg, "drift")] == cfg.anonymize.methods
    with pytest.raises(KeyError, match="unknown grid axis"):
        grid(cfg, "sizes")


def test_grid_sends_deepprivacy2_methods_to_their_own_image_in_shards() -> None:
    paper = load_config(PARAMS_FILE, profile="paper")
    assert grid(paper, "anonymize_dp2") == ["dp2_fullbody"]
    assert grid(paper, "dp2_shards", 2) == [
        {"method": "dp2_fullbody", "shard": "0/2"},
        {"method": "dp2_fullbody", "shard": "1/2"},
    ]
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
    kfp += [f"finetune@{cell['freeze']}" for cell in grid(cfg, "finetune")]
    on = cfg.evaluate.variants
    kfp += [f"evaluate@{c['model']}-{v}" for c in grid(cfg, "evaluate_trained") for v in on]
    kfp += [f"evaluate-ft@{c['model'].removeprefix('ft-')}-{v}" for c in grid(cfg, "evaluate_finetuned") for v in on]
    kfp += [f"relabel@{m}" for m in grid(cfg, "relabel")] + [f"drift@{c['variant']}" for c in grid(cfg, "drift")]
    kfp += ["privacy-org"] + [f"privacy@{m}" for m in grid(cfg, "anonymize_classic")]  # in each method's fan-out
    kfp += ["report"]

    assert grid(cfg, "anonymize_dp2") == []
    assert sorted(listed) == sorted(kfp)


def test_the_pipeline_compiles_only_the_fan_outs_a_run_needs_and_plan_refuses_others(tmp_path: Path) -> None:
    mini, paper = load_config(PARAMS_FILE), load_config(PARAMS_FILE, profile="paper")
    assert needed_branches(mini) == ["anonymize_classic", "finetune"]
    assert needed_branches(paper) == ["anonymize_classic", "anonymize_dp2", "finetune"]
    check_branches(paper, ["anonymize_dp2", "anonymize_classic", "finetune"])
    with pytest.raises(WorkspaceError, match="compiled with the fan-outs"):
        check_branches(paper, needed_branches(mini))  # a mini pipeline submitted with the paper profile
    shuffle = "anonymize.containers={shuffle: {image: anonbench-shuffle:0.1.0, command: [python3, shuffle.py]}}"
    with_shuffle = load_config(PARAMS_FILE, None, [shuffle, "anonymize.methods=[blur,pixelate,mask,shuffle]"])
    assert needed_branches(with_shuffle) == ["anonymize_classic", "finetune", "container:shuffle"]
    with pytest.raises(WorkspaceError, match="compiled with the fan-outs"):
        check_branches(with_shuffle, needed_branches(mini))  # its image and command are not in that pipeline
    with pytest.raises(WorkspaceError, match="no DVC remote"):
        check_publish(mini)
    check_publish(load_config(PARAMS_FILE, overrides=["publish.remote=s3://bucket/prefix"]))


@pytest.fixture
def fake_stage(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Stages replaced by a small script: it logs each call, writes ``out/<stage and options>.txt``, exits as told.

    The script's exit: ``ok`` (0), ``fail`` (status 1) or ``kill`` (killed by SIGKILL, like the OOM killer).
    """
    calls = tmp_path / "calls.txt"
    script = (
        "import os, signal, sys, pathlib\n"
        "stage, how = sys.argv[1], pathlib.Path('how').read_text().strip()\n"
        "name = '-'.join(sys.argv[1:])\n"
        f"open({str(calls)!r}, 'a').write(stage + '\\n')\n"
        "if how == 'kill': os.kill(os.getpid(), signal.SIGKILL)\n"
        "if how == 'fail': sys.exit(1)\n"
        "pathlib.Path('out').mkdir(exist_ok=True)\n"
        "pathlib.Path('out', name + '.txt').write_text(name)\n"
        "print('wrote out/' + name + '.txt')\n"
    )
    monkeypatch.setattr(workspace, "stage_command", lambda stage, *args: [sys.executable, "-c", script, stage, *args])
    prepare(tmp_path, PARAMS_FILE, None, [])
    (tmp_path / "how").write_text("ok")
    return calls


def test_a_finished_stage_is_not_run_again_until_its_output_or_its_input_changes(
    tmp_path: Path, fake_stage: Path
) -> None:
    assert run_stage(tmp_path, "fetch") == "out/fetch.txt"
    assert run_stage(tmp_path, "prepare") == "out/prepare.txt"
    assert is_current(tmp_path, "fetch") and is_current(tmp_path, "prepare")

    assert run_stage(tmp_path, "prepare") == "out/prepare.txt"  # current: not run
    assert fake_stage.read_text().split() == ["fetch", "prepare"]

    (tmp_path / "out/prepare.txt").write_text("changed by hand")  # its output changed
    assert not is_current(tmp_path, "prepare")
    run_stage(tmp_path, "prepare")
    assert is_current(tmp_path, "prepare")

    (tmp_path / "out/fetch.txt").unlink()  # its input is gone: fetch reruns, then prepare, which reads it
    assert not is_current(tmp_path, "fetch") and is_current(tmp_path, "prepare")
    run_stage(tmp_path, "fetch")
    assert not is_current(tmp_path, "prepare")
    assert fake_stage.read_text().split() == ["fetch", "prepare", "prepare", "fetch"]
    assert run_stage(tmp_path, "fetch", "--download") == "out/fetch.txt"  # --download changes no output
    assert fake_stage.read_text().split()[-1] == "fetch" and len(fake_stage.read_text().split()) == 4


def test_stamps_follow_the_study_data_order_cell_by_cell(tmp_path: Path, fake_stage: Path) -> None:
    for stage, *args in (
        ("prepare",),
        ("anonymize", "--method", "mask"),
        ("anonymize", "--method", "blur"),
        ("export", "--variant", "mask"),
        ("export", "--variant", "blur"),
        ("train", "--variant", "mask", "--family", "yolov10", "--size", "n"),
        ("train", "--variant", "blur", "--family", "yolov10", "--size", "n"),
    ):
        run_stage(tmp_path, stage, *args)
    cells = [{"variant": v, "family": "yolov10", "size": "n"} for v in ("mask", "blur")]
    assert [c["todo"] for c in pending(tmp_path, "train", cells)] == [DONE, DONE]

    run_stage(tmp_path, "export", "--variant", "mask")  # current: not run, nothing changes
    assert [c["todo"] for c in pending(tmp_path, "train", cells)] == [DONE, DONE]
    (tmp_path / "out/anonymize---method-mask.txt").unlink()  # the mask variant is lost and made again
    run_stage(tmp_path, "anonymize", "--method", "mask")
    assert not is_current(tmp_path, "export", "--variant", "mask")
    assert is_current(tmp_path, "export", "--variant", "blur")
    run_stage(tmp_path, "export", "--variant", "mask")
    assert [c["todo"] for c in pending(tmp_path, "train", cells)] == [RUN, DONE]
    assert pending(tmp_path, "train", cells)[0] == {"variant": "mask", "family": "yolov10", "size": "n", "todo": RUN}


def test_a_privacy_audit_reads_its_variant_and_the_report_reads_every_audit(
    tmp_path: Path, fake_stage: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    code = workspace.stage_code_digest  # the privacy stage is its own branch's (issue 22): its code is faked here
    monkeypatch.setattr(workspace, "stage_code_digest", lambda stage: "audit" if stage == "privacy" else code(stage))
    for stage, *args in (
        ("prepare",),
        ("anonymize", "--method", "mask"),
        ("privacy", "--variant", "org"),
        ("privacy", "--variant", "mask"),
        ("report",),
    ):
        run_stage(tmp_path, stage, *args)
    assert is_current(tmp_path, "report")
    (tmp_path / "out/privacy---variant-org.txt").write_text("lost")  # an audit done again: the report reads it
    run_stage(tmp_path, "privacy", "--variant", "org")
    assert not is_current(tmp_path, "report")
    (tmp_path / "out/anonymize---method-mask.txt").unlink()  # the mask variant is lost and made again
    run_stage(tmp_path, "anonymize", "--method", "mask")
    assert not is_current(tmp_path, "privacy", "--variant", "mask")
    assert is_current(tmp_path, "privacy", "--variant", "org")  # the originals did not change
    assert fake_stage.read_text().split().count("privacy") == 3


def test_other_code_of_the_stage_or_another_remote_make_work_stale(
    tmp_path: Path, fake_stage: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_stage(tmp_path, "fetch")
    run_stage(tmp_path, "publish", "--target", "source")
    assert is_current(tmp_path, "fetch") and is_current(tmp_path, "publish", "--target", "source")
    monkeypatch.setenv("ANONBENCH_DVC_REMOTE", "s3://another-store/anonbench")  # publishing elsewhere is new work
    assert is_current(tmp_path, "fetch") and not is_current(tmp_path, "publish", "--target", "source")
    monkeypatch.setenv("ANONBENCH_IMAGE_REVISION", "0.1.0-abcdef1")  # another image, the same code of fetch
    assert is_current(tmp_path, "fetch")
    code = workspace.stage_code_digest
    monkeypatch.setattr(workspace, "stage_code_digest", lambda stage: "fixed" if stage == "fetch" else code(stage))
    assert not is_current(tmp_path, "fetch")  # fetch's own code changed


def test_a_deterministic_failure_is_not_repeated_by_a_retry_but_a_kill_is(tmp_path: Path, fake_stage: Path) -> None:
    (tmp_path / "how").write_text("fail")
    with pytest.raises(WorkspaceError, match="failed with exit code 1"):
        run_stage(tmp_path, "prepare")
    (tmp_path / "how").write_text("ok")  # the retry would pass, but the same inputs fail the same way
    with pytest.raises(WorkspaceError, match="failed earlier in this submission"):
        run_stage(tmp_path, "prepare")
    assert fake_stage.read_text().split() == ["prepare"]

    prepare(tmp_path, PARAMS_FILE, None, [])  # a new submission (plan) forgets the failure
    assert run_stage(tmp_path, "prepare") == "out/prepare.txt"

    (tmp_path / "how").write_text("kill")  # the OOM killer: no record, the retry runs again
    with pytest.raises(WorkspaceError, match="exit code -9"):
        run_stage(tmp_path, "fetch")
    (tmp_path / "how").write_text("ok")
    assert run_stage(tmp_path, "fetch") == "out/fetch.txt"
    assert fake_stage.read_text().split() == ["prepare", "prepare", "fetch", "fetch"]


def test_stage_metrics_are_the_finite_numbers_of_its_metric_files(tmp_path: Path) -> None:
    (tmp_path / "metrics/eval/m_on_org").mkdir(parents=True)
    doc = {
        "AP": 0.25,
        "images": 50,
        "predictions": 9,
        "backend": "x",
        "freeze": None,
        "per_class": {"cat": {"AP": None}},
    }
    (tmp_path / "metrics/eval/m_on_org/metrics.json").write_text(json.dumps(doc))
    (tmp_path / "metrics/eval/m_on_org/predictions.json").write_text("[]")
    stamps = workspace._Stamps(tmp_path)
    (tmp_path / PARAMS).write_text("")
    stamps.folder.mkdir(parents=True)
    outputs = {"metrics/eval/m_on_org": "dir"}
    stamp = {"stage": "evaluate", "options": {"model": "m", "on": "org"}, "outputs": outputs}
    stamps.path("evaluate", {"model": "m", "on": "org"}).write_text(json.dumps(stamp))

    found = stage_metrics(tmp_path, "evaluate", "--model", "m", "--on", "org")
    assert found == {"metrics/AP": 0.25, "metrics/images": 50.0, "metrics/predictions": 9.0}

    # A void evaluation (no detection) shows no AP at all, not 0, whatever number its file might hold.
    doc.update(predictions=0, void=True, void_reason="no detections", AP=0.0)
    (tmp_path / "metrics/eval/m_on_org/metrics.json").write_text(json.dumps(doc))
    found = stage_metrics(tmp_path, "evaluate", "--model", "m", "--on", "org")
    assert found == {"metrics/images": 50.0, "metrics/predictions": 0.0}
