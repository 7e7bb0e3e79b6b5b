"""train: YOLOv10 of one size from scratch (yaml, no weights) on one exported variant.

Output: ``models/<variant>-<size>/`` with ``weights/best.pt``, ``weights/last.pt``
and ``train.json``. The run is offline, tracked as one MLflow run, resumed from
``last.pt`` after an interruption and skipped once ``train.json`` exists
(:func:`anonbench.yolo.train_tracked`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, get_args

from anonbench.config import Config, ModelSize
from anonbench.yolo import TrainJob, check_variant, dataset_yaml, model_dir, require, runtime_args, train_tracked


def train_args(cfg: Config, data: Path) -> dict[str, Any]:
    """The Ultralytics arguments of a training from scratch on the dataset yaml ``data``.

    docs/fidelity.md compares them, resolved over Ultralytics' defaults, with the authors' run.
    """
    return {
        **runtime_args(cfg),
        "data": str(data.resolve()),
        "epochs": cfg.train.epochs,
        "batch": cfg.train.batch,
        "optimizer": cfg.train.optimizer,
    }


def run(cfg: Config, variant: str, size: str) -> list[Path]:
    """Train YOLOv10-``size`` on ``data/yolo/<variant>/`` into ``models/<variant>-<size>/``.

    Args:
        cfg: Configuration (``train`` section, seed, tracking).
        variant: ``org`` or an anonymization method, already exported.
        size: One of n, s, m, l, x.

    Returns:
        ``weights/best.pt``, ``weights/last.pt`` and ``train.json``.

    Raises:
        ValueError: For an unknown variant or size.
        FileNotFoundError: If the variant has not been exported.
    """
    check_variant(cfg, variant)
    if size not in get_args(ModelSize):
        raise ValueError(f"size {size!r} is not one of {get_args(ModelSize)}")
    data = require(dataset_yaml(cfg, variant), f"export --variant {variant}")
    job = TrainJob(
        out_dir=model_dir(cfg, f"{variant}-{size}"),
        start=f"yolov10{size}.yaml",
        args=train_args(cfg, data),
        stage="train",
        tags={"train_data": variant, "model_size": size},
        reads=[cfg.variant_root(variant)],
    )
    return train_tracked(cfg, job)
