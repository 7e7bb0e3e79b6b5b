"""Reading COCO-format splits: instances JSON, image paths, per-image annotations.

Shared by every stage that reads a split (the original or an anonymized
variant: both have the same layout). Errors name the file and the record.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ijson

from anonbench.coco_classes import PERSON

Instances = dict[str, Any]
Annotation = dict[str, Any]


class CocoError(ValueError):
    """A COCO file or record is unusable; the message names the file and the record."""


def read_instances(path: Path) -> Instances:
    """Load an instances JSON file.

    Args:
        path: ``annotations/instances_<split>.json``.

    Returns:
        The decoded mapping.

    Raises:
        CocoError: If the file is missing, not JSON, or lacks images/annotations/categories.
    """
    try:
        with Path(path).open("rb") as handle:
            data = json.load(handle)
    except FileNotFoundError:
        raise CocoError(f"{path}: annotation file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CocoError(f"{path}: malformed JSON: {exc}") from None
    if not isinstance(data, dict):
        raise CocoError(f"{path}: expected a JSON object at the top level")
    missing = [key for key in ("images", "annotations", "categories") if not isinstance(data.get(key), list)]
    if missing:
        raise CocoError(f"{path}: missing required key(s) {missing}")
    return data


def read_list(path: Path, key: str) -> list[Any]:
    """The top-level list ``key`` of an instances JSON, streamed: the rest of the file is not kept in memory.

    Reading stops at the list, so ``images`` (before the annotations in COCO files) costs a fraction of a
    full parse; for stages that need only image or category records of a file whose annotations are
    gigabytes in memory.

    Raises:
        CocoError: If the file is missing, not JSON, or has no list ``key``.
    """
    try:
        with Path(path).open("rb") as handle:
            for value in ijson.items(handle, key, use_float=True):
                if isinstance(value, list):
                    return value
                break
    except FileNotFoundError:
        raise CocoError(f"{path}: annotation file not found") from None
    except ijson.JSONError as exc:
        raise CocoError(f"{path}: malformed JSON: {exc}") from None
    raise CocoError(f"{path}: missing required key(s) [{key!r}]")


def image_path(image_dir: Path, file_name: str) -> Path:
    """Path of an image inside its split folder; a name that escapes the folder is refused.

    Raises:
        CocoError: For empty or absolute names and names with ``..`` components.
    """
    name = Path(file_name)
    # Judge the name, not where it resolves: a DVC cache may legitimately link images elsewhere.
    if not file_name or name.is_absolute() or ".." in name.parts:
        raise CocoError(f"file_name {file_name!r} escapes the image folder {image_dir}")
    return Path(image_dir) / name


def annotations_by_image(instances: Instances) -> dict[int, list[Annotation]]:
    """Group annotations by image id (images without annotations map to an empty list)."""
    grouped: dict[int, list[Annotation]] = defaultdict(list)
    for ann in instances["annotations"]:
        grouped[ann["image_id"]].append(ann)
    return {img["id"]: grouped.get(img["id"], []) for img in instances["images"]}


def person_category_id(instances: Instances) -> int:
    """COCO id of the 'person' category in this file."""
    for cat in instances["categories"]:
        if cat["name"] == PERSON:
            return int(cat["id"])
    raise CocoError("no 'person' category in the annotation file")


@dataclass(frozen=True)
class CategoryTable:
    """A dataset's categories in detector class order: class index ``k`` is ``ids[k]`` named ``names[k]``.

    The order is ascending category id. For COCO that is COCO's own 80-class
    order (1 person ... 90 toothbrush); a dataset with other ids, fewer
    categories or other names gets its own table, and its models predict its
    classes.
    """

    ids: tuple[int, ...]
    names: tuple[str, ...]

    @classmethod
    def of(cls, instances: Instances, where: Path | str) -> CategoryTable:
        """The table of an instances mapping.

        Raises:
            CocoError: Naming ``where`` and the record, for a category without an integer id or a name, a
                repeated id or name, or no category at all.
        """
        table: dict[int, str] = {}
        for category in instances["categories"]:
            record = category if isinstance(category, dict) else {}
            cid, name = record.get("id"), record.get("name")
            if not isinstance(cid, int) or isinstance(cid, bool) or not isinstance(name, str) or not name:
                raise CocoError(f"{where}: category {category!r} needs an integer 'id' and a non-empty 'name'")
            if cid in table:
                raise CocoError(f"{where}: category id {cid} appears twice")
            if name in table.values():
                raise CocoError(f"{where}: category name {name!r} appears twice")
            table[cid] = name
        if not table:
            raise CocoError(f"{where}: no categories")
        ids = tuple(sorted(table))
        return cls(ids, tuple(table[i] for i in ids))

    @property
    def index(self) -> dict[int, int]:
        """Category id -> class index."""
        return {cid: k for k, cid in enumerate(self.ids)}

    def check_same(self, other: CategoryTable, where: str) -> None:
        """Refuse a second table (another split or variant) that differs from this one.

        Raises:
            CocoError: Naming ``where`` and the first difference.
        """
        if other != self:
            mine, theirs = dict(zip(self.ids, self.names, strict=True)), dict(zip(other.ids, other.names, strict=True))
            first = min(cid for cid in set(mine) | set(theirs) if mine.get(cid) != theirs.get(cid))
            raise CocoError(
                f"{where}: its categories differ from the training split's (category id {first}: "
                f"{theirs.get(first)!r} here, {mine.get(first)!r} there)"
            )
