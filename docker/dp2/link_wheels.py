"""Hard-link the wheels pip would install for some requirements from this host's disk into a folder.

docker/build.sh keeps torch's wheels (about 3 GB with its CUDA libraries) in
build/dp2-inputs/wheels/pypi for the DP2 image build. Where this host's package index is a local
folder, `pip download` would copy them; linking costs no disk. pip resolves the requirements
(``--dry-run --report``); each wheel it would take from a ``file://`` address on the same
filesystem is linked, and `pip download` afterwards fetches only what is still missing. Standard
library only.

Usage: ``python3 link_wheels.py FOLDER PIP_ARGUMENT [PIP_ARGUMENT ...]``
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote, urlparse


def local_wheels(pip_arguments: list[str]) -> list[Path]:
    """The wheel files pip would install for ``pip_arguments`` that lie on this host's disk.

    Args:
        pip_arguments: Requirements and options for ``pip install`` (``-c FILE``, ``torch==2.14.1``).

    Returns:
        Paths of the local wheels, in pip's install order.
    """
    command = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--dry-run",
        "--ignore-installed",
        "--quiet",
        "--disable-pip-version-check",
        "--report",
        "-",
        *pip_arguments,
    ]
    report = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
    urls = (urlparse(item["download_info"]["url"]) for item in report["install"])
    return [Path(unquote(url.path)) for url in urls if url.scheme == "file" and url.path.endswith(".whl")]


def link_into(folder: Path, wheels: list[Path]) -> int:
    """Hard-link each wheel into ``folder`` unless it is there; returns how many were linked."""
    folder.mkdir(parents=True, exist_ok=True)
    linked = 0
    for wheel in wheels:
        destination = folder / wheel.name
        if destination.exists() or os.stat(wheel).st_dev != os.stat(folder).st_dev:
            continue
        os.link(wheel, destination)
        linked += 1
    return linked


def main() -> None:
    """Command line: see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("pip_arguments", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    linked = link_into(args.folder, local_wheels(args.pip_arguments))
    print(f"link_wheels: {linked} wheels linked into {args.folder}", file=sys.stderr)


if __name__ == "__main__":
    main()
