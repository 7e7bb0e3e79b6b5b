"""Stage ssim: how much an anonymized variant changed each image and each ground-truth object.

Images of the variant are matched to the original by COCO image id through both
annotation files. For every image: whole-image SSIM and its luminance, contrast
and structure factors, and the same for every ground-truth box (the box's
integer pixel crop of both images, see :func:`anonbench.ssim_fast.crop_bounds`),
plus the share of each box inside the anonymized region (the variant's mask).
Images the variant left unchanged are measured too (SSIM exactly 1), so
aggregates over all images are complete.

Writes under ``data/ssim/<variant>/``: ``<split>_boxes.parquet``,
``<split>_images.parquet``, ``manifest_<split>.json``, ``summary.json`` and
``figures/`` (columns and keys: docs/ssim.md). A split whose inputs did not
change since its tables were written is not measured again.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from anonbench.analysis.ssim_summary import split_summary, write_figures
from anonbench.coco import AnnotationLookup, CocoError, indexed, person_category_id
from anonbench.config import ORIGINAL, Config
from anonbench.images import UnreadableImage, read_image, read_mask
from anonbench.io import atomic_open, atomic_write_bytes, atomic_write_json
from anonbench.manifest import Manifest
from anonbench.pairs import Pair, complete, inputs_stamp, pair_images
from anonbench.parallel import map_with_progress
from anonbench.ssim_fast import COMPONENTS, SsimIndex, crop_bounds

STAGE = "ssim"
_SCORES = [pa.field(name, pa.float64()) for name in COMPONENTS]
BOX_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.int64()),
        pa.field("ann_id", pa.int64()),
        pa.field("category", pa.string()),
        pa.field("iscrowd", pa.bool_()),
        pa.field("area", pa.float64()),
        pa.field("x", pa.float64()),
        pa.field("y", pa.float64()),
        pa.field("w", pa.float64()),
        pa.field("h", pa.float64()),
        pa.field("inside_anonymized", pa.float64()),
        *_SCORES,
        pa.field("reason", pa.string()),
    ]
)
IMAGE_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.int64()),
        pa.field("file_name", pa.string()),
        pa.field("has_person", pa.bool_()),
        pa.field("changed_fraction", pa.float64()),
        pa.field("anonymized_fraction", pa.float64()),
        *_SCORES,
        pa.field("reason", pa.string()),
    ]
)


class SsimStageError(ValueError):
    """Bad input under the strict policy; the message names the image."""


class GtBox(NamedTuple):
    """A ground-truth annotation as the box table reports it."""

    ann_id: int
    category: str
    iscrowd: bool
    area: float
    bbox: tuple[float, ...]


@dataclass(frozen=True)
class Truth:
    """The original's ground truth as a worker reads it: one image's boxes at a time, from the split's index."""

    annotations: AnnotationLookup
    names: dict[int, str]
    person: int

    def boxes(self, image_id: int) -> tuple[tuple[GtBox, ...], bool]:
        """The image's ground-truth boxes and whether one of them is a person."""
        anns = self.annotations.of(image_id)
        boxes = tuple(
            GtBox(
                int(a["id"]),
                self.names[a["category_id"]],
                bool(a.get("iscrowd", 0)),
                float(a["area"]),
                tuple(a["bbox"]),
            )
            for a in anns
        )
        return boxes, any(a["category_id"] == self.person for a in anns)


@dataclass(frozen=True)
class Job(Pair):
    """One image pair to measure, with everything a worker process needs."""

    win_size: int


@dataclass(frozen=True)
class Measured:
    """A worker's answer: the image's row and its box rows, or the problem that stopped it."""

    key: str
    image: dict[str, Any] | None
    boxes: list[dict[str, Any]]
    problem: str = ""


def _size(image: np.ndarray) -> str:
    return f"{image.shape[1]}x{image.shape[0]}"


def measure_image(truth: Truth, job: Job) -> Measured:
    """Whole-image and per-box SSIM, l, c, s of one image pair (runs in a worker process).

    Args:
        truth: The original's ground truth, read image by image.
        job: The pair and its mask.

    Returns:
        The rows for both tables, or the problem (missing, unreadable, sizes differ).
    """
    if not job.variant.is_file():
        return Measured(job.key, None, [], f"{job.key}: variant image missing: {job.variant}")
    try:
        original, variant = read_image(job.original), read_image(job.variant)
        if original.shape != variant.shape:
            sizes = f"original {_size(original)}, variant {_size(variant)}"
            return Measured(job.key, None, [], f"{job.key}: sizes differ: {sizes}")
        mask = read_mask(job.mask, original.shape[:2])
    except UnreadableImage as exc:
        return Measured(job.key, None, [], f"{job.key}: {exc}")
    index = SsimIndex(original, variant, job.win_size)
    inside = cv2.integral(mask, sdepth=cv2.CV_64F)
    height, width = mask.shape
    boxes, has_person = truth.boxes(job.image_id)
    rows = []
    for box in sorted(boxes):
        x0, y0, x1, y1 = crop_bounds(box.bbox, width, height)
        pixels = (x1 - x0) * (y1 - y0)
        covered = inside[y1, x1] - inside[y0, x1] - inside[y1, x0] + inside[y0, x0]
        x, y, w, h = box.bbox
        rows.append(
            {
                "image_id": job.image_id,
                "ann_id": box.ann_id,
                "category": box.category,
                "iscrowd": box.iscrowd,
                "area": box.area,
                "x": x,
                "y": y,
                "w": w,
                "h": h,
                "inside_anonymized": covered / pixels if pixels else math.nan,
                **index.region((x0, y0, x1, y1)).as_dict(),
            }
        )
    image = {
        "image_id": job.image_id,
        "file_name": job.key,
        "has_person": has_person,
        "changed_fraction": index.changed_fraction,
        "anonymized_fraction": float(inside[-1, -1]) / mask.size,
        **index.whole().as_dict(),
    }
    return Measured(job.key, image, rows)


def _jobs(cfg: Config, variant: str, split: str) -> tuple[list[Job], list[tuple[str, str]]]:
    """Every original image paired with its variant by image id; unpaired images are problems."""
    pairs, problems = pair_images(cfg, variant, split)
    return [Job(**vars(pair), win_size=cfg.ssim.win_size) for pair in pairs], problems


def _stamp(cfg: Config, variant: str, split: str, jobs: list[Job]) -> str:
    """Fingerprint of a split's inputs and the settings that change its tables."""
    return inputs_stamp(cfg, variant, split, list(jobs), f"{cfg.ssim.win_size} {cfg.policy}")


class _TableWriter:
    """Rows written to Parquet as they come, in row groups of a fixed size, so a split's table never sits in memory.

    Rows must arrive in the table's order; the fixed group size keeps reruns byte-identical.
    """

    ROWS_PER_GROUP = 65_536

    def __init__(self, handle: Any, schema: pa.Schema) -> None:
        self.schema = schema
        self.writer = pq.ParquetWriter(handle, schema)
        self.pending: list[dict[str, Any]] = []

    def add(self, rows: list[dict[str, Any]]) -> None:
        """Queue rows; full groups go to the file."""
        self.pending += rows
        while len(self.pending) >= self.ROWS_PER_GROUP:
            self._flush(self.pending[: self.ROWS_PER_GROUP])
            self.pending = self.pending[self.ROWS_PER_GROUP :]

    def __enter__(self) -> _TableWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        """Write the last group and the footer, or on an error just let go of the file."""
        if kind is None and self.pending:
            self._flush(self.pending)
        self.writer.close()

    def _flush(self, rows: list[dict[str, Any]]) -> None:
        self.writer.write_table(pa.Table.from_pylist(rows, schema=self.schema))


def _outputs(folder: Path, split: str) -> list[Path]:
    """A split's tables and manifest, then the stamp that marks them complete (written last)."""
    names = (f"{split}_boxes.parquet", f"{split}_images.parquet", f"manifest_{split}.json", f".stamp_{split}")
    return [folder / name for name in names]


def _state(cfg: Config, variant: str, split: str) -> tuple[list[Path], Path, list[Job], list[tuple[str, str]], str]:
    """A split's outputs, its stamp file, its jobs and problems, and the stamp of its current inputs."""
    paths = _outputs(cfg.paths.data / STAGE / variant, split)
    stamp_file = paths.pop()
    jobs, problems = _jobs(cfg, variant, split)
    return paths, stamp_file, jobs, problems, _stamp(cfg, variant, split, jobs)


def split_measured(cfg: Config, variant: str, split: str) -> bool:
    """Whether :func:`measure_split` would find the split complete for its current inputs."""
    paths, stamp_file, _, _, stamp = _state(cfg, variant, split)
    return complete(paths, stamp_file, stamp)


def measure_split(cfg: Config, variant: str, split: str) -> tuple[list[Path], bool]:
    """Measure one split unless its tables are complete for the same inputs.

    Returns:
        The files written (or already complete) and whether anything was measured.

    Raises:
        SsimStageError: The first bad image under the strict policy.
    """
    paths, stamp_file, jobs, problems, stamp = _state(cfg, variant, split)
    if complete(paths, stamp_file, stamp):
        return paths, False
    strict = cfg.policy == "strict"
    if strict and problems:
        raise SsimStageError(problems[0][1])
    manifest = Manifest(STAGE, split)
    for key, problem in problems:
        manifest.add(key, "skipped", problem)
    # Jobs go in image id order and each image's boxes in annotation id order: the tables come out sorted.
    with (
        indexed(cfg.annotation_file(ORIGINAL, split)) as index,
        atomic_open(paths[0]) as box_file,
        atomic_open(paths[1]) as image_file,
        _TableWriter(box_file, BOX_SCHEMA) as box_table,
        _TableWriter(image_file, IMAGE_SCHEMA) as image_table,
    ):
        names = {int(c["id"]): str(c["name"]) for c in index.categories}
        measure = functools.partial(measure_image, Truth(index.lookup, names, person_category_id(index.categories)))
        for result in map_with_progress(measure, jobs, cfg.n_workers, f"ssim {variant} {split}"):
            if result.problem:
                if strict:
                    raise SsimStageError(result.problem)
                manifest.add(result.key, "skipped", result.problem)
                continue
            assert result.image is not None
            manifest.add(result.key, "ok", image_id=result.image["image_id"], boxes=len(result.boxes))
            image_table.add([result.image])
            box_table.add(result.boxes)
    manifest.write(paths[2])
    atomic_write_bytes(stamp_file, stamp.encode())
    return paths, True


def _log_to_mlflow(cfg: Config, variant: str, summary: dict[str, Any], files: list[Path]) -> None:
    """Into the variant's ssim run: the headline means per split and scope, the summary and the figures."""
    import mlflow

    metrics: dict[str, float] = {}
    for split, scopes in summary["splits"].items():
        for scope, parts in scopes.items():
            groups = {"all": parts, **parts["use_case_groups"]}
            for group, entry in groups.items():
                for level in ("image", "box"):
                    for component in COMPONENTS:
                        value = entry[level][component]["mean"]
                        if value is not None:
                            metrics[f"{split}/{scope}/{group}/{level}_{component}"] = value
    mlflow.log_params({"variant": variant, "win_size": cfg.ssim.win_size, "splits": ",".join(summary["splits"])})
    mlflow.log_metrics(metrics)
    for path in files:
        mlflow.log_artifact(str(path), artifact_path="figures" if path.suffix == ".png" else None)


def _summarize(cfg: Config, variant: str) -> tuple[dict[str, Any], list[Path]]:
    """The summary of every configured split measured so far (so `--split` runs add up), and its file and figures."""
    out = cfg.paths.data / STAGE / variant
    done = [s for s in cfg.data.splits if all(p.is_file() for p in _outputs(out, s))]
    per_split = {s: split_summary(out, s, cfg.classes.use_case_groups) for s in done}
    summary = {"variant": variant, "win_size": cfg.ssim.win_size, "splits": per_split}
    summary_path = atomic_write_json(out / "summary.json", summary)
    return summary, [summary_path, *(p for s in done for p in write_figures(out, s, per_split[s], out / "figures"))]


def run(cfg: Config, variant: str, splits: list[str] | None = None) -> list[Path]:
    """Measure SSIM, l, c, s of every image and ground-truth box of ``variant`` against the original.

    Args:
        cfg: Validated configuration (``ssim.win_size``, ``policy``, ``workers``).
        variant: An anonymized variant under ``data/variants/`` (an ``anonymize --method``).
        splits: Splits to measure (default: train and val).

    Returns:
        The tables, manifests, summary and figures written.

    Raises:
        ValueError: For the original itself.
        SsimStageError: Bad input under the strict policy (the message names the image).
        CocoError: An annotation file that cannot be read.
    """
    if variant == ORIGINAL:
        raise ValueError("--variant org is the original itself; name an anonymized variant")
    splits = splits or list(cfg.data.splits)
    if not cfg.annotation_file(variant, splits[0]).is_file():
        raise CocoError(f"{cfg.variant_root(variant)}: no such variant (run `anonbench anonymize --method {variant}`)")
    if all(split_measured(cfg, variant, split) for split in splits):
        out = cfg.paths.data / STAGE / variant
        return [*(p for split in splits for p in _outputs(out, split)[:-1]), *_summarize(cfg, variant)[1]]
    from anonbench.tracking import mlflow_run

    with mlflow_run(
        cfg, f"ssim-{variant}", STAGE, {"variant": variant}, reads=[cfg.source_root, cfg.variant_root(variant)]
    ):
        written = [p for split in splits for p in measure_split(cfg, variant, split)[0]]
        summary, files = _summarize(cfg, variant)
        _log_to_mlflow(cfg, variant, summary, files)
    return [*written, *files]
