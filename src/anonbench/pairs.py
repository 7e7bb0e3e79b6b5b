"""An anonymized variant's images paired with the originals by image id, for the stages that compare them.

The ssim and privacy stages read each original image beside its variant and the variant's
anonymized-region mask, and measure a split again only when its inputs changed: both come from here.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from anonbench.coco import image_path, read_list
from anonbench.config import ORIGINAL, Config
from anonbench.data.download import file_digest


@dataclass(frozen=True)
class Pair:
    """One original image, the variant's image of the same id, and the variant's region mask (may be absent)."""

    image_id: int
    key: str
    original: Path
    variant: Path
    mask: Path


def pair_images(cfg: Config, variant: str, split: str) -> tuple[list[Pair], list[tuple[str, str]]]:
    """Pair every original image with its variant by image id, in image id order.

    Args:
        cfg: Where the original and the variant live.
        variant: ``org`` (each image paired with itself) or a method under ``data/variants/``.
        split: The split.

    Returns:
        The pairs, and (file name, problem) for every image only one side has.
    """
    images = read_list(cfg.annotation_file(ORIGINAL, split), "images")
    # Only the variant's image records: its annotations are the original's.
    variant_names = {
        int(im["id"]): str(im["file_name"]) for im in read_list(cfg.annotation_file(variant, split), "images")
    }
    masks = cfg.variant_root(variant) / "masks" / split
    pairs, problems = [], []
    for info in sorted(images, key=lambda im: im["id"]):
        key, image_id = str(info["file_name"]), int(info["id"])
        if image_id not in variant_names:
            problems.append(
                (key, f"{key}: variant image missing: image id {image_id} is not in the variant's annotations")
            )
            continue
        variant_name = variant_names.pop(image_id)
        pairs.append(
            Pair(
                image_id=image_id,
                key=key,
                original=image_path(cfg.image_dir(ORIGINAL, split), key),
                variant=image_path(cfg.image_dir(variant, split), variant_name),
                mask=masks / f"{Path(variant_name).stem}.png",
            )
        )
    for image_id, name in sorted(variant_names.items()):
        problems.append((name, f"{name}: image id {image_id} of the variant is not in the original"))
    return pairs, problems


def inputs_stamp(cfg: Config, variant: str, split: str, pairs: list[Pair], settings: str) -> str:
    """Fingerprint of a split's inputs: the settings, annotation files, size and mtime of every image and mask.

    Args:
        cfg: Where the annotation files live.
        variant: The variant compared.
        split: The split.
        pairs: :func:`pair_images`' pairs.
        settings: The stage's settings that change its results, as text.

    Returns:
        A hex digest that changes when any input or setting does.
    """
    digest = hashlib.sha256(settings.encode())
    for path in (cfg.annotation_file(ORIGINAL, split), cfg.annotation_file(variant, split)):
        digest.update(bytes.fromhex(file_digest(path, "sha256")))
    for pair in pairs:
        for path in (pair.original, pair.variant, pair.mask):
            stat = path.stat() if path.exists() else None
            digest.update(f"{path.name} {stat and (stat.st_size, stat.st_mtime_ns)}\n".encode())
    return digest.hexdigest()


def complete(paths: list[Path], stamp_file: Path, stamp: str) -> bool:
    """Whether a stage's outputs are all there and were measured from the inputs ``stamp`` describes."""
    return all(p.is_file() for p in paths) and stamp_file.is_file() and stamp_file.read_text() == stamp
