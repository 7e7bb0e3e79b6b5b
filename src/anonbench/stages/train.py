"""train: a detector of one family and size from scratch (yaml, no weights) on one exported variant.

Output: ``models/<model id>/`` (``org-n`` for YOLOv10, ``org-yolov8-n`` for another family,
:func:`anonbench.config.model_id`) with ``weights/best.pt``, ``weights/last.pt``
and ``train.json``. The run is offline, tracked as one MLflow run, resumed from
``last.pt`` after an interruption and skipped once ``train.json`` exists
(:func:`anonbench.yolo.train_tracked`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, get_args

from anonbench.config import Config, ModelSize, model_id
from anonbench.families import DEFAULT_FAMILY, spec
from anonbench.yolo import TrainJob, check_variant, dataset_yaml, model_dir, require, runtime_args, train_tracked


def train_args(cfg: Config, data: Path, family: str = DEFAULT_FAMILY) -> dict[str, Any]:
    """The Ultralytics arguments of a training from scratch on the dataset yaml ``data``.

    docs/fidelity.md compares YOLOv10's, resolved over Ultralytics' defaults, with the authors' run.
    """
    return {
        **runtime_args(cfg, family),
        "data": str(data.resolve()),
        "epochs": cfg.train.epochs,
        "batch": cfg.train.batch,
        "optimizer": cfg.train.optimizer,
    }


def run(cfg: Config, variant: str, size: str, family: str = DEFAULT_FAMILY) -> list[Path]:
    """Train ``family``-``size`` on ``data/yolo/<variant>/`` into ``models/<model id>/``.

    Args:
        cfg: Configuration (``train`` section, seed, tracking).
        variant: ``org`` or an anonymization method, already exported.
        size: One of n, s, m, l, x that the family has (RT-DETR: l, x).
        family: A detector family (:mod:`anonbench.families`); any, not only ``train.families``, so one
            model of another family can be trained beside a study.

    Returns:
        ``weights/best.pt``, ``weights/last.pt`` and ``train.json``.

    Raises:
        ValueError: For an unknown variant, family or size, or a size the family does not have.
        FileNotFoundError: If the variant has not been exported.
    """
    check_variant(cfg, variant)
    if size not in get_args(ModelSize):
        raise ValueError(f"size {size!r} is not one of {get_args(ModelSize)}")
    yaml = spec(family).model_yaml(size)
    data = require(dataset_yaml(cfg, variant), f"export --variant {variant}")
    job = TrainJob(
        out_dir=model_dir(cfg, model_id(variant, size, family)),
        start=yaml,
        args=train_args(cfg, data, family),
        stage="train",
        tags={"train_data": variant, "family": family, "model_size": size},
        reads=[cfg.variant_root(variant)],
        family=family,
    )
    return train_tracked(cfg, job)
