"""Stage fetch: materialize the original dataset in ``data/raw/<source>`` (COCO layout).

Files come from a local copy (``data.local_copy`` or the ``ANONBENCH_COCO_MINI`` /
``ANONBENCH_COCO2017`` / ``ANONBENCH_COCO_FOLDER`` environment variable) or, only
when the user asks for it, from their public sources. Either way every file is
checked against the committed checksums, so the result is the same bytes
wherever it came from. coco2017 arrives as the three official archives,
verified, then extracted. A ``coco-folder`` (a user's own COCO-format dataset)
has no published checksums and no download: its split files are copied, each
verified against the sha256 taken from the folder, and the stamp lists them, so
a rerun copies only what changed and drops what the folder no longer has.
``prepare`` then validates it exactly as it validates COCO.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

from anonbench.config import LOCAL_COPY_ENV, Config
from anonbench.data.download import ChecksumError, DownloadError, copy_verified, download_any, file_digest
from anonbench.data.sources import SOURCES, RemoteFile, coco_folder_files, with_mirrors
from anonbench.io import atomic_dir, atomic_write_json

STAMP = ".fetched.json"


class FetchError(RuntimeError):
    """The source cannot be materialized (no local copy and no download allowed)."""


def _stamp(cfg: Config, files: list[RemoteFile]) -> dict[str, object]:
    return {"source": cfg.data.source, "files": {f.path: f"{f.algorithm}:{f.digest}" for f in files}}


def _is_complete(target: Path, expected: dict[str, object]) -> bool:
    stamp = target / STAMP
    return stamp.is_file() and json.loads(stamp.read_text()) == expected


def _obtain(cfg: Config, spec: RemoteFile, dest: Path, local: Path | None, allow_download: bool) -> Path:
    """Get one file into ``dest``: verified copy from the local copy, else a verified download."""
    if dest.is_file() and file_digest(dest, spec.algorithm) == spec.digest:
        return dest
    if local is not None:
        return copy_verified(local / spec.path, dest, spec.digest, spec.algorithm)
    if not allow_download:
        env = LOCAL_COPY_ENV[cfg.data.source]
        raise FetchError(
            f"{cfg.data.source}: no local copy (set data.local_copy or {env}) and downloading was not asked for "
            "(anonbench fetch --download, or ANONBENCH_DOWNLOAD=1)"
        )
    return download_any(with_mirrors(spec.urls, cfg.data.mirrors), dest, spec.digest, spec.algorithm)


def extract_coco2017(archives: list[Path], target: Path, splits: tuple[str, str]) -> None:
    """Extract the split folders and the instances JSON files into the COCO layout."""
    wanted = tuple(f"{split}/" for split in splits) + tuple(f"annotations/instances_{s}.json" for s in splits)
    with atomic_dir(target) as tmp:
        for archive in archives:
            with zipfile.ZipFile(archive) as zipped:
                for member in zipped.namelist():
                    if member.startswith(wanted) and not member.endswith("/"):
                        zipped.extract(member, tmp)


def fetch_folder(cfg: Config, folder: Path) -> list[Path]:
    """Copy a COCO-format folder's split files into ``cfg.source_root``, each verified against its sha256.

    Raises:
        FetchError: If a split's annotation file or image folder is missing, or a file changed while copied.
    """
    try:
        files = coco_folder_files(folder, cfg.data.splits)
    except FileNotFoundError as err:
        raise FetchError(f"coco-folder: {err}") from None
    target = cfg.source_root
    expected = {**_stamp(cfg, files), "folder": str(folder.resolve())}
    if _is_complete(target, expected):
        return [target]
    (target / STAMP).unlink(missing_ok=True)  # incomplete until every file is in place
    try:
        for spec in files:
            _obtain(cfg, spec, target / spec.path, folder, False)
    except (ChecksumError, FileNotFoundError) as err:
        raise FetchError(f"coco-folder: {err}") from None
    listed = {target / spec.path for spec in files} | {target / STAMP}
    for stale in [p for p in target.rglob("*") if p.is_file() and p not in listed]:
        stale.unlink()  # a file the folder no longer has
    atomic_write_json(target / STAMP, expected)
    return [target]


def run(cfg: Config, download: bool = False) -> list[Path]:
    """Materialize ``cfg.source_root``; a complete, verified copy is left as it is.

    Args:
        cfg: Run configuration (``data.source``, ``data.local_copy``, ``data.mirrors``).
        download: Allow downloading from the public sources when no local copy is configured.

    Returns:
        The dataset folder.

    Raises:
        FetchError: If there is no local copy and ``download`` is false (a ``coco-folder`` always needs
            one), if the configured local copy does not exist, or if files could not be obtained (each
            named, with every source tried and the checksum it failed).
    """
    local = cfg.local_copy()
    named = f"data.local_copy or {LOCAL_COPY_ENV[cfg.data.source]}"
    if local is not None and not local.is_dir():  # e.g. a container started without its data mount
        raise FetchError(f"{cfg.data.source}: the local copy {local} ({named}) does not exist")
    if cfg.data.source == "coco-folder":
        if local is None:
            raise FetchError(f"coco-folder: name your COCO-format folder with {named} (it cannot be downloaded)")
        return fetch_folder(cfg, local)
    files = SOURCES[cfg.data.source]()
    target = cfg.source_root
    expected = _stamp(cfg, files)
    if _is_complete(target, expected):
        return [target]
    if cfg.data.source == "coco-mini":
        failures = []
        for spec in files:  # get every good file before reporting the bad ones: a rerun fetches only those
            try:
                _obtain(cfg, spec, target / spec.path, local, download)
            except (ChecksumError, DownloadError, FileNotFoundError) as err:
                failures.append(str(err))
        if failures:
            raise FetchError(f"{len(failures)} of {len(files)} files failed:\n" + "\n".join(failures))
    else:
        archive_dir = cfg.paths.data / "raw" / "downloads"
        archives = [_obtain(cfg, spec, archive_dir / spec.path, local, download) for spec in files]
        extract_coco2017(archives, target, cfg.data.splits)
        if local is None:
            shutil.rmtree(archive_dir, ignore_errors=True)
    atomic_write_json(target / STAMP, expected)
    return [target]
