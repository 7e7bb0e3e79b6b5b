"""The attacks of the privacy audit and their rates: what identity an anonymized image still gives away.

Everything here works on arrays; the privacy stage (:mod:`anonbench.stages.privacy`) reads the images
and the models and calls it. The attacks, each beside its chance level (docs/privacy.md):

- detection: faces found on the originals, and the share found again on the anonymized images;
- naive linkage: the embedding of the anonymized image at each original face's box against the
  embeddings of every original face of the split (rank-1 identification, chance ``1/faces``, and
  the true-match rate at a 1 % false-match rate set on pairs of different original faces);
- inversion: the same after undoing the method with its known parameters (blur: Richardson-Lucy
  deconvolution with the method's Gaussian; pixelation: bicubic interpolation of the block means);
- appearance linkage: an HSV colour histogram of each person's ground-truth pixels on the
  anonymized image against those of every original person (chance ``1/persons``);
- residual faces: faces found on the anonymized image outside every anonymized region.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import cast

import cv2
import numpy as np
import pandas as pd
from scipy.spatial.distance import pdist
from skimage.restoration import richardson_lucy

from anonbench.anonymizers import classic
from anonbench.anonymizers.masks import Person
from anonbench.config import Anonymize, HsvBins

# Box as (x, y, w, h) in image pixels (COCO's convention, and faces.Box's).
Box = tuple[float, float, float, float]
FMR = 0.01
# COCO's area buckets (pycocotools' areaRng): small below 32², medium below 96², large from there.
SIZES = ("small", "medium", "large")
SMALL_AREA, MEDIUM_AREA = 32.0**2, 96.0**2
# A face in no ground-truth person's box.
OUTSIDE = "outside"
BUCKETS = (*SIZES, OUTSIDE)
# How each invertible method is undone (the metrics' linkage.inversion.how).
INVERSIONS = {"blur": "richardson-lucy", "pixelate": "bicubic-block-means"}
# Probes compared with the whole gallery at once: bounds the distance matrix in memory.
CHUNK = 1024

Metric = Callable[[np.ndarray, np.ndarray], np.ndarray]


def size_bucket(area: float | None) -> str:
    """COCO's size bucket of a ground-truth area, :data:`OUTSIDE` for a face in no person."""
    if area is None:
        return OUTSIDE
    return SIZES[0] if area < SMALL_AREA else SIZES[1] if area < MEDIUM_AREA else SIZES[2]


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two (x, y, w, h) boxes."""
    width = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    height = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    inter = max(width, 0.0) * max(height, 0.0)
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def region_share(box: Box, region: np.ndarray) -> float:
    """Share of a box's pixels inside a region (H x W, nonzero = inside); 0 for a box with no pixels."""
    x, y, w, h = box
    crop = region[max(round(y), 0) : round(y + h), max(round(x), 0) : round(x + w)]
    return float(np.count_nonzero(crop)) / crop.size if crop.size else 0.0


def euclidean(probes: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    """Euclidean distances, probes x gallery (dlib's face embedding metric)."""
    squared = (probes**2).sum(1)[:, None] + (gallery**2).sum(1)[None, :] - 2.0 * probes @ gallery.T
    return np.sqrt(np.clip(squared, 0.0, None))


def hellinger(probes: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    """Hellinger distances between normalized histograms, probes x gallery (0 equal, 1 disjoint)."""
    return np.sqrt(np.clip(1.0 - np.sqrt(probes) @ np.sqrt(gallery).T, 0.0, None))


def rank1_credit(probes: np.ndarray, gallery: np.ndarray, metric: Metric) -> np.ndarray:
    """Per probe, how far its own original (gallery row of the same index) is the nearest of the gallery.

    1 when it is the unique nearest, ``1/k`` when it ties with k-1 others at the minimum (the
    expected hit of an attacker who picks among the tied at random), else 0. The mean is the rank-1
    identification rate; a probe that tells nothing (equal distance to all) earns ``1/N``, chance.

    Args:
        probes: n x d descriptors of the anonymized side; probe i's true match is gallery row i.
        gallery: n x d descriptors of the originals.
        metric: Distance function, probes x gallery.

    Returns:
        n credits in [0, 1].
    """
    credit = np.zeros(len(probes))
    for start in range(0, len(probes), CHUNK):
        distances = metric(probes[start : start + CHUNK], gallery)
        nearest = distances.min(axis=1, keepdims=True)
        tied = distances <= nearest
        rows = np.arange(len(distances))
        own = tied[rows, rows + start]
        credit[start : start + CHUNK] = np.where(own, 1.0 / tied.sum(axis=1), 0.0)
    return credit


def impostor_threshold(gallery: np.ndarray, fmr: float = FMR) -> float | None:
    """The distance below which at most ``fmr`` of the pairs of different originals fall.

    A pair matches when its distance is strictly below the threshold. The threshold is the
    ``floor(fmr * pairs)``-th smallest impostor distance (0-based), so at most that many impostor
    pairs lie below it: the false-match rate is at most ``fmr`` (with fewer than ``1/fmr`` pairs, none).

    Args:
        gallery: n x d embeddings of the original faces, each a different face.
        fmr: The false-match rate to calibrate for.

    Returns:
        The threshold, or None with fewer than two faces (no pair to calibrate on).
    """
    if len(gallery) < 2:
        return None
    impostors = pdist(gallery)
    k = math.floor(fmr * len(impostors))
    return float(np.partition(impostors, k)[k])


def genuine_distances(probes: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    """Distance of each probe to its own original (row i to row i)."""
    return np.linalg.norm(probes - gallery, axis=1)


def mean_or_none(values: np.ndarray | pd.Series) -> float | None:
    """The mean as a float, None (void) for no values: a rate with no denominator is not 0."""
    return float(np.mean(values)) if len(values) else None


def gaussian_psf(sigma: float) -> np.ndarray:
    """Normalized 2-D Gaussian kernel of ``sigma``, 3 sigma each side (the blur's own support)."""
    radius = max(math.ceil(3 * sigma), 1)
    line = cv2.getGaussianKernel(2 * radius + 1, sigma)
    return line @ line.T


def deblur(crop: np.ndarray, sigma: float, iterations: int) -> np.ndarray:
    """Richardson-Lucy deconvolution of a crop the blur method blurred with ``sigma``.

    It mirrors :func:`anonbench.anonymizers.classic.gaussian`: above its direct sigma the blur ran
    on a copy shrunk to that sigma, so the deconvolution runs there too with that kernel, and the
    result is enlarged bicubically. The crop is reflected at its border first (the blur's border
    rule), so the deconvolution has no dark frame.

    Args:
        crop: H x W x 3 uint8 around a blurred person, with a margin of 3 sigma.
        sigma: The person's blur sigma (:func:`anonbench.anonymizers.classic.blur_sigma`).
        iterations: Richardson-Lucy iterations.

    Returns:
        The deconvolved crop, H x W x 3 uint8.
    """
    height, width = crop.shape[:2]
    work, work_sigma = crop, sigma
    if sigma > classic.DIRECT_SIGMA:
        scale = classic.DIRECT_SIGMA / sigma
        size = (max(round(width * scale), 1), max(round(height * scale), 1))
        work, work_sigma = cv2.resize(crop, size, interpolation=cv2.INTER_AREA), classic.DIRECT_SIGMA
    psf = gaussian_psf(work_sigma)
    pad = psf.shape[0] // 2
    padded = cv2.copyMakeBorder(work, pad, pad, pad, pad, cv2.BORDER_REFLECT_101).astype(np.float64) / 255.0
    channels = [richardson_lucy(padded[..., c], psf, num_iter=iterations, clip=True) for c in range(3)]
    restored = np.stack(channels, axis=-1)[pad : pad + work.shape[0], pad : pad + work.shape[1]]
    restored = np.clip(np.round(restored * 255.0), 0, 255).astype(np.uint8)
    if restored.shape[:2] != (height, width):
        restored = cv2.resize(restored, (width, height), interpolation=cv2.INTER_CUBIC)
    return restored


def unpixelate(crop: np.ndarray, block: int) -> np.ndarray:
    """Bicubic interpolation through the block means of a pixelated crop.

    A block's colour is the mean of the original over the block: a sample of the area-averaged
    image at the block's centre. Interpolating those samples bicubically (OpenCV's resize maps
    the block centres onto the samples) is the smoothest estimate that passes through every
    known value, and needs no learned prior; nearest-neighbour (the pixelation itself) keeps
    the block edges a face embedding reads as structure. A block's pixels outside the person's
    mask kept their original values, so each block's value is its median, which is the block
    mean wherever most of the block was painted.

    Args:
        crop: H x W x 3 uint8, the person's box, the block grid starting at its corner.
        block: The block side in pixels (:func:`anonbench.anonymizers.classic.block_size`).

    Returns:
        The interpolated crop, H x W x 3 uint8.
    """
    height, width = crop.shape[:2]
    rows, cols = math.ceil(height / block), math.ceil(width / block)
    padded = cv2.copyMakeBorder(crop, 0, rows * block - height, 0, cols * block - width, cv2.BORDER_REPLICATE)
    means = np.median(padded.reshape(rows, block, cols, block, 3), axis=(1, 3)).astype(np.float32)
    smooth = cv2.resize(means, (cols * block, rows * block), interpolation=cv2.INTER_CUBIC)
    return np.clip(np.round(smooth[:height, :width]), 0, 255).astype(np.uint8)


def invert(method: str, image: np.ndarray, persons: Sequence[Person], params: Anonymize, iterations: int) -> np.ndarray:
    """Undo a classic method on an anonymized image with the method's parameters (an informed attacker).

    Each person is inverted where the method painted it, in the method's painting order.

    Args:
        method: ``blur`` or ``pixelate`` (the keys of :data:`INVERSIONS`).
        image: The anonymized image, H x W x 3 uint8.
        persons: The persons the method anonymized (:func:`anonbench.anonymizers.masks.person_masks`).
        params: The anonymize section the variant was made with.
        iterations: Richardson-Lucy iterations (blur).

    Returns:
        The image with every person's region inverted.

    Raises:
        ValueError: For a method with no inversion.
    """
    out = image.copy()
    blurring = cast(classic.Blur, params.settings("blur"))
    pixelation = cast(classic.Pixelate, params.settings("pixelate"))
    for person in persons:
        if method == "blur":
            sigma = classic.blur_sigma(person, blurring)
            undo = partial(deblur, sigma=sigma, iterations=iterations)
            classic.paint(out, image, person, math.ceil(3 * sigma), undo)
        elif method == "pixelate":
            classic.paint(out, image, person, 0, partial(unpixelate, block=classic.block_size(person, pixelation)))
        else:
            raise ValueError(f"no inversion for {method!r}")
    return out


def appearance(image: np.ndarray, mask: np.ndarray, bins: HsvBins) -> np.ndarray:
    """A weights-free appearance descriptor: the normalized joint HSV histogram of the masked pixels.

    Args:
        image: H x W x 3 uint8, BGR (a person's box crop or a whole image).
        mask: H x W, nonzero where the person's pixels are.
        bins: Bins per channel.

    Returns:
        The histogram as a vector summing to 1 (all zeros for an empty mask).
    """
    hsv = cv2.cvtColor(image, cv2.COLOR_BGR2HSV)
    sizes = [bins.hue, bins.saturation, bins.value]
    hist = cv2.calcHist([hsv], [0, 1, 2], mask.astype(np.uint8), sizes, [0, 180, 0, 256, 0, 256]).ravel()
    total = float(hist.sum())
    return (hist / total if total else hist).astype(np.float64)


@dataclass(frozen=True)
class Linkage:
    """The linkage results of a split: per face and per person, and the calibration."""

    naive: np.ndarray
    inverted: np.ndarray | None
    appearance: np.ndarray
    threshold: float | None
    tmr_naive: float | None
    tmr_inverted: float | None


def link(
    original: np.ndarray,
    naive: np.ndarray,
    inverted: np.ndarray | None,
    person_original: np.ndarray,
    person_variant: np.ndarray,
) -> Linkage:
    """Run the three linkage attacks of a split.

    Args:
        original: n x 128 embeddings of the original faces (the gallery).
        naive: n x 128 embeddings of the anonymized images at the same boxes.
        inverted: The same after inversion, or None where no inversion applies.
        person_original: p x d appearance descriptors of the original persons.
        person_variant: p x d descriptors of the same persons on the anonymized images.

    Returns:
        Rank-1 credits (:func:`rank1_credit`) per face and person, and the true-match rates at
        :data:`FMR` (None without a threshold).
    """
    threshold = impostor_threshold(original)

    def tmr(probes: np.ndarray) -> float | None:
        return None if threshold is None else float(np.mean(genuine_distances(probes, original) < threshold))

    return Linkage(
        naive=rank1_credit(naive, original, euclidean),
        inverted=None if inverted is None else rank1_credit(inverted, original, euclidean),
        appearance=rank1_credit(person_variant, person_original, hellinger),
        threshold=threshold,
        tmr_naive=tmr(naive),
        tmr_inverted=None if inverted is None else tmr(inverted),
    )


def metrics(
    faces: pd.DataFrame, persons: pd.DataFrame, result: Linkage, how: str | None, residual_ids: list[int]
) -> dict[str, object]:
    """The contract's rates of one variant (metrics/privacy/<variant>.json, less its header).

    Args:
        faces: One row per original face with ``size`` and ``detected_after``, in the gallery's order.
        persons: One row per person with ``size``, in the appearance gallery's order.
        result: :func:`link`'s results for those rows.
        how: The inversion (a value of :data:`INVERSIONS`), None where none applies.
        residual_ids: Image id of every face found on the anonymized images outside every region.

    Returns:
        ``faces``, ``detected_rate``, ``linkage``, ``residual_faces``, ``residual_image_ids``, ``by_size``.
    """
    faces = faces.assign(naive=result.naive, inverted=result.inverted)
    persons = persons.assign(appearance=result.appearance)
    inverted = result.inverted is not None
    n_faces, n_persons = len(faces), len(persons)
    by_size = {}
    for bucket in BUCKETS:
        these, people = faces[faces["size"] == bucket], persons[persons["size"] == bucket]
        by_size[bucket] = {
            "faces": len(these),
            "detected_rate": mean_or_none(these["detected_after"]),
            "naive_rank1": mean_or_none(these["naive"]),
            "inversion_rank1": mean_or_none(these["inverted"]) if inverted else None,
            "appearance_rank1": mean_or_none(people["appearance"]),
            "appearance_persons": len(people),
        }
    return {
        "faces": n_faces,
        "detected_rate": mean_or_none(faces["detected_after"]),
        "linkage": {
            "naive": {
                "rank1": mean_or_none(faces["naive"]),
                "chance": 1.0 / n_faces if n_faces else None,
                "tmr_at_fmr_1pct": result.tmr_naive,
                "threshold": result.threshold,
            },
            "inversion": {
                "rank1": mean_or_none(faces["inverted"]) if inverted else None,
                "tmr_at_fmr_1pct": result.tmr_inverted,
                "how": how if inverted else None,
            },
            "appearance": {
                "rank1": mean_or_none(persons["appearance"]),
                "chance": 1.0 / n_persons if n_persons else None,
                "persons": n_persons,
            },
        },
        "residual_faces": len(residual_ids),
        "residual_image_ids": sorted(set(residual_ids)),
        "by_size": by_size,
    }
