"""export: one COCO-layout variant to the Ultralytics YOLO layout that train and evaluate read.

For each split: ``images/<split>/`` (links to the variant's images, per
``export.link``), ``labels/<split>/<stem>.txt`` (``class cx cy w h``, normalized,
class index = the category's position in the dataset's category table,
:class:`anonbench.coco.CategoryTable`: ascending id, so COCO's own 80-class
order for COCO), ``image_ids_<split>.json`` (file stem to
COCO image id, so predictions can be scored against the COCO JSON) and
``manifest_<split>.json``; plus one ``dataset.yaml``. Its paths are relative to
the yaml (no ``path`` key: Ultralytics then uses the yaml's folder), so the
folder can move and reruns are byte-identical.

Crowd annotations (``iscrowd=1``) get no label line: COCOeval treats a crowd
region as an area to ignore, never as an object to find, so training on it as
a positive would teach boxes that the evaluation neither rewards nor
penalizes. They are counted per image in the manifest. Images with no
(non-crowd) annotation get an empty label file: background images.

The whole ``data/yolo/<variant>/`` folder is built under a temporary name and
moved into place when complete; a folder with ``dataset.yaml`` is skipped.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import yaml

from anonbench.coco import CategoryTable, CocoError, image_path, indexed
from anonbench.config import Config
from anonbench.io import atomic_dir, atomic_write_json, atomic_write_text
from anonbench.manifest import Manifest
from anonbench.parallel import map_with_progress
from anonbench.yolo import check_variant, dataset_yaml, export_root


@dataclass(frozen=True)
class ImageJob:
    """The file work for one image of a YOLO layout: link its image, write its label file."""

    source: Path
    image: Path
    label: Path
    link: str
    symlink_to: str
    lines: tuple[str, ...]


def image_job(source: Path, tmp: Path, final: Path, split: str, link: str, lines: list[str]) -> ImageJob:
    """Plan one image of a layout that is built in ``tmp`` and then moved to ``final``.

    Args:
        source: The image to link.
        tmp: The temporary folder being filled.
        final: Where that folder will be; symlinks are relative to it, so the data folder can move.
        split: Split name (sub-folder of ``images/`` and ``labels/``).
        link: ``symlink``, ``hardlink`` or ``copy``.
        lines: Label lines.

    Returns:
        The job for :func:`write_images`.
    """
    link_dir = final / "images" / split
    return ImageJob(
        source=source,
        image=tmp / "images" / split / source.name,
        label=tmp / "labels" / split / f"{source.stem}.txt",
        link=link,
        symlink_to=os.path.relpath(source, link_dir),
        lines=tuple(lines),
    )


def _write_image(job: ImageJob) -> None:
    if job.link == "symlink":
        os.symlink(job.symlink_to, job.image)
    elif job.link == "hardlink":
        os.link(job.source, job.image)
    else:
        shutil.copyfile(job.source, job.image)
    job.label.write_text("".join(f"{line}\n" for line in job.lines), encoding="utf-8")


def write_images(jobs: list[ImageJob], splits: tuple[str, ...], root: Path, workers: int, desc: str) -> None:
    """Create ``images/<split>/`` and ``labels/<split>/`` under ``root`` and do every job over ``workers``."""
    for split in splits:
        for folder in ("images", "labels"):
            (root / folder / split).mkdir(parents=True)
    for _ in map_with_progress(_write_image, jobs, workers, desc=desc):
        pass


def _refuse(cfg: Config, manifest: Manifest, where: Path, key: str, reason: str) -> None:
    """Stop on bad input under the strict policy; count and list it under ``skip``."""
    if cfg.policy == "strict":
        raise CocoError(f"{where}: {key}: {reason}")
    manifest.add(key, "skipped", reason)


def yolo_line(cls: int, bbox: list[float], width: float, height: float) -> str | None:
    """One label line for a COCO ``[x, y, w, h]`` pixel box, clipped to the image; None if nothing is left.

    Args:
        cls: YOLO class index.
        bbox: COCO box in pixels.
        width: Image width in pixels.
        height: Image height in pixels.

    Returns:
        ``"cls cx cy w h"`` normalized to 0..1 with six decimals, or None for an empty box.
    """
    x, y, w, h = (float(v) for v in bbox)
    x0, y0, x1, y1 = max(x, 0.0), max(y, 0.0), min(x + w, width), min(y + h, height)
    if x1 <= x0 or y1 <= y0:
        return None
    cx, cy = (x0 + x1) / 2 / width, (y0 + y1) / 2 / height
    return f"{cls} {cx:.6f} {cy:.6f} {(x1 - x0) / width:.6f} {(y1 - y0) / height:.6f}"


def _plan_split(
    cfg: Config, variant: str, split: str, tmp: Path, final: Path
) -> tuple[list[ImageJob], Manifest, dict[str, int], CategoryTable]:
    """Validate one split and decide every image's file work; bad records follow ``cfg.policy``."""
    where = cfg.annotation_file(variant, split)
    with indexed(where) as index:
        table = CategoryTable.of(index.head, where)
        classes = table.index
        manifest = Manifest("export", split)
        jobs: list[ImageJob] = []
        ids: dict[str, int] = {}
        for image in sorted(index.images, key=lambda im: str(im.get("file_name"))):
            name = str(image.get("file_name"))
            try:
                source = image_path(cfg.image_dir(variant, split), name)
            except CocoError as err:
                _refuse(cfg, manifest, where, name, str(err))
                continue
            stem = source.stem
            if stem in ids:
                _refuse(cfg, manifest, where, name, f"file stem {stem!r} also used by image {ids[stem]}")
                continue
            if not source.is_file():
                _refuse(cfg, manifest, where, name, f"image file {source} not found")
                continue
            width, height = image.get("width") or 0, image.get("height") or 0
            if width <= 0 or height <= 0:
                _refuse(cfg, manifest, where, name, f"invalid image size {width}x{height}")
                continue
            lines, crowd = [], 0
            for ann in index.lookup.of(image["id"]):
                key = f"annotation {ann.get('id')}"
                if ann.get("iscrowd"):
                    crowd += 1
                    continue
                if ann.get("category_id") not in classes:
                    _refuse(cfg, manifest, where, key, f"category_id {ann.get('category_id')} not in categories")
                    continue
                line = yolo_line(classes[ann["category_id"]], ann.get("bbox") or [0, 0, 0, 0], width, height)
                if line is None:
                    _refuse(
                        cfg, manifest, where, key, f"box {ann.get('bbox')} is empty inside the {width}x{height} image"
                    )
                    continue
                lines.append(line)
            ids[stem] = int(image["id"])
            jobs.append(image_job(source, tmp, final, split, cfg.export.link, lines))
            manifest.add(name, "ok", labels=len(lines), crowd=crowd)
        return jobs, manifest, ids, table


def _outputs(cfg: Config, root: Path) -> list[Path]:
    per_split = [
        path
        for split in cfg.data.splits
        for path in (
            root / "images" / split,
            root / "labels" / split,
            root / f"image_ids_{split}.json",
            root / f"manifest_{split}.json",
        )
    ]
    return [root / "dataset.yaml", *per_split]


def dataset_text(train_images: str, val_images: str, names: list[str] | tuple[str, ...], comment: str) -> str:
    """An Ultralytics dataset yaml with paths relative to the yaml itself (no ``path`` key).

    Args:
        train_images: Training image folder, relative to the yaml.
        val_images: Validation image folder, relative to the yaml.
        names: Class names in class index order (the dataset's category table).
        comment: First line of the file.
    """
    body = {"train": train_images, "val": val_images, "nc": len(names), "names": list(names)}
    return f"# {comment}\n" + yaml.safe_dump(body, sort_keys=False, allow_unicode=True)


def dataset_names(path: Path) -> list[str]:
    """Class names of a dataset yaml that :func:`dataset_text` wrote, in class index order."""
    return list(yaml.safe_load(path.read_text(encoding="utf-8"))["names"])


def run(cfg: Config, variant: str) -> list[Path]:
    """Export ``variant`` (``org`` or an anonymization method) to ``data/yolo/<variant>/``.

    Args:
        cfg: Configuration (splits, link mode, policy, workers).
        variant: ``org`` (``cfg.source_root``) or a method under ``data/variants/``.

    Returns:
        The dataset yaml, then per split the image and label folders, the id map and the manifest.

    Raises:
        ValueError: For an unknown variant, or bad input under the strict policy (:class:`CocoError`).
    """
    root = export_root(cfg, check_variant(cfg, variant))
    outputs = _outputs(cfg, root)
    if dataset_yaml(cfg, variant).is_file():
        return outputs
    with atomic_dir(root) as tmp:
        tables: list[CategoryTable] = []
        for split in cfg.data.splits:
            jobs, manifest, ids, table = _plan_split(cfg, variant, split, tmp, root)
            if tables:
                tables[0].check_same(table, str(cfg.annotation_file(variant, split)))
            tables.append(table)
            write_images(jobs, (split,), tmp, cfg.n_workers, f"export {variant}/{split}")
            atomic_write_json(tmp / f"image_ids_{split}.json", ids)
            manifest.write(tmp / f"manifest_{split}.json")
        train, val = cfg.data.splits
        comment = f"anonbench export of {variant!r}; paths are relative to this file"
        text = dataset_text(f"images/{train}", f"images/{val}", tables[0].names, comment)
        atomic_write_text(tmp / "dataset.yaml", text)
    return outputs
