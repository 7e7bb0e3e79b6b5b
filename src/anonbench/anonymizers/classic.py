"""Classic anonymization inside person masks: Gaussian blur, pixelation, solid mask.

Each person is processed on a crop around its box (plus the margin the filter
reads) and only the pixels of its mask are replaced, so everything outside the
anonymized region stays bit-identical. Every person reads the original pixels;
persons are painted largest first, so a small person in front of a crowd
region keeps its own blur or block size. The three are anonbench's own
:class:`~anonbench.anonymizers.plugins.Anonymizer` entry points (pyproject.toml),
the same interface a plugin package implements (docs/plugins.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial
from typing import Annotated

import cv2
import numpy as np
from pydantic import Field, field_validator

from anonbench.anonymizers.masks import Person, union
from anonbench.anonymizers.plugins import Anonymizer, Function, P, Painted, Settings

# Above this sigma the Gaussian is computed at reduced resolution: the same blur
# to the eye at a fraction of the cost of a kernel hundreds of pixels wide.
DIRECT_SIGMA = 4.0

Filter = Callable[[np.ndarray], np.ndarray]
Fraction = Annotated[float, Field(gt=0.0, le=1.0)]


class Blur(Settings):
    """Gaussian blur whose sigma scales with the person: sigma = fraction * sqrt(box area)."""

    sigma_fraction: Fraction = 0.1
    min_sigma: Annotated[float, Field(gt=0.0)] = 2.0


class Pixelate(Settings):
    """Block size relative to the person's box (fraction of its longer side) or absolute."""

    block_fraction: Fraction = 0.1
    block_px: Annotated[int, Field(gt=0)] | None = None


class Mask(Settings):
    """Solid fill colour (RGB)."""

    color: tuple[int, int, int] = (0, 0, 0)

    @field_validator("color")
    @classmethod
    def _rgb(cls, color: tuple[int, int, int]) -> tuple[int, int, int]:
        if any(not 0 <= c <= 255 for c in color):
            raise ValueError("colour channels must be in 0..255")
        return color


def paint(out: np.ndarray, image: np.ndarray, person: Person, margin: int, transform: Filter) -> None:
    """Replace ``person``'s masked pixels in ``out`` by ``transform`` of the original crop plus margin."""
    x0, y0, x1, y1 = person.box
    cx0, cy0 = max(x0 - margin, 0), max(y0 - margin, 0)
    cx1, cy1 = min(x1 + margin, image.shape[1]), min(y1 + margin, image.shape[0])
    patch = transform(image[cy0:cy1, cx0:cx1])[y0 - cy0 : y1 - cy0, x0 - cx0 : x1 - cx0]
    np.copyto(out[y0:y1, x0:x1], patch, where=person.mask[..., None])


def gaussian(crop: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur; large sigmas run on a copy shrunk so the sigma there is :data:`DIRECT_SIGMA`."""
    if sigma <= DIRECT_SIGMA:
        return cv2.GaussianBlur(crop, (0, 0), sigma, borderType=cv2.BORDER_REFLECT_101)
    height, width = crop.shape[:2]
    scale = DIRECT_SIGMA / sigma
    small = cv2.resize(
        crop, (max(round(width * scale), 1), max(round(height * scale), 1)), interpolation=cv2.INTER_AREA
    )
    small = cv2.GaussianBlur(small, (0, 0), DIRECT_SIGMA, borderType=cv2.BORDER_REFLECT_101)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)


def blur_sigma(person: Person, params: Blur) -> float:
    """A person's blur sigma: ``max(min_sigma, sigma_fraction * sqrt(w * h))`` of its box."""
    return max(params.min_sigma, params.sigma_fraction * math.sqrt(person.width * person.height))


def blur(image: np.ndarray, persons: Sequence[Person], params: Blur) -> np.ndarray:
    """Blur each person with its :func:`blur_sigma`."""
    out = image.copy()
    for person in persons:
        sigma = blur_sigma(person, params)
        paint(out, image, person, math.ceil(3 * sigma), partial(gaussian, sigma=sigma))
    return out


def block_size(person: Person, params: Pixelate) -> int:
    """Pixelation block: ``block_px`` if set, else ``block_fraction`` of the person's longer side."""
    if params.block_px is not None:
        return params.block_px
    return max(round(params.block_fraction * max(person.width, person.height)), 1)


def pixelated(crop: np.ndarray, block: int) -> np.ndarray:
    """Replace each ``block`` x ``block`` cell (grid from the crop's corner) by its mean colour."""
    height, width = crop.shape[:2]
    rows, cols = math.ceil(height / block), math.ceil(width / block)
    padded = cv2.copyMakeBorder(crop, 0, rows * block - height, 0, cols * block - width, cv2.BORDER_REPLICATE)
    means = cv2.resize(padded, (cols, rows), interpolation=cv2.INTER_AREA)
    return cv2.resize(means, (cols * block, rows * block), interpolation=cv2.INTER_NEAREST)[:height, :width]


def pixelate(image: np.ndarray, persons: Sequence[Person], params: Pixelate) -> np.ndarray:
    """Pixelate each person with blocks aligned to its dilated box."""
    out = image.copy()
    for person in persons:
        paint(out, image, person, 0, partial(pixelated, block=block_size(person, params)))
    return out


def mask(image: np.ndarray, persons: Sequence[Person], params: Mask) -> np.ndarray:
    """Fill each person with the configured RGB colour."""
    out = image.copy()
    bgr = np.array(params.color[::-1], dtype=np.uint8)
    for person in persons:
        x0, y0, x1, y1 = person.box
        np.copyto(out[y0:y1, x0:x1], bgr, where=person.mask[..., None])
    return out


def _painted(transform: Callable[[np.ndarray, Sequence[Person], P], np.ndarray]) -> Function[P]:
    """A filter as the plugin interface's function: the region it paints is the union of the persons' masks.

    The classic methods draw no random numbers, so the generator goes unused.
    """

    def anonymize(image: np.ndarray, persons: Sequence[Person], params: P, rng: np.random.Generator) -> Painted:
        return Painted(transform(image, persons, params), union(persons, image.shape))

    return anonymize


BLUR = Anonymizer("blur", _painted(blur), Blur, summary="Gaussian blur, sigma scaled with the person's box")
PIXELATE = Anonymizer("pixelate", _painted(pixelate), Pixelate, summary="mean colour per block, box-aligned grid")
MASK = Anonymizer("mask", _painted(mask), Mask, summary="solid fill")
