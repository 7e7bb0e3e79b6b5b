"""Stage privacy: how much identity a variant leaves, measured by attacks beside their chance levels.

For one variant (``org``, the identity control, or an anonymization method) on one split
(``privacy.split``, val by default): faces are detected on every original image and on the
variant's image; each original face is attacked on the variant (naive linkage, and after
inversion where the method is invertible), every ground-truth person by appearance, and faces on
the variant outside every anonymized region are counted as residual. The attacks and their rates
are :mod:`anonbench.analysis.privacy`'s, the face models :mod:`anonbench.faces`'
(docs/privacy.md).

Writes ``data/privacy/<variant>/faces.parquet`` (one row per original face),
``persons.parquet`` (one row per person attacked by appearance), ``manifest.json``, and
``metrics/privacy/<variant>.json``. Outputs complete for the same inputs and settings are not
measured again.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

import anonbench.faces as face_models
from anonbench.analysis import privacy as attacks
from anonbench.anonymizers.masks import decode_segmentation, person_masks
from anonbench.coco import AnnotationLookup, CocoError, indexed, person_category_id
from anonbench.config import ORIGINAL, Config
from anonbench.images import UnreadableImage, read_image, read_mask
from anonbench.io import atomic_open, atomic_write_bytes, atomic_write_json
from anonbench.manifest import Manifest
from anonbench.pairs import Pair, complete, inputs_stamp, pair_images
from anonbench.parallel import map_with_progress

STAGE = "privacy"
# The linkage columns come last (they are filled once the whole split is measured).
FACE_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.int64()),
        pa.field("x", pa.float64()),
        pa.field("y", pa.float64()),
        pa.field("w", pa.float64()),
        pa.field("h", pa.float64()),
        pa.field("size", pa.string()),
        pa.field("region_share", pa.float64()),
        pa.field("in_region", pa.bool_()),
        pa.field("detected_after", pa.bool_()),
        pa.field("linked_naive", pa.bool_()),
        pa.field("linked_inverted", pa.bool_()),
    ]
)
PERSON_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.int64()),
        pa.field("ann_id", pa.int64()),
        pa.field("size", pa.string()),
        pa.field("linked_appearance", pa.bool_()),
    ]
)


class PrivacyStageError(ValueError):
    """Bad input under the strict policy; the message names the image."""


@dataclass(frozen=True)
class Settings:
    """What every worker needs besides its image: the attack settings and the ground truth's index."""

    cfg: Config
    variant: str
    annotations: AnnotationLookup
    person: int

    @property
    def inverts(self) -> bool:
        """Whether the variant is a method the attacker can undo with its known parameters.

        Ground-truth masks only: with the detector mask source the attacker would not know the persons.
        """
        return self.variant in attacks.INVERSIONS and self.cfg.anonymize.mask_source == "gt"


@dataclass(frozen=True)
class Audited:
    """A worker's answer for one image: rows and descriptors, or the problem that stopped it."""

    key: str
    image_id: int
    faces: list[dict[str, Any]]
    original: np.ndarray
    naive: np.ndarray
    inverted: np.ndarray | None
    persons: list[dict[str, Any]]
    person_original: np.ndarray
    person_variant: np.ndarray
    residual: int
    problem: str = ""


def _failed(job: Pair, problem: str) -> Audited:
    empty = np.zeros((0, face_models.EMBEDDING_SIZE))
    return Audited(job.key, job.image_id, [], empty, empty, None, [], np.zeros((0, 0)), np.zeros((0, 0)), 0, problem)


def _containing_person(face: attacks.Box, persons: list[dict[str, Any]]) -> float | None:
    """Area of the smallest ground-truth person whose box holds the face's centre (None: in no person)."""
    cx, cy = face[0] + face[2] / 2, face[1] + face[3] / 2
    areas = [
        float(p["area"])
        for p in persons
        if p["bbox"][0] <= cx <= p["bbox"][0] + p["bbox"][2] and p["bbox"][1] <= cy <= p["bbox"][1] + p["bbox"][3]
    ]
    return min(areas) if areas else None


def _appearances(
    settings: Settings, anns: list[dict[str, Any]], original: np.ndarray, variant: np.ndarray
) -> tuple[list[dict[str, Any]], np.ndarray, np.ndarray]:
    """Appearance rows and descriptors of the image's persons (not crowds, at least min_person_px on a side)."""
    bins, rows, before, after = settings.cfg.privacy.appearance_bins, [], [], []
    height, width = original.shape[:2]
    for ann in anns:
        if ann.get("iscrowd") or max(ann["bbox"][2], ann["bbox"][3]) < settings.cfg.anonymize.min_person_px:
            continue
        mask = decode_segmentation(ann.get("segmentation"), height, width)
        if mask is None or not mask.any():
            continue
        rows.append({"ann_id": int(ann["id"]), "size": attacks.size_bucket(float(ann["area"]))})
        before.append(attacks.appearance(original, mask, bins))
        after.append(attacks.appearance(variant, mask, bins))
    size = bins.hue * bins.saturation * bins.value
    return rows, np.array(before).reshape(-1, size), np.array(after).reshape(-1, size)


def audit_image(settings: Settings, job: Pair) -> Audited:
    """Detect, embed and describe one image pair (runs in a worker process; the models load once per worker).

    Args:
        settings: Attack settings and the ground truth.
        job: The image pair and the variant's region mask.

    Returns:
        The image's face and person rows with their descriptors, or the problem (missing,
        unreadable, sizes differ).
    """
    params = settings.cfg.privacy
    if not job.variant.is_file():
        return _failed(job, f"{job.key}: variant image missing: {job.variant}")
    try:
        original = read_image(job.original)
        variant = original if settings.variant == ORIGINAL else read_image(job.variant)
        if original.shape != variant.shape:
            return _failed(job, f"{job.key}: sizes differ: original {original.shape}, variant {variant.shape}")
        region = read_mask(job.mask, original.shape[:2])
    except UnreadableImage as exc:
        return _failed(job, f"{job.key}: {exc}")
    found = face_models.detect(original, params.detector, params.upsample)
    # An unchanged image (the original, an image without persons) shows the same faces: not detected twice.
    unchanged = variant is original or (not region.any() and np.array_equal(variant, original))
    after = found if unchanged else face_models.detect(variant, params.detector, params.upsample)
    anns = [a for a in settings.annotations.of(job.image_id) if a["category_id"] == settings.person]
    rows = []
    for face in found:
        share = attacks.region_share(face, region)
        rows.append(
            {
                "image_id": job.image_id,
                **dict(zip(("x", "y", "w", "h"), face, strict=True)),
                "size": attacks.size_bucket(_containing_person(face, anns)),
                "region_share": share,
                "in_region": share >= params.in_region,
                "detected_after": any(attacks.iou(face, f) >= params.match_iou for f in after),
            }
        )
    inverted = None
    if settings.inverts:
        height, width = original.shape[:2]
        cfg = settings.cfg.anonymize
        persons = person_masks(anns, settings.person, height, width, cfg.dilation_px, cfg.min_person_px).persons
        undone = (
            attacks.invert(settings.variant, variant, persons, cfg, params.inversion_iterations) if found else variant
        )
        inverted = face_models.embed(undone, found, params.detector)
    people, before, now = _appearances(settings, anns, original, variant)
    return Audited(
        key=job.key,
        image_id=job.image_id,
        faces=rows,
        original=face_models.embed(original, found, params.detector),
        naive=face_models.embed(variant, found, params.detector),
        inverted=inverted,
        persons=[{"image_id": job.image_id, **p} for p in people],
        person_original=before,
        person_variant=now,
        residual=sum(attacks.region_share(f, region) < params.in_region for f in after),
    )


def _split(cfg: Config) -> str:
    return cfg.data.val_split if cfg.privacy.split == "val" else cfg.data.train_split


def _outputs(cfg: Config, variant: str) -> list[Path]:
    """The stage's files for a variant, then the stamp that marks them complete (written last)."""
    folder = cfg.paths.data / STAGE / variant
    return [
        folder / "faces.parquet",
        folder / "persons.parquet",
        folder / "manifest.json",
        cfg.paths.metrics / STAGE / f"{variant}.json",
        folder / ".stamp",
    ]


def _stamp(cfg: Config, variant: str, split: str, pairs: list[Pair]) -> str:
    """Fingerprint of the inputs and of the settings that change the results."""
    settings = f"{cfg.privacy.model_dump_json()} {cfg.anonymize.model_dump_json()} {cfg.policy} {split}"
    return inputs_stamp(cfg, variant, split, pairs, settings)


def audited(cfg: Config, variant: str, split: str) -> bool:
    """Whether :func:`audit_split` would find the variant's outputs complete for its current inputs."""
    *paths, stamp_file = _outputs(cfg, variant)
    return complete(paths, stamp_file, _stamp(cfg, variant, split, pair_images(cfg, variant, split)[0]))


def _write_table(path: Path, rows: list[dict[str, Any]], schema: pa.Schema) -> None:
    with atomic_open(path) as handle:
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), handle)


def _stack(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros((0, 0))


def audit_split(cfg: Config, variant: str, split: str) -> tuple[list[Path], dict[str, Any] | None]:
    """Attack one variant on one split unless its outputs are complete for the same inputs.

    Returns:
        The files written (or already complete) and the metrics, None when nothing was measured.

    Raises:
        PrivacyStageError: The first bad image under the strict policy.
    """
    *paths, stamp_file = _outputs(cfg, variant)
    jobs, problems = pair_images(cfg, variant, split)
    stamp = _stamp(cfg, variant, split, jobs)
    if complete(paths, stamp_file, stamp):
        return paths, None
    strict = cfg.policy == "strict"
    if strict and problems:
        raise PrivacyStageError(problems[0][1])
    manifest = Manifest(STAGE, split)
    for key, problem in problems:
        manifest.add(key, "skipped", problem)
    results: list[Audited] = []
    with indexed(cfg.annotation_file(ORIGINAL, split)) as index:
        settings = Settings(cfg, variant, index.lookup, person_category_id(index.categories))
        work = functools.partial(audit_image, settings)
        for result in map_with_progress(work, jobs, cfg.n_workers, f"privacy {variant} {split}"):
            if result.problem:
                if strict:
                    raise PrivacyStageError(result.problem)
                manifest.add(result.key, "skipped", result.problem)
                continue
            manifest.add(
                result.key, "ok", faces=len(result.faces), persons=len(result.persons), residual=result.residual
            )
            results.append(result)
    inverted = [r.inverted for r in results if r.inverted is not None] if settings.inverts else None
    linkage = attacks.link(
        _stack([r.original for r in results]).reshape(-1, face_models.EMBEDDING_SIZE),
        _stack([r.naive for r in results]).reshape(-1, face_models.EMBEDDING_SIZE),
        None if inverted is None else _stack(inverted).reshape(-1, face_models.EMBEDDING_SIZE),
        _stack([r.person_original for r in results if len(r.persons)]),
        _stack([r.person_variant for r in results if len(r.persons)]),
    )
    faces = pd.DataFrame([row for r in results for row in r.faces], columns=FACE_SCHEMA.names[:-2])
    persons = pd.DataFrame([row for r in results for row in r.persons], columns=PERSON_SCHEMA.names[:-1])
    residual_ids = [r.image_id for r in results for _ in range(r.residual)]
    metrics = {
        "variant": variant,
        "split": split,
        "images": len(results),
        "images_with_faces": sum(bool(r.faces) for r in results),
        "detector": {"model": cfg.privacy.detector, "upsample": cfg.privacy.upsample},
        **attacks.metrics(faces, persons, linkage, attacks.INVERSIONS.get(variant), residual_ids),
    }
    faces["linked_naive"] = linkage.naive == 1.0
    faces["linked_inverted"] = None if linkage.inverted is None else linkage.inverted == 1.0
    persons["linked_appearance"] = linkage.appearance == 1.0
    _write_table(paths[0], faces.to_dict("records"), FACE_SCHEMA)
    _write_table(paths[1], persons.to_dict("records"), PERSON_SCHEMA)
    manifest.write(paths[2])
    atomic_write_json(paths[3], metrics)
    atomic_write_bytes(stamp_file, stamp.encode())
    return paths, metrics


def _log_to_mlflow(metrics: dict[str, Any], files: list[Path]) -> None:
    """Into the variant's privacy run: the settings, every rate that is not void, and the files."""
    import mlflow

    flat: dict[str, float] = {}

    def collect(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                collect(f"{prefix}{key}/" if isinstance(inner, dict) else f"{prefix}{key}", inner)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            flat[prefix.rstrip("/")] = float(value)

    collect("", {"linkage": metrics["linkage"], "by_size": metrics["by_size"]})
    collect("", {k: metrics[k] for k in ("faces", "detected_rate", "residual_faces", "images", "images_with_faces")})
    mlflow.log_params({"variant": metrics["variant"], "split": metrics["split"], **metrics["detector"]})
    mlflow.log_metrics(flat)
    for path in files:
        mlflow.log_artifact(str(path))


def run(cfg: Config, variant: str) -> list[Path]:
    """Attack ``variant`` (``org`` or an anonymization method) on ``privacy.split`` and write its rates.

    Args:
        cfg: Validated configuration (``privacy``, ``anonymize`` for the inversion, ``policy``, ``workers``).
        variant: ``org`` (the identity control) or a method under ``data/variants/``.

    Returns:
        The tables, the manifest and the metrics file.

    Raises:
        PrivacyStageError: Bad input under the strict policy (the message names the image).
        CocoError: A variant not made yet, or an annotation file that cannot be read.
        FaceModelError: The face models are not installed or not the pinned files.
    """
    split = _split(cfg)
    if not cfg.annotation_file(variant, split).is_file():
        raise CocoError(f"{cfg.variant_root(variant)}: no such variant (run `anonbench anonymize --method {variant}`)")
    if audited(cfg, variant, split):
        return _outputs(cfg, variant)[:-1]
    from anonbench.tracking import mlflow_run

    with mlflow_run(
        cfg, f"privacy-{variant}", STAGE, {"variant": variant}, reads=[cfg.source_root, cfg.variant_root(variant)]
    ):
        paths, metrics = audit_split(cfg, variant, split)
        assert metrics is not None
        _log_to_mlflow(metrics, paths)
    return paths
