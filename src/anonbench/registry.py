"""The MLflow Model Registry: every trained and fine-tuned model, its lineage, the evaluations that scored it.

One registered model per detector family, size and training variant (``anonbench-yolov10-m-org``,
``anonbench-yolov8-n-org``, ``anonbench-yolov10-n-org-ft-head``); each training registers a new
version (one per study), whose source is the run's ``weights/`` artifact folder (``best.pt`` and
``last.pt``). A version's tags carry
its lineage: the run's code, image and data tags (:func:`anonbench.tracking.lineage_tags`) and the
digest of the exported dataset it trained on (``train_data_digest``). An evaluation run is tagged with
the version it scored (``registered_model``), and the version with the evaluation run
(``eval.<eval data>``), so the Models page leads to the scores and the runs table to the model.

Anyone with access to the tracking server fetches a version's weights with ``anonbench model fetch``
or ``mlflow.artifacts.download_artifacts(artifact_uri="models:/<name>/<version>")``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from anonbench.families import DEFAULT_FAMILY
from anonbench.tracking import data_hashes, lineage_tags

REGISTERED_TAG = "registered_model"  # on evaluation runs: "<name>/<version>" of the model they scored


def model_name(tags: dict[str, str]) -> str:
    """The registered model of a training, from its MLflow tags.

    Args:
        tags: The training's ``family`` (YOLOv10 where absent), ``model_size``, ``train_data`` and, for a
            fine-tuning, ``freeze``.

    Returns:
        ``anonbench-<family>-<size>-<train data>`` with ``-ft-<freeze>`` for a fine-tuned model.
    """
    name = f"anonbench-{tags.get('family', DEFAULT_FAMILY)}-{tags['model_size']}-{tags['train_data']}"
    return f"{name}-ft-{tags['freeze']}" if "freeze" in tags else name


def dataset_digest(folder: Path, lock: Path = Path("dvc.lock")) -> str:
    """The DVC hash of a dataset folder: from dvc.lock (``dvc repro``), else from a workspace's pointers.

    KFP publishes the anonymized variants, not their YOLO exports, so an export is found among a
    workspace's pointers only where a publish target names it.

    Args:
        folder: The exported dataset (``data/yolo/<variant>``), as the stage was given it.
        lock: The DVC lock file of the repository the stage runs in.

    Returns:
        The folder's ``<md5>.dir``, or 'unknown' when neither DVC record names it (a bare CLI run).
    """
    try:
        key = folder.resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:  # outside the repository: no DVC record names it
        key = folder.as_posix()
    if lock.is_file():
        stages = (yaml.safe_load(lock.read_text(encoding="utf-8")) or {}).get("stages") or {}
        for stage in stages.values():
            for out in stage.get("outs") or []:
                if out.get("path") == key and "md5" in out:
                    return str(out["md5"])
    return data_hashes().get(key, "unknown")


def register(run: Any, tags: dict[str, str], dataset: Path, reads: Sequence[Path]) -> dict[str, str]:
    """Register the weights a training run logged under ``weights/`` as a new version of its model.

    Args:
        run: The active training run (its weights already logged).
        tags: The training's MLflow tags (see :func:`model_name`); copied onto the version.
        dataset: The exported dataset it trained on, for ``train_data_digest``.
        reads: The folders the training read, for the lineage tags (as its run has them).

    Returns:
        ``{"name": ..., "version": ...}`` for train.json.
    """
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient()
    name = model_name(tags)
    try:
        client.create_registered_model(name, description="A detector trained by anonbench (see the version tags).")
    except MlflowException as err:
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    lineage = {**lineage_tags(reads), **tags, "train_data_digest": dataset_digest(dataset)}
    version = client.create_model_version(
        name, source=f"{run.info.artifact_uri}/weights", run_id=run.info.run_id, tags=lineage
    )
    return {"name": name, "version": str(version.version)}


def link_evaluation(registered: dict[str, str], eval_data: str, eval_run_id: str) -> bool:
    """Tie an evaluation run and the model version it scored to each other.

    Args:
        registered: The model's ``{"name", "version"}`` from its train.json.
        eval_data: The variant it was evaluated on (the version tag ``eval.<eval data>``).
        eval_run_id: The evaluation's MLflow run.

    Returns:
        False when the store does not hold that version (weights trained against another store, or a
        store made anew since): the evaluation stands, only the link is missing.
    """
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient()
    try:
        client.set_model_version_tag(registered["name"], registered["version"], f"eval.{eval_data}", eval_run_id)
    except MlflowException as err:
        if err.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        return False
    client.set_tag(eval_run_id, REGISTERED_TAG, f"{registered['name']}/{registered['version']}")
    return True


def fetch(name: str, version: str, dest: Path) -> list[Path]:
    """Download a registered version's weights (what the tracking URI in effect points at).

    Args:
        name: Registered model, e.g. ``anonbench-yolov10-n-org``.
        version: Its version number, or an alias as ``@alias``.
        dest: Folder to download into (created).

    Returns:
        The downloaded files (``best.pt``, ``last.pt``).
    """
    import mlflow

    dest.mkdir(parents=True, exist_ok=True)
    uri = f"models:/{name}{version if version.startswith('@') else '/' + version}"
    folder = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dest)))
    return sorted(p for p in folder.rglob("*") if p.is_file())
