"""MLflow tracking: one place that sets the store, the experiment and the common tags."""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from anonbench.config import Config


def git_commit() -> str:
    """Current git commit of the working tree, or 'unknown' outside a repository."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip()


def dvc_revision(lock: Path = Path("dvc.lock")) -> str:
    """A short hash of dvc.lock, naming the exact data and stage versions a run used."""
    return hashlib.sha256(lock.read_bytes()).hexdigest()[:12] if lock.is_file() else "none"


def local_artifact_location(uri: str) -> str | None:
    """Artifacts of a local sqlite store go beside its database, not into whatever folder is current.

    Returns:
        A ``file://`` URI of ``<db folder>/mlartifacts`` for ``sqlite:///`` stores, else None (server default).
    """
    if not uri.startswith("sqlite:///"):
        return None
    return (Path(uri.removeprefix("sqlite:///")).resolve().parent / "mlartifacts").as_uri()


def ensure_experiment(cfg: Config) -> None:
    """Point MLflow at the configured store and experiment, creating it (artifacts beside a local store) if missing."""
    import mlflow

    uri = cfg.tracking.resolved_uri
    mlflow.set_tracking_uri(uri)
    if mlflow.get_experiment_by_name(cfg.tracking.experiment) is None:
        mlflow.create_experiment(cfg.tracking.experiment, artifact_location=local_artifact_location(uri))
    mlflow.set_experiment(cfg.tracking.experiment)


@contextmanager
def mlflow_run(
    cfg: Config, name: str, stage: str, tags: dict[str, Any] | None = None, run_id: str | None = None
) -> Iterator[Any]:
    """Start an MLflow run in the configured store and experiment with the common tags.

    Args:
        cfg: The run's configuration (tracking URI, experiment, profile, seed).
        name: Run name shown in the MLflow UI.
        stage: Pipeline stage, stored as the ``stage`` tag.
        tags: Further tags (train_data, model_size, ...).
        run_id: Resume this existing run (an interrupted training) instead of starting a new one.

    Yields:
        The active MLflow run.
    """
    import mlflow

    ensure_experiment(cfg)
    common = {
        "stage": stage,
        "profile": cfg.profile,
        "seed": str(cfg.seed),
        "git_commit": git_commit(),
        "dvc_revision": dvc_revision(),
    }
    with mlflow.start_run(
        run_id=run_id, run_name=name, tags={**common, **{k: str(v) for k, v in (tags or {}).items()}}
    ) as run:
        yield run
