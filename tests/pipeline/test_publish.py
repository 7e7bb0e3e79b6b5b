"""The publish stage and `anonbench pull` with a real DVC and a folder remote.

The S3 path (Ceph RGW, a KFP run publishing, a fresh clone pulling) is tests/pipeline/test_kfp_local.py;
here the stage's own contract on a small variant: the pointer, what is left out, idempotence,
and its refusals.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from anonbench.config import Config
from anonbench.stages import anonymize, publish
from anonbench.stages.publish import IGNORE, PublishError
from tests.conftest import cli_args

REPO = Path(__file__).resolve().parents[2]
TARGETS = ("mask", "blur")


def files(folder: Path) -> dict[str, float]:
    """Every file under ``folder`` by its modification time (a second upload would change it)."""
    return {p.relative_to(folder).as_posix(): p.stat().st_mtime for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def variant(make_config: Callable[..., Config], tiny_coco: Path, mlflow_db: Path, tmp_path: Path) -> Config:
    """A workspace (tmp_path) with the mask variant of a 12 + 6 image slice of coco-mini, and a folder remote."""
    cfg = make_config(f"publish.remote={tmp_path / 'remote'}", "publish.run=study-1", source=tiny_coco)
    anonymize.run(cfg, "mask")
    return cfg


def test_publish_versions_a_variant_pushes_it_and_leaves_a_pointer(variant: Config, tmp_path: Path) -> None:
    (pointer,) = publish.run(variant, "mask", root=tmp_path)

    assert pointer == variant.variant_root("mask").with_name("mask.dvc")
    (out,) = yaml.safe_load(pointer.read_text())["outs"]
    assert out["path"] == "mask" and out["md5"].endswith(".dir")
    kept = [p for p in variant.variant_root("mask").rglob("*") if p.is_file()]
    resume_state = [p for p in kept if "records" in p.parts or p.name.startswith("timings_")]
    assert resume_state and out["nfiles"] == len(kept) - len(resume_state)  # records and timings left out
    remote = tmp_path / "remote"
    assert (remote / "runs/study-1/mask.dvc").read_bytes() == pointer.read_bytes()
    assert len(list((remote / "files/md5").rglob("*"))) > out["nfiles"]  # every file, plus the folder listing


def test_a_second_publish_uploads_nothing_and_gives_the_same_hash(variant: Config, tmp_path: Path) -> None:
    (pointer,) = publish.run(variant, "mask", root=tmp_path)
    first, stored = pointer.read_bytes(), files(tmp_path / "remote")

    publish.run(variant, "mask", root=tmp_path)

    assert pointer.read_bytes() == first
    assert files(tmp_path / "remote") == stored


def test_publishes_started_together_in_one_workspace_both_succeed_and_upload_each_file_once(
    variant: Config, tmp_path: Path
) -> None:
    anonymize.run(variant, "blur")
    sets = [f"publish.remote={tmp_path / 'remote'}", "publish.run=study-1"]
    command = [sys.executable, "-m", "anonbench", "publish", *cli_args(variant, *sets), "--target"]
    procs = [subprocess.Popen([*command, t], cwd=tmp_path, stderr=subprocess.PIPE, text=True) for t in TARGETS]
    errors = [proc.communicate(timeout=600)[1] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], [e[-2000:] for e in errors]
    assert "remote" not in (tmp_path / ".dvc" / "config").read_text()  # its settings stay in memory
    assert not list(tmp_path.glob(".dvc-init.*"))

    wanted = set()  # each folder's listing and every file in it: once each, nothing else
    for target in TARGETS:
        (out,) = yaml.safe_load(variant.variant_root(target).with_name(f"{target}.dvc").read_text())["outs"]
        listing = tmp_path / ".dvc/cache/files/md5" / out["md5"][:2] / out["md5"][2:]
        wanted |= {out["md5"], *(entry["md5"] for entry in json.loads(listing.read_text()))}
    stored = [p.relative_to(tmp_path / "remote/files/md5") for p in (tmp_path / "remote/files/md5").rglob("*")]
    assert sorted(f"{p.parent}{p.name}" for p in stored if len(p.parts) == 2) == sorted(wanted)
    assert {p.name for p in (tmp_path / "remote/runs/study-1").iterdir()} == {f"{t}.dvc" for t in TARGETS}


def test_the_source_is_hashed_but_never_uploaded(variant: Config, tmp_path: Path) -> None:
    raw = variant.source_root
    raw.unlink()  # make_config linked coco-mini here; fetch would have copied it
    subprocess.run(["cp", "-r", str(variant.data.local_copy), str(raw)], check=True)
    (pointer,) = publish.run(variant, "source", root=tmp_path)

    assert yaml.safe_load(pointer.read_text())["outs"][0]["md5"].endswith(".dir")
    assert not (tmp_path / "remote" / "files").exists()
    assert (tmp_path / "remote/runs/study-1/source.dvc").is_file()


def test_publish_refuses_without_remote_outside_a_workspace_and_for_unknown_targets(
    make_config: Callable[..., Config], variant: Config, tmp_path: Path
) -> None:
    with pytest.raises(PublishError, match="no DVC remote"):
        publish.run(make_config(), "mask", root=tmp_path)
    with pytest.raises(PublishError, match="expected source, prepared, models"):
        publish.run(variant, "everything", root=tmp_path)
    with pytest.raises(PublishError, match="nothing to publish"):
        publish.run(variant, "blur", root=tmp_path)
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    with pytest.raises(PublishError, match="use dvc push"):
        publish.run(variant, "mask", root=tmp_path)


def test_pull_names_what_is_missing(variant: Config, tmp_path: Path) -> None:
    publish.run(variant, "mask", root=tmp_path)
    clone = tmp_path / "clone"
    clone.mkdir()
    dvc = [str(Path(sys.executable).with_name("dvc"))]
    subprocess.run(["git", "init", "-q"], cwd=clone, check=True)
    subprocess.run([*dvc, "init", "-q"], cwd=clone, check=True)
    subprocess.run([*dvc, "remote", "add", "s3", str(tmp_path / "remote")], cwd=clone, check=True)

    with pytest.raises(PublishError, match="no published run 'study-2'"):
        publish.pull("study-2", [], root=clone)
    with pytest.raises(PublishError, match=r"published \['mask'\], not \['blur'\]"):
        publish.pull("study-1", ["blur"], root=clone)
    (pulled,) = publish.pull("study-1", [], root=clone)
    assert pulled == clone / "published/study-1/mask"
    assert (pulled / "annotations/instances_val2017.json").is_file()


def test_the_repository_ignores_what_publish_leaves_out() -> None:
    ignored = {line.strip() for line in (REPO / ".dvcignore").read_text().splitlines() if line and line[0] != "#"}
    assert set(IGNORE) == ignored
