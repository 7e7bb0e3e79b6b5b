"""Run a trained YOLO model over a COCO split and write its detections as COCO results.

Two protocols (``evaluate.protocol``). ``coco``: every detection down to conf
0.001, at most 100 per image, float boxes; a higher ``evaluate.conf`` drops
detections COCOeval would rank and warns. ``authors``: what the study's
released code did (src/eval/helper/YoloHandler.py of the authors' repository),
so numbers can be put beside the paper's: conf 0.25, Ultralytics' default of
300 detections, one image per batch, and each of x, y, w, h truncated to an
integer (``int()``, toward zero). Both lower AP against the COCO protocol.
Both read YOLOv10's NMS-free one-to-one head (:data:`anonbench.yolo.NMS_FREE`):
Ultralytics' predictor asks it for its best max(max_det, 300) (box, class)
candidates, sorted by score, and keeps the first max_det above conf; the NMS
IoU (``evaluate.iou``) does not apply to it. The other detector families
(:mod:`anonbench.families`) infer as Ultralytics does for them: YOLOv8 and
YOLO11 with NMS at ``evaluate.iou``, RT-DETR with its decoder's best (box,
class) pairs of 300 queries, the first max_det above conf, no NMS.
Images and categories are named by the ids of the COCO JSON, class index ``k``
being the ``k``-th category of the dataset's :class:`CategoryTable`.
Ultralytics is imported lazily: scoring alone needs no torch.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from anonbench.analysis.cocoeval import Prediction
from anonbench.coco import CategoryTable, Instances, image_path
from anonbench.config import Config
from anonbench.families import DEFAULT_FAMILY, spec
from anonbench.yolo import load_model

COCO_PROTOCOL_CONF = 0.001
# The study authors' evaluation: conf 0.25, Ultralytics' predict defaults (300 detections, one image at a time).
AUTHORS_CONF, AUTHORS_MAX_DET, AUTHORS_BATCH = 0.25, 300, 1
# Ultralytics' own COCO json rounding: a thousandth of a pixel and five decimals of score change no AP.
BOX_DECIMALS = 3
SCORE_DECIMALS = 5


@dataclass(frozen=True)
class PredictSettings:
    """Inference settings of one evaluation (the protocol's, plus the training image size and device)."""

    conf: float
    iou: float
    max_det: int
    imgsz: int
    batch: int
    device: str
    protocol: Literal["coco", "authors"] = "coco"

    @property
    def truncate(self) -> bool:
        """Whether boxes are truncated to integers (the authors' protocol) rather than rounded to 0.001 px."""
        return self.protocol == "authors"

    @classmethod
    def of(cls, cfg: Config) -> PredictSettings:
        """The settings of ``evaluate.protocol``: the configured COCO ones, or the authors' fixed ones."""
        ev, imgsz, device = cfg.evaluate, cfg.train.imgsz, cfg.train.device
        if ev.protocol == "authors":
            return cls(AUTHORS_CONF, ev.iou, AUTHORS_MAX_DET, imgsz, AUTHORS_BATCH, device, "authors")
        return cls(ev.conf, ev.iou, ev.max_det, imgsz, ev.batch, device)


def split_images(instances: Instances, image_dir: Path) -> list[tuple[int, Path]]:
    """Every image of a split as (COCO id, file path), sorted by id; names escaping the folder are refused."""
    return sorted((int(image["id"]), image_path(image_dir, image["file_name"])) for image in instances["images"])


def check_conf(conf: float) -> None:
    """Warn when the confidence threshold drops detections the COCO protocol scores."""
    if conf > COCO_PROTOCOL_CONF:
        warnings.warn(
            f"evaluate.conf={conf} is not the COCO protocol (conf {COCO_PROTOCOL_CONF}, up to 100 detections per "
            "image): detections below it are dropped and AP is biased low; use it only to reproduce such numbers",
            UserWarning,
            stacklevel=2,
        )


def coco_results(
    image_id: int,
    xyxy: np.ndarray,
    classes: np.ndarray,
    scores: np.ndarray,
    categories: CategoryTable,
    truncate: bool = False,
) -> list[Prediction]:
    """Convert one image's detections to COCO results.

    Args:
        image_id: The image's id in the COCO JSON.
        xyxy: Boxes as corners in original image pixels, shape (n, 4).
        classes: Class indices in the order of ``categories``, shape (n,).
        scores: Confidences, shape (n,).
        categories: The dataset's category table: class index ``k`` is category id ``categories.ids[k]``.
        truncate: Truncate x, y, w, h toward zero (the authors' protocol) instead of rounding to 0.001 px.

    Returns:
        COCO results with ``[x, y, w, h]`` boxes (floats; whole numbers when truncated) and the dataset's
        category ids.
    """
    boxes = np.asarray(xyxy, dtype=np.float64).reshape(-1, 4)
    xywh = np.column_stack([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]])
    xywh = np.trunc(xywh) if truncate else np.round(xywh, BOX_DECIMALS)
    return [
        {
            "image_id": image_id,
            "category_id": categories.ids[int(cls)],
            "bbox": [float(v) for v in box],
            "score": round(float(conf), SCORE_DECIMALS),
        }
        for box, cls, conf in zip(xywh, np.asarray(classes), np.asarray(scores), strict=True)
    ]


def sort_results(predictions: list[Prediction]) -> list[Prediction]:
    """A stable order (image, best score first, category, box) so the same detections give the same file."""
    return sorted(predictions, key=lambda p: (p["image_id"], -p["score"], p["category_id"], p["bbox"]))


def check_classes(names: dict[int, str], categories: CategoryTable, weights: Path) -> None:
    """The model must predict the dataset's categories in its table's order, or category ids would be wrong.

    Raises:
        ValueError: Naming the checkpoint and the first class that differs.
    """
    ordered = [names[i] for i in sorted(names)]
    expected = list(categories.names)
    if ordered != expected:
        first = next((i for i, (a, b) in enumerate(zip(ordered, expected, strict=False)) if a != b), None)
        detail = f"class {first} is {ordered[first]!r}, not {expected[first]!r}" if first is not None else ""
        raise ValueError(
            f"{weights}: the model's {len(ordered)} classes are not the dataset's {len(expected)} categories in "
            f"ascending id order {detail}".rstrip()
        )


def predict(
    weights: Path,
    images: Sequence[tuple[int, Path]],
    categories: CategoryTable,
    settings: PredictSettings,
    family: str = DEFAULT_FAMILY,
) -> list[Prediction]:
    """Detect objects in every image and return COCO results, sorted.

    Args:
        weights: An Ultralytics checkpoint trained on an export of this dataset (its category table's classes).
        images: (COCO image id, file path) pairs.
        categories: The dataset's category table, to name each class index by its category id.
        settings: The protocol's thresholds, detections per image, batch and box rounding; image size, device.
        family: The detector family of the weights: its Ultralytics model class and inference head.

    Returns:
        COCO results, sorted by :func:`sort_results`.
    """
    if settings.protocol == "coco":  # the authors' protocol is chosen by name; it is recorded, not warned about
        check_conf(settings.conf)
    model = load_model(weights, family)
    names: Any = model.names
    check_classes(names, categories, weights)
    stream: Iterable[Any] = model.predict(
        [str(path) for _, path in images],
        stream=True,
        conf=settings.conf,
        iou=settings.iou,
        max_det=settings.max_det,
        nms=spec(family).nms_arg,  # YOLOv10: its one-to-one head (Ultralytics' default: one-to-many plus NMS)
        imgsz=settings.imgsz,
        batch=settings.batch,
        device=settings.device,
        verbose=False,
    )
    predictions: list[Prediction] = []
    for (image_id, path), result in zip(images, stream, strict=True):
        if Path(result.path).resolve() != path.resolve():
            raise RuntimeError(f"prediction for {result.path} arrived in place of {path}")
        boxes = result.boxes.cpu().numpy()
        predictions += coco_results(image_id, boxes.xyxy, boxes.cls, boxes.conf, categories, settings.truncate)
    return sort_results(predictions)
