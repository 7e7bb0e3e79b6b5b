"""Plumbing every benchmark shares: where coco-mini is, what machine ran it, where results go."""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


def arguments(description: str) -> argparse.ArgumentParser:
    """A parser with ``--coco-mini`` (default: ANONBENCH_COCO_MINI, else ../shared beside the checkout)."""
    parser = argparse.ArgumentParser(description=description.splitlines()[0])
    default = os.environ.get("ANONBENCH_COCO_MINI") or str(REPO.parent / "shared" / "data" / "coco-mini")
    parser.add_argument("--coco-mini", type=Path, default=Path(default))
    return parser


def machine(**extra: Any) -> dict[str, Any]:
    """What the numbers were measured on (they mean little without it)."""
    return {"cpus": os.cpu_count(), "python": platform.python_version(), **extra}


def write_results(name: str, result: dict[str, Any]) -> None:
    """Write ``benchmarks/results/<name>.json`` (committed with the code it measures) and print it."""
    text = json.dumps(result, indent=2) + "\n"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(text)
    print(text, end="")
