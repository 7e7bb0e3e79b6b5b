"""anonbench's example anonymizer plugin: each person's pixels filled in from their surroundings.

OpenCV's inpainting (``cv2.inpaint``) grows the image around the anonymized region into it: Telea's
fast marching method (default) or the Navier-Stokes one. Nothing of the person is kept, and unlike
``mask`` the region is not one flat colour. Deterministic and CPU-only; it draws no random numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Literal

import cv2
import numpy as np
from pydantic import Field

from anonbench.anonymizers.masks import Person, union
from anonbench.anonymizers.plugins import Anonymizer, Painted, Settings

ALGORITHMS = {"telea": cv2.INPAINT_TELEA, "ns": cv2.INPAINT_NS}


class Inpaint(Settings):
    """``anonymize.inpaint`` in params.yaml: every field has a default; an unknown key fails the load."""

    radius: Annotated[int, Field(ge=1, le=50)] = 5
    """Neighbourhood (pixels) each filled pixel is computed from."""
    algorithm: Literal["telea", "ns"] = "telea"


def inpaint(image: np.ndarray, persons: Sequence[Person], params: Inpaint, rng: np.random.Generator) -> Painted:
    """Fill the union of the persons' masks from the pixels around it.

    Args:
        image: The original, H x W x 3 BGR uint8 (not changed).
        persons: The persons to anonymize, each a dilated mask cropped to its box.
        params: The validated ``anonymize.inpaint`` section.
        rng: Seeded per image by anonbench; unused, inpainting is deterministic.

    Returns:
        The inpainted image and the region it filled (every pixel outside stays as it was).
    """
    region = union(persons, image.shape)
    if not region.any():
        return Painted(image.copy(), region)
    out = cv2.inpaint(image, region.astype(np.uint8), params.radius, ALGORITHMS[params.algorithm])
    return Painted(out, region)


INPAINT = Anonymizer(
    "inpaint", inpaint, Inpaint, deterministic=True, gpu=False, summary="OpenCV inpainting from the surroundings"
)
