"""MLflow tracking: one place that sets the store, the experiment and the common tags.

Every run carries its lineage: the code (``git_commit``), the container image it ran in
(``image``, ``image_digest``, ``image_revision``) and the data (``dvc_revision`` and one
``dvc.<path>`` tag per dataset a KFP workspace has published that the run reads). Inside the project's images
the commit and revision come from the environment the image was built with (its
``org.opencontainers.image.revision`` label has the same value); the image reference and
digest are set per task by the compiled pipeline (``components/images.py``).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from anonbench.config import Config

PACKAGE_DIR = Path(__file__).resolve().parent
COMMIT_ENV = "ANONBENCH_GIT_COMMIT"  # baked into the images: the commit they were built from
REVISION_ENV = "ANONBENCH_IMAGE_REVISION"  # baked into the images: their revision label's value (the tag)
IMAGE_ENV = "ANONBENCH_IMAGE"  # set per task by the pipeline: the image reference it runs
DIGEST_ENV = "ANONBENCH_IMAGE_DIGEST"  # set per task by the pipeline: that image's digest, where known
# Where the publish stage leaves DVC pointers (<target>.dvc beside each published folder), relative to a workspace.
POINTER_GLOBS = ("*.dvc", "*/*.dvc", "*/*/*.dvc")


def git_commit() -> str:
    """Commit of the running code: the image's ``ANONBENCH_GIT_COMMIT``, else git in the package's checkout.

    Returns:
        The full commit hash, or 'unknown' for an installed package outside a checkout.
    """
    if os.environ.get(COMMIT_ENV):
        return os.environ[COMMIT_ENV]
    try:
        out = subprocess.run(
            ["git", "-C", str(PACKAGE_DIR), "rev-parse", "HEAD"], capture_output=True, text=True, check=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip()


def data_hashes(root: Path = Path("."), reads: Sequence[Path] | None = None) -> dict[str, str]:
    """DVC hash of the datasets published in a workspace that a run reads, from the publish stage's pointers.

    Args:
        root: The workspace (the current folder when a stage runs).
        reads: The folders the run reads; a dataset counts when it holds one of them or lies inside
            one (``models`` for ``models/org-n``). None: every published dataset (the report).

    Returns:
        ``{"data/variants/blur": "<md5>.dir", ...}``.
    """
    wanted = None if reads is None else [os.path.abspath(folder) for folder in reads]
    found = {}
    for pattern in POINTER_GLOBS:
        for pointer in sorted(p for p in root.glob(pattern) if p.is_file()):
            dataset = os.path.abspath(pointer.with_suffix(""))
            if wanted is not None and not any(_nested(dataset, folder) for folder in wanted):
                continue
            outs = (yaml.safe_load(pointer.read_text(encoding="utf-8")) or {}).get("outs") or []
            if outs and "md5" in outs[0]:
                found[pointer.relative_to(root).with_suffix("").as_posix()] = str(outs[0]["md5"])
    return found


def _nested(a: str, b: str) -> bool:
    """Whether one of two absolute paths is the other or lies inside it."""
    return os.path.commonpath([a, b]) in (a, b)


def dvc_revision(lock: Path = Path("dvc.lock"), reads: Sequence[Path] | None = None) -> str:
    """A short hash naming the exact data a run used: of dvc.lock, else of the published datasets it reads."""
    if lock.is_file():
        return hashlib.sha256(lock.read_bytes()).hexdigest()[:12]
    hashes = data_hashes(lock.parent, reads)
    if not hashes:
        return "none"
    return hashlib.sha256(repr(sorted(hashes.items())).encode()).hexdigest()[:12]


def image_digest() -> str:
    """The digest of the image a task runs in: from a reference pinned by digest, else as the pipeline gave it."""
    reference = os.environ.get(IMAGE_ENV, "")
    if "@sha256:" in reference:
        return reference.split("@", 1)[1]
    return os.environ.get(DIGEST_ENV) or "unknown"


def lineage_tags(reads: Sequence[Path] | None) -> dict[str, str]:
    """Tags tying a run to its code, image and the published data it ``reads`` (see :func:`data_hashes`)."""
    return {
        "git_commit": git_commit(),
        "image": os.environ.get(IMAGE_ENV) or "none",
        "image_digest": image_digest() if os.environ.get(IMAGE_ENV) else "none",
        "image_revision": os.environ.get(REVISION_ENV) or "none",
        "dvc_revision": dvc_revision(reads=reads),
        **{f"dvc.{path}": md5 for path, md5 in data_hashes(reads=reads).items()},
    }


def local_artifact_location(uri: str) -> str | None:
    """Artifacts of a local sqlite store go beside its database, not into whatever folder is current.

    Returns:
        A ``file://`` URI of ``<db folder>/mlartifacts`` for ``sqlite:///`` stores, else None (server default).
    """
    if not uri.startswith("sqlite:///"):
        return None
    return (Path(uri.removeprefix("sqlite:///")).resolve().parent / "mlartifacts").as_uri()


def ensure_experiment(cfg: Config) -> None:
    """Point MLflow at the configured store and experiment, creating it (artifacts beside a local store) if missing.

    The experiment carries :func:`anonbench.tracking_ui.experiment_tags` (a model-training experiment, the
    default runs-table view); an experiment made before them gets them now.
    """
    import mlflow

    from anonbench.tracking_ui import experiment_tags

    uri = cfg.tracking.resolved_uri
    mlflow.set_tracking_uri(uri)
    tags = experiment_tags()
    experiment = mlflow.get_experiment_by_name(cfg.tracking.experiment)
    if experiment is None:
        mlflow.create_experiment(cfg.tracking.experiment, artifact_location=local_artifact_location(uri), tags=tags)
    mlflow.set_experiment(cfg.tracking.experiment)
    if experiment is not None and not tags.items() <= experiment.tags.items():
        mlflow.set_experiment_tags(tags)


@contextmanager
def mlflow_run(
    cfg: Config,
    name: str,
    stage: str,
    tags: dict[str, Any] | None = None,
    run_id: str | None = None,
    *,
    reads: Sequence[Path] | None,
) -> Iterator[Any]:
    """Start an MLflow run in the configured store and experiment with the common tags.

    Args:
        cfg: The run's configuration (tracking URI, experiment, profile, seed).
        name: Run name shown in the MLflow UI.
        stage: Pipeline stage, stored as the ``stage`` tag.
        tags: Further tags (train_data, model_size, ...).
        run_id: Resume this existing run (an interrupted training) instead of starting a new one.
        reads: The folders the stage reads, for the data lineage tags (None: every published dataset).

    Yields:
        The active MLflow run.
    """
    import mlflow

    ensure_experiment(cfg)
    common = {"stage": stage, "profile": cfg.profile, "seed": str(cfg.seed), **lineage_tags(reads)}
    with mlflow.start_run(
        run_id=run_id, run_name=name, tags={**common, **{k: str(v) for k, v in (tags or {}).items()}}
    ) as run:
        yield run
