"""Bootstrap confidence intervals for COCO AP by resampling images.

COCOeval's expensive part is the per-image matching of detections to ground
truth (``evaluate``); its ``accumulate`` step only concatenates the per-image
matches, sorts them by score and integrates precision over recall. A bootstrap
sample is a multiset of images, so its AP needs no new matching: the matches
of an image drawn ``w`` times enter the cumulative true/false positive counts
with weight ``w``. :func:`evaluate` runs pycocotools' matching once (through
:mod:`anonbench.analysis.cocoeval`) and keeps its per-image results; :func:`accumulate` then scores any number of
image multisets with numpy, computing pycocotools' ``accumulate`` quantities,
so a resample gives the AP that pycocotools gives on the same images copied
(up to the order of exactly tied scores), vectorized over resamples instead of
one ``accumulate`` call per resample (:func:`anonbench.analysis.cocoeval.rescore`), and
evaluating precision at the true positives only, where it can rise (a full
evaluation at conf 0.001 has about twenty false positives per true one).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from anonbench.analysis.cocoeval import CocoScores, Evaluation, Prediction, Scorer, evaluate_images, rescore
from anonbench.coco import Instances
from anonbench.io import atomic_open

# pycocotools' recall thresholds (101 points) and IoU thresholds (0.50:0.05:0.95).
REC_THRS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)
IOU_THRS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
# Bound on the float cells one accumulate chunk holds (resamples x detections).
_CHUNK_CELLS = 20_000_000


@dataclass(frozen=True)
class ClassMatches:
    """One category's detections over all images, in pycocotools' global score order.

    Attributes:
        det_image: Index (into ``ImageResults.image_ids``) of the image of each detection.
        tps: True positives, shape (IoU thresholds, detections).
        fps: False positives (ignored detections are neither), same shape.
        gt_count: Non-ignored ground-truth boxes per image, shape (images,).
    """

    det_image: np.ndarray
    tps: np.ndarray
    fps: np.ndarray
    gt_count: np.ndarray


@dataclass(frozen=True)
class ImageResults:
    """Per-image COCOeval matches of one evaluation (area 'all', at most 100 detections per image)."""

    image_ids: tuple[int, ...]
    classes: dict[str, ClassMatches]


@dataclass(frozen=True)
class Resampled:
    """Per-class AP and AP50 of each resample; NaN where a class has no ground truth in it."""

    classes: tuple[str, ...]
    ap: np.ndarray
    ap50: np.ndarray

    def mean(self, classes: list[str] | None = None, iou50: bool = False) -> np.ndarray:
        """COCO's mean over classes (those with ground truth) per resample, optionally over a subset.

        Args:
            classes: Class names to average over; default every class.
            iou50: Average AP50 instead of AP.

        Returns:
            One value per resample (NaN where none of the classes has ground truth).
        """
        values = self.ap50 if iou50 else self.ap
        if classes is not None:
            values = values[:, [self.classes.index(c) for c in classes if c in self.classes]]
        valid = ~np.isnan(values)
        counts = valid.sum(axis=1)
        sums = np.where(valid, values, 0.0).sum(axis=1)
        return np.divide(sums, counts, out=np.full(len(values), np.nan), where=counts > 0)


def image_results(evaluation: Evaluation) -> ImageResults:
    """Keep what a bootstrap needs of a pycocotools evaluation: area 'all', the largest detection limit.

    Args:
        evaluation: From :func:`anonbench.analysis.cocoeval.evaluate_images` with the ``pycocotools`` backend,
            whose per-image records are readable (faster-coco-eval keeps them in C++).

    Returns:
        Every category's detections in score order with their match flags.
    """
    if evaluation.backend != "pycocotools":
        raise ValueError("bootstrap needs per-image records from the pycocotools backend")
    params = evaluation.coco_eval.params
    if params.areaRngLbl[0] != "all" or not np.allclose(params.iouThrs, IOU_THRS):
        raise ValueError("bootstrap expects COCOeval's default area ranges and IoU thresholds")
    names = {cat["id"]: cat["name"] for cat in evaluation.coco_eval.cocoGt.dataset["categories"]}
    per_image = evaluation.per_image()
    classes = {names[cat_id]: _class_matches(per_image[k, 0]) for k, cat_id in enumerate(params.catIds)}
    return ImageResults(evaluation.image_ids, classes)


def evaluate(
    instances: Instances, predictions: list[Prediction], image_ids: list[int] | None = None, scorer: Scorer = "coco"
) -> ImageResults:
    """Match predictions to ground truth once (pycocotools) and keep the per-image results.

    Args:
        instances: Ground truth (COCO instances mapping).
        predictions: COCO results with the ground truth's image and category ids.
        image_ids: Images to evaluate (default: all of the ground truth).
        scorer: The evaluation's scorer: a resample is matched by the rule its full score was.

    Returns:
        Per-image results for :func:`accumulate`.
    """
    return image_results(evaluate_images(instances, predictions, "pycocotools", image_ids, scorer))


def score_and_resample(
    instances: Instances,
    predictions: list[Prediction],
    counts: np.ndarray,
    image_ids: list[int] | None = None,
    scorer: Scorer = "coco",
) -> tuple[CocoScores, Resampled]:
    """The COCO scores of one prediction set and its resampled per-class AP, from one matching pass.

    Args:
        instances: Ground truth.
        predictions: COCO results.
        counts: Resample multiplicities over the evaluated images (sorted ids), see :func:`resample_counts`.
        image_ids: Images to evaluate (default: all of the ground truth).
        scorer: ``coco`` or ``authors`` (:mod:`anonbench.analysis.cocoeval`).

    Returns:
        The 12 stats with per-class AP (:func:`anonbench.analysis.cocoeval.rescore`) and the resampled AP.
    """
    evaluation = evaluate_images(instances, predictions, "pycocotools", image_ids, scorer)
    return rescore(evaluation), accumulate(image_results(evaluation), counts)


def _class_matches(per_image: list[dict[str, Any] | None]) -> ClassMatches:
    """Concatenate one category's per-image results and sort them as pycocotools' accumulate does."""
    gt_count = np.zeros(len(per_image), dtype=np.int64)
    scores, det_image, matches, ignores = [], [], [], []
    for index, entry in enumerate(per_image):
        if entry is None:
            continue
        gt_count[index] = np.count_nonzero(np.asarray(entry["gtIgnore"]) == 0)
        scores.append(np.asarray(entry["dtScores"], dtype=float))
        det_image.append(np.full(len(entry["dtScores"]), index, dtype=np.int64))
        matches.append(np.asarray(entry["dtMatches"]).reshape(len(IOU_THRS), -1))
        ignores.append(np.asarray(entry["dtIgnore"]).reshape(len(IOU_THRS), -1))
    if not scores:
        empty = np.zeros((len(IOU_THRS), 0), dtype=bool)
        return ClassMatches(np.zeros(0, dtype=np.int64), empty, empty, gt_count)
    order = np.argsort(-np.concatenate(scores), kind="mergesort")
    dtm = np.concatenate(matches, axis=1)[:, order]
    dt_ignore = np.concatenate(ignores, axis=1)[:, order].astype(bool)
    tps = np.logical_and(dtm, ~dt_ignore)
    fps = np.logical_and(np.logical_not(dtm), ~dt_ignore)
    return ClassMatches(np.concatenate(det_image)[order], tps, fps, gt_count)


def resample_counts(n_images: int, samples: int, seed: int) -> np.ndarray:
    """How often each image is drawn in each bootstrap sample (rows sum to ``n_images``).

    Args:
        n_images: Images in the evaluation set.
        samples: Bootstrap samples.
        seed: Random seed (the study's ``cfg.seed``), so intervals are reproducible.

    Returns:
        Integer array of shape (samples, n_images).
    """
    rng = np.random.default_rng(seed)
    drawn = rng.integers(0, n_images, size=(samples, n_images))
    counts = np.zeros((samples, n_images), dtype=np.int64)
    np.add.at(counts, (np.arange(samples)[:, None], drawn), 1)
    return counts


def accumulate(results: ImageResults, counts: np.ndarray) -> Resampled:
    """Per-class AP and AP50 of every image multiset, from the stored per-image matches.

    Args:
        results: Output of :func:`evaluate`.
        counts: Multiplicity of each image per sample, shape (samples, images); a row of ones
            is the plain evaluation.

    Returns:
        AP and AP50 per sample and class.
    """
    counts = np.atleast_2d(counts)
    if counts.shape[1] != len(results.image_ids):
        raise ValueError(f"counts has {counts.shape[1]} images, the evaluation {len(results.image_ids)}")
    names = tuple(results.classes)
    ap = np.full((len(counts), len(names)), np.nan)
    ap50 = np.full_like(ap, np.nan)
    for k, name in enumerate(names):
        precision = _class_precision(results.classes[name], counts)
        ap[:, k] = precision.mean(axis=(1, 2))
        ap50[:, k] = precision[:, 0, :].mean(axis=1)
    return Resampled(names, ap, ap50)


def _class_precision(matches: ClassMatches, counts: np.ndarray) -> np.ndarray:
    """Interpolated precision (samples, IoU thresholds, recall thresholds); NaN without ground truth.

    Precision rises only at a true positive (between two of them the true positives stay and the false
    ones grow), so pycocotools' interpolated precision, the best precision at or after the first
    detection that reaches a recall level, is a running maximum over the true positives alone. The work
    per IoU threshold is then over its true positives, not over every detection: one cumulative sum of
    the weights over all detections serves every threshold. Weights are whole numbers, so every sum is
    exact and each value is the one pycocotools computes, to the bit.
    """
    n_samples = len(counts)
    npig = counts @ matches.gt_count
    precision = np.full((n_samples, len(IOU_THRS), len(REC_THRS)), np.nan)
    n_dets = len(matches.det_image)
    positives = [np.flatnonzero(row) for row in matches.tps]
    ignored = [np.flatnonzero(row) for row in ~(matches.tps | matches.fps)]
    step = max(1, _CHUNK_CELLS // max(1, n_dets))
    for start in range(0, n_samples, step):
        rows = np.arange(start, min(start + step, n_samples))
        rows = rows[npig[rows] > 0]
        if len(rows) == 0:
            continue
        weights = counts[rows][:, matches.det_image].astype(float)
        seen = np.cumsum(weights, axis=1)  # detections up to each one, ignored ones included
        needed = _tp_needed(npig[rows])
        bound = float(npig[rows].max()) + 2.0
        for t in range(len(IOU_THRS)):
            precision[rows, t] = _threshold_precision(weights, seen, positives[t], ignored[t], needed, bound)
    return precision


def _tp_needed(npig: np.ndarray) -> np.ndarray:
    """(samples, recall thresholds): the smallest whole true-positive count with ``tp / npig >= threshold``.

    Found with the same float division pycocotools uses (``tp / npig`` against ``REC_THRS``).
    """
    total = npig.astype(float)[:, None]
    needed = np.ceil(REC_THRS[None, :] * total)
    needed = np.where((needed - 1) / total >= REC_THRS, needed - 1, needed)
    return np.where(needed / total < REC_THRS, needed + 1, needed)


def _threshold_precision(
    weights: np.ndarray, seen: np.ndarray, positives: np.ndarray, ignored: np.ndarray, needed: np.ndarray, bound: float
) -> np.ndarray:
    """Interpolated precision at every recall threshold for one IoU threshold, (samples, recall thresholds).

    Args:
        weights: Each detection's weight per sample (samples, detections).
        seen: Cumulative weights over all detections (samples, detections).
        positives: Indices of this threshold's true positives, ascending.
        ignored: Indices of this threshold's ignored detections (neither true nor false), ascending.
        needed: True-positive counts that reach each recall threshold (:func:`_tp_needed`).
        bound: Above every count of a row: separates the rows in one sorted search.
    """
    if len(positives) == 0:
        return np.zeros(needed.shape)
    tp = np.cumsum(weights[:, positives], axis=1)
    scored = seen[:, positives]  # true + false positives up to each true positive: all seen minus the ignored
    if len(ignored):
        ahead = np.searchsorted(ignored, positives)
        cumulative = np.cumsum(weights[:, ignored], axis=1)
        scored = scored - np.where(ahead > 0, cumulative[:, np.maximum(ahead - 1, 0)], 0.0)
    prec = tp / (scored + np.spacing(1))
    prec = np.maximum.accumulate(prec[:, ::-1], axis=1)[:, ::-1]
    first = _first_reaching(tp, needed, bound)
    picked = np.take_along_axis(prec, np.minimum(first, len(positives) - 1), axis=1)
    return np.where(first < len(positives), picked, 0.0)


def _first_reaching(tp: np.ndarray, needed: np.ndarray, bound: float) -> np.ndarray:
    """Per row, the first index where the non-decreasing ``tp`` reaches each of ``needed`` (the length if never).

    Offsetting each row by a multiple of ``bound`` (above every count) turns all rows into one sorted
    array, searched once.
    """
    n_rows, n = tp.shape
    offset = (np.arange(n_rows, dtype=float) * bound)[:, None]
    found = np.searchsorted((tp + offset).ravel(), (needed + offset).ravel(), side="left")
    return found.reshape(n_rows, -1) - (np.arange(n_rows) * n)[:, None]


def interval(values: np.ndarray, confidence: float) -> tuple[float, float]:
    """Percentile bootstrap interval of ``values`` (NaN resamples left out).

    Args:
        values: One statistic per resample.
        confidence: For example 0.95.

    Returns:
        Lower and upper bound (NaN when no resample has a value).
    """
    finite = values[~np.isnan(values)]
    if finite.size == 0:
        return (float("nan"), float("nan"))
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(finite, [tail, 1.0 - tail])
    return (float(low), float(high))


def resample(
    instances: Instances,
    predictions: list[Prediction],
    image_ids: list[int] | None,
    samples: int,
    seed: int,
    scorer: Scorer = "coco",
) -> tuple[tuple[int, ...], Resampled]:
    """One evaluation's bootstrap resamples: match once, then score every resample.

    Args:
        instances: Ground truth.
        predictions: COCO results.
        image_ids: Images to evaluate (default: all of the ground truth).
        samples: Bootstrap samples (params ``report.bootstrap_samples``).
        seed: The study's seed: every evaluation on the same images draws the same resamples (paired).
        scorer: The evaluation's scorer (``coco`` or ``authors``).

    Returns:
        The evaluated image ids (sorted) and the resampled per-class AP.
    """
    results = evaluate(instances, predictions, image_ids, scorer)
    return results.image_ids, accumulate(results, resample_counts(len(results.image_ids), samples, seed))


def image_ids_digest(image_ids: Sequence[int]) -> str:
    """A short fingerprint of the evaluated images: resamples pair only over the same images."""
    return hashlib.sha256(",".join(map(str, image_ids)).encode()).hexdigest()


def save_resamples(path: Path, resampled: Resampled | None) -> Path:
    """Write AP and AP50 per resample and class as one ``.npy`` (2 x samples x classes; 2 x 0 x 0 for none).

    ``.npy`` bytes depend only on the array, so reruns are byte-identical; the class names go in the
    evaluation's metrics file.
    """
    values = np.stack([resampled.ap, resampled.ap50]) if resampled is not None else np.zeros((2, 0, 0))
    with atomic_open(path) as handle:
        np.save(handle, values.astype(np.float64), allow_pickle=False)
    return path


def load_resamples(path: Path, classes: Sequence[str]) -> Resampled:
    """Read what :func:`save_resamples` wrote.

    Raises:
        ValueError: If the array does not have one column per class.
    """
    values = np.load(path, allow_pickle=False)
    if values.ndim != 3 or values.shape[0] != 2 or values.shape[2] != len(classes):
        raise ValueError(f"{path}: shape {values.shape} does not fit {len(classes)} classes")
    return Resampled(tuple(classes), values[0], values[1])
