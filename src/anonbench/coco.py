"""Reading COCO-format splits: instances JSON, image paths, per-image annotations.

Shared by every stage that reads a split (the original or an anonymized
variant: both have the same layout). Errors name the file and the record.
Stages that work image by image read a split through :func:`indexed`: COCO's
train annotations are 3.4 GB as Python objects, the index keeps them on disk
and hands out one image's at a time.
"""

from __future__ import annotations

import json
import sqlite3
import tempfile
from collections import defaultdict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ijson

from anonbench.coco_classes import PERSON
from anonbench.io import atomic_open

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


def person_category_id(categories: list[dict[str, Any]]) -> int:
    """COCO id of the 'person' category in a file's ``categories``."""
    for cat in categories:
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
            cid, name = _integer(record.get("id")), record.get("name")
            if cid is None or not isinstance(name, str) or not name:
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


# Top-level entries an index keeps on disk (annotations) or as its own list (images).
_BULK = ("images", "annotations")
_INSERT_BATCH = 10_000
_OPEN: dict[Path, sqlite3.Connection] = {}


def _connection(database: Path) -> sqlite3.Connection:
    """This process's read-only connection to an index database (one per process, opened on first use)."""
    if database not in _OPEN:
        _OPEN[database] = sqlite3.connect(f"file:{database}?mode=ro", uri=True, check_same_thread=False)
    return _OPEN[database]


@dataclass(frozen=True)
class AnnotationLookup:
    """One image's annotations from an index database: a handle small enough to send with every worker task."""

    database: Path

    def of(self, image_id: int) -> list[Annotation]:
        """The image's annotations in file order (empty for an image without any)."""
        rows = _connection(self.database).execute(
            "SELECT record FROM annotations WHERE image_id = ? ORDER BY seq", (image_id,)
        )
        return [json.loads(record) for (record,) in rows]


@dataclass(frozen=True)
class CocoIndex:
    """An instances JSON with its annotations on disk, for stages that work image by image.

    Attributes:
        path: The instances JSON.
        keys: Its top-level keys in file order.
        head: Its top-level entries other than images and annotations (info, licenses, categories).
        images: Its image records in file order.
        lookup: Per-image annotations, also usable in worker processes.
    """

    path: Path
    keys: tuple[str, ...]
    head: dict[str, Any]
    images: list[dict[str, Any]]
    lookup: AnnotationLookup

    @property
    def categories(self) -> list[dict[str, Any]]:
        """The file's category records."""
        return list(self.head["categories"])

    def with_category(self, category_id: int) -> list[int]:
        """Ids of the images with an annotation of ``category_id``, ascending."""
        rows = _connection(self.lookup.database).execute(
            "SELECT DISTINCT image_id FROM annotations WHERE category_id = ? ORDER BY image_id", (category_id,)
        )
        return [image_id for (image_id,) in rows]

    def max_annotation_id(self) -> int:
        """The largest integer annotation id of the file (0 without any)."""
        (largest,) = _connection(self.lookup.database).execute("SELECT MAX(ann_id) FROM annotations").fetchone()
        return int(largest or 0)

    def annotation_ids(self) -> set[int]:
        """Every annotation id of the file."""
        rows = _connection(self.lookup.database).execute("SELECT ann_id FROM annotations WHERE ann_id IS NOT NULL")
        return {ann_id for (ann_id,) in rows}

    def of_images(self, image_ids: Iterable[int]) -> Instances:
        """The file restricted to the annotations of ``image_ids``: every image record, category and other entry.

        For whole-file functions (review exports, corrections) that touch only a few images.
        """
        wanted = sorted(set(image_ids))
        annotations = [a for image_id in wanted for a in self.lookup.of(image_id)]
        return {**self.head, "images": self.images, "annotations": annotations}

    def write(self, target: Path, images: Iterable[dict[str, Any]], edits: dict[int, list[Annotation]]) -> Path:
        """Write the file again with other image records and some images' annotations replaced.

        Annotations stay in file order. An edited image's annotations are replaced by its edit (an
        empty list drops them) where its first one was; the edits of images without any annotation
        come last. Bytes are those of ``json.dumps(data, separators=(",", ":"))`` on the edited mapping,
        written piece by piece: unedited annotations go from the index to the file without being parsed.

        Args:
            target: Where to write (atomically).
            images: The image records to write instead of :attr:`images`.
            edits: Image id -> its new annotations.

        Returns:
            ``target``.
        """
        database = _connection(self.lookup.database)
        pending = dict(edits)

        def annotations() -> Iterator[bytes]:
            for image_id, record in database.execute("SELECT image_id, record FROM annotations ORDER BY seq"):
                if image_id not in edits:
                    yield record.encode()
                elif image_id in pending:
                    yield from map(_compact, pending.pop(image_id))
            for anns in pending.values():
                yield from map(_compact, anns)

        with atomic_open(target) as out:
            out.write(b"{")
            for n, key in enumerate(self.keys):
                out.write((b"," if n else b"") + _compact(key) + b":")
                if key == "images":
                    _write_list(out, map(_compact, images))
                elif key == "annotations":
                    _write_list(out, annotations())
                else:
                    out.write(_compact(self.head[key]))
            out.write(b"}")
        return target


def _compact(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _write_list(out: Any, items: Iterable[bytes]) -> None:
    out.write(b"[")
    for n, item in enumerate(items):
        out.write((b"," if n else b"") + item)
    out.write(b"]")


def _top_level(path: Path) -> tuple[list[str], dict[str, Any]]:
    """The file's top-level keys and every entry but images and annotations, in one streamed pass.

    Raises:
        CocoError: For malformed JSON or a top level that is not an object.
    """
    keys: list[str] = []
    head: dict[str, Any] = {}
    builder: ijson.ObjectBuilder | None = None
    if not path.is_file():
        raise CocoError(f"{path}: annotation file not found")
    with path.open("rb") as handle:
        try:
            for prefix, event, value in ijson.parse(handle, use_float=True):
                if not prefix:
                    if event == "map_key":
                        keys.append(value)
                        builder = None if value in _BULK else ijson.ObjectBuilder()
                    elif event not in ("start_map", "end_map"):
                        raise CocoError(f"{path}: expected a JSON object at the top level")
                    continue
                if builder is None:
                    if prefix == keys[-1] and event not in ("start_array", "end_array"):
                        raise CocoError(f"{path}: {keys[-1]!r} is not a list")
                    continue
                builder.event(event, value)
                if prefix == keys[-1] and event not in ("start_map", "start_array"):
                    head[keys[-1]] = builder.value
        except ijson.JSONError as exc:
            raise CocoError(f"{path}: malformed JSON: {exc}") from None
    return keys, head


def _integer(value: Any) -> int | None:
    """``value`` if it is an integer id (not a bool), else None."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _fill(database: Path, path: Path) -> None:
    """Stream the file's annotations into ``database``, grouped by image id.

    Raises:
        CocoError: For an annotation that is not an object with an integer ``image_id``.
    """
    with sqlite3.connect(database) as db:
        db.execute("PRAGMA journal_mode = OFF")
        db.execute("PRAGMA synchronous = OFF")
        db.execute(
            "CREATE TABLE annotations (seq INTEGER PRIMARY KEY, image_id INTEGER NOT NULL, ann_id, category_id, record)"
        )
        insert = "INSERT INTO annotations (image_id, ann_id, category_id, record) VALUES (?, ?, ?, ?)"
        batch: list[tuple[int, Any, Any, str]] = []
        with path.open("rb") as handle:
            for ann in ijson.items(handle, "annotations.item", use_float=True):
                image_id = _integer(ann.get("image_id")) if isinstance(ann, dict) else None
                if image_id is None:
                    record = ann.get("id", "?") if isinstance(ann, dict) else ann
                    raise CocoError(f"{path}: annotation {record!r} needs an integer 'image_id'")
                batch.append(
                    (image_id, _integer(ann.get("id")), _integer(ann.get("category_id")), _compact(ann).decode())
                )
                if len(batch) == _INSERT_BATCH:
                    db.executemany(insert, batch)
                    batch.clear()
        db.executemany(insert, batch)
        db.execute("CREATE INDEX by_image ON annotations (image_id, seq)")
        db.execute("CREATE INDEX by_category ON annotations (category_id, image_id)")
    db.close()


@contextmanager
def indexed(path: Path) -> Iterator[CocoIndex]:
    """Index an instances JSON for the span of a stage: two streamed passes, annotations to a temporary database.

    The database lives in the system's temporary folder (``TMPDIR``) and is about the size of the JSON;
    it is removed on exit.

    Args:
        path: ``annotations/instances_<split>.json``.

    Yields:
        The index.

    Raises:
        CocoError: If the file is missing, not JSON, lacks images/annotations/categories, or has an
            annotation without an integer image id.
    """
    path = Path(path)
    keys, head = _top_level(path)
    images = read_list(path, "images")
    missing = [key for key in ("annotations", "categories") if key not in keys]
    if missing or not isinstance(head["categories"], list):
        raise CocoError(f"{path}: missing required key(s) {missing or ['categories']}")
    with tempfile.TemporaryDirectory(prefix="anonbench-index-") as folder:
        database = Path(folder) / "annotations.sqlite"
        _fill(database, path)
        try:
            yield CocoIndex(path, tuple(keys), head, images, AnnotationLookup(database))
        finally:
            if database in _OPEN:
                _OPEN.pop(database).close()
