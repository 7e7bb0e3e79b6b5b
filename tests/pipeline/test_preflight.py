"""anonbench preflight: each failure a cluster run would meet after hours gives one line and exit status 1.

Real things where they exist here: a workspace the runtime uid cannot write (the cluster's uid
10001, group 0, on a root-owned volume), a real S3 server (Ceph RGW) and an address where
nothing listens, a real weights folder. Only a GPU cannot exist here: the node class's memory is
given as a number, the estimate table is params.yaml's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from anonbench.anonymizers.dp2_weights import WeightFile, md5sum
from anonbench.preflight import PreflightError, check_dp2_weights, check_workspace
from anonbench.s3 import s3_environment
from tests.pipeline.conftest import free_port, s3_bucket

REPO = Path(__file__).resolve().parents[2]
RUNTIME_UID = 10001  # the images' user (docker/*/Dockerfile), group 0


def preflight(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``anonbench preflight ARGS`` from the repository (its params.yaml)."""
    return subprocess.run(
        [sys.executable, "-m", "anonbench", "preflight", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=120,
    )


def failed_line(result: subprocess.CompletedProcess[str], check: str) -> str:
    """The one FAIL line of ``check``, after asserting the exit status."""
    assert result.returncode == 1, result.stderr
    (line,) = [x for x in result.stderr.splitlines() if x.startswith(f"preflight {check}: FAIL")]
    return line


def test_a_workspace_the_runtime_user_cannot_write_fails(tmp_path: Path) -> None:
    volume = tmp_path / "volume"
    volume.mkdir(mode=0o755)  # as a provisioner leaves a volume's root: owned by root, not group-writable
    if os.geteuid() != 0:
        volume.chmod(0o555)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child becomes the images' user, as KFP's non-root pods run it
        os.close(read)
        os.dup2(write, 2)
        if os.geteuid() == 0:
            os.setgroups([])
            os.setgid(0)
            os.setuid(RUNTIME_UID)
        outcome = check_workspace(volume / "paper-1", "ReadWriteMany", nodes=8)
        os.write(2, f"{outcome.line}\n".encode())
        os._exit(0 if outcome.ok else 1)
    os.close(write)
    with os.fdopen(read) as stderr:
        line = stderr.read().strip()
    _, status = os.waitpid(pid, 0)

    assert os.waitstatus_to_exitcode(status) == 1
    assert line.startswith(f"preflight workspace: FAIL {volume / 'paper-1'} not writable by uid ")
    assert "Permission denied" in line and "workspace-init.yaml" in line and "\n" not in line


def test_a_readwriteonce_workspace_with_tasks_on_several_nodes_fails(tmp_path: Path) -> None:
    result = preflight(
        "--check", "workspace", "--workspace", str(tmp_path), "--access-mode", "ReadWriteOnce", "--nodes", "8"
    )

    assert "ReadWriteOnce claim with tasks on up to 8 nodes" in failed_line(result, "workspace")


def test_a_writable_readwritemany_workspace_passes(tmp_path: Path) -> None:
    result = preflight("--check", "workspace", "--workspace", str(tmp_path / "ws"), "--nodes", "8")

    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"preflight workspace: ok {tmp_path / 'ws'} writable by uid {os.getuid()}")
    assert list((tmp_path / "ws").iterdir()) == []  # the probe is gone


def test_a_stopped_s3_server_fails(tmp_path: Path) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"
    env = {
        "ANONBENCH_S3_ENDPOINT_URL": endpoint,
        "ANONBENCH_S3_ACCESS_KEY_ID": "k",
        "ANONBENCH_S3_SECRET_ACCESS_KEY": "s",
    }

    result = preflight("--check", "s3", "--set", "publish.remote=s3://anonbench/dvc", env=env)

    line = failed_line(result, "s3")
    assert f"s3://anonbench/dvc at {endpoint}: cannot write and delete" in line and "Could not connect" in line


def test_s3_with_the_tasks_credentials_passes_and_leaves_nothing(rgw: dict[str, str]) -> None:
    bucket = s3_bucket(rgw, "preflight")
    # anonbench's own names, as the cluster's Secret gives them; AWS_* stay the launcher's.
    env = {f"ANONBENCH_S3_{key[4:]}": value for key, value in rgw.items() if key.startswith("AWS_")}

    result = preflight("--check", "s3", "--set", "publish.remote=s3://preflight/dvc", env=env)

    assert result.returncode == 0, result.stderr
    assert (
        result.stdout.strip()
        == f"preflight s3: ok s3://preflight/dvc at {rgw['AWS_ENDPOINT_URL']}: wrote and deleted a test object"
    )
    assert list(bucket.objects.all()) == []


def test_an_unreachable_mlflow_server_fails() -> None:
    uri = f"http://127.0.0.1:{free_port()}"

    result = preflight("--check", "mlflow", env={"MLFLOW_TRACKING_URI": uri})

    assert f"{uri} unreachable" in failed_line(result, "mlflow")


def test_missing_and_wrong_md5_weights_fail_naming_each(tmp_path: Path) -> None:
    (tmp_path / "torch").mkdir()
    (tmp_path / "torch" / "g.ckpt").write_bytes(b"not the generator")
    (tmp_path / "torch" / "d.pkl").write_bytes(b"a detector")
    generator = WeightFile("torch/g.ckpt", "https://example.org/g.ckpt", "0" * 32, "generator")
    detector = WeightFile("torch/d.pkl", "https://example.org/d.pkl", None, "detector")  # no md5 from DP2
    absent = WeightFile("fvcore/e.pkl", "https://example.org/e.pkl", None, "embedding")

    outcome = check_dp2_weights([generator, detector, absent], tmp_path)

    assert not outcome.ok
    assert outcome.line == (
        f"preflight dp2-weights: FAIL {tmp_path}: missing fvcore/e.pkl; md5 not DP2's: torch/g.ckpt; lay them out "
        "with anonbench dp2-weights (infra/README.md, 'DeepPrivacy2 weights')"
    )
    right = WeightFile("torch/g.ckpt", generator.url, md5sum(tmp_path / "torch" / "g.ckpt"), "generator")
    assert check_dp2_weights([right, detector], tmp_path).ok


def test_the_dp2_check_outside_the_dp2_environment_fails_saying_so() -> None:
    result = preflight("--check", "dp2-weights", "--profile", "paper")

    assert "cannot list DP2's files here (DeepPrivacy2 is not installed here" in failed_line(result, "dp2-weights")


def test_a_gpu_too_small_for_the_batch_fails_naming_the_trainings() -> None:
    # The paper's batch 40 at 640 px on 24 GiB cards; l and x do not fit by params.yaml's table.
    result = preflight("--check", "gpu-memory", "--profile", "paper", "--gpu-memory", "train=24")

    line = failed_line(result, "gpu-memory")
    assert "train l at batch 40 needs ~23.5 GiB" not in line  # 1.5 + 0.55 x 40 = 23.5 fits 24
    assert "train x at batch 40 needs ~29.5 GiB" in line and "train m" not in line
    assert "(estimate: params.yaml preflight.train_gpu_memory)" in line
    fits = preflight("--check", "gpu-memory", "--profile", "paper", "--gpu-memory", "train=80")
    assert fits.returncode == 0 and "largest training needs ~29.5 GiB (estimate), node class has 80" in fits.stdout


def test_a_fake_table_too_small_for_the_batch_fails() -> None:
    # The table, not the card, decides: a size said to need 1 GiB per image at 640 px.
    result = preflight(
        "--check",
        "gpu-memory",
        "--gpu-memory",
        "train=80",
        "--set",
        "preflight.train_gpu_memory.per_image_gb.n=1.0",
        "--set",
        "train.imgsz=640",
        "--set",
        "train.batch=96",
    )

    assert "train n at batch 96 needs ~97.5 GiB" in failed_line(result, "gpu-memory")


def test_anonbenchs_s3_names_win_and_a_missing_endpoint_is_left_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "the-launchers")
    monkeypatch.setenv("ANONBENCH_S3_ACCESS_KEY_ID", "anonbenchs")
    monkeypatch.setenv("ANONBENCH_S3_SECRET_ACCESS_KEY", "secret")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
    for name in ("ANONBENCH_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL"):  # on AWS itself
        monkeypatch.delenv(name, raising=False)

    assert s3_environment() == {"AWS_ACCESS_KEY_ID": "anonbenchs", "AWS_SECRET_ACCESS_KEY": "secret"}


def test_the_pipelines_preflight_task_stops_the_run_on_a_failure(tmp_path: Path) -> None:
    from components.preflight import preflight as component

    def run(gib: float) -> str:
        args = {"workspace": str(tmp_path / "ws"), "params_file": str(REPO / "params.yaml"), "profile": "mini"}
        cluster = {"access_mode": "ReadWriteMany", "nodes": 8, "gpu_memory": {"train": gib}, "publish": False}
        return str(component.python_func(**args, overrides=[], **cluster))

    assert json.loads(run(80.0)) == {"workspace": True, "s3": True, "mlflow": True, "gpu-memory": True}
    with pytest.raises(PreflightError, match=r"^preflight gpu-memory: FAIL train n at batch 16 needs ~1\.6 GiB"):
        run(1.0)
