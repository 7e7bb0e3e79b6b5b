"""Stage evaluate: score one trained model on one evaluation variant (COCO protocol, or the authors').

One cell of the train x eval matrix (Org on Org, Org on Anon, Anon on Org, Anon
on Anon, for every variant and size). Writes, under
``metrics/eval/<model-id>_on_<eval-variant>/``: ``predictions.json`` (COCO
results over the variant's validation split), ``metrics.json`` (the 12 COCO
stats, per-class AP and AP50, what was evaluated and how, ``scorer`` and the inference head
included) and ``manifest.json``
(every image's status), ``resamples.npy`` (per-class AP and AP50 of every
bootstrap resample of the validation images, ``report.bootstrap_samples`` drawn
with ``seed``: the report's intervals read them instead of matching every
evaluation again), and logs one MLflow run with the same numbers. A rerun
with the same weights, ground truth and settings does nothing.

An evaluation without a single detection is void: it has no precision to
measure, so every stat is ``null`` (never 0.0), ``void`` is true with the
reason, and the MLflow run is tagged ``void=true`` and logs no AP.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

from anonbench.analysis.bootstrap import image_ids_digest, resample, save_resamples
from anonbench.analysis.cocoeval import AUTHORS_BACKEND, CocoScores, Scorer, score, void_scores
from anonbench.coco import CategoryTable, CocoError, Instances, read_instances
from anonbench.config import FINETUNE_PREFIX, ORIGINAL, Config, ModelSize, split_model_id
from anonbench.data.download import file_digest
from anonbench.families import DEFAULT_FAMILY, FAMILIES, spec
from anonbench.io import atomic_write_json, atomic_write_text
from anonbench.manifest import Manifest
from anonbench.predict import PredictSettings, predict, split_images
from anonbench.registry import link_evaluation
from anonbench.tracking import mlflow_run
from anonbench.yolo import SUMMARY, chosen_weights, model_dir

log = logging.getLogger(__name__)

NO_DETECTIONS = "no detections"

# MLflow metric names allow letters, digits, _ - . / and spaces; anything else in a class name becomes _.
_UNSAFE_METRIC_CHARS = re.compile(r"[^\w.\- ]")


@dataclass(frozen=True)
class ModelInfo:
    """What a model id (a folder under ``models/``) says about the model."""

    model_id: str
    train_data: str
    model_size: str
    freeze: str | None = None
    family: str = DEFAULT_FAMILY

    def tags(self, eval_variant: str) -> dict[str, str]:
        """MLflow tags of its evaluation on ``eval_variant``; ``combination`` is the train x eval cell."""
        tags = {
            "model_id": self.model_id,
            "train_data": self.train_data,
            "eval_data": eval_variant,
            "family": self.family,
            "model_size": self.model_size,
            "combination": f"{self.train_data} on {eval_variant}",
        }
        return tags | ({"freeze": self.freeze} if self.freeze is not None else {})


def registered_version(cfg: Config, model_id: str) -> dict[str, str] | None:
    """The Model Registry version a training registered (its train.json), to link the evaluation to.

    Returns:
        ``{"name", "version"}``, or None for weights that no tracked training of this study registered.
    """
    summary = model_dir(cfg, model_id) / SUMMARY
    if not summary.is_file():
        return None
    return json.loads(summary.read_text(encoding="utf-8")).get("registered_model")


def parse_model_id(cfg: Config, model_id: str) -> ModelInfo:
    """Read a model id: trained (``<variant>-<size>`` or ``<variant>-<family>-<size>``) or ``ft-<freeze>``.

    ``org-n`` is a YOLOv10, ``org-yolov8-n`` another detector family (:func:`anonbench.config.model_id`).

    A fine-tuned model was trained on ``finetune.variant`` starting from a YOLOv10 ``finetune.base.size`` model.

    Raises:
        ValueError: For an id of neither form, or naming a variant or freeze config the parameters lack.
    """
    if model_id.startswith(FINETUNE_PREFIX):
        freeze = model_id.removeprefix(FINETUNE_PREFIX)
        if freeze not in cfg.finetune.freeze:
            raise ValueError(
                f"model {model_id!r}: {freeze!r} is not a finetune.freeze config {sorted(cfg.finetune.freeze)}"
            )
        return ModelInfo(model_id, cfg.finetune.variant, cfg.finetune.base.size, freeze)
    variant, family, size = split_model_id(model_id)
    known = [ORIGINAL, *cfg.anonymize.methods]
    if variant not in known or size not in get_args(ModelSize):
        raise ValueError(
            f"model {model_id!r}: expected <variant>-<size> or <variant>-<family>-<size> with a variant in {known}, "
            f"a family in {[f for f in FAMILIES if f != DEFAULT_FAMILY]} and a size in {list(get_args(ModelSize))}, "
            f"or {FINETUNE_PREFIX}<freeze config>"
        )
    return ModelInfo(model_id, variant, size, family=family)


def output_dir(cfg: Config, model_id: str, eval_variant: str) -> Path:
    """Folder of one evaluation's outputs."""
    return cfg.paths.metrics / "eval" / f"{model_id}_on_{eval_variant}"


def metric_key(prefix: str, class_name: str) -> str:
    """An MLflow metric name for a per-class number, e.g. ``AP/traffic light``."""
    return f"{prefix}/{_UNSAFE_METRIC_CHARS.sub('_', class_name)}"


def mlflow_metrics(scores: CocoScores) -> dict[str, float]:
    """``coco/<stat>`` and ``AP/<class>``, ``AP50/<class>``; undefined numbers are left out."""
    metrics = {f"coco/{name}": value for name, value in scores.stats.items()}
    for name, values in scores.per_class.items():
        metrics |= {metric_key(key, name): value for key, value in values.items()}
    return {key: value for key, value in metrics.items() if value is not None}


def _usable_images(
    cfg: Config, instances: dict[str, Any], image_dir: Path, manifest: Manifest
) -> list[tuple[int, Path]]:
    """The split's images whose files exist; a missing one stops (strict) or is a counted skip."""
    usable = []
    for image_id, path in split_images(instances, image_dir):
        if path.is_file():
            usable.append((image_id, path))
            manifest.add(path.name, "ok", image_id=image_id)
        elif cfg.policy == "strict":
            raise CocoError(f"{path}: image file of image id {image_id} not found")
        else:
            manifest.add(path.name, "skipped", "image file not found", image_id=image_id)
    if not usable:
        raise CocoError(f"{image_dir}: no image of the split could be read")
    return usable


def _up_to_date(outputs: list[Path], settings: dict[str, Any]) -> bool:
    """Whether a previous run wrote every output (metrics.json last) from the same inputs and settings."""
    if not all(path.is_file() for path in outputs):
        return False
    previous = json.loads(outputs[1].read_text(encoding="utf-8"))
    return all(previous.get(key) == value for key, value in settings.items())


def write_resamples(
    path: Path,
    instances: Instances,
    predictions: list[Any],
    image_ids: list[int],
    samples: int,
    seed: int,
    scorer: Scorer,
) -> dict[str, Any]:
    """Write an evaluation's bootstrap resamples and return their record for metrics.json.

    The matching behind them is paid here, once per evaluation in its own task, so the report with the
    paper profiles' 95 or 155 evaluations takes seconds.

    Returns:
        ``samples``, ``seed``, ``classes`` (the array's columns), ``images`` and ``image_ids_sha256`` (the
        report pairs two evaluations' resamples only over the same images).
    """
    evaluated, resampled = resample(instances, predictions, image_ids, samples, seed, scorer)
    save_resamples(path, resampled)
    return {
        "samples": samples,
        "seed": seed,
        "classes": list(resampled.classes),
        "images": len(evaluated),
        "image_ids_sha256": image_ids_digest(evaluated),
    }


def run(cfg: Config, model_id: str, eval_variant: str) -> list[Path]:
    """Evaluate ``models/<model_id>/weights/<train.checkpoint>.pt`` on the validation split of ``eval_variant``.

    Args:
        cfg: Validated configuration (``evaluate`` section; ``train.checkpoint``, ``train.imgsz`` and
            ``train.device`` for inference).
        model_id: Folder under ``models/``: ``<variant>-<size>``, ``<variant>-<family>-<size>`` or ``ft-<freeze>``.
        eval_variant: ``org`` or an anonymization method.

    Returns:
        The paths written (or found up to date).

    Raises:
        ValueError: For an unknown model id or evaluation variant.
        FileNotFoundError: If the model's weights are missing.
        CocoError: For an unreadable annotation file or, under the strict policy, a missing image.
    """
    info = parse_model_id(cfg, model_id)
    if eval_variant not in (known := [ORIGINAL, *cfg.anonymize.methods]):
        raise ValueError(f"evaluation variant {eval_variant!r} is not one of {known}")
    weights = chosen_weights(cfg, model_id)
    if not weights.is_file():
        raise FileNotFoundError(f"{weights}: no trained weights for model {model_id!r} (run train or finetune first)")
    split = cfg.data.val_split
    annotation_file = cfg.annotation_file(eval_variant, split)
    out = output_dir(cfg, model_id, eval_variant)
    outputs = [out / "predictions.json", out / "metrics.json", out / "manifest.json", out / "resamples.npy"]
    predictions_file, metrics_file, manifest_file, resamples_file = outputs
    protocol = PredictSettings.of(cfg)
    # The scorer follows the protocol: the authors' predictions are scored as the authors' code scored them.
    scorer: Scorer = protocol.protocol
    backend = AUTHORS_BACKEND if scorer == "authors" else cfg.evaluate.backend
    settings = {
        "protocol": protocol.protocol,
        "scorer": scorer,
        "checkpoint": cfg.train.checkpoint,
        "conf": protocol.conf,
        "iou": protocol.iou,
        "max_det": protocol.max_det,
        **spec(info.family).head_record(protocol.max_det),
        "batch": protocol.batch,
        "imgsz": protocol.imgsz,
        "backend": backend,
        "weights_sha256": file_digest(weights, "sha256"),
        "annotations_sha256": file_digest(annotation_file, "sha256"),
        "bootstrap_samples": cfg.report.bootstrap_samples,
        "seed": cfg.seed,
    }
    if _up_to_date(outputs, settings):
        return outputs

    tags = info.tags(eval_variant)
    run_tags = {**tags, "protocol": protocol.protocol, "scorer": scorer}
    reads = [weights, cfg.variant_root(eval_variant)]
    with mlflow_run(cfg, f"{model_id} on {eval_variant}", "evaluate", run_tags, reads=reads) as active:
        import mlflow

        instances = read_instances(annotation_file)
        categories = CategoryTable.of(instances, annotation_file)
        manifest = Manifest("evaluate", split)
        images = _usable_images(cfg, instances, cfg.image_dir(eval_variant, split), manifest)
        predictions = predict(weights, images, categories, protocol, info.family)
        atomic_write_text(predictions_file, json.dumps(predictions, separators=(",", ":")) + "\n")
        manifest.write(manifest_file)
        bootstrap: dict[str, Any] | None = None
        if predictions:
            image_ids = [i for i, _ in images]
            scores, void_reason = score(instances, predictions, backend, image_ids, scorer), None
            bootstrap = write_resamples(
                resamples_file, instances, predictions, image_ids, cfg.report.bootstrap_samples, cfg.seed, scorer
            )
        else:  # void: nothing to resample
            scores, void_reason = void_scores(instances), NO_DETECTIONS
            save_resamples(resamples_file, None)
        mlflow.set_tag("void", str(void_reason is not None).lower())
        mlflow.log_params(
            {
                "split": split,
                "images": len(images),
                "skipped": manifest.counts["skipped"],
                "predictions": len(predictions),
                **settings,
            }
        )
        if void_reason is None:
            mlflow.log_metrics(mlflow_metrics(scores))
        if (registered := registered_version(cfg, model_id)) and not link_evaluation(
            registered, eval_variant, active.info.run_id
        ):
            log.warning("%s is not in %s: the evaluation is not linked to it", registered, cfg.tracking.resolved_uri)
        metrics = {
            **scores.stats,
            "per_class": scores.per_class,
            "void": void_reason is not None,
            "void_reason": void_reason,
            "bootstrap": bootstrap,
            **tags,
            "freeze": info.freeze,
            "split": split,
            "images": len(images),
            "predictions": len(predictions),
            "mlflow_run_id": active.info.run_id,
            **settings,
        }
        atomic_write_json(metrics_file, metrics)
        for path in (predictions_file, metrics_file, manifest_file):
            mlflow.log_artifact(str(path))
    return outputs
