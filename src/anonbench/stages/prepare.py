"""Stage prepare: validate each split of the original data, index it, and count its classes.

Writes, per split, under ``data/prepared/<split>/``: ``index.json`` (the validated
images), ``stats.json`` and ``class_stats.csv`` (per class: images, images that
also contain a person, instances, crowd regions, area distribution, frequency
group), ``manifest.json`` (every image's status, every skipped record) and
``cooccurrence.png`` (the paper's Figure 6: images per class co-occurring with a
person).

Any COCO-format dataset is validated the same way; its category table (ids and
names from its JSON) must be well formed, the same in both splits, and include
``person``. Class names in ``classes.*`` that the table lacks (possible for a
``coco-folder`` source) are listed in ``stats.json`` under ``classes_absent``
and logged: the stages that use those lists skip the absent classes.

Full COCO train annotations are ~450 MB of JSON, so the annotations are streamed
(ijson) rather than loaded whole, and images are checked by their headers (plus
the JPEG end marker, which catches truncated files) unless ``data.deep_check``
asks for a full decode.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import resource
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ijson
import numpy as np
from PIL import Image, UnidentifiedImageError

from anonbench.coco import CategoryTable, CocoError, image_path, read_list
from anonbench.coco_classes import PERSON
from anonbench.config import ORIGINAL, Config, FrequencyBorders
from anonbench.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from anonbench.manifest import Manifest
from anonbench.parallel import map_with_progress

CLASS_STATS_COLUMNS = (
    "category_id",
    "name",
    "images",
    "images_with_person",
    "instances",
    "crowd",
    "area_small",
    "area_medium",
    "area_large",
    "area_median",
    "frequency_group",
)
# COCO's object size buckets (area in pixels).
SMALL_AREA, MEDIUM_AREA = 32**2, 96**2
# A box may overrun the image border by this much (COCO boxes are float and rounded).
BOX_TOLERANCE_PX = 1.0
log = logging.getLogger(__name__)


class PrepareError(ValueError):
    """Bad input under the strict policy; the message names the file and the record."""


@dataclass
class _Split:
    """What one split's validation found, filled while streaming."""

    split: str
    annotation_file: Path
    strict: bool
    manifest: Manifest
    categories: dict[int, str] = field(default_factory=dict)
    images: dict[int, dict[str, Any]] = field(default_factory=dict)
    annotations: dict[int, list[tuple[int, float, bool]]] = field(default_factory=lambda: defaultdict(list))

    def reject(self, key: str, problem: str) -> None:
        """Stop (strict) or record a counted skip (skip)."""
        if self.strict:
            raise PrepareError(f"{self.annotation_file}: {key}: {problem}")
        self.manifest.add(key, "skipped", problem)


def _stream(path: Path, prefix: str) -> Iterator[Any]:
    """Yield the JSON values at ``prefix`` without loading the whole file."""
    with path.open("rb") as handle:
        try:
            yield from ijson.items(handle, prefix, use_float=True)
        except ijson.JSONError as exc:
            raise CocoError(f"{path}: malformed JSON: {exc}") from None


def _has_key(path: Path, key: str) -> bool:
    with path.open("rb") as handle:
        return any(p == "" and e == "map_key" and v == key for p, e, v in ijson.parse(handle))


def check_image(args: tuple[Path, int, int, bool]) -> tuple[str, str]:
    """Check one image file: readable, expected size, not truncated.

    Args:
        args: (path, expected width, expected height, decode every pixel).

    Returns:
        ("" or the problem, PIL mode).
    """
    path, width, height, deep = args
    try:
        with Image.open(path) as img:
            mode = img.mode
            if img.size != (width, height):
                return f"size {img.size[0]}x{img.size[1]} differs from the annotation's {width}x{height}", mode
            if deep:
                img.load()
            elif img.format == "JPEG" and not _ends_with_jpeg_marker(path):
                return "truncated JPEG (no end-of-image marker)", mode
    except FileNotFoundError:
        return "image file missing", ""
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        return f"unreadable image: {exc}", ""
    return "", mode


def _ends_with_jpeg_marker(path: Path) -> bool:
    """A complete JPEG ends with FF D9 (some writers pad a few bytes after it)."""
    with path.open("rb") as handle:
        handle.seek(0, io.SEEK_END)
        handle.seek(max(0, handle.tell() - 64))
        return b"\xff\xd9" in handle.read()


def _admit(state: _Split, record: dict[str, Any], key: str, required: tuple[str, ...], seen: set[int]) -> bool:
    """Whether a record has its required keys and an id not seen before; reject it otherwise."""
    missing = [k for k in required if k not in record]
    if missing:
        state.reject(key, f"missing required key(s) {missing}")
        return False
    if record["id"] in seen:
        state.reject(key, f"duplicate {key.split()[0]} id")
        return False
    seen.add(record["id"])
    return True


def _validate_images(state: _Split, image_dir: Path, deep: bool, workers: int) -> None:
    """Keep images with sane records and readable files; reject the rest."""
    candidates: list[tuple[dict[str, Any], Path]] = []
    seen: set[int] = set()
    for record in read_list(state.annotation_file, "images"):
        key = f"image {record.get('id', '?')} ({record.get('file_name', '?')})"
        if not _admit(state, record, key, ("id", "file_name", "width", "height"), seen):
            continue
        if (
            not (isinstance(record["width"], int) and isinstance(record["height"], int))
            or min(record["width"], record["height"]) <= 0
        ):
            state.reject(key, f"invalid size {record['width']}x{record['height']}")
            continue
        try:
            path = image_path(image_dir, str(record["file_name"]))
        except CocoError as exc:
            state.reject(key, str(exc))
            continue
        candidates.append((record, path))
    jobs = [(path, rec["width"], rec["height"], deep) for rec, path in candidates]
    results = map_with_progress(check_image, jobs, workers, desc=f"prepare {state.split}")
    for (record, _), (problem, mode) in zip(candidates, results, strict=True):
        key = f"image {record['id']} ({record['file_name']})"
        if problem:
            state.reject(key, problem)
            continue
        state.images[record["id"]] = {
            "id": record["id"],
            "file_name": record["file_name"],
            "width": record["width"],
            "height": record["height"],
            "mode": mode,
        }


def _bbox_problem(bbox: Any, width: int, height: int) -> str:
    if not isinstance(bbox, list) or len(bbox) != 4 or not all(isinstance(v, int | float) for v in bbox):
        return f"bbox {bbox!r} is not four numbers"
    x, y, w, h = bbox
    if not all(math.isfinite(v) for v in bbox):
        return f"bbox {bbox} is not finite"
    if w <= 0 or h <= 0:
        return f"bbox {bbox} has zero or negative size"
    if (
        x < -BOX_TOLERANCE_PX
        or y < -BOX_TOLERANCE_PX
        or x + w > width + BOX_TOLERANCE_PX
        or y + h > height + (BOX_TOLERANCE_PX)
    ):
        return f"bbox {bbox} lies outside the {width}x{height} image"
    return ""


def _validate_annotations(state: _Split) -> None:
    """Stream the annotations and keep those that refer to valid images and categories."""
    seen: set[int] = set()
    count = 0
    for ann in _stream(state.annotation_file, "annotations.item"):
        count += 1
        key = f"annotation {ann.get('id', '?')}"
        if not _admit(state, ann, key, ("id", "image_id", "category_id", "bbox"), seen):
            continue
        if ann["category_id"] not in state.categories:
            state.reject(key, f"category_id {ann['category_id']} does not exist")
            continue
        image = state.images.get(ann["image_id"])
        if image is None:
            state.reject(key, f"image_id {ann['image_id']} does not exist (or the image was rejected)")
            continue
        problem = _bbox_problem(ann["bbox"], image["width"], image["height"])
        if problem:
            state.reject(key, problem)
            continue
        area = float(ann.get("area") or ann["bbox"][2] * ann["bbox"][3])
        state.annotations[ann["image_id"]].append((ann["category_id"], area, bool(ann.get("iscrowd", 0))))
    if count == 0 and not _has_key(state.annotation_file, "annotations"):
        raise CocoError(f"{state.annotation_file}: missing required key 'annotations' (a list)")


def frequency_group(images_with_person: int, borders: FrequencyBorders) -> str:
    """The paper's frequency group of a class from its number of images with a person."""
    if images_with_person >= borders.high:
        return "high"
    if images_with_person >= borders.medium:
        return "medium"
    return "low"


def class_statistics(state: _Split, borders: FrequencyBorders) -> list[dict[str, Any]]:
    """Per-class counts over the validated images, one row per category of the file."""
    person_ids = {cid for cid, name in state.categories.items() if name == PERSON}
    images: Counter[int] = Counter()
    with_person: Counter[int] = Counter()
    instances: Counter[int] = Counter()
    crowd: Counter[int] = Counter()
    areas: dict[int, list[float]] = defaultdict(list)
    for anns in state.annotations.values():
        present = {cid for cid, _, _ in anns}
        images.update(present)
        if present & person_ids:
            with_person.update(present)
        for cid, area, is_crowd in anns:
            if is_crowd:
                crowd[cid] += 1
            else:
                instances[cid] += 1
                areas[cid].append(area)
    rows = []
    for cid, name in sorted(state.categories.items()):
        values = np.asarray(areas[cid])
        rows.append(
            {
                "category_id": cid,
                "name": name,
                "images": images[cid],
                "images_with_person": with_person[cid],
                "instances": instances[cid],
                "crowd": crowd[cid],
                "area_small": int((values < SMALL_AREA).sum()),
                "area_medium": int(((values >= SMALL_AREA) & (values < MEDIUM_AREA)).sum()),
                "area_large": int((values >= MEDIUM_AREA).sum()),
                "area_median": round(float(np.median(values)), 2) if values.size else 0.0,
                "frequency_group": frequency_group(with_person[cid], borders),
            }
        )
    return rows


def _csv(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CLASS_STATS_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def cooccurrence_figure(rows: list[dict[str, Any]], title: str) -> bytes:
    """Bar chart of images per class that also contain a person, coloured by frequency group (Figure 6)."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    shown = sorted((r for r in rows if r["name"] != PERSON), key=lambda r: -r["images_with_person"])
    colours = {"high": "#1b9e77", "medium": "#d95f02", "low": "#7570b3"}
    fig, ax = plt.subplots(figsize=(16, 5))
    ax.bar(
        [r["name"] for r in shown],
        [r["images_with_person"] for r in shown],
        color=[colours[r["frequency_group"]] for r in shown],
    )
    ax.set_ylabel("images with a person")
    ax.set_title(title)
    ax.legend(handles=[Patch(color=c, label=g) for g, c in colours.items()], title="frequency group")
    ax.tick_params(axis="x", rotation=90, labelsize=7)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)
    return buffer.getvalue()


def category_table(annotation_file: Path) -> CategoryTable:
    """The file's category table, which must be well formed and hold 'person' (the study anonymizes persons).

    Raises:
        CocoError: Naming the file and the problem.
    """
    table = CategoryTable.of({"categories": read_list(annotation_file, "categories")}, annotation_file)
    if PERSON not in table.names:
        raise CocoError(f"{annotation_file}: no '{PERSON}' category: anonbench anonymizes persons")
    return table


def absent_classes(cfg: Config, table: CategoryTable) -> dict[str, list[str]]:
    """Per ``classes.*`` list, the names the dataset's table lacks (only lists that lack any), logged."""
    absent = {key: [n for n in names if n not in table.names] for key, names in cfg.classes.lists().items()}
    absent = {key: names for key, names in absent.items() if names}
    for key, names in absent.items():
        log.warning("%s: %s not among the dataset's categories; left out where the list is used", key, names)
    return absent


def prepare_split(cfg: Config, split: str) -> list[Path]:
    """Validate, index and count one split; see the module docstring for the outputs."""
    annotation_file = cfg.annotation_file(ORIGINAL, split)
    state = _Split(split, annotation_file, cfg.policy == "strict", Manifest("prepare", split))
    table = category_table(annotation_file)
    state.categories = dict(zip(table.ids, table.names, strict=True))
    _validate_images(state, cfg.image_dir(ORIGINAL, split), cfg.data.deep_check, cfg.n_workers)
    _validate_annotations(state)

    person_ids = {cid for cid, name in state.categories.items() if name == PERSON}
    index = []
    for image_id, image in sorted(state.images.items()):
        anns = state.annotations.get(image_id, [])
        persons = sum(1 for cid, _, _ in anns if cid in person_ids)
        index.append({**image, "annotations": len(anns), "persons": persons})
        state.manifest.add(f"image {image_id} ({image['file_name']})", "ok")
    rows = class_statistics(state, cfg.prepare.frequency_borders)
    stats = {
        "split": split,
        "images": len(index),
        "images_with_person": sum(1 for image in index if image["persons"]),
        "annotations": sum(len(a) for a in state.annotations.values()),
        "crowd": sum(1 for a in state.annotations.values() for _, _, crowd in a if crowd),
        "classes_present": sum(1 for r in rows if r["images"]),
        "categories": [{"id": cid, "name": name} for cid, name in sorted(state.categories.items())],
        "classes_absent": absent_classes(cfg, table),
        "frequency_borders": cfg.prepare.frequency_borders.model_dump(),
        "manifest_counts": state.manifest.counts,
        "classes": {r["name"]: {k: v for k, v in r.items() if k != "name"} for r in rows},
    }
    out = cfg.paths.data / "prepared" / split
    return [
        atomic_write_json(out / "index.json", {"split": split, "images": index}),
        atomic_write_json(out / "stats.json", stats),
        atomic_write_text(out / "class_stats.csv", _csv(rows)),
        state.manifest.write(out / "manifest.json"),
        atomic_write_bytes(
            out / "cooccurrence.png", cooccurrence_figure(rows, f"{cfg.data.source} {split}: co-occurrence with person")
        ),
    ]


def run(cfg: Config) -> list[Path]:
    """Prepare every split and report time and peak memory on stderr.

    Args:
        cfg: Run configuration.

    Returns:
        Every file written.

    Raises:
        PrepareError: Bad input under the strict policy.
        CocoError: An annotation file that cannot be read at all, or whose category table is unusable
            (under either policy).
    """
    start = time.perf_counter()
    train, val = (category_table(cfg.annotation_file(ORIGINAL, split)) for split in cfg.data.splits)
    train.check_same(val, str(cfg.annotation_file(ORIGINAL, cfg.data.val_split)))
    written = [path for split in cfg.data.splits for path in prepare_split(cfg, split)]
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"prepare: {time.perf_counter() - start:.1f} s, peak memory {peak_mb:.0f} MB", file=sys.stderr)
    return written
