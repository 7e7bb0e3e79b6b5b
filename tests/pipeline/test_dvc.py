"""dvc.yaml: complete code deps, no-op reruns, parameter changes rerun only dependents, a real S3 remote.

The DVC tests run the repository's own dvc.yaml and params.yaml in a temporary copy (with
its sources), narrowed to one anonymization method and reproduced up to ssim, so they stay
cheap: fetch, prepare, anonymize@mask, ssim@mask on coco-mini.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from anonbench.codebase import import_closure
from anonbench.config import load_config
from tests.pipeline.conftest import s3_bucket

REPO = Path(__file__).resolve().parents[2]
SRC = REPO / "src"
BIN = Path(sys.executable).parent
TARGETS = ("prepare", "ssim")  # with what they need: fetch, anonymize
VARIANT = "data/variants/mask"


def test_every_stage_depends_on_all_of_its_code() -> None:
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert stages
    for name, stage in stages.items():
        command = stage["cmd"].split()[1]
        code = {p.relative_to(REPO).as_posix() for p in import_closure(f"anonbench.stages.{command}", SRC)}
        assert f"src/anonbench/stages/{command}.py" in code
        deps = set(stage["deps"])
        assert code <= deps, f"{name}: add {sorted(code - deps)} to its deps"
        listed_code = {d for d in deps if d.startswith("src/") and d.endswith(".py")}
        assert listed_code <= code, f"{name}: {sorted(listed_code - code)} is not its code"


def test_dvc_trains_and_evaluates_the_top_level_grid() -> None:
    """dvc.yaml's matrices are the top level's variants x sizes: the mini profile's grid, which must not be narrowed.

    DVC templating reads only the top level of params.yaml and a matrix is a cross product, so
    ``train.sizes_by_variant`` (which narrows the grid) belongs in a profile that the KFP pipeline runs.
    Likewise the top level trains YOLOv10 only: a model id names any other family (``org-yolov8-n``,
    :func:`anonbench.config.model_id`) and YOLOv10's not (``org-n``), which a matrix cannot spell, so
    ``train.families`` with other families belongs in a profile too.
    """
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    grid = {"variant": "${train.variants}", "size": "${train.sizes}"}
    assert stages["train"]["matrix"] == grid
    # (PyYAML reads the key `on` as True; DVC's YAML 1.2 reader as "on")
    assert list(stages["evaluate"]["matrix"].values()) == [*grid.values(), "${evaluate.variants}"]
    top = yaml.safe_load((REPO / "params.yaml").read_text())
    mini = load_config(REPO / "params.yaml", "mini")
    assert top["train"].get("families", ["yolov10"]) == mini.train.families == ["yolov10"]
    assert mini.train.models == [(v, "yolov10", s) for v in top["train"]["variants"] for s in top["train"]["sizes"]]


def dvc(repo: Path, env: dict[str, str], *args: str) -> str:
    result = subprocess.run([str(BIN / "dvc"), *args], cwd=repo, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"dvc {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def ran(output: str) -> set[str]:
    """Stages `dvc repro` ran, from its output."""
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")}


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def dvc_env(coco_mini: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",  # `anonbench` for the stage commands
        "ANONBENCH_COCO_MINI": str(coco_mini),
        "DVC_NO_ANALYTICS": "1",
        "GIT_AUTHOR_NAME": "test",
        "GIT_AUTHOR_EMAIL": "test@example.com",
        "GIT_COMMITTER_NAME": "test",
        "GIT_COMMITTER_EMAIL": "test@example.com",
    }


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory, dvc_env: dict[str, str]) -> Path:
    """A git + DVC copy of the repository's pipeline with one method, reproduced up to ssim."""
    repo = tmp_path_factory.mktemp("study")
    shutil.copytree(SRC, repo / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copy(REPO / "dvc.yaml", repo)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["anonymize"]["methods"] = ["mask"]
    params["train"]["variants"] = params["evaluate"]["variants"] = ["org", "mask"]
    params["finetune"]["variant"] = "mask"
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    dvc(repo, dvc_env, "init", "-q")
    shutil.copy(REPO / ".dvc" / "config", repo / ".dvc" / "config")  # the committed remotes
    shutil.copy(REPO / ".dvcignore", repo)  # dvc init wrote an empty one
    dvc(repo, dvc_env, "repro", *TARGETS)
    return repo


def test_second_repro_is_a_noop(study: Path, dvc_env: dict[str, str]) -> None:
    output = dvc(study, dvc_env, "repro", *TARGETS)

    assert ran(output) == set()
    assert {"fetch", "prepare", "anonymize@mask", "ssim@mask"} <= {
        line.split("'")[1] for line in output.splitlines() if "didn't change, skipping" in line
    }


def test_changing_one_parameter_reruns_only_its_dependents(study: Path, dvc_env: dict[str, str]) -> None:
    params = yaml.safe_load((study / "params.yaml").read_text())
    params["ssim"]["win_size"] = 9
    (study / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    assert set(yaml.safe_load(dvc(study, dvc_env, "status", "--json", "--with-deps", *TARGETS))) == {"ssim@mask"}
    assert ran(dvc(study, dvc_env, "repro", *TARGETS)) == {"ssim@mask"}
    summary = yaml.safe_load((study / "data/ssim/mask/summary.json").read_text())
    assert summary["win_size"] == 9


@pytest.mark.s3
def test_anonymized_variant_round_trips_through_a_real_s3_store(
    study: Path, dvc_env: dict[str, str], rgw: dict[str, str], tmp_path: Path
) -> None:
    endpoint = rgw["AWS_ENDPOINT_URL"]
    env = {**dvc_env, **{key: rgw[key] for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}}
    bucket = s3_bucket(rgw, "anonbench-test")
    # The committed `s3` remote, pointed at this store the way docs/orchestration.md tells a user.
    dvc(study, env, "remote", "modify", "--local", "s3", "url", "s3://anonbench-test/dvc")
    dvc(study, env, "remote", "modify", "--local", "s3", "endpointurl", endpoint)
    # Timings and resume records hold seconds: .dvcignore keeps them out of the variant's hash and remotes.
    before = {k: v for k, v in snapshot(study / VARIANT).items() if not k.startswith(("records/", "timings_"))}
    assert len(before) > 200  # images and masks of both splits, annotations, manifests, coverage

    dvc(study, env, "push", "-r", "s3", "anonymize@mask")
    assert sum(1 for _ in bucket.objects.all()) >= len(before)
    shutil.rmtree(study / ".dvc" / "cache")
    shutil.rmtree(study / VARIANT)
    dvc(study, env, "pull", "-r", "s3", "anonymize@mask")

    assert snapshot(study / VARIANT) == before
    assert dvc(study, env, "status", "anonymize@mask").strip() == "Data and pipelines are up to date."

    # Another repository imports the variant from this one's git history and the S3 store.
    subprocess.run(["git", "add", "-A"], cwd=study, check=True, env=env)
    subprocess.run(["git", "commit", "-q", "-m", "study"], cwd=study, check=True, env=env)
    consumer = tmp_path / "consumer"
    consumer.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=consumer, check=True)
    dvc(consumer, env, "init", "-q")
    remote = ["--remote", "s3", "--remote-config", "url=s3://anonbench-test/dvc", f"endpointurl={endpoint}"]
    dvc(consumer, env, "import", str(study), VARIANT, "-o", "coco-mask", *remote)
    assert snapshot(consumer / "coco-mask") == before
