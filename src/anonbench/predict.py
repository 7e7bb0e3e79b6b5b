"""Run a trained YOLO model over a COCO split and write its detections as COCO results.

The COCO protocol keeps every detection down to conf 0.001, at most 100 per
image, with float boxes, and names images and categories by the ids of the COCO
JSON. The study's authors scored at conf 0.25 and truncated boxes to integers;
both lower the numbers, so conf is a parameter that warns when it leaves the
protocol and boxes stay floats. Ultralytics is imported lazily: scoring alone
needs no torch.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from anonbench.coco import Instances, image_path
from anonbench.coco_classes import COCO_CATEGORIES, COCO_NAMES
from anonbench.cocoeval import Prediction

COCO_PROTOCOL_CONF = 0.001
# Ultralytics' own COCO json rounding: a thousandth of a pixel and five decimals of score change no AP.
BOX_DECIMALS = 3
SCORE_DECIMALS = 5


@dataclass(frozen=True)
class PredictSettings:
    """Inference settings of one evaluation (``cfg.evaluate`` plus the training image size and device)."""

    conf: float
    iou: float
    max_det: int
    imgsz: int
    batch: int
    device: str


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


def coco_results(image_id: int, xyxy: np.ndarray, classes: np.ndarray, scores: np.ndarray) -> list[Prediction]:
    """Convert one image's detections to COCO results.

    Args:
        image_id: The image's id in the COCO JSON.
        xyxy: Boxes as corners in original image pixels, shape (n, 4).
        classes: Class indices in COCO's 80-class order, shape (n,).
        scores: Confidences, shape (n,).

    Returns:
        COCO results with float ``[x, y, w, h]`` boxes and COCO category ids.
    """
    boxes = np.asarray(xyxy, dtype=np.float64).reshape(-1, 4)
    xywh = np.round(np.column_stack([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]]), BOX_DECIMALS)
    return [
        {
            "image_id": image_id,
            "category_id": COCO_CATEGORIES[int(cls)][0],
            "bbox": [float(v) for v in box],
            "score": round(float(conf), SCORE_DECIMALS),
        }
        for box, cls, conf in zip(xywh, np.asarray(classes), np.asarray(scores), strict=True)
    ]


def sort_results(predictions: list[Prediction]) -> list[Prediction]:
    """A stable order (image, best score first, category, box) so the same detections give the same file."""
    return sorted(predictions, key=lambda p: (p["image_id"], -p["score"], p["category_id"], p["bbox"]))


def _check_classes(names: dict[int, str], weights: Path) -> None:
    """The model must predict COCO's 80 classes in COCO's order, or category ids would be wrong."""
    ordered = [names[i] for i in sorted(names)]
    if ordered != list(COCO_NAMES):
        first = next((i for i, (a, b) in enumerate(zip(ordered, COCO_NAMES, strict=False)) if a != b), None)
        detail = f"class {first} is {ordered[first]!r}, not {COCO_NAMES[first]!r}" if first is not None else ""
        raise ValueError(
            f"{weights}: the model's {len(ordered)} classes are not COCO's 80 in COCO order {detail}".rstrip()
        )


def predict(weights: Path, images: Sequence[tuple[int, Path]], settings: PredictSettings) -> list[Prediction]:
    """Detect objects in every image and return COCO results, sorted.

    Args:
        weights: An Ultralytics checkpoint (``best.pt``) trained on COCO's 80 classes in COCO order.
        images: (COCO image id, file path) pairs.
        settings: Confidence and IoU thresholds, detections per image, image size, batch, device.

    Returns:
        COCO results, sorted by :func:`sort_results`.
    """
    from ultralytics import YOLO

    from anonbench.offline import configure_ultralytics

    check_conf(settings.conf)
    configure_ultralytics()
    model = YOLO(str(weights))
    names: Any = model.names
    _check_classes(names, weights)
    stream: Iterable[Any] = model.predict(
        [str(path) for _, path in images],
        stream=True,
        conf=settings.conf,
        iou=settings.iou,
        max_det=settings.max_det,
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
        predictions += coco_results(image_id, boxes.xyxy, boxes.cls, boxes.conf)
    return sort_results(predictions)
