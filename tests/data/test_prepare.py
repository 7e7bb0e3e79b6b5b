"""The prepare stage on real coco-mini and on corrupted copies of it (strict and skip policies)."""

from __future__ import annotations

import csv
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from anonbench.coco import CocoError
from anonbench.config import Config
from anonbench.stages import prepare
from anonbench.stages.prepare import CLASS_STATS_COLUMNS, PrepareError
from tests.conftest import renumber_folder

SPLIT = "val2017"


def test_prepare_counts_coco_mini_like_its_readme(make_config: Callable[..., Config]) -> None:
    cfg = make_config("workers=1")
    written = prepare.run(cfg)
    assert len(written) == 10
    train = json.loads((cfg.paths.data / "prepared/train2017/stats.json").read_text())
    val = json.loads((cfg.paths.data / "prepared/val2017/stats.json").read_text())
    # shared/data/coco-mini/README.md: 128 images (61 with a person, 71 classes, 939 annotations, 10 crowd)
    assert (train["images"], train["images_with_person"], train["classes_present"]) == (128, 61, 71)
    assert (train["annotations"], train["crowd"]) == (939, 10)
    assert (val["images"], val["images_with_person"], val["classes_present"]) == (50, 23, 48)
    assert (val["annotations"], val["crowd"]) == (382, 5)
    assert train["classes"]["person"]["images_with_person"] == 61
    with (cfg.paths.data / "prepared/train2017/class_stats.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == CLASS_STATS_COLUMNS
    assert len(rows) == 80
    assert {r["frequency_group"] for r in rows} <= {"high", "medium", "low"}
    index = json.loads((cfg.paths.data / "prepared/val2017/index.json").read_text())
    assert len(index["images"]) == 50
    assert Image.open(cfg.paths.data / "prepared/train2017/cooccurrence.png").size == (1600, 500)


def test_prepare_is_byte_identical_on_rerun(make_config: Callable[..., Config]) -> None:
    cfg = make_config("workers=2")
    first = {p: p.read_bytes() for p in prepare.run(cfg)}
    second = {p: p.read_bytes() for p in prepare.run(cfg)}
    assert first == second


@pytest.fixture
def corrupted(tiny_coco: Path, tmp_path: Path) -> Callable[..., Path]:
    """A writable copy of the tiny slice with one mutation applied to the val split."""

    def _make(mutate: Callable[[dict[str, Any], Path], None]) -> Path:
        root = tmp_path / "corrupted"
        shutil.copytree(tiny_coco, root)
        ann_file = root / "annotations" / f"instances_{SPLIT}.json"
        instances = json.loads(ann_file.read_text())
        mutate(instances, root / SPLIT)
        ann_file.write_text(json.dumps(instances))
        return root

    return _make


def _first_image(instances: dict[str, Any]) -> dict[str, Any]:
    return instances["images"][0]


def _bad_bbox(bbox: list[float]) -> Callable[[dict[str, Any], Path], None]:
    def mutate(instances: dict[str, Any], _: Path) -> None:
        instances["annotations"][0]["bbox"] = bbox

    return mutate


def _truncate(instances: dict[str, Any], images: Path) -> None:
    path = images / _first_image(instances)["file_name"]
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _garbage(instances: dict[str, Any], images: Path) -> None:
    (images / _first_image(instances)["file_name"]).write_bytes(b"this is not a JPEG" * 100)


BAD_RECORDS: dict[str, tuple[Callable[[dict[str, Any], Path], None], str]] = {
    "unknown image id": (lambda i, _: i["annotations"][0].update(image_id=999999999), "image_id 999999999 does not"),
    "unknown category": (lambda i, _: i["annotations"][0].update(category_id=12), "category_id 12 does not exist"),
    "annotation without bbox": (lambda i, _: i["annotations"][0].pop("bbox"), "missing required key(s) ['bbox']"),
    "negative box": (_bad_bbox([10, 10, -5, 20]), "zero or negative size"),
    "zero box": (_bad_bbox([10, 10, 0, 20]), "zero or negative size"),
    "box outside": (_bad_bbox([600, 10, 500, 20]), "lies outside"),
    "missing image": (lambda i, images: (images / _first_image(i)["file_name"]).unlink(), "image file missing"),
    "truncated jpeg": (_truncate, "truncated JPEG"),
    "corrupt jpeg": (_garbage, "unreadable image"),
    "escaping name": (lambda i, _: _first_image(i).update(file_name="../x.jpg"), "escapes the image folder"),
    "absolute name": (lambda i, _: _first_image(i).update(file_name="/etc/passwd"), "escapes the image folder"),
    "duplicate image id": (lambda i, _: i["images"].append(dict(_first_image(i))), "duplicate image id"),
    "image without size": (lambda i, _: _first_image(i).pop("width"), "missing required key(s) ['width']"),
}


@pytest.mark.parametrize("case", sorted(BAD_RECORDS))
def test_bad_record_stops_strict_run_naming_file_and_record(
    case: str, corrupted: Callable[..., Path], make_config: Callable[..., Config]
) -> None:
    mutate, problem = BAD_RECORDS[case]
    cfg = make_config("workers=1", "policy=strict", source=corrupted(mutate))
    with pytest.raises(PrepareError) as err:
        prepare.prepare_split(cfg, SPLIT)
    assert f"instances_{SPLIT}.json" in str(err.value)
    assert problem in str(err.value)


@pytest.mark.parametrize("case", sorted(BAD_RECORDS))
def test_bad_record_is_counted_and_listed_under_skip(
    case: str, corrupted: Callable[..., Path], make_config: Callable[..., Config]
) -> None:
    mutate, problem = BAD_RECORDS[case]
    cfg = make_config("workers=1", "policy=skip", source=corrupted(mutate))
    prepare.prepare_split(cfg, SPLIT)
    manifest = json.loads((cfg.paths.data / "prepared" / SPLIT / "manifest.json").read_text())
    skipped = [r for r in manifest["records"] if r["status"] == "skipped"]
    assert manifest["counts"]["skipped"] == len(skipped) >= 1
    assert any(problem in r["reason"] for r in skipped)
    stats = json.loads((cfg.paths.data / "prepared" / SPLIT / "stats.json").read_text())
    assert stats["images"] == manifest["counts"]["ok"]
    assert stats["manifest_counts"] == manifest["counts"]


@pytest.mark.parametrize("mode", ["L", "CMYK"])
def test_grayscale_and_cmyk_jpegs_are_valid(
    mode: str, corrupted: Callable[..., Path], make_config: Callable[..., Config]
) -> None:
    def convert(instances: dict[str, Any], images: Path) -> None:
        path = images / _first_image(instances)["file_name"]
        Image.open(path).convert(mode).save(path, format="JPEG", quality=90)

    cfg = make_config("workers=1", "policy=strict", "data.deep_check=true", source=corrupted(convert))
    prepare.prepare_split(cfg, SPLIT)
    index = json.loads((cfg.paths.data / "prepared" / SPLIT / "index.json").read_text())
    assert mode in {image["mode"] for image in index["images"]}


@pytest.mark.parametrize("policy", ["strict", "skip"])
def test_malformed_json_stops_under_either_policy(
    policy: str, tiny_coco: Path, tmp_path: Path, make_config: Callable[..., Config]
) -> None:
    root = tmp_path / "broken"
    shutil.copytree(tiny_coco, root)
    ann_file = root / "annotations" / f"instances_{SPLIT}.json"
    ann_file.write_text(ann_file.read_text()[:-100])
    cfg = make_config(f"policy={policy}", source=root)
    with pytest.raises(CocoError, match=f"instances_{SPLIT}.json: malformed JSON"):
        prepare.prepare_split(cfg, SPLIT)


def test_missing_top_level_key_is_named(tiny_coco: Path, tmp_path: Path, make_config: Callable[..., Config]) -> None:
    root = tmp_path / "nokey"
    shutil.copytree(tiny_coco, root)
    ann_file = root / "annotations" / f"instances_{SPLIT}.json"
    instances = json.loads(ann_file.read_text())
    del instances["annotations"]
    ann_file.write_text(json.dumps(instances))
    cfg = make_config(source=root)
    with pytest.raises(CocoError, match="missing required key 'annotations'"):
        prepare.prepare_split(cfg, SPLIT)


FOLDER_SPLITS = ("data.source=coco-folder", "data.local_copy=/unused", "data.train_split=train", "data.val_split=val")


def test_a_coco_folder_with_its_own_category_table(
    tiny_coco: Path, tmp_path: Path, make_config: Callable[..., Config]
) -> None:
    folder = renumber_folder(tiny_coco, tmp_path / "mine", {"train2017": "train", "val2017": "val"})
    cfg = make_config("workers=1", *FOLDER_SPLITS, source=folder)
    prepare.run(cfg)
    stats = json.loads((cfg.paths.data / "prepared" / "val" / "stats.json").read_text())
    categories = stats["categories"]
    assert len(categories) == 79 and [c["id"] for c in categories] == sorted(c["id"] for c in categories)
    assert (categories[0], categories[-1]) == ({"id": 220, "name": "hair drier"}, {"id": 1000, "name": "person"})
    assert stats["classes"]["parasol"]["category_id"] == 750 and "umbrella" not in stats["classes"]
    # the params' class lists name COCO classes; what this table lacks is recorded, not a crash
    assert stats["classes_absent"] == {
        "classes.size_frequency.small.low": ["toothbrush"],
        "classes.size_frequency.medium.high": ["umbrella"],
        "classes.use_case_groups.AD_change": ["umbrella"],
        "classes.comparison": ["umbrella"],
    }
    reference = json.loads((tiny_coco / "annotations" / "instances_val2017.json").read_text())
    persons = sum(1 for a in reference["annotations"] if a["category_id"] == 1 and not a["iscrowd"])
    assert stats["classes"]["person"]["instances"] == persons


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda cats: [c for c in cats if c["name"] != "person"], "no 'person' category: anonbench anonymizes persons"),
        (lambda cats: [*cats, {"id": 5000, "name": "sofa"}], "categories differ from the training split's"),
        (lambda cats: [*cats, dict(cats[0])], "appears twice"),
    ],
)
def test_an_unusable_category_table_is_named(
    tiny_coco: Path, tmp_path: Path, make_config: Callable[..., Config], change: Callable, message: str
) -> None:
    root = tmp_path / "broken"
    shutil.copytree(tiny_coco, root)
    ann_file = root / "annotations" / f"instances_{SPLIT}.json"
    instances = json.loads(ann_file.read_text())
    instances["categories"] = change(instances["categories"])
    ann_file.write_text(json.dumps(instances))
    with pytest.raises(CocoError, match=f"instances_{SPLIT}.json: .*{message}"):
        prepare.run(make_config("policy=skip", source=root))
