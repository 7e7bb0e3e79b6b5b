"""COCO box scoring: the 12 COCO stats and per-class AP, with pycocotools or faster-coco-eval.

Both backends run the same COCOeval algorithm (faster-coco-eval in C++); they
agree to floating-point rounding (tested). Scoring is split in two steps so the
report's bootstrap stays cheap: :func:`evaluate_images` matches detections to
ground truth once per (image, category), the expensive part, and
:func:`rescore` accumulates the 12 stats over any resample of the images
(repeats allowed) from those per-image results, without recomputing one IoU::

    evaluation = evaluate_images(instances, predictions)
    full = rescore(evaluation)
    rng = np.random.default_rng(cfg.seed)
    n = len(evaluation.image_ids)
    samples = [rescore(evaluation, rng.integers(0, n, n)) for _ in range(1000)]

Two evaluations of different models on the same ground truth list their images
in the same order (sorted ids), so drawing one index array per bootstrap
sample and rescoring both gives paired deltas.

Two scorers (``evaluate.protocol`` picks one). ``coco``: the COCO API as
released. ``authors``: the COCO API as the study's authors ran it, their copy of
fdet-api's ``cocoeval.py`` (see :func:`_authors_rule`); only pycocotools runs it.

Undefined numbers (no ground truth in a category or area range; COCO's
``summarize`` prints -1) are ``None`` here.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from anonbench.coco import Instances

Backend = Literal["faster-coco-eval", "pycocotools"]
BACKENDS: tuple[Backend, ...] = ("faster-coco-eval", "pycocotools")
Scorer = Literal["coco", "authors"]
# The authors' rule is a change to pycocotools' Python matching; faster-coco-eval matches in C++.
AUTHORS_BACKEND: Backend = "pycocotools"
# COCOeval.stats order for boxes: AP at IoU .50:.95, .50, .75, by area; AR at 1/10/100 detections, by area.
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
Prediction = dict[str, Any]

_LOG = logging.getLogger(__name__)


class PredictionError(ValueError):
    """A prediction does not fit the ground truth it is scored against; the message names it."""


@dataclass(frozen=True)
class CocoScores:
    """The 12 COCO stats and per-class AP / AP50 (``None`` where COCO has no defined value)."""

    stats: dict[str, float | None]
    per_class: dict[str, dict[str, float | None]]


@dataclass(frozen=True)
class Evaluation:
    """Per-image matching results of one scoring run, ready to be accumulated over any image sample.

    Attributes:
        coco_eval: The backend's COCOeval object after ``evaluate()``: pycocotools keeps readable per-image
            dicts in ``evalImgs``, faster-coco-eval opaque C++ records in ``_evalImgs_cpp``; both are
            ordered category x area range x image (:meth:`per_image` shapes them that way).
        backend: Which backend produced it.
        image_ids: The evaluated images, in COCOeval's order (sorted ids); :func:`rescore` indexes this.
    """

    coco_eval: Any
    backend: Backend
    image_ids: tuple[int, ...]

    def per_image(self) -> np.ndarray:
        """Per-image results as an object array [category, area range, image] (``None`` where both are empty)."""
        params = self.coco_eval.params
        records = self.coco_eval._evalImgs_cpp if self.backend == "faster-coco-eval" else self.coco_eval.evalImgs
        flat = np.empty(len(records), dtype=object)
        flat[:] = records
        return flat.reshape(len(params.catIds), len(params.areaRng), len(self.image_ids))


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence pycocotools, which prints progress and the summary table to stdout."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def _authors_rule(coco_eval_class: Any) -> Any:
    """The COCOeval of pycocotools, changed as the authors' scorer is (their copy of fdet-api's cocoeval.py).

    Their file (iki-wgt/anonymized_data_evaluation_and_training_pipeline,
    cocoapi/PythonAPI/pycocotools/cocoeval.py, forked from yhsmiley/fdet-api at b246a28) differs from
    pycocotools' in what it scores in exactly two places; everything else is the same code:

    - ``computeIoU`` (line 218) and ``evaluateImg`` (line 291) build the crowd flags as
      ``int(o['iscrowd']) if 'iscrowd' in gt else 0``, where ``gt`` is the list of ground-truth
      dicts, so the test is always false and every flag is 0. A crowd region is then compared by
      IoU (not by the detection's area inside it) and, once matched, absorbs no further detection.
      ``_prepare`` (line 139) still sets ``ignore`` from ``iscrowd`` as pycocotools does, so a crowd
      region stays an ignore region: the one detection it absorbs is neither a true nor a false
      positive, and it is not in the recall denominator (``npig`` counts non-ignored ground truth).
      Here: ``_prepare`` runs unchanged (``ignore`` = ``iscrowd``), then sets ``iscrowd`` to 0 on the
      prepared ground truth, the only input those two lines read; pycocotools reads ``iscrowd``
      nowhere else. Setting ``iscrowd: 0`` in the ground truth before scoring would not do: it would
      clear ``ignore`` too.
    - ``Params.setDetParams`` rounds the IoU thresholds to two decimals: the ninth is 0.9, not
      linspace's 0.8999999999999999 (a match at an IoU between the two counts in pycocotools only).

    Differences that change no number kept here: ``maxDets`` is [1, 10, 100, 1000], so images are
    matched over their best 1000 detections, not 100; matching is greedy in score order, so the best
    100's matches (the only ones the 12 stats and per-class AP read) are the same. Their
    ``summarize`` also prints per-class AP, and fdet-api adds F-beta reports; neither feeds AP.

    Args:
        coco_eval_class: pycocotools' ``COCOeval``.

    Returns:
        A subclass that scores as the authors' file does.
    """

    class _AuthorsRule(coco_eval_class):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.params.iouThrs = np.around(self.params.iouThrs, 2)

        def _prepare(self) -> None:
            super()._prepare()
            for ground_truth in self._gts.values():
                for annotation in ground_truth:
                    annotation["iscrowd"] = 0

    return _AuthorsRule


def _api(backend: Backend, scorer: Scorer = "coco") -> tuple[Any, Any]:
    """The COCO and COCOeval classes of a backend and scorer (imported lazily: only the chosen one loads).

    Raises:
        ValueError: For an unknown backend, or the authors' scorer on a backend other than pycocotools.
    """
    if scorer == "authors" and backend != AUTHORS_BACKEND:
        raise ValueError(f"the authors' scorer runs on {AUTHORS_BACKEND}, not {backend}")
    if backend == "faster-coco-eval":
        from faster_coco_eval import COCO, COCOeval_faster

        return COCO, COCOeval_faster
    if backend == "pycocotools":
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        return COCO, _authors_rule(COCOeval) if scorer == "authors" else COCOeval
    raise ValueError(f"unknown COCO evaluation backend {backend!r}; choose one of {BACKENDS}")


def _index(coco_class: Any, dataset: dict[str, Any]) -> Any:
    """A backend COCO object over ``dataset``, built the same way for both backends."""
    coco = coco_class()
    coco.dataset = dataset
    with _quiet():
        coco.createIndex()
    return coco


def check_predictions(instances: Instances, predictions: Sequence[Prediction]) -> None:
    """Refuse predictions whose image or category is not in the ground truth, or whose box is unusable.

    COCOeval would fail on an unknown image with a bare assertion and silently ignore an unknown category.

    Raises:
        PredictionError: Naming the first bad prediction (its index) and what is wrong with it.
    """
    image_ids = {image["id"] for image in instances["images"]}
    category_ids = {category["id"] for category in instances["categories"]}
    for i, pred in enumerate(predictions):
        bbox = pred.get("bbox")
        if pred.get("image_id") not in image_ids:
            problem = f"image_id {pred.get('image_id')!r} is not in the ground truth"
        elif pred.get("category_id") not in category_ids:
            problem = f"category_id {pred.get('category_id')!r} is not in the ground truth"
        elif not (isinstance(bbox, list | tuple) and len(bbox) == 4 and all(map(math.isfinite, bbox))):
            problem = f"bbox {bbox!r} is not four finite numbers [x, y, w, h]"
        elif bbox[2] < 0 or bbox[3] < 0:
            problem = f"bbox {bbox!r} has a negative width or height"
        elif not math.isfinite(pred.get("score", math.nan)):
            problem = f"score {pred.get('score')!r} is not a finite number"
        else:
            continue
        raise PredictionError(f"prediction {i}: {problem}")


def evaluate_images(
    instances: Instances,
    predictions: Sequence[Prediction],
    backend: Backend = "faster-coco-eval",
    image_ids: Sequence[int] | None = None,
    scorer: Scorer = "coco",
) -> Evaluation:
    """Match predictions to the ground truth per image and category (COCOeval's ``evaluate``).

    Args:
        instances: Ground truth, a COCO instances mapping; not modified. Crowd regions are handled as the
            scorer does.
        predictions: COCO results (``image_id``, ``category_id``, ``bbox`` as float xywh, ``score``); not modified.
        backend: ``faster-coco-eval`` or ``pycocotools``.
        image_ids: Evaluate only these images (default: every image of the ground truth).
        scorer: ``coco`` or ``authors`` (:func:`_authors_rule`; needs the ``pycocotools`` backend).

    Returns:
        The per-image results; :func:`rescore` turns them into numbers.

    Raises:
        PredictionError: If a prediction names an image or category the ground truth lacks, or has a bad box.
    """
    check_predictions(instances, predictions)
    coco_class, eval_class = _api(backend, scorer)
    # COCOeval writes "ignore" into ground-truth records and loadRes fills area/id into results: give it copies.
    gt = _index(coco_class, {**instances, "annotations": [dict(a) for a in instances["annotations"]]})
    results = [dict(p) for p in predictions]
    with _quiet():
        # pycocotools' loadRes cannot take an empty list, yet no detections at all is a valid result.
        dt = gt.loadRes(results) if results else _index(coco_class, {**instances, "annotations": []})
        if backend == "faster-coco-eval":
            coco_eval = eval_class(gt, dt, "bbox", separate_eval=True, print_function=_LOG.debug)
        else:
            coco_eval = eval_class(gt, dt, "bbox")
        if image_ids is not None:
            coco_eval.params.imgIds = sorted(image_ids)
        coco_eval.evaluate()
    return Evaluation(coco_eval, backend, tuple(int(i) for i in coco_eval.params.imgIds))


def _defined(value: float) -> float | None:
    """COCO marks undefined numbers with -1."""
    return None if value < 0 else float(value)


def _mean_defined(precision: np.ndarray) -> float | None:
    valid = precision[precision > -1]
    return float(valid.mean()) if valid.size else None


def rescore(evaluation: Evaluation, image_indices: Sequence[int] | np.ndarray | None = None) -> CocoScores:
    """Accumulate the COCO stats over a sample of the evaluated images, reusing their per-image results.

    Args:
        evaluation: From :func:`evaluate_images`; not modified.
        image_indices: Positions in ``evaluation.image_ids``, repeats allowed (a bootstrap sample); default all.

    Returns:
        The 12 stats and per-class AP / AP50 of that sample, exactly what scoring the sample's images
        (each repeat as a separate image) would give.
    """
    source = evaluation.coco_eval
    indices = np.arange(len(evaluation.image_ids)) if image_indices is None else np.asarray(image_indices)
    sample = evaluation.per_image()[:, :, indices].ravel().tolist()
    params = copy.deepcopy(source._paramsEval)
    params.imgIds = [evaluation.image_ids[i] for i in indices]
    coco_eval = copy.copy(source)
    coco_eval.params, coco_eval._paramsEval = params, copy.deepcopy(params)
    if evaluation.backend == "faster-coco-eval":
        coco_eval._evalImgs_cpp = sample
    else:
        coco_eval.evalImgs = sample
    with _quiet():
        coco_eval.accumulate()
        coco_eval.summarize()
    stats = {name: _defined(value) for name, value in zip(STAT_NAMES, coco_eval.stats, strict=False)}
    # precision: [IoU threshold, recall threshold, category, area range, max detections]; area "all", 100 dets.
    precision = coco_eval.eval["precision"][:, :, :, 0, -1]
    iou50 = int(np.flatnonzero(np.isclose(params.iouThrs, 0.5))[0])
    names = {cat["id"]: cat["name"] for cat in source.cocoGt.dataset["categories"]}
    per_class = {
        names[cat_id]: {"AP": _mean_defined(precision[:, :, k]), "AP50": _mean_defined(precision[iou50, :, k])}
        for k, cat_id in enumerate(params.catIds)
    }
    return CocoScores(stats, per_class)


def void_scores(instances: Instances) -> CocoScores:
    """The scores of an evaluation that has no number to give (no detections): every value ``None``.

    A model that detects nothing has no precision at any recall, so COCOeval's
    0.0 would be a measurement it never made; ``None`` keeps it out of every
    mean and comparison.
    """
    return CocoScores(
        dict.fromkeys(STAT_NAMES),
        {str(cat["name"]): {"AP": None, "AP50": None} for cat in instances["categories"]},
    )


def score(
    instances: Instances,
    predictions: Sequence[Prediction],
    backend: Backend = "faster-coco-eval",
    image_ids: Sequence[int] | None = None,
    scorer: Scorer = "coco",
) -> CocoScores:
    """Score predictions against the ground truth with a scorer's COCO protocol (see :func:`evaluate_images`)."""
    return rescore(evaluate_images(instances, predictions, backend, image_ids, scorer))
