"""Person masks from COCO ground truth: polygons, RLE and crowd regions, dilated.

Every person annotation of an image ends up either as a :class:`Person` to
anonymize or in a count that says why not, so the manifest can account for
all of them. Segmentations are decoded with pycocotools, as COCOeval does.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from pycocotools import mask as mask_utils

# Counts reported per image; "persons_gt" includes crowd regions (one each).
COUNT_KEYS = (
    "persons_gt",
    "persons_anonymized",
    "persons_small",
    "persons_degenerate",
    "persons_empty",
    "crowd_regions",
)


@dataclass(frozen=True)
class Person:
    """One region to anonymize: its dilated mask cropped to its own box.

    ``width`` and ``height`` are the undilated extents: the person's size that
    scales the blur sigma and the pixelation block. ``dilation`` is how far the mask
    was grown, so a region derived from the person (a face-only method's face box)
    can be grown alike.
    """

    x0: int
    y0: int
    mask: np.ndarray
    width: int
    height: int
    dilation: int = 0

    @property
    def box(self) -> tuple[int, int, int, int]:
        """``x0, y0, x1, y1`` of the dilated mask, end-exclusive."""
        return self.x0, self.y0, self.x0 + self.mask.shape[1], self.y0 + self.mask.shape[0]

    @property
    def area(self) -> int:
        """Pixels in the dilated mask."""
        return int(np.count_nonzero(self.mask))


@dataclass(frozen=True)
class PersonMasks:
    """The persons of one image to anonymize, their ground-truth pixels and the counts."""

    persons: list[Person]
    gt: np.ndarray
    counts: dict[str, int]

    def region(self) -> np.ndarray:
        """Union of the persons' dilated masks: the anonymized region (H x W bool)."""
        return union(self.persons, self.gt.shape)


def union(persons: Sequence[Person], shape: tuple[int, ...]) -> np.ndarray:
    """Paste person masks into one H x W bool array."""
    region = np.zeros(shape[:2], dtype=bool)
    for person in persons:
        x0, y0, x1, y1 = person.box
        region[y0:y1, x0:x1] |= person.mask
    return region


# Grey levels of a paint record (a generator's per-image PNG): painted, and painted as a person.
PAINTED, PERSON = 128, 255


def paint_record(painted: np.ndarray, persons: np.ndarray) -> np.ndarray:
    """One H x W uint8 image of where a generator painted (:data:`PAINTED`) and where it put persons (:data:`PERSON`).

    Person pixels are counted only where it painted (the rest of a mask it was given stayed as it was).
    """
    return np.where(persons & painted, PERSON, np.where(painted, PAINTED, 0)).astype(np.uint8)


def read_paint_record(record: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The painted region and the person pixels (H x W bool each) of a decoded paint record (any channel)."""
    level = record[..., 0] if record.ndim == 3 else record
    return level >= PAINTED // 2, level >= (PAINTED + PERSON) // 2


def changed_pixels(image: np.ndarray, anonymized: np.ndarray) -> np.ndarray:
    """H x W bool: pixels where any channel differs (coverage; DP2's actual region)."""
    differs = image != anonymized
    return np.asarray(differs[..., 0] | differs[..., 1] | differs[..., 2])  # 10x faster than any(axis=2)


def decode_segmentation(segmentation: Any, height: int, width: int) -> np.ndarray | None:
    """Decode polygons, uncompressed (crowd) RLE or compressed RLE to an H x W bool mask.

    Returns:
        The mask, or None when the segmentation is empty, malformed, for another
        image size, or covers no pixel.
    """
    try:
        if isinstance(segmentation, list):
            polygons = [p for p in segmentation if isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0]
            if not polygons:
                return None
            rle = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
        elif isinstance(segmentation, dict) and list(segmentation.get("size", ())) == [height, width]:
            counts = segmentation["counts"]
            if isinstance(counts, list):
                # pycocotools writes past its buffer when the runs do not add up to the image.
                if sum(counts) != height * width or min(counts, default=0) < 0:
                    return None
                rle = mask_utils.frPyObjects(segmentation, height, width)
            else:
                rle = {"size": [height, width], "counts": counts.encode() if isinstance(counts, str) else counts}
        else:
            return None
        mask = mask_utils.decode(rle).astype(bool)
    except (TypeError, ValueError, KeyError, AttributeError):
        return None
    return mask if mask.any() else None


def box_mask(bbox: Any, height: int, width: int) -> np.ndarray | None:
    """The pixels of a COCO ``[x, y, w, h]`` box (None when it covers none or is malformed)."""
    try:
        x, y, w, h = (float(v) for v in bbox)
    except (TypeError, ValueError):
        return None
    x0, y0 = max(math.floor(x), 0), max(math.floor(y), 0)
    x1, y1 = min(math.ceil(x + w), width), min(math.ceil(y + h), height)
    if x1 <= x0 or y1 <= y0:
        return None
    mask = np.zeros((height, width), dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


def dilate(mask: np.ndarray, dilation_px: int) -> np.ndarray:
    """Grow a bool mask by ``dilation_px`` pixels with an elliptic kernel (the anonymized region's dilation)."""
    if not dilation_px:
        return mask
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * dilation_px + 1,) * 2)
    return np.asarray(cv2.dilate(mask.astype(np.uint8), kernel).astype(bool))


def to_person(mask: np.ndarray, dilation_px: int) -> Person:
    """Crop a full-image mask to its box and grow it by ``dilation_px`` (elliptic kernel)."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    height, width = mask.shape
    y0, y1 = max(rows[0] - dilation_px, 0), min(rows[-1] + 1 + dilation_px, height)
    x0, x1 = max(cols[0] - dilation_px, 0), min(cols[-1] + 1 + dilation_px, width)
    crop = dilate(mask[y0:y1, x0:x1], dilation_px)
    return Person(int(x0), int(y0), crop, int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1), dilation_px)


def person_masks(
    annotations: Sequence[dict[str, Any]], person_id: int, height: int, width: int, dilation_px: int, min_person_px: int
) -> PersonMasks:
    """Turn an image's person annotations into regions to anonymize, counting each outcome.

    A person whose segmentation is empty or malformed falls back to its box
    (``persons_degenerate``; privacy first); one with neither is
    ``persons_empty``. Persons smaller than ``min_person_px`` on both sides are
    ``persons_small`` and left as they are. Crowd regions are anonymized as a
    whole. The ground-truth mask (undilated, every person) is what coverage is
    measured against.

    Args:
        annotations: The image's annotations (any category).
        person_id: COCO category id of 'person'.
        height: Image height.
        width: Image width.
        dilation_px: Grow each mask by this many pixels.
        min_person_px: Size threshold for ``persons_small``.

    Returns:
        Persons sorted largest first (smaller ones are painted over them), the
        ground-truth mask and the counts of :data:`COUNT_KEYS`.
    """
    counts: Counter[str] = Counter({key: 0 for key in COUNT_KEYS})
    gt = np.zeros((height, width), dtype=bool)
    persons = []
    for ann in annotations:
        if ann.get("category_id") != person_id:
            continue
        counts["persons_gt"] += 1
        counts["crowd_regions"] += int(bool(ann.get("iscrowd")))
        mask = decode_segmentation(ann.get("segmentation"), height, width)
        if mask is None:
            mask = box_mask(ann.get("bbox"), height, width)
            counts["persons_degenerate" if mask is not None else "persons_empty"] += 1
        if mask is None:
            continue
        gt |= mask
        person = to_person(mask, dilation_px)
        if person.width < min_person_px and person.height < min_person_px:
            counts["persons_small"] += 1
            continue
        persons.append(person)
    counts["persons_anonymized"] = len(persons)
    persons.sort(key=lambda p: (-p.area, p.y0, p.x0))
    return PersonMasks(persons, gt, dict(counts))
