"""Atomic file writes: a stage's output either exists complete or not at all.

Every stage writes through these helpers (temp file in the same folder, then
``os.replace``) so an interrupted run never leaves a half-written file that a
rerun would mistake for finished work.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO


@contextmanager
def atomic_open(path: Path) -> Iterator[BinaryIO]:
    """Open ``path`` for writing so that it appears complete or not at all, for outputs written piece by piece.

    Args:
        path: Destination file; parent folders are created.

    Yields:
        A binary handle on a temporary file in the same folder, moved into place on success.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
        os.chmod(tmp, 0o644)  # mkstemp makes owner-only files; outputs are shared data
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_open`).

    Returns:
        The destination path.
    """
    with atomic_open(path) as handle:
        handle.write(data)
    return Path(path)


def atomic_write_text(path: Path, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically (see :func:`atomic_write_bytes`)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> Path:
    """Write ``obj`` as stable, sorted, indented JSON so reruns are byte-identical."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, allow_nan=True) + "\n")


@contextmanager
def atomic_dir(path: Path, replace: bool = True) -> Iterator[Path]:
    """Build a folder under a temporary name and move it into place when complete.

    Readers never see the folder half there: it appears by one ``rename``, which is atomic on a
    local disk and on NFS alike (no file lock needed).

    Args:
        path: Final folder.
        replace: Replace a folder already there (a rebuild after its settings changed: one writer
            at a time). False: the first writer wins, for writers that build the same content at
            once (parallel fine-tunes making the one subset they share): a folder another writer
            moved in meanwhile is kept, never deleted under its readers, and this one is discarded.

    Yields:
        The temporary folder to fill.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield tmp
        if replace and path.exists():
            shutil.rmtree(path)
        move_into_place(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def move_into_place(tmp: Path, path: Path) -> bool:
    """Rename the complete folder ``tmp`` to ``path``, unless another writer's folder got there first.

    Args:
        tmp: A finished folder on the same file system.
        path: Where it belongs.

    Returns:
        Whether ``tmp`` was moved in; if not, the folder already at ``path`` is kept and ``tmp`` deleted.

    Raises:
        OSError: If the rename fails for another reason than a folder in place.
    """
    try:
        os.rename(tmp, path)  # onto an existing folder only if that is empty (POSIX rename)
    except OSError as err:
        if err.errno not in (errno.ENOTEMPTY, errno.EEXIST) or not path.is_dir():
            raise
        shutil.rmtree(tmp)
        return False
    return True
