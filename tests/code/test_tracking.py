"""tracking: a run's data lineage names the published datasets it read, not every one present."""

from __future__ import annotations

from pathlib import Path

import pytest

from anonbench.tracking import data_hashes, dvc_revision


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    """Pointers as the publish stage leaves them: the source, two variants and the models."""
    for dataset in ("data/raw/coco", "data/variants/blur", "data/variants/mask", "models"):
        pointer = tmp_path / f"{dataset}.dvc"
        pointer.parent.mkdir(parents=True, exist_ok=True)
        pointer.write_text(f"outs:\n- md5: {Path(dataset).name}.dir\n  path: {Path(dataset).name}\n")
    return tmp_path


def test_a_run_is_tagged_with_the_datasets_it_read(workspace: Path) -> None:
    reads = [workspace / "models/org-n/weights/last.pt", workspace / "data/variants/blur"]
    assert data_hashes(workspace, reads) == {"models": "models.dir", "data/variants/blur": "blur.dir"}
    assert data_hashes(workspace, [workspace / "data/variants/pixelate"]) == {}
    assert len(data_hashes(workspace, None)) == 4  # the report reads them all


def test_the_data_revision_changes_only_with_what_the_run_read(workspace: Path) -> None:
    lock = workspace / "dvc.lock"  # absent: a workspace, not the repository
    reads = [workspace / "data/variants/blur"]
    before = dvc_revision(lock, reads)
    (workspace / "data/variants/mask.dvc").write_text("outs:\n- md5: other.dir\n  path: mask\n")
    assert dvc_revision(lock, reads) == before != dvc_revision(lock, None)
    assert dvc_revision(lock, [workspace / "data/variants/pixelate"]) == "none"
