"""YOLOv10's own training criterion inside Ultralytics 8.4's trainer.

Ultralytics 8.4 builds ``E2ELoss`` for every head with a one-to-one branch
(``DetectionModel.init_criterion``), YOLOv10's included: YOLO26's schedule, the
one-to-many loss weighted 0.8 and decaying to 0.1 over the epochs, a top-7/top-1
one-to-one assigner. YOLOv10 (Wang et al. 2024, and the Ultralytics releases of
2024/25 the study's authors trained with) sums the one-to-many loss (assigner
top 10) and the one-to-one loss (assigner top 1) with equal weights for the whole
training. 8.4 still ships that criterion as ``E2EDetectLoss``.

:class:`V10Trainer` installs it on the trained model and on its EMA copy (which
validation scores) once the trainer is set up, after a resume has rebuilt the
default criterion, so it holds for fresh trainings from a yaml, fine-tunes from
a checkpoint and resumed ones alike. Only a ``v10Detect`` head gets it; any other
head keeps Ultralytics' default. The trainer class is not saved in checkpoints
(the model class stays Ultralytics' ``DetectionModel``), so the weights load
anywhere Ultralytics does. This module imports Ultralytics at the top: import it
only where training runs.
"""

from __future__ import annotations

from typing import Any, cast

from torch.nn import Module
from ultralytics.models.yolo.detect import DetectionTrainer
from ultralytics.nn.modules.head import v10Detect
from ultralytics.nn.tasks import BaseModel
from ultralytics.utils.loss import E2EDetectLoss, v8DetectionLoss
from ultralytics.utils.torch_utils import unwrap_model


def is_v10(model: BaseModel) -> bool:
    """Whether the model's last layer is YOLOv10's dual-branch head."""
    return isinstance(model.model[-1], v10Detect)  # type: ignore[index]


def install_criterion(model: BaseModel) -> Any:
    """Give ``model`` its family's criterion: ``E2EDetectLoss`` for a YOLOv10 head, Ultralytics' default otherwise.

    Returns:
        The criterion now in ``model.criterion`` (what :func:`describe` records).
    """
    model.criterion = E2EDetectLoss(model) if is_v10(model) else model.init_criterion()
    return model.criterion


def _assigner(loss: v8DetectionLoss) -> dict[str, int]:
    """The top-k of one branch's task-aligned assigner, as built."""
    return {"tal_topk": loss.assigner.topk}


def describe(criterion: Any) -> dict[str, Any]:
    """What a training criterion is, read from the object rather than assumed.

    Returns:
        ``{"class": "E2EDetectLoss", "one2many": {"tal_topk": 10, "weight": 1.0}, "one2one": {"tal_topk": 1,
        "weight": 1.0}}`` for YOLOv10's criterion (the assigners' top-k as built); only ``class`` for any
        other criterion.
    """
    if not isinstance(criterion, E2EDetectLoss):
        return {"class": type(criterion).__name__}
    return {
        "class": type(criterion).__name__,
        "one2many": {**_assigner(criterion.one2many), "weight": 1.0},  # E2EDetectLoss sums the two losses
        "one2one": {**_assigner(criterion.one2one), "weight": 1.0},
    }


def summary(record: dict[str, Any]) -> str:
    """One line for MLflow and the report: ``E2EDetectLoss: one2many tal_topk 10 weight 1.0 + one2one ...``."""
    branches = [
        f"{branch} " + " ".join(f"{key} {value}" for key, value in record[branch].items())
        for branch in ("one2many", "one2one")
        if branch in record
    ]
    return f"{record['class']}: {' + '.join(branches)}" if branches else str(record["class"])


class V10Trainer(DetectionTrainer):
    """Ultralytics' detection trainer with YOLOv10's own criterion for a ``v10Detect`` head (module docstring)."""

    def _setup_train(self) -> None:
        """Set up as Ultralytics does (a resume rebuilds its default criterion there), then install the criterion."""
        super()._setup_train()
        install_criterion(cast("BaseModel", unwrap_model(cast("Module", self.model))))
        if self.ema is not None:  # the EMA copy computes the validation losses
            install_criterion(self.ema.ema)

    def _load_checkpoint_state(self, ckpt: dict[str, Any]) -> None:
        """Load the state as Ultralytics does; its EMA copy is rebuilt there (resume, NaN recovery): reinstall."""
        super()._load_checkpoint_state(ckpt)
        if self.ema is not None:
            install_criterion(self.ema.ema)
