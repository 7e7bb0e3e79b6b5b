"""Real detections: a handful of coco-mini images a YOLOv10n can memorize in about a minute on 2 cores.

The overfit settings are ordinary parameters (``--set``), no code path of their own. What they are for:

- ``train.batch=2`` with ``nbs: 2``: Ultralytics accumulates gradients up to its nominal batch ``nbs``
  (64); with 8 images and ``nbs`` 64 there would be one optimizer step every 8 epochs. Batches of 2 give
  4 steps per epoch, 320 in all.
- ``lrf: 0.01``: the learning rate decays to 1 % by the last epoch. With a few hundred steps the
  BatchNorm running statistics (momentum 0.03) lag behind weights that still move; at a constant rate the
  training-mode losses fell to 0.1 while the saved (eval-mode) model predicted nothing at conf 0.001.
- AdamW at lr0 0.002, no warm-up: SGD at Ultralytics' 0.01 reached AP50 0.04 after 150 epochs.
- ``mosaic: 0`` and no scale, translate, flip or colour augmentation: memorize these exact images.
- ``train.val=false``: no validation until the last epoch; ``train.checkpoint`` stays ``last``.

Measured here (2 cores shared with other jobs), 8 images with 22 objects, 192 px, 80 epochs: AP50 0.82
on the memorized images (0.71 after 50 epochs, 0.66 at 256 px and 50), 78 s of CPU time for the training.
"""

from __future__ import annotations

import json
import shutil
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from anonbench.cli import app
from tests.conftest import PARAMS

OVERFIT = (
    "workers=1",
    "train.epochs=80",
    "train.imgsz=192",
    "train.batch=2",
    "train.optimizer=AdamW",
    "train.val=false",
    "train.workers=0",
    "train.extra={nbs: 2, mosaic: 0, warmup_epochs: 0, lr0: 0.002, lrf: 0.01, scale: 0, translate: 0, fliplr: 0,"
    " hsv_h: 0, hsv_s: 0, hsv_v: 0}",
)
IMAGES = 8
MIN_AP50 = 0.5  # what a memorized set must reach through anonbench evaluate (the bar)
MIN_AREA = 32 * 32  # COCO's small objects are hard to find at 192 px


def memorable(instances: dict[str, Any], count: int = IMAGES) -> list[dict[str, Any]]:
    """The first ``count`` images by file name that show a person among 2-4 objects, none crowd or small."""
    person = next(c["id"] for c in instances["categories"] if c["name"] == "person")
    by_image: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for ann in instances["annotations"]:
        by_image[ann["image_id"]].append(ann)
    chosen = [
        image
        for image in sorted(instances["images"], key=lambda im: im["file_name"])
        if 2 <= len(anns := by_image[image["id"]]) <= 4
        and all(not a["iscrowd"] and a["area"] >= MIN_AREA for a in anns)
        and any(a["category_id"] == person for a in anns)
    ]
    return chosen[:count]


def write_memorized(
    coco_mini: Path,
    target: Path,
    splits: tuple[str, str] = ("train2017", "val2017"),
    categories: Callable[[list[dict[str, Any]]], tuple[list[dict[str, Any]], dict[int, int]]] | None = None,
) -> Path:
    """A COCO-format folder whose training and validation splits hold the same memorable coco-mini images.

    Args:
        coco_mini: The coco-mini folder.
        target: Where to write.
        splits: Names of the training and validation split.
        categories: Turns COCO's category records into the folder's own, returning them and the map from
            COCO ids to the new ids (None: COCO's table as it is).

    Returns:
        ``target``.
    """
    instances = json.loads((coco_mini / "annotations" / "instances_train2017.json").read_text())
    images = memorable(instances)
    keep = {image["id"] for image in images}
    table, new_id = (instances["categories"], {c["id"]: c["id"] for c in instances["categories"]})
    if categories is not None:
        table, new_id = categories(instances["categories"])
    annotations = [
        {**a, "category_id": new_id[a["category_id"]]} for a in instances["annotations"] if a["image_id"] in keep
    ]
    doc = {"info": {"description": "memorable coco-mini images"}, "images": images,
           "annotations": annotations, "categories": table}  # fmt: skip
    (target / "annotations").mkdir(parents=True)
    for split in splits:
        (target / split).mkdir()
        for image in images:
            shutil.copyfile(coco_mini / "train2017" / image["file_name"], target / split / image["file_name"])
        (target / "annotations" / f"instances_{split}.json").write_text(json.dumps(doc))
    return target


def study_sets(root: Path, mlflow_template: Path) -> list[str]:
    """``--set`` overrides that keep a study's outputs and MLflow store under ``root``."""
    (root / "mlflow.db").write_bytes(mlflow_template.read_bytes())
    sets = [f"paths.{p}={root / p}" for p in ("data", "models", "metrics", "reports")]
    return [*sets, f"tracking.uri=sqlite:///{root / 'mlflow.db'}"]


def invoke(*args: str, sets: list[str]) -> str:
    """Run one ``anonbench`` command with ``--set`` overrides; its output (exit status 0 required)."""
    result = CliRunner().invoke(app, [*args, "--params", str(PARAMS), *(a for s in sets for a in ("--set", s))])
    assert result.exit_code == 0, result.output
    return result.output
