"""Stage relabel: stale-label proposals for an anonymized variant, their review, and what they change in AP.

Writes, under ``data/relabel/<variant>/``, per split (validation always; train
when the ssim stage measured it): ``proposals_<split>.json`` (every proposal
with reason and evidence), ``labelstudio_<split>.json`` (Label Studio import
tasks; ``labelstudio_config.xml`` is the matching labelling config),
``cvat_<split>.json`` (COCO for CVAT), ``instances_<split>_corrected.json``
(the corrected ground truth) and ``review_<split>.json`` (each proposal's
decision). Without a review every proposal is accepted; a reviewed export
placed with ``--reviewed`` (kept in ``data/relabel_reviews/<variant>/``) is
imported instead. Then every model evaluated on the variant is scored on its
validation split against the original and the corrected ground truth from its
stored predictions (no inference): ``metrics/relabel/<model-id>_on_<variant>.json``
with both score sets and the per-class differences with bootstrap intervals. A
void evaluation (no detections) stays void there: ``void`` and ``void_reason``,
no numbers. ``review_<split>.json`` says whether the corrections were
``auto-accepted`` or ``reviewed``.

Extension proposals look for a generated person that reaches beyond the
labelled one. For DeepPrivacy2 that person is what its paint record (written
by the anonymize stage) says DP2 generated a person into, inside where it was
allowed to paint; whatever DP2 painted around it (its own dilation, about 10 px
for a large person) extends nothing, and with ground-truth masks nothing does.
For the classic methods the region is their anonymized mask and only what lies
beyond the ground truth grown by ``anonymize.dilation_px`` counts, so they get
none on ground-truth masks.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from anonbench.analysis import stale_labels
from anonbench.analysis.bootstrap import interval, resample_counts, score_and_resample
from anonbench.analysis.stale_labels import Proposal
from anonbench.anonymizers.masks import dilate, person_masks, read_paint_record
from anonbench.coco import (
    Annotation,
    AnnotationLookup,
    CocoError,
    CocoIndex,
    Instances,
    indexed,
    person_category_id,
    read_instances,
)
from anonbench.coco_classes import PERSON
from anonbench.config import Config
from anonbench.data.download import file_digest
from anonbench.images import read_image
from anonbench.io import atomic_write_json, atomic_write_text
from anonbench.names import DP2_METHODS
from anonbench.parallel import map_with_progress
from anonbench.study import evaluated_image_ids, evaluated_scorer
from anonbench.tracking import mlflow_run

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger(__name__)
BOX_COLUMNS = ("image_id", "ann_id", "category", "iscrowd", "x", "y", "w", "h", "inside_anonymized", "ssim")
EVIDENCE_COLUMNS = ("luminance", "contrast", "structure")  # shown with a proposal when the table has them
STAT_KEYS = ("AP", "AP50")


def output_dir(cfg: Config, variant: str) -> Path:
    """Folder of a variant's proposals, review files and corrected ground truth."""
    return cfg.paths.data / "relabel" / variant


def review_file(cfg: Config, variant: str, split: str) -> Path:
    """Where a reviewed export is kept (outside the stage's outputs, so a rerun keeps it)."""
    return cfg.paths.data / "relabel_reviews" / variant / f"{split}.json"


def corrected_file(cfg: Config, variant: str, split: str) -> Path:
    """The corrected instances JSON of one split."""
    return output_dir(cfg, variant) / f"instances_{split}_corrected.json"


def boxes_table(cfg: Config, variant: str, split: str) -> Path:
    """The ssim stage's per-box table."""
    return cfg.paths.data / "ssim" / variant / f"{split}_boxes.parquet"


def metrics_file(cfg: Config, model_id: str, variant: str) -> Path:
    """One model's original-vs-corrected scores."""
    return cfg.paths.metrics / "relabel" / f"{model_id}_on_{variant}.json"


def _read_boxes(path: Path, index: CocoIndex) -> pa.Table:
    """The boxes table's columns that relabel uses, checked against the variant's annotations, by annotation id.

    Read as Arrow columns: at COCO's size the table has 860,000 rows, and only the few inside an
    anonymized region become Python records.
    """
    import pyarrow.parquet as pq

    names = pq.read_schema(path).names
    missing = [c for c in BOX_COLUMNS if c not in names]
    if missing:
        raise CocoError(f"{path}: missing column(s) {missing} (is it the ssim stage's boxes table?)")
    table = pq.read_table(path, columns=[*BOX_COLUMNS, *(c for c in EVIDENCE_COLUMNS if c in names)])
    unknown = sorted(set(table["ann_id"].to_pylist()) - index.annotation_ids())
    if unknown:
        raise CocoError(f"{path}: ann_id {unknown[0]} (and {len(unknown) - 1} more) not in the variant's annotations")
    return table.sort_by("ann_id")


@dataclass(frozen=True)
class _ExtendJob:
    """One image's extension check: what the anonymizer recorded, where its persons are, the thresholds."""

    mask: Path
    """A DP2 variant's paint record, else the anonymized-region mask."""
    image_id: int
    annotations: AnnotationLookup
    person_id: int
    generated: bool
    """Whether ``mask`` is a paint record (DP2 methods): its person pixels are the generated persons."""
    dilation_px: int
    min_extend_px: float


def _extend_image(job: _ExtendJob) -> list[Proposal]:
    """Extension proposals of one image (worker task): the generated persons against the labelled ones.

    A DP2 paint record's person pixels are checked against the undilated ground truth (the ring DP2
    painted around them is not a person); a classic method's region against the ground truth grown
    by its own dilation.
    """
    persons = [a for a in job.annotations.of(job.image_id) if a["category_id"] == job.person_id]
    record = read_image(job.mask)
    height, width = record.shape[:2]
    truth = person_masks(persons, job.person_id, height, width, 0, 0).gt  # undilated, every person
    if job.generated:
        _, region = read_paint_record(record)
        return stale_labels.extension_proposals(persons, region, job.min_extend_px, truth)
    region = record[..., 0] > 127
    return stale_labels.extension_proposals(persons, region, job.min_extend_px, dilate(truth, job.dilation_px))


def _image_urls(cfg: Config, variant: str, split: str, images: list[dict[str, Any]]) -> dict[int, str]:
    """Label Studio local-file URLs (document root: the project folder, or / for absolute paths)."""
    folder = cfg.image_dir(variant, split)
    return {im["id"]: "/data/local-files/?d=" + (folder / im["file_name"]).as_posix().lstrip("/") for im in images}


def propose(cfg: Config, variant: str, split: str, index: CocoIndex) -> tuple[list[Proposal], dict[str, Any]]:
    """All proposals of one split and the record of what was looked at.

    Raises:
        FileNotFoundError: If the ssim stage has not measured the split.
        CocoError: If the boxes table does not fit the variant's annotations.
    """
    table = boxes_table(cfg, variant, split)
    if not table.is_file():
        raise FileNotFoundError(f"{table}: no SSIM boxes table (run `anonbench ssim --variant {variant}` first)")
    import pyarrow as pa
    import pyarrow.compute as pc

    params = cfg.relabel
    boxes = _read_boxes(table, index)
    # Only boxes that may be inside the region become rows (an undefined share is looked at, as unassessed).
    candidates = boxes.filter(
        pc.and_(
            pc.and_(pc.not_equal(boxes["category"], PERSON), pc.invert(boxes["iscrowd"])),
            pc.invert(pc.less(boxes["inside_anonymized"], params.inside_threshold)),
        )
    )
    removals, unassessed = stale_labels.removal_proposals(
        candidates.to_pylist(), params.inside_threshold, params.ssim_threshold
    )
    person = person_category_id(index.categories)
    generated = variant in DP2_METHODS
    masks = cfg.variant_root(variant) / ("paint" if generated else "masks") / split
    with_person = set(index.with_category(person))
    jobs = [
        _ExtendJob(
            masks / f"{Path(im['file_name']).stem}.png",
            im["id"],
            index.lookup,
            person,
            generated,
            cfg.anonymize.dilation_px,
            params.min_extend_px,
        )
        for im in index.images
        if im["id"] in with_person
    ]
    with_mask = [job for job in jobs if job.mask.is_file()]
    found = [p for image in map_with_progress(_extend_image, with_mask, cfg.n_workers, "relabel") for p in image]
    rows = boxes.filter(pc.is_in(boxes["ann_id"], pa.array([p.ann_id for p in found], pa.int64())))
    measured = {int(r["ann_id"]): r for r in rows.to_pylist()}
    extensions = [
        replace(p, evidence={**stale_labels.box_evidence(measured[p.ann_id]), **p.evidence})
        if p.ann_id in measured
        else p
        for p in found
    ]
    record = {
        "variant": variant,
        "split": split,
        "boxes_table": str(table),
        "thresholds": params.model_dump(),
        "images_with_person": len(jobs),
        "images_with_person_without_mask": len(jobs) - len(with_mask),
        "inside_without_ssim": unassessed,
    }
    return removals + extensions, record


def _read_review(path: Path, instances: Instances) -> tuple[dict[int, list[stale_labels.ReviewedBox]], list[int]]:
    """A reviewed export: Label Studio's JSON (a list of tasks) or CVAT's COCO (a mapping)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CocoError(f"{path}: unreadable review file ({exc})") from None
    if isinstance(data, list):
        return stale_labels.parse_labelstudio(data, str(path))
    if isinstance(data, dict) and {"images", "annotations", "categories"} <= data.keys():
        return stale_labels.parse_coco_review(data, instances, str(path)), []
    raise CocoError(f"{path}: neither a Label Studio JSON export (a list) nor a COCO file")


def relabel_split(cfg: Config, variant: str, split: str) -> list[Path]:
    """Proposals, review exports and the corrected ground truth of one split.

    Only the images with a proposal or a review are held with their annotations; the corrected
    ground truth is the variant's file with the reviewed images' annotations replaced.
    """
    with indexed(cfg.annotation_file(variant, split)) as index:
        proposals, record = propose(cfg, variant, split, index)
        proposed = {p.image_id for p in proposals}
        exported = index.of_images(proposed)
        urls = _image_urls(cfg, variant, split, [im for im in index.images if im["id"] in proposed])
        tasks = stale_labels.labelstudio_tasks(exported, proposals, urls)
        reviewed_path = review_file(cfg, variant, split)
        if reviewed_path.is_file():
            reviewed, unreviewed = _read_review(reviewed_path, exported)
            source = {
                "corrections": "reviewed",
                "review": str(reviewed_path),
                "sha256": file_digest(reviewed_path, "sha256"),
            }
        else:
            reviewed, unreviewed = stale_labels.parse_labelstudio(stale_labels.accept_all(tasks), "proposals")
            source = {"corrections": "auto-accepted", "review": "automatic: every proposal accepted"}
        corrected, summary = stale_labels.apply_review(
            index.of_images({*proposed, *reviewed}),
            proposals,
            reviewed,
            next_id=index.max_annotation_id() + 1,
        )
        edits: dict[int, list[Annotation]] = {image_id: [] for image_id in sorted(reviewed)}
        for ann in corrected["annotations"]:
            if ann["image_id"] in edits:
                edits[ann["image_id"]].append(ann)
        counts = {action: sum(p.action == action for p in proposals) for action in ("remove", "extend")}
        proposals_doc = {
            **record,
            "counts": {**counts, "images": len(proposed)},
            "proposals": stale_labels.proposal_dicts(proposals),
        }
        out = output_dir(cfg, variant)
        return [
            atomic_write_json(out / f"proposals_{split}.json", proposals_doc),
            atomic_write_json(out / f"labelstudio_{split}.json", tasks),
            atomic_write_text(out / "labelstudio_config.xml", stale_labels.labelstudio_config(exported)),
            atomic_write_json(out / f"cvat_{split}.json", stale_labels.cvat_coco(exported, proposals)),
            atomic_write_json(out / f"review_{split}.json", {**source, **summary, "unreviewed_images": unreviewed}),
            index.write(corrected_file(cfg, variant, split), index.images, edits),
        ]


def _delta(after: float | None, before: float | None, samples: np.ndarray, confidence: float) -> dict[str, Any]:
    if after is None or before is None:
        return {"value": None, "ci": None}
    low, high = interval(samples, confidence)
    return {"value": after - before, "ci": [low, high]}


def relabel_metrics(cfg: Config, eval_dir: Path, original: Instances, corrected: Instances) -> dict[str, Any]:
    """Original vs corrected scores of one evaluation, with bootstrap intervals for the differences."""
    predictions = json.loads((eval_dir / "predictions.json").read_text(encoding="utf-8"))
    image_ids = evaluated_image_ids(eval_dir)
    report = cfg.report
    n_images = len(image_ids) if image_ids is not None else len({im["id"] for im in original["images"]})
    counts = resample_counts(n_images, report.bootstrap_samples, cfg.seed)
    scorer = evaluated_scorer(eval_dir)
    before, r_before = score_and_resample(original, predictions, counts, image_ids, scorer)
    after, r_after = score_and_resample(corrected, predictions, counts, image_ids, scorer)
    diff_ap = r_after.ap - r_before.ap
    diff_ap50 = r_after.ap50 - r_before.ap50
    per_class = {}
    for k, name in enumerate(r_before.classes):
        old, new = before.per_class[name], after.per_class[name]
        per_class[name] = {
            "AP": _delta(new["AP"], old["AP"], diff_ap[:, k], report.confidence),
            "AP50": _delta(new["AP50"], old["AP50"], diff_ap50[:, k], report.confidence),
        }
    return {
        "original": {**before.stats, "per_class": before.per_class},
        "corrected": {**after.stats, "per_class": after.per_class},
        "delta": {
            "AP": _delta(after.stats["AP"], before.stats["AP"], r_after.mean() - r_before.mean(), report.confidence),
            "AP50": _delta(
                after.stats["AP50"],
                before.stats["AP50"],
                r_after.mean(iou50=True) - r_before.mean(iou50=True),
                report.confidence,
            ),
            "per_class": per_class,
        },
        "images": n_images,
        "scorer": scorer,
        "bootstrap": {"samples": report.bootstrap_samples, "confidence": report.confidence, "seed": cfg.seed},
    }


def score_models(cfg: Config, variant: str) -> list[Path]:
    """Every model evaluated on the variant, scored against the original and the corrected ground truth.

    A model whose inputs (predictions and the evaluation run that made them, both ground truths,
    bootstrap settings) are unchanged since its last scoring is left alone; the rest are scored and
    logged in one MLflow run. A void evaluation is recorded as void, with no numbers.
    """
    split = cfg.data.val_split
    original_path, corrected_path = cfg.annotation_file(variant, split), corrected_file(cfg, variant, split)
    eval_dirs = sorted(
        d
        for d in (cfg.paths.metrics / "eval").glob(f"*_on_{variant}")
        if (d / "predictions.json").is_file() and (d / "metrics.json").is_file()
    )
    if not eval_dirs:
        log.warning("relabel %s: no evaluation on this variant yet, nothing to score", variant)
        return []
    common = {
        "original_sha256": file_digest(original_path, "sha256"),
        "corrected_sha256": file_digest(corrected_path, "sha256"),
        "bootstrap": [cfg.report.bootstrap_samples, cfg.report.confidence, cfg.seed],
    }
    todo: dict[Path, dict[str, Any]] = {}
    for eval_dir in eval_dirs:
        model_id = eval_dir.name.removesuffix(f"_on_{variant}")
        inputs = {
            **common,
            "predictions_sha256": file_digest(eval_dir / "predictions.json", "sha256"),
            "eval_run": json.loads((eval_dir / "metrics.json").read_text(encoding="utf-8")).get("mlflow_run_id"),
        }
        target = metrics_file(cfg, model_id, variant)
        if not target.is_file() or json.loads(target.read_text(encoding="utf-8")).get("inputs") != inputs:
            todo[eval_dir] = inputs
    written = [metrics_file(cfg, d.name.removesuffix(f"_on_{variant}"), variant) for d in eval_dirs if d not in todo]
    if not todo:
        return written
    tags = {"eval_data": variant, "split": split}
    with mlflow_run(cfg, f"relabel {variant}", "relabel", tags, reads=[cfg.variant_root(variant)]) as active:
        import mlflow

        original, corrected = read_instances(original_path), read_instances(corrected_path)
        review = json.loads((output_dir(cfg, variant) / f"review_{split}.json").read_text(encoding="utf-8"))
        mlflow.log_params({"review": review["review"], **cfg.relabel.model_dump()})
        mlflow.log_metrics({f"proposals/{k}": v for k, v in review["counts"].items()})
        for eval_dir, inputs in todo.items():
            model_id = eval_dir.name.removesuffix(f"_on_{variant}")
            evaluated = json.loads((eval_dir / "metrics.json").read_text(encoding="utf-8"))
            void = bool(evaluated.get("void"))
            doc = {
                "model_id": model_id,
                "eval_data": variant,
                "split": split,
                **{k: evaluated.get(k) for k in ("train_data", "model_size", "combination", "freeze")},
                "eval_mlflow_run_id": evaluated.get("mlflow_run_id"),
                "mlflow_run_id": active.info.run_id,
                "void": void,
                "void_reason": evaluated.get("void_reason") if void else None,
                **({} if void else relabel_metrics(cfg, eval_dir, original, corrected)),
                "inputs": inputs,
            }
            for stat in () if void else STAT_KEYS:
                if doc["delta"][stat]["value"] is not None:
                    mlflow.log_metric(f"delta_{stat}/{model_id}", doc["delta"][stat]["value"])
            written.append(atomic_write_json(metrics_file(cfg, model_id, variant), doc))
        for path in written:
            mlflow.log_artifact(str(path), "metrics")
    return sorted(written)


def run(cfg: Config, variant: str, reviewed: Path | None = None) -> list[Path]:
    """Propose, review-import and score stale-label corrections for one anonymized variant.

    Args:
        cfg: Validated configuration (``relabel`` thresholds; ``report`` bootstrap settings).
        variant: An anonymization method with a variant, ssim tables and masks.
        reviewed: A reviewed export for the validation split (Label Studio JSON or CVAT COCO); kept
            under ``data/relabel_reviews/`` and used by this and later runs instead of accepting all.

    Returns:
        The paths written.

    Raises:
        ValueError: If ``variant`` is not an anonymization method of the configuration.
        FileNotFoundError: If the ssim stage has not measured the validation split.
        CocoError: If the ssim table or the review does not fit the variant (a review that does not
            fit is not kept).
    """
    if variant not in cfg.anonymize.methods:
        raise ValueError(f"relabel: {variant!r} is not one of anonymize.methods {cfg.anonymize.methods}")
    target = review_file(cfg, variant, cfg.data.val_split)
    kept = target.read_bytes() if reviewed is not None and target.is_file() else None
    if reviewed is not None:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(reviewed, target)
    try:
        written = relabel_split(cfg, variant, cfg.data.val_split)
    except CocoError:
        if reviewed is not None:  # a review that does not fit is not kept for later runs
            if kept is None:
                target.unlink()
            else:
                target.write_bytes(kept)
        raise
    train = cfg.data.train_split
    if boxes_table(cfg, variant, train).is_file():
        written += relabel_split(cfg, variant, train)
    else:
        log.warning("relabel %s: no SSIM table for %s, proposals for the validation split only", variant, train)
    return written + score_models(cfg, variant)
