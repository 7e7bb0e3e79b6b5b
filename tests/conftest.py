"""Shared fixtures: the real params.yaml, shrunk per test; coco-mini found like the Makefile finds it."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from anonbench.config import Config, load_config
from anonbench.offline import go_offline

REPO = Path(__file__).resolve().parents[1]
PARAMS = REPO / "params.yaml"

go_offline()


@pytest.fixture(scope="session")
def coco_mini() -> Path:
    """The read-only coco-mini folder (ANONBENCH_COCO_MINI, else ../shared beside the checkout)."""
    env = os.environ.get("ANONBENCH_COCO_MINI")
    folder = Path(env) if env else REPO.parent / "shared" / "data" / "coco-mini"
    if not (folder / "SHA256SUMS").is_file():
        pytest.fail(f"coco-mini not found at {folder}: set ANONBENCH_COCO_MINI (make test does)")
    return folder


@pytest.fixture
def make_config(tmp_path: Path, coco_mini: Path) -> Callable[..., Config]:
    """Load the real params.yaml with outputs under tmp_path, coco-mini as the local copy, plus overrides."""

    def _make(*overrides: str, profile: str | None = None) -> Config:
        base = [
            f"paths.data={tmp_path / 'data'}",
            f"paths.models={tmp_path / 'models'}",
            f"paths.metrics={tmp_path / 'metrics'}",
            f"paths.reports={tmp_path / 'reports'}",
            f"data.local_copy={coco_mini}",
            f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
        ]
        return load_config(PARAMS, profile, [*base, *overrides])

    return _make
