"""Checked, resumable downloads and verified copies.

A file is first written to ``<name>.part``; an interrupted download resumes
from the bytes already there with an HTTP Range request. Only a file whose
digest matches its checksum is moved to its final name; a mismatch deletes the
partial file and raises an error naming the file, so a corrupt download is
never taken for data.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import urllib.error
import urllib.request
from pathlib import Path

CHUNK = 1 << 20


class ChecksumError(ValueError):
    """A file's digest does not match its checksum; the message names the file."""


class DownloadError(OSError):
    """No URL of a file could be downloaded; the message names the file and every URL tried."""


def file_digest(path: Path, algorithm: str) -> str:
    """Hex digest of a file, read in chunks (archives are tens of GB)."""
    digest = hashlib.new(algorithm)
    with Path(path).open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _verify_and_place(part: Path, dest: Path, digest: str, algorithm: str, origin: str) -> None:
    actual = file_digest(part, algorithm)
    if actual != digest:
        part.unlink()
        raise ChecksumError(f"{dest}: {algorithm} {actual} does not match the expected {digest} (from {origin})")
    os.replace(part, dest)


def download(url: str, dest: Path, digest: str, algorithm: str, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``dest``, resuming a partial ``.part`` file, then verify it.

    Args:
        url: Source URL (http, https or file).
        dest: Final path; parent folders are created.
        digest: Expected hex digest.
        algorithm: ``sha256`` or ``md5``.
        timeout: Socket timeout in seconds.

    Returns:
        ``dest``.

    Raises:
        ChecksumError: If the downloaded bytes do not match ``digest``.
        urllib.error.URLError: If the server cannot be reached or answers with an error.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            resumed = offset > 0 and response.status == 206
            with part.open("ab" if resumed else "wb") as handle:
                shutil.copyfileobj(response, handle, CHUNK)
    except urllib.error.HTTPError as err:
        if err.code != 416:  # 416: the partial file already holds every byte
            raise
    _verify_and_place(part, dest, digest, algorithm, url)
    return dest


def download_any(urls: tuple[str, ...], dest: Path, digest: str, algorithm: str) -> Path:
    """Try each URL in turn until one gives the right bytes.

    Raises:
        DownloadError: If every URL failed; the message lists each failure.
    """
    failures = []
    for url in urls:
        try:
            return download(url, dest, digest, algorithm)
        except (ChecksumError, urllib.error.URLError, OSError) as err:
            failures.append(f"{url}: {err}")
    raise DownloadError(f"{dest}: no source gave the expected file:\n  " + "\n  ".join(failures))


def copy_verified(source: Path, dest: Path, digest: str, algorithm: str) -> Path:
    """Copy a local file and verify it on the way, as a download would be verified.

    Raises:
        FileNotFoundError: If ``source`` does not exist.
        ChecksumError: If the copy does not match ``digest``.
    """
    if not source.is_file():
        raise FileNotFoundError(f"{source}: listed in the checksum list but missing from the local copy")
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    shutil.copyfile(source, part)
    _verify_and_place(part, dest, digest, algorithm, str(source))
    return dest
