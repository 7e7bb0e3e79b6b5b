"""MLflow tracking: one place that sets the store, the experiment and the common tags.

Every run carries its lineage: the code (``git_commit``), the container image it ran in
(``image``, ``image_digest``, ``image_revision``) and the data (``dvc_revision`` and one
``dvc.<path>`` tag per dataset a KFP workspace has published that the run reads). Inside the project's images
the commit and revision come from the environment the image was built with (its
``org.opencontainers.image.revision`` label has the same value); the image reference and
digest are set per task by the compiled pipeline (``components/images.py``).

A stage's run spans its work (opened after the up-to-date check, before the work; ended FINISHED,
or FAILED with the error) and samples MLflow's system metrics. Work resumed after a kill continues
the run the killed process left RUNNING, found by the study and the run's name (DVC deletes a
stage's outputs before running it, so nothing kept there would survive). Every stage run is nested
under one study run per study (see :func:`study_run_id` and docs/orchestration.md).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
import traceback
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
PARENT_ENV = "ANONBENCH_PARENT_RUN_ID"  # an orchestrator's own study run: nest every stage run under it
PARENT_TAG = "mlflow.parentRunId"  # what MLflow's UI nests runs by
STUDY_TAG = "study"  # the study key the study run and its stage runs carry
STUDY_STAGE = "study"  # the study run's stage tag
# System metrics every 2 s: a stage of a few seconds still gets samples; each sample is one call to the store.
SYSTEM_METRICS_INTERVAL_S = 2.0
# Settings that say where a study runs or logs, not what it computes: left out of the params hash.
PLACE_SETTINGS: dict[str, Any] = {
    **dict.fromkeys(("paths", "workers", "worker_memory_gb", "tracking", "publish"), True),
    "data": {"local_copy": True},
}


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


def code_revision() -> str:
    """The code a study runs: the image's revision (version, commit, dirty marker) if any, else the commit."""
    return os.environ.get(REVISION_ENV) or git_commit()


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


def ensure_experiment(cfg: Config) -> str:
    """Point MLflow at the configured store and experiment, creating it (artifacts beside a local store) if missing.

    The experiment carries :func:`anonbench.tracking_ui.experiment_tags` (a model-training experiment, the
    default runs-table view); an experiment made before them gets them now.

    Returns:
        The experiment's id.
    """
    import mlflow

    from anonbench.tracking_ui import experiment_tags

    uri = cfg.tracking.resolved_uri
    mlflow.set_tracking_uri(uri)
    tags = experiment_tags()
    experiment = mlflow.get_experiment_by_name(cfg.tracking.experiment)
    if experiment is None:
        mlflow.create_experiment(cfg.tracking.experiment, artifact_location=local_artifact_location(uri), tags=tags)
    experiment_id = str(mlflow.set_experiment(cfg.tracking.experiment).experiment_id)
    if experiment is not None and not tags.items() <= experiment.tags.items():
        mlflow.set_experiment_tags(tags)
    return experiment_id


def params_hash(cfg: Config) -> str:
    """A short hash of the settings that decide a study's results (paths, worker counts and stores left out).

    Returns:
        12 hex digits; equal for two studies that compute the same thing with the same code.
    """
    settings = cfg.model_dump(mode="json", exclude=PLACE_SETTINGS)
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


def study_tags(cfg: Config) -> dict[str, str]:
    """What identifies a study: profile, params hash, code revision and workspace, and the key made of them.

    The workspace (the folder holding ``paths.data``: a checkout for ``dvc repro``, the shared volume's
    study folder for KFP) keeps two checkouts running the same study apart, and lets a resubmitted KFP
    run or a second ``dvc repro`` after a kill continue the study it left unfinished.
    """
    tags = {
        "profile": cfg.profile,
        "params_hash": params_hash(cfg),
        "code_revision": code_revision(),
        "workspace": str(cfg.paths.data.resolve().parent),
    }
    return {**tags, STUDY_TAG: hashlib.sha256(json.dumps(tags, sort_keys=True).encode()).hexdigest()[:16]}


def study_run_id(cfg: Config, experiment_id: str, tags: dict[str, str]) -> str:
    """The study run every stage run nests under: ``ANONBENCH_PARENT_RUN_ID``, else found or made by its tags.

    Stages run as separate processes (DVC, KFP pods) find the same run by searching the experiment for
    the study key of :func:`study_tags`; the first to find none creates it. Processes that race to
    create it all keep the oldest (ties broken by run id) and delete their own extra.

    Args:
        cfg: The study's configuration.
        experiment_id: Its experiment (:func:`ensure_experiment`).
        tags: Its :func:`study_tags`, as the stage run computed them.

    Returns:
        The study run's id (it stays RUNNING until the report stage ends it).
    """
    if os.environ.get(PARENT_ENV):
        return os.environ[PARENT_ENV]
    import mlflow

    client = mlflow.MlflowClient()
    query = f"tags.{STUDY_TAG} = '{tags[STUDY_TAG]}' and tags.stage = '{STUDY_STAGE}'"

    def oldest() -> str | None:
        runs = client.search_runs([experiment_id], query, max_results=50)
        return min(runs, key=lambda r: (r.info.start_time, r.info.run_id)).info.run_id if runs else None

    if (found := oldest()) is not None:
        return found
    name = f"study {cfg.profile} {tags['params_hash']}"
    mine = client.create_run(experiment_id, run_name=name, tags={**tags, "stage": STUDY_STAGE, **lineage_tags(None)})
    chosen = oldest() or mine.info.run_id
    if chosen != mine.info.run_id:
        client.delete_run(mine.info.run_id)
    else:  # what the params hash stands for, beside the run
        client.log_dict(mine.info.run_id, cfg.model_dump(mode="json", exclude=PLACE_SETTINGS), "params.json")
    return chosen


def finish_study(run_id: str, metrics: dict[str, float]) -> None:
    """End the study run FINISHED with the study's headline numbers, which two studies' runs compare by.

    Args:
        run_id: The study run (a stage run's ``mlflow.parentRunId``).
        metrics: Headline numbers (the report's).
    """
    import mlflow
    from mlflow.entities import Metric

    client = mlflow.MlflowClient()
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(key, value, now, 0) for key, value in sorted(metrics.items())])
    client.set_terminated(run_id, "FINISHED")


def _unfinished_run(client: Any, experiment_id: str, study: str, name: str) -> str | None:
    """The run of the same work in the same study that a killed process left RUNNING, if any."""
    query = f"tags.{STUDY_TAG} = '{study}' and attributes.run_name = '{name}' and attributes.status = 'RUNNING'"
    runs = client.search_runs([experiment_id], query, max_results=1)
    return runs[0].info.run_id if runs else None


@contextmanager
def mlflow_run(
    cfg: Config,
    name: str,
    stage: str,
    tags: dict[str, Any] | None = None,
    *,
    reads: Sequence[Path] | None,
) -> Iterator[Any]:
    """An MLflow run around a stage's work, nested under the study run, with the common tags and system metrics.

    Open it after the stage has found work to do and before doing it, so that its start, end and
    system metrics are the work's. An exception ends it FAILED with the error as the ``error`` tag
    and the traceback as ``error.txt``. A run of the same name that a killed process left RUNNING in
    the same study is continued: the rerun finishes that work (per-image stages skip what is done,
    a training resumes from its checkpoint or, with none, starts over in the same run).

    Args:
        cfg: The run's configuration (tracking URI, experiment, profile, seed).
        name: Run name shown in the MLflow UI; unique per piece of work in a study (a model id, a
            variant, a shard), so that a rerun after a kill finds the run the killed process left.
        stage: Pipeline stage, stored as the ``stage`` tag.
        tags: Further tags (train_data, model_size, ...).
        reads: The folders the stage reads, for the data lineage tags (None: every published dataset).

    Yields:
        The active MLflow run.
    """
    import mlflow

    experiment_id = ensure_experiment(cfg)
    client = mlflow.MlflowClient()
    study_run_tags = study_tags(cfg)
    study = {k: v for k, v in study_run_tags.items() if k != "workspace"}
    unfinished = _unfinished_run(client, experiment_id, study[STUDY_TAG], name)
    common = {
        "stage": stage,
        "profile": cfg.profile,
        "seed": str(cfg.seed),
        **lineage_tags(reads),
        **study,
    }
    if not os.environ.get("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL"):
        mlflow.set_system_metrics_sampling_interval(SYSTEM_METRICS_INTERVAL_S)
    all_tags = {**common, **{k: str(v) for k, v in (tags or {}).items()}}
    with mlflow.start_run(run_id=unfinished, run_name=name, tags=all_tags, log_system_metrics=True) as run:
        try:
            # Inside the run: the first stage of a study creates the study run, and that takes a while.
            mlflow.set_tag(PARENT_TAG, study_run_id(cfg, experiment_id, study_run_tags))
            yield run
        except BaseException as exc:
            mlflow.set_tag("error", f"{type(exc).__name__}: {exc}"[:4000])
            mlflow.log_text(traceback.format_exc(), "error.txt")
            raise
