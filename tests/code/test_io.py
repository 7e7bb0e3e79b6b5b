"""io: a folder built under a temporary name appears whole; concurrent builders of the same folder do not clash."""

from __future__ import annotations

from pathlib import Path

import pytest

from anonbench.io import atomic_dir


def test_the_first_writer_wins_and_the_folder_in_place_is_never_deleted(tmp_path: Path) -> None:
    target = tmp_path / "subset"
    with atomic_dir(target, replace=False) as mine:
        (mine / "a.txt").write_text("mine")
        target.mkdir()  # another process moves its (identical) build in meanwhile
        (target / "a.txt").write_text("theirs")
        reader = (target / "a.txt").open()  # and a training reads it
    assert reader.read() == "theirs" and (target / "a.txt").read_text() == "theirs"
    reader.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["subset"]  # this build discarded, no temp left


def test_a_missing_folder_is_moved_in_and_an_existing_one_replaced(tmp_path: Path) -> None:
    target = tmp_path / "subset"
    for text in ("first", "second"):
        with atomic_dir(target) as tmp:
            (tmp / "a.txt").write_text(text)
        assert (target / "a.txt").read_text() == text
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "b.txt").write_text("half")
        raise RuntimeError("cut short")
    assert sorted(p.name for p in target.iterdir()) == ["a.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["subset"]
