"""The export stage on real coco-mini: YOLO labels against the COCO ground truth, crowd, links, ids, variants."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml

from anonbench.coco import CocoError
from anonbench.coco_classes import COCO_NAMES
from anonbench.config import Config
from anonbench.stages import anonymize, export
from tests.conftest import renumber_folder

TRAIN, VAL = "train2017", "val2017"


def gt_lines(cfg: Config, variant: str, split: str) -> dict[str, list[list[float]]]:
    """Expected labels straight from the COCO JSON: every non-crowd box, normalized, by file stem."""
    instances = json.loads(cfg.annotation_file(variant, split).read_text())
    names = {c["id"]: c["name"] for c in instances["categories"]}
    images = {im["id"]: im for im in instances["images"]}
    expected: dict[str, list[list[float]]] = {Path(im["file_name"]).stem: [] for im in images.values()}
    for ann in instances["annotations"]:
        if ann["iscrowd"]:
            continue
        im = images[ann["image_id"]]
        x, y, w, h = ann["bbox"]
        row = [COCO_NAMES.index(names[ann["category_id"]]), x + w / 2, y + h / 2, w, h]
        scale = [1, im["width"], im["height"], im["width"], im["height"]]
        expected[Path(im["file_name"]).stem].append([v / s for v, s in zip(row, scale, strict=True)])
    return expected


def read_labels(root: Path, split: str) -> dict[str, list[list[float]]]:
    return {
        p.stem: [[float(v) for v in line.split()] for line in p.read_text().splitlines()]
        for p in sorted((root / "labels" / split).glob("*.txt"))
    }


def tree(root: Path) -> dict[str, bytes]:
    """Every file's bytes, a link's target for a link: what a byte-identical rerun must reproduce."""
    return {
        str(p.relative_to(root)): os.readlink(p).encode() if p.is_symlink() else p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() or p.is_symlink()
    }


def test_labels_ids_and_yaml_match_the_coco_ground_truth(make_config: Callable[..., Config]) -> None:
    cfg = make_config("workers=1")
    written = export.run(cfg, "org")
    root = cfg.paths.data / "yolo" / "org"
    assert written[0] == root / "dataset.yaml" and all(p.exists() for p in written)
    # one box worked by hand: image 9, bowl (class 45), bbox [1.08, 187.69, 611.59, 285.84] in 640x480
    assert (root / "labels" / TRAIN / "000000000009.txt").read_text().splitlines()[0] == (
        "45 0.479492 0.688771 0.955609 0.595500"
    )
    for split in (TRAIN, VAL):
        labels, expected = read_labels(root, split), gt_lines(cfg, "org", split)
        assert labels.keys() == expected.keys()
        for stem, rows in expected.items():
            np.testing.assert_allclose(np.reshape(labels[stem], (-1, 5)), np.reshape(rows, (-1, 5)), atol=1e-6)
        instances = json.loads(cfg.annotation_file("org", split).read_text())
        ids = json.loads((root / f"image_ids_{split}.json").read_text())
        assert ids == {Path(im["file_name"]).stem: im["id"] for im in instances["images"]}
    assert read_labels(root, TRAIN)["000000000250"] == []  # an image without annotations: background
    spec = yaml.safe_load((root / "dataset.yaml").read_text())
    assert spec["names"] == list(COCO_NAMES) and spec["nc"] == 80 and "path" not in spec
    assert len(list((root / spec["train"]).iterdir())) == 128 and len(list((root / spec["val"]).iterdir())) == 50


def test_crowd_boxes_are_not_labels_but_are_counted(make_config: Callable[..., Config]) -> None:
    cfg = make_config("workers=1")
    export.run(cfg, "org")
    root = cfg.paths.data / "yolo" / "org"
    # image 149: 22 boxes plus one crowd region of people (bbox [104, 310, 459, 34])
    lines = (root / "labels" / TRAIN / "000000000149.txt").read_text().splitlines()
    assert len(lines) == 22
    assert "0 0.521094 0.681250 0.717188 0.070833" not in lines
    manifest = json.loads((root / f"manifest_{TRAIN}.json").read_text())
    crowd = {r["key"]: r["details"]["crowd"] for r in manifest["records"]}
    assert crowd["000000000149.jpg"] == 1 and sum(crowd.values()) == 10  # coco-mini README: 10 crowd in train
    assert manifest["counts"] == {"ok": 128, "skipped": 0, "error": 0}


@pytest.mark.parametrize("link", ["symlink", "hardlink", "copy"])
def test_images_are_linked_as_configured(
    make_config: Callable[..., Config], tiny_coco: Path, tmp_path: Path, link: str
) -> None:
    cfg = make_config("workers=1", f"export.link={link}", source=tiny_coco)
    export.run(cfg, "org")
    images = sorted((cfg.paths.data / "yolo" / "org" / "images" / VAL).iterdir())
    assert len(images) == 6
    for image in images:
        original = tiny_coco / VAL / image.name
        assert image.read_bytes() == original.read_bytes()
        assert image.is_symlink() == (link == "symlink")
        assert (image.stat().st_ino == original.stat().st_ino) == (link != "copy")
    if link == "symlink":  # relative links: the data folder can move
        assert not os.readlink(images[0]).startswith("/")
        moved = tmp_path / "moved"
        (cfg.paths.data).rename(moved)
        assert (moved / "yolo" / "org" / "images" / VAL / images[0].name).read_bytes()


def test_rerun_skips_and_a_fresh_export_is_byte_identical(make_config: Callable[..., Config], tiny_coco: Path) -> None:
    cfg = make_config("workers=1", source=tiny_coco)
    root = cfg.paths.data / "yolo" / "org"
    export.run(cfg, "org")
    first, stamp = tree(root), (root / "dataset.yaml").stat().st_mtime_ns
    export.run(cfg, "org")
    assert (root / "dataset.yaml").stat().st_mtime_ns == stamp  # complete: skipped
    os.rename(root, root.with_name("old"))
    export.run(cfg.model_copy(update={"workers": 2}), "org")  # the same bytes from two worker processes
    assert tree(root) == first


def test_an_anonymized_variant_exports_its_png_files(
    make_config: Callable[..., Config], tiny_coco: Path, mlflow_db: Path
) -> None:
    cfg = make_config("workers=1", source=tiny_coco)
    anonymize.run(cfg, "mask")
    export.run(cfg, "org")
    export.run(cfg, "mask")
    root = cfg.paths.data / "yolo" / "mask"
    images = sorted((root / "images" / TRAIN).iterdir())
    assert len(images) == 12 and {p.suffix for p in images} == {".png"}
    assert images[0].resolve() == (cfg.variant_root("mask") / TRAIN / images[0].name).resolve()
    org = cfg.paths.data / "yolo" / "org"
    for split in (TRAIN, VAL):
        assert read_labels(root, split) == read_labels(org, split)
        assert (root / f"image_ids_{split}.json").read_bytes() == (org / f"image_ids_{split}.json").read_bytes()


def test_a_missing_image_stops_strict_and_is_listed_under_skip(
    make_config: Callable[..., Config], tiny_coco: Path, tmp_path: Path
) -> None:
    source = shutil.copytree(tiny_coco, tmp_path / "broken")
    missing = sorted((source / VAL).iterdir())[0]
    missing.unlink()
    cfg = make_config("workers=1", source=source)
    with pytest.raises(CocoError, match=rf"instances_{VAL}.json: {missing.name}: image file .* not found"):
        export.run(cfg, "org")
    root = cfg.paths.data / "yolo" / "org"
    assert not root.exists()  # nothing half-written
    export.run(make_config("workers=1", "policy=skip"), "org")
    manifest = json.loads((root / f"manifest_{VAL}.json").read_text())
    assert manifest["counts"] == {"ok": 5, "skipped": 1, "error": 0}
    assert [r["key"] for r in manifest["records"] if r["status"] == "skipped"] == [missing.name]
    ids = json.loads((root / f"image_ids_{VAL}.json").read_text())
    assert missing.stem not in ids and len(ids) == 5


def test_a_datasets_own_category_table_sets_the_class_indices(
    make_config: Callable[..., Config], tiny_coco: Path, tmp_path: Path
) -> None:
    folder = renumber_folder(tiny_coco, tmp_path / "mine", {"train2017": "train", "val2017": "val"})
    sets = ("workers=1", "data.source=coco-folder", "data.local_copy=/unused", "data.train_split=train")
    cfg = make_config(*sets, "data.val_split=val", source=folder)
    export.run(cfg, "org")
    root = cfg.paths.data / "yolo" / "org"
    spec = yaml.safe_load((root / "dataset.yaml").read_text())
    # class k is the k-th category by ascending id: reverse COCO order here, without toothbrush
    reverse = [n for n in reversed(COCO_NAMES) if n != "toothbrush"]
    assert spec["nc"] == 79 and spec["names"] == [("parasol" if n == "umbrella" else n) for n in reverse]
    mine = json.loads((folder / "annotations" / "instances_val.json").read_text())
    rank = {cid: k for k, cid in enumerate(sorted(c["id"] for c in mine["categories"]))}
    stems = {im["id"]: Path(im["file_name"]).stem for im in mine["images"]}
    expected: dict[str, list[int]] = {stem: [] for stem in stems.values()}
    for ann in mine["annotations"]:
        if not ann["iscrowd"]:
            expected[stems[ann["image_id"]]].append(rank[ann["category_id"]])
    labels = read_labels(root, "val")
    assert {stem: sorted(int(r[0]) for r in rows) for stem, rows in labels.items()} == {
        stem: sorted(classes) for stem, classes in expected.items()
    }
    assert sum(map(len, expected.values())) > 10


def test_splits_with_different_category_tables_are_refused(
    make_config: Callable[..., Config], tiny_coco: Path, tmp_path: Path
) -> None:
    root = shutil.copytree(tiny_coco, tmp_path / "split-tables")
    val = root / "annotations" / f"instances_{VAL}.json"
    instances = json.loads(val.read_text())
    instances["categories"][1]["name"] = "pedal bike"
    val.write_text(json.dumps(instances))
    with pytest.raises(CocoError, match=f"instances_{VAL}.json: its categories differ .*category id 2: 'pedal bike'"):
        export.run(make_config("workers=1", source=root), "org")
