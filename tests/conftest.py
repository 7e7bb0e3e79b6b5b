"""Shared fixtures: the real params.yaml, shrunk per test; coco-mini found like the Makefile finds it."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from anonbench.config import Config, load_config
from anonbench.offline import configure_ultralytics, go_offline

REPO = Path(__file__).resolve().parents[1]
PARAMS = REPO / "params.yaml"
SPLITS = ("train2017", "val2017")
# What a DP2 variant's coverage file records for a run with anonymize.dp2.mode=gt, untrained=true on the CPU.
DP2_UNTRAINED_GT = {
    "mode": "gt",
    "untrained": True,
    "config": "configs/fdh/styleganL_nocse.py",
    "device": "cpu",
    "amp": False,
}

go_offline()
if importlib.util.find_spec("ultralytics") is not None:  # not in the DeepPrivacy2 environment (.venv-dp2)
    configure_ultralytics()


def pytest_runtest_setup(item: pytest.Item) -> None:
    """``dp2`` tests need DeepPrivacy2 (``make dp2-env``): in CI its absence fails them, elsewhere skips them.
    ``gpu`` tests need a CUDA device and skip without one."""
    if item.get_closest_marker("dp2") and importlib.util.find_spec("dp2") is None:
        reason = "DeepPrivacy2 is not importable here: run `make dp2-env`, then .venv-dp2/bin/pytest -m dp2"
        if os.environ.get("CI") == "true":
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    if item.get_closest_marker("gpu"):
        import torch

        if not torch.cuda.is_available():
            pytest.skip("needs a CUDA device (none here)")


def kill_when(command: list[str], cwd: Path, ready: Callable[[], bool], timeout: float = 120) -> None:
    """Run a command in its own process group and SIGKILL the group once ``ready()`` holds (a preempted pod).

    Returns early, leaving the process killed, if it ends or ``timeout`` seconds pass first: the caller
    checks that the kill came mid-way.
    """
    process = subprocess.Popen(command, cwd=cwd, start_new_session=True, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while not ready() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


@pytest.fixture(scope="session")
def coco_mini() -> Path:
    """The read-only coco-mini folder (ANONBENCH_COCO_MINI, else ../shared beside the checkout)."""
    env = os.environ.get("ANONBENCH_COCO_MINI")
    folder = Path(env) if env else REPO.parent / "shared" / "data" / "coco-mini"
    if not (folder / "SHA256SUMS").is_file():
        pytest.fail(f"coco-mini not found at {folder}: set ANONBENCH_COCO_MINI (make test does)")
    return folder


def coco_slice(source: Path, target: Path, names: dict[str, list[str]]) -> Path:
    """Copy the named images of each split with their annotations into ``target``, COCO layout."""
    for split, wanted in names.items():
        instances = json.loads((source / "annotations" / f"instances_{split}.json").read_text())
        images = sorted((im for im in instances["images"] if im["file_name"] in wanted), key=lambda im: im["file_name"])
        assert len(images) == len(set(wanted)), f"not all of {wanted} are in {split}"
        keep = {im["id"] for im in images}
        instances["images"] = images
        instances["annotations"] = [a for a in instances["annotations"] if a["image_id"] in keep]
        (target / split).mkdir(parents=True, exist_ok=True)
        for image in images:
            shutil.copyfile(source / split / image["file_name"], target / split / image["file_name"])
        (target / "annotations").mkdir(parents=True, exist_ok=True)
        (target / "annotations" / f"instances_{split}.json").write_text(json.dumps(instances))
    return target


def subset_coco(source: Path, target: Path, counts: dict[str, int]) -> Path:
    """Copy the first images of each split (persons first) with their annotations, COCO layout."""
    names = {}
    for split, count in counts.items():
        instances = json.loads((source / "annotations" / f"instances_{split}.json").read_text())
        person_images = {a["image_id"] for a in instances["annotations"] if a["category_id"] == 1}
        ordered = sorted(instances["images"], key=lambda im: (im["id"] not in person_images, im["file_name"]))
        names[split] = [im["file_name"] for im in ordered[:count]]
    return coco_slice(source, target, names)


@pytest.fixture(scope="session")
def tiny_coco(coco_mini: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 12-train / 6-val slice of coco-mini (mostly images with persons) for fast tests."""
    return subset_coco(coco_mini, tmp_path_factory.mktemp("tiny-coco"), {"train2017": 12, "val2017": 6})


def variant_digests(root: Path) -> dict[str, str]:
    """Every deterministic output file of a variant (all but the resume records and wall-clock timings) by hash."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "records" not in p.relative_to(root).parts and not p.name.startswith("timings_")
    }


def made_variant(source: Path, data: Path, method: str, split: str) -> Path:
    """``method``'s variant of ``source``'s ``split``, made by the real anonymize stage under ``data``; its root."""
    from anonbench.stages import anonymize

    cfg = load_config(PARAMS, None, [f"paths.data={data}", f"tracking.uri=sqlite:///{data}/mlflow.db"])
    cfg.source_root.parent.mkdir(parents=True)
    cfg.source_root.symlink_to(source, target_is_directory=True)
    anonymize.run(cfg, method, splits=[split])
    return cfg.variant_root(method)


def config_under(
    root: Path, coco_mini: Path, *overrides: str, profile: str | None = None, source: Path | None = None
) -> Config:
    """The real params.yaml with every output under ``root``, plus overrides.

    The original dataset (``cfg.source_root``) is linked to ``source`` (default
    coco-mini), as the fetch stage would have materialized it.
    """
    base = [
        f"paths.data={root / 'data'}",
        f"paths.models={root / 'models'}",
        f"paths.metrics={root / 'metrics'}",
        f"paths.reports={root / 'reports'}",
        f"data.local_copy={coco_mini}",
        f"tracking.uri=sqlite:///{root / 'mlflow.db'}",
    ]
    cfg = load_config(PARAMS, profile, [*base, *overrides])
    if not cfg.source_root.exists():
        cfg.source_root.parent.mkdir(parents=True, exist_ok=True)
        cfg.source_root.symlink_to(source or coco_mini, target_is_directory=True)
    return cfg


def cli_args(cfg: Config, *sets: str) -> list[str]:
    """Options that give the CLI the same parameters, folders and store as ``cfg``."""
    pairs = [f"paths.{p}={getattr(cfg.paths, p)}" for p in ("data", "models", "metrics")]
    pairs += [f"tracking.uri={cfg.tracking.uri}", *sets]
    return ["--params", str(PARAMS), *(arg for pair in pairs for arg in ("--set", pair))]


@pytest.fixture
def make_config(tmp_path: Path, coco_mini: Path) -> Callable[..., Config]:
    """:func:`config_under` ``tmp_path``: load the real params.yaml with outputs under tmp_path, plus overrides."""

    def _make(*overrides: str, profile: str | None = None, source: Path | None = None) -> Config:
        return config_under(tmp_path, coco_mini, *overrides, profile=profile, source=source)

    return _make


@pytest.fixture(autouse=True)
def _own_tracking_uri(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test logs to its config's store: mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI, which
    Tracking.resolved_uri (the cluster's override) would otherwise carry into every later test."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.fixture(scope="session")
def mlflow_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty MLflow sqlite store, tables made once: making them costs seconds per new database."""
    import mlflow

    db = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    mlflow.MlflowClient(f"sqlite:///{db}").search_experiments()
    return db


@pytest.fixture
def mlflow_db(tmp_path: Path, mlflow_template: Path) -> Path:
    """The store make_config points at (tmp_path/mlflow.db), copied from the template: request it to save time."""
    return Path(shutil.copyfile(mlflow_template, tmp_path / "mlflow.db"))


# A dataset's own category table, as a user's COCO-format folder may have it: ids renumbered (not COCO's
# 1..90; ascending id runs in reverse COCO order), one category missing, one named differently, listed by name.
DROPPED, RENAMED = "toothbrush", ("umbrella", "parasol")


def own_categories(categories: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[int, int]]:
    """COCO's category records turned into such a table, and the map from COCO ids to the new ids."""
    new_id = {c["id"]: 1000 - 10 * k for k, c in enumerate(categories)}
    table = [
        {**c, "id": new_id[c["id"]], "name": RENAMED[1] if c["name"] == RENAMED[0] else c["name"]}
        for c in categories
        if c["name"] != DROPPED
    ]
    return sorted(table, key=lambda c: c["name"]), {c["id"]: new_id[c["id"]] for c in categories}


def renumber_folder(source: Path, target: Path, splits: dict[str, str]) -> Path:
    """Copy a COCO-layout folder under new split names with :func:`own_categories` (annotations of the
    dropped category are dropped too: a dataset that never had the class)."""
    for old, new in splits.items():
        instances = json.loads((source / "annotations" / f"instances_{old}.json").read_text())
        dropped = {c["id"] for c in instances["categories"] if c["name"] == DROPPED}
        instances["categories"], new_id = own_categories(instances["categories"])
        instances["annotations"] = [
            {**a, "category_id": new_id[a["category_id"]]}
            for a in instances["annotations"]
            if a["category_id"] not in dropped
        ]
        shutil.copytree(source / old, target / new)
        (target / "annotations").mkdir(parents=True, exist_ok=True)
        (target / "annotations" / f"instances_{new}.json").write_text(json.dumps(instances))
    return target


@pytest.fixture(scope="session")
def built_report(
    tmp_path_factory: pytest.TempPathFactory, coco_mini: Path, tiny_coco: Path, mlflow_template: Path
) -> tuple[Config, list[Path]]:
    """The study report of tests/report_study.py's synthetic outputs, built once for the tests that only read it.

    A session fixture is made before the asking test's own fixtures (``_own_tracking_uri``), so the store an
    earlier test exported through MLFLOW_TRACKING_URI is cleared here too: the report logs to its own store.
    """
    from tests.report_study import build_report

    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        return build_report(tmp_path_factory.mktemp("report"), coco_mini, tiny_coco, mlflow_template)
