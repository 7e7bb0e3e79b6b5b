"""YOLOv10's own training criterion: installed for a v10Detect head, any other head keeps Ultralytics' default."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from anonbench.offline import configure_ultralytics

if TYPE_CHECKING:
    from ultralytics.nn.tasks import DetectionModel


def built(yaml: str) -> DetectionModel:
    """An Ultralytics DetectionModel from its yaml with the default hyperparameters a trainer gives it."""
    configure_ultralytics()
    from ultralytics.cfg import get_cfg
    from ultralytics.nn.tasks import DetectionModel

    model = DetectionModel(yaml, verbose=False)
    model.args = get_cfg()
    return model


def test_yolov10_gets_its_own_criterion_where_ultralytics_builds_yolo26s() -> None:
    from ultralytics.utils.loss import E2ELoss

    from anonbench.criterion import describe, install_criterion, summary

    model = built("yolov10n.yaml")
    assert type(model.init_criterion()) is E2ELoss  # Ultralytics 8.4's default
    record = describe(install_criterion(model))
    assert type(model.criterion).__name__ == "E2EDetectLoss"
    assert record == {
        "class": "E2EDetectLoss",
        "one2many": {"tal_topk": 10, "weight": 1.0},
        "one2one": {"tal_topk": 1, "weight": 1.0},
    }
    assert summary(record) == "E2EDetectLoss: one2many tal_topk 10 weight 1.0 + one2one tal_topk 1 weight 1.0"


@pytest.mark.parametrize(("yaml", "default"), [("yolov8n.yaml", "v8DetectionLoss"), ("yolo26n.yaml", "E2ELoss")])
def test_other_heads_keep_ultralytics_default(yaml: str, default: str) -> None:
    from anonbench.criterion import describe, install_criterion

    assert describe(install_criterion(built(yaml))) == {"class": default}
