"""Face-only variants of the classic methods: blur, pixelate or mask each face found inside a person.

The seed paper's Figure 2 sets face anonymization beside full-body anonymization; COCO has no face
boxes, so the faces come from the face detector the privacy audit uses (:mod:`anonbench.faces`, dlib),
with the detector and upsampling each method's own parameters. A face counts as a person's when at
least ``inside`` of its box lies in that person's (dilated) mask; it is then painted with the classic
method's own transform (:mod:`anonbench.anonymizers.classic`), as if it were a person whose box is the
face's, grown as far as the person's mask was (``anonymize.dilation_px``, elliptic kernel). Faces
outside every person are left alone, like everything that is not a person. Each image reports
``faces_anonymized`` and ``persons_without_face`` (persons handed to the method none of whose faces
was found: a turned head, a face too small for the detector), which the anonymize stage sums into
the split's coverage file.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Annotated, TypeVar

import numpy as np
from pydantic import Field

from anonbench.anonymizers.classic import Blur, Fraction, Mask, Pixelate, blur, mask, pixelate
from anonbench.anonymizers.masks import Person, box_mask, to_person, union
from anonbench.anonymizers.plugins import Anonymizer, Function, Painted, Settings
from anonbench.config import Privacy
from anonbench.faces import Box, Detector, detect

COUNTS = ("faces_anonymized", "persons_without_face")
# The privacy section's defaults (the mini profile's audit settings): the face methods' detector defaults.
AUDIT = Privacy()


class Faces(Settings):
    """Where the faces come from: dlib's detector and how often the image is doubled first.

    The defaults are the privacy audit's (its ``privacy`` section's mini setting), so the faces a
    face-only method paints are the faces the audit then looks for.
    """

    detector: Detector = AUDIT.detector
    upsample: Annotated[int, Field(ge=0, le=4)] = AUDIT.upsample
    inside: Fraction = 0.5
    """Share of a face's box that must lie in a person's mask for the face to be that person's."""


F = TypeVar("F", bound=Faces)


class BlurFace(Blur, Faces):
    """Gaussian blur of each face; sigma scales with the face's box."""


class PixelateFace(Pixelate, Faces):
    """Pixelation of each face; the block scales with the face's box unless ``block_px`` is set."""


class MaskFace(Mask, Faces):
    """Solid fill of each face."""


def owner(box: Box, persons: Sequence[Person], inside: float) -> int | None:
    """The index of the person holding a face: the largest share of the face's box in its mask, if ``inside``.

    Args:
        box: The face, ``x, y, w, h`` in whole pixels (as :func:`anonbench.faces.detect` gives it).
        persons: The persons the method was handed.
        inside: The least share of the box that must lie in the person's mask.

    Returns:
        The person's index, or None when no person holds that share of the face.
    """
    x, y, w, h = (int(v) for v in box)
    best, best_share = None, 0.0
    for index, person in enumerate(persons):
        px0, py0, px1, py1 = person.box
        x0, y0, x1, y1 = max(x, px0), max(y, py0), min(x + w, px1), min(y + h, py1)
        if x1 <= x0 or y1 <= y0:
            continue
        share = np.count_nonzero(person.mask[y0 - py0 : y1 - py0, x0 - px0 : x1 - px0]) / (w * h)
        if share >= inside and share > best_share:
            best, best_share = index, share
    return best


def face_regions(image: np.ndarray, persons: Sequence[Person], params: Faces) -> tuple[list[Person], dict[str, int]]:
    """The faces to anonymize, as regions the classic transforms paint, and the image's counts.

    Args:
        image: H x W x 3 BGR uint8.
        persons: The persons the method was handed (the only ones whose faces are anonymized).
        params: The method's detector settings.

    Returns:
        Each face inside a person, its box grown by the person's dilation, largest first (the order the
        classic transforms paint in); and :data:`COUNTS`.
    """
    if not persons:  # no person, no face of one: the detector need not run
        return [], {"faces_anonymized": 0, "persons_without_face": 0}
    height, width = image.shape[:2]
    regions, held = [], set()
    for box in detect(image, params.detector, params.upsample):
        index = owner(box, persons, params.inside)
        face = box_mask(box, height, width)
        if index is None or face is None:
            continue
        held.add(index)
        regions.append(to_person(face, persons[index].dilation))
    regions.sort(key=lambda p: (-p.area, p.y0, p.x0))
    return regions, {"faces_anonymized": len(regions), "persons_without_face": len(persons) - len(held)}


def _on_faces(transform: Callable[[np.ndarray, Sequence[Person], F], np.ndarray]) -> Function[F]:
    """A classic transform applied to the faces inside the persons instead of the persons; the region is theirs.

    The detector draws no random numbers, so the generator goes unused.
    """

    def anonymize(image: np.ndarray, persons: Sequence[Person], params: F, rng: np.random.Generator) -> Painted:
        regions, counts = face_regions(image, persons, params)
        return Painted(transform(image, regions, params), union(regions, image.shape), counts)

    return anonymize


BLUR_FACE: Anonymizer[BlurFace] = Anonymizer(
    "blur_face", _on_faces(blur), BlurFace, summary="Gaussian blur of each face found in a person", counts=COUNTS
)
PIXELATE_FACE: Anonymizer[PixelateFace] = Anonymizer(
    "pixelate_face", _on_faces(pixelate), PixelateFace, summary="mean colour per block on each face", counts=COUNTS
)
MASK_FACE: Anonymizer[MaskFace] = Anonymizer(
    "mask_face", _on_faces(mask), MaskFace, summary="solid fill of each face", counts=COUNTS
)
