"""Hard-link installed packages and everything they require from this environment into another.

`make dp2-env` runs it with .venv's Python before pip fills .venv-dp2: torch with its CUDA
libraries and triton is 5.3 GB, the same files in both environments (both install under
requirements/constraints.txt), so linking them halves the disk two environments take and pip then
finds torch already satisfied. Only files inside site-packages are linked; console scripts, whose
first line names this environment's Python, are left for pip. A distribution the target already
has is left alone. Where a link fails (another filesystem) nothing is linked and pip installs as
usual. Standard library plus ``packaging``.

Usage: ``SOURCE_PYTHON seed_venv.py TARGET_PYTHON PACKAGE [PACKAGE ...]``
"""

from __future__ import annotations

import argparse
import importlib.metadata as metadata
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name


def closure(names: list[str]) -> list[metadata.Distribution]:
    """The installed distributions of ``names`` and, recursively, of what they require here.

    Args:
        names: Distribution names, optionally with extras (``cuda-toolkit[cublas]``).

    Returns:
        Each distribution once, in discovery order.

    Raises:
        metadata.PackageNotFoundError: A named or required distribution is not installed here.
    """
    found: dict[str, metadata.Distribution] = {}
    pending = [Requirement(name) for name in names]
    while pending:
        requirement = pending.pop()
        key = canonicalize_name(requirement.name)
        dist = found.get(key) or metadata.distribution(requirement.name)
        first = key not in found
        found[key] = dist
        extras = {""} | set(requirement.extras) if first else set(requirement.extras)
        for line in dist.requires or []:
            needed = Requirement(line)
            if needed.marker is None or any(needed.marker.evaluate({"extra": extra}) for extra in extras):
                pending.append(needed)
    return list(found.values())


def target_site_packages(python: str) -> Path:
    """The purelib folder of the environment whose interpreter is ``python``."""
    code = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    return Path(subprocess.run([python, "-c", code], check=True, capture_output=True, text=True).stdout.strip())


def installed_in(site: Path) -> set[str]:
    """Canonical names of the distributions installed in ``site``."""
    return {canonicalize_name(dist.metadata["Name"]) for dist in metadata.distributions(path=[str(site)])}


def seed(target_python: str, names: list[str]) -> int:
    """Link the closure of ``names`` into the target environment; returns the files linked."""
    source = Path(sysconfig.get_paths()["purelib"]).resolve()
    target = target_site_packages(target_python)
    present = installed_in(target)
    files: list[Path] = []
    for dist in closure(names):
        if canonicalize_name(dist.metadata["Name"]) in present:
            continue
        for relative in dist.files or []:
            path = (source / relative).resolve()
            if path.is_relative_to(source) and path.is_file():
                files.append(path.relative_to(source))
    if os.stat(source).st_dev != os.stat(target).st_dev:
        print(f"seed_venv: {source} and {target} are on different filesystems; nothing linked", file=sys.stderr)
        return 0
    for relative in files:
        destination = target / relative
        destination.parent.mkdir(parents=True, exist_ok=True)
        if not destination.exists():
            os.link(source / relative, destination)
    return len(files)


def main() -> None:
    """Command line: see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target_python", help="the interpreter of the environment to fill")
    parser.add_argument("packages", nargs="+", help="distributions to link with all they require")
    args = parser.parse_args()
    count = seed(args.target_python, args.packages)
    print(f"seed_venv: {count} files linked into {args.target_python}'s environment", file=sys.stderr)


if __name__ == "__main__":
    main()
