"""Detector families: the Ultralytics yaml of each (family, size), its model ids and its inference head.

A study trains YOLOv10 by default (``train.families: [yolov10]``); ``yolov8``, ``yolo11`` and
``rtdetr`` are built from Ultralytics' own yamls (random weights, nothing downloaded), trained with
the criterion Ultralytics gives them and scored through the same predict and evaluate. Sizes are
the yamls' scales: n, s, m, l, x for the YOLO families, l and x for RT-DETR (Ultralytics ships
``rtdetr-l.yaml`` and ``rtdetr-x.yaml``; its ResNet variants are not sizes of the same model).

Model ids (:func:`anonbench.config.model_id`) keep the study's YOLOv10 ids (``org-n``) and name any
other family between the variant and the size (``org-yolov8-n``, ``mask-rtdetr-l``). This module
imports no Ultralytics.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

Family = Literal["yolov10", "yolov8", "yolo11", "rtdetr"]
DEFAULT_FAMILY: Family = "yolov10"
# YOLOv10's NMS-free one-to-one head gives at least this many candidates per image (Ultralytics' predictor).
ONE2ONE_TOPK = 300
YOLO_SIZES = ("n", "s", "m", "l", "x")


@dataclass(frozen=True)
class FamilySpec:
    """What differs between detector families.

    Attributes:
        name: The family's name in params.yaml and model ids.
        sizes: The sizes Ultralytics has a yaml for.
        yaml: The model yaml, ``{size}`` standing for the size (Ultralytics resolves the scale from the name).
        head: The inference head scored (metrics.json's ``head``).
        nms: Whether inference runs NMS (YOLOv8 and YOLO11 do; YOLOv10's one-to-one head and RT-DETR's
            decoder do not).
        nms_arg: Ultralytics' ``nms`` argument for validation and prediction: ``False`` selects YOLOv10's
            one-to-one head; ``None`` is Ultralytics' default (NMS for a YOLO head; RT-DETR ignores it). A
            YOLO head without a one-to-one branch must not get ``False``: its validator would ask for one.
        queries: Candidates the head yields per image before ``max_det`` (None: NMS decides).
    """

    name: Family
    sizes: tuple[str, ...]
    yaml: str
    head: str
    nms: bool
    nms_arg: bool | None
    queries: int | None

    def model_yaml(self, size: str) -> str:
        """The Ultralytics yaml of ``size``, e.g. ``yolov8n.yaml`` or ``rtdetr-l.yaml``.

        Raises:
            ValueError: For a size this family has no yaml for, in one line naming those it has.
        """
        if size not in self.sizes:
            raise ValueError(
                f"size {size!r} does not exist for {self.name}: Ultralytics ships "
                f"{', '.join(self.yaml.format(size=s) for s in self.sizes)}"
            )
        return self.yaml.format(size=size)

    def head_record(self, max_det: int) -> dict[str, Any]:
        """The inference head as metrics.json and MLflow record it: branch, NMS, candidates the head yields.

        Args:
            max_det: Detections kept per image (the protocol's).
        """
        # Ultralytics' predictor asks YOLOv10's one-to-one head for max(max_det, 300) (box, class) candidates;
        # RT-DETR's decoder always yields its queries' best (box, class) pairs; NMS decides for the others.
        topk = max(max_det, self.queries) if self.nms_arg is False and self.queries else self.queries
        return {"head": self.head, "nms": self.nms, "head_topk": topk}


FAMILIES: dict[str, FamilySpec] = {
    "yolov10": FamilySpec("yolov10", YOLO_SIZES, "yolov10{size}.yaml", "one2one", False, False, ONE2ONE_TOPK),
    "yolov8": FamilySpec("yolov8", YOLO_SIZES, "yolov8{size}.yaml", "detect", True, None, None),
    "yolo11": FamilySpec("yolo11", YOLO_SIZES, "yolo11{size}.yaml", "detect", True, None, None),
    "rtdetr": FamilySpec("rtdetr", ("l", "x"), "rtdetr-{size}.yaml", "decoder", False, None, 300),
}


def spec(family: str) -> FamilySpec:
    """The family's spec.

    Raises:
        ValueError: For an unknown family, naming the known ones.
    """
    if family not in FAMILIES:
        raise ValueError(f"family {family!r} is not one of {list(FAMILIES)}")
    return FAMILIES[family]
