"""Check that two output trees of the same stages hold the same results (docker CI).

Every file must exist in both trees and be byte-identical, except where bytes may
honestly differ while the results are the same:

- Rerun stamps (``.stamp_*``, named in ``STAMPS``): fingerprints of a stage's inputs built
  from file sizes and modification times, so a rerun can skip finished work. They record
  when the inputs were written, not what the stage computed, and are not compared.
- JSON: wall-clock durations (keys named in ``VOLATILE_KEYS``) are dropped before
  comparing the parsed values; every other value must be equal.
- Parquet: the decoded tables must be equal (schema and values); the file bytes may
  differ only through metadata the writer embeds.

Usage: ``python compare_outputs.py HOST_TREE CONTAINER_TREE``; exits 1 listing each difference,
else prints how many files were equal by each rule.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

VOLATILE_KEYS = frozenset({"seconds", "seconds_total"})
STAMPS = ".stamp_*"


def _without_volatile(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_volatile(v) for k, v in value.items() if k not in VOLATILE_KEYS}
    if isinstance(value, list):
        return [_without_volatile(v) for v in value]
    return value


def compare_file(left: Path, right: Path) -> tuple[bool, str]:
    """Compare two files of the same name.

    Args:
        left: A file of the first tree.
        right: The file of the same relative path in the second tree.

    Returns:
        Whether they hold the same result, and by which rule: ``bytes``, ``JSON values`` (byte
        differences only in wall-clock durations) or ``Parquet tables``.
    """
    if left.read_bytes() == right.read_bytes():
        return True, "bytes"
    if left.suffix == ".json":
        same = _without_volatile(json.loads(left.read_text())) == _without_volatile(json.loads(right.read_text()))
        return same, "JSON values"
    if left.suffix == ".parquet":
        return pq.read_table(left).equals(pq.read_table(right)), "Parquet tables"
    return False, "bytes"


def compare_trees(left: Path, right: Path) -> tuple[Counter[str], list[str]]:
    """Compare every file under two folders (rerun stamps aside).

    Args:
        left: First tree (for example the stages run on the host).
        right: Second tree (the same stages run in the container).

    Returns:
        How many files were equal by each rule, and one line per difference (empty when the trees agree).
    """
    files, other = (
        {p.relative_to(root) for p in root.rglob("*") if p.is_file() and not fnmatch.fnmatch(p.name, STAMPS)}
        for root in (left, right)
    )
    problems = [f"only in {left}: {p}" for p in sorted(files - other)]
    problems += [f"only in {right}: {p}" for p in sorted(other - files)]
    equal: Counter[str] = Counter()
    for rel in sorted(files & other):
        same, rule = compare_file(left / rel, right / rel)
        if same:
            equal[rule] += 1
        else:
            problems.append(f"{rel}: {rule} differ")
    return equal, problems


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("left", type=Path)
    parser.add_argument("right", type=Path)
    args = parser.parse_args()
    equal, problems = compare_trees(args.left, args.right)
    rules = ", ".join(f"{count} by {rule}" for rule, count in sorted(equal.items()))
    print("\n".join(problems) or f"{equal.total()} files: the same results in both trees ({rules})")
    sys.exit(1 if problems or not equal else 0)
