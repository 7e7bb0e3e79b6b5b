"""Print requirement lines from pyproject.toml, one a line, for pip's ``-r``.

Image builds install the dependencies in a layer of their own before the source is copied,
so a code change rebuilds only the small layer that installs the package itself. Standard
library only (``tomllib``): it runs on the image's bare Python.

Usage: ``python3 requirements.py PYPROJECT [--no-base] [--build-system] [EXTRA ...]``
"""

from __future__ import annotations

import argparse
import tomllib


def requirements(pyproject: str, extras: list[str], base: bool = True, build: bool = False) -> list[str]:
    """The project's base dependencies (unless ``base`` is false) plus those of each extra.

    Args:
        pyproject: Path of pyproject.toml.
        extras: Names under ``[project.optional-dependencies]``; an unknown name raises KeyError.
        base: Include ``[project] dependencies``.
        build: Include ``[build-system] requires``, so the package itself can later be installed
            with ``--no-build-isolation`` (no index needed for that step).

    Returns:
        Requirement strings in file order.
    """
    with open(pyproject, "rb") as handle:
        parsed = tomllib.load(handle)
    project = parsed["project"]
    lines = list(project["dependencies"]) if base else []
    for extra in extras:
        lines += project["optional-dependencies"][extra]
    if build:
        lines += parsed["build-system"]["requires"]
    return lines


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pyproject")
    parser.add_argument("extras", nargs="*", help="extra names, separate or comma-separated")
    parser.add_argument("--no-base", action="store_true", help="only the extras' requirements")
    parser.add_argument("--build-system", action="store_true", help="add the build-system requirements")
    args = parser.parse_intermixed_args()
    extras = [name for arg in args.extras for name in arg.split(",") if name]
    print("\n".join(requirements(args.pyproject, extras, base=not args.no_base, build=args.build_system)))
