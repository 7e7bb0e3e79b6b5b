"""The anonymize stage on real coco-mini images: contract, determinism, resume after a kill, bad input."""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import cv2
import mlflow
import numpy as np
import pytest

from anonbench.config import Config
from anonbench.images import read_image
from anonbench.stages import anonymize
from tests.conftest import kill_when
from tests.conftest import variant_digests as digests

REPO = Path(__file__).resolve().parents[2]
VAL, TRAIN = "val2017", "train2017"


def test_variant_split_contract(make_config: Callable[..., Config]) -> None:
    cfg = make_config("anonymize.dilation_px=2", "workers=2")
    anonymize.run(cfg, "mask", splits=[VAL])
    root = cfg.variant_root("mask")
    original = json.loads(cfg.annotation_file("org", VAL).read_text())
    manifest = json.loads((root / f"manifest_{VAL}.json").read_text())
    records = {r["key"]: r for r in manifest["records"]}
    assert sorted(records) == sorted(im["file_name"] for im in original["images"])
    assert manifest["counts"] == {"ok": len(records), "skipped": 0, "error": 0}
    for info in original["images"]:
        stem, details = Path(info["file_name"]).stem, records[info["file_name"]]["details"]
        before = read_image(cfg.image_dir("org", VAL) / info["file_name"])
        after = cv2.imread(str(root / VAL / f"{stem}.png"), cv2.IMREAD_UNCHANGED)
        mask_file = root / "masks" / VAL / f"{stem}.png"
        region = cv2.imread(str(mask_file), cv2.IMREAD_UNCHANGED) > 0 if mask_file.exists() else None
        if details["persons_gt"] == 0:
            assert region is None and (after == before).all(), info["file_name"]
            continue
        assert region is not None and region.sum() == details["anonymized_pixels"]
        assert (after[~region] == before[~region]).all(), f"{info['file_name']} changed outside its mask"
        assert (after[region] == 0).all()
    variant = json.loads(cfg.annotation_file("mask", VAL).read_text())
    assert variant["annotations"] == original["annotations"]
    assert [im["file_name"] for im in variant["images"]] == [
        f"{Path(im['file_name']).stem}.png" for im in original["images"]
    ]
    coverage = json.loads((root / f"coverage_{VAL}.json").read_text())
    assert coverage["images"] == len(records) and 0.9 < coverage["coverage"] <= 1.0
    mlflow.set_tracking_uri(cfg.tracking.resolved_uri)
    runs = mlflow.search_runs(experiment_names=[cfg.tracking.experiment], filter_string="tags.stage = 'anonymize'")
    assert len(runs) == 1 and runs[f"metrics.{VAL}/coverage"][0] == coverage["coverage"]


def test_identical_across_reruns_workers_and_shards(make_config: Callable[..., Config], tiny_coco: Path) -> None:
    one = make_config("workers=1", source=tiny_coco)
    anonymize.run(one, "blur")
    reference = digests(one.variant_root("blur"))
    anonymize.run(one, "blur")  # a rerun with everything done rewrites the same bytes
    assert digests(one.variant_root("blur")) == reference
    sharded = make_config(f"paths.data={one.paths.data.parent / 'sharded'}", "workers=2", source=tiny_coco)
    assert anonymize.run(sharded, "blur", shard=(1, 2)) == [
        sharded.image_dir("blur", split) if kind == "images" else sharded.variant_root("blur") / "masks" / split
        for split in sharded.data.splits
        for kind in ("images", "masks")
    ]  # nothing assembled while shard 0 is missing
    anonymize.run(sharded, "blur", shard=(0, 2))
    assert digests(sharded.variant_root("blur")) == reference


def test_changed_settings_start_the_split_afresh(make_config: Callable[..., Config], tiny_coco: Path) -> None:
    anonymize.run(make_config("workers=1", source=tiny_coco), "mask", splits=[VAL])
    cfg = make_config("workers=1", "anonymize.min_person_px=100000", source=tiny_coco)
    anonymize.run(cfg, "mask", splits=[VAL])
    records = json.loads((cfg.variant_root("mask") / f"manifest_{VAL}.json").read_text())["records"]
    assert all(r["details"]["persons_anonymized"] == 0 for r in records)
    assert not list((cfg.variant_root("mask") / "masks" / VAL).glob("*.png"))  # no mask of the old settings left


def test_resume_after_killing_a_real_run(make_config: Callable[..., Config], tmp_path: Path) -> None:
    reference = make_config(f"paths.data={tmp_path / 'reference'}", "workers=1")
    anonymize.run(reference, "pixelate", splits=[TRAIN])
    cfg = make_config("workers=1")
    records = cfg.variant_root("pixelate") / "records" / TRAIN
    command = [sys.executable, "-m", "anonbench", "anonymize", "--method", "pixelate", "--split", TRAIN]
    command += ["--params", str(REPO / "params.yaml"), "--set", "workers=1", "--set", f"paths.data={cfg.paths.data}"]
    command += ["--set", f"tracking.uri={cfg.tracking.uri}"]
    kill_when(command, tmp_path, lambda: len(list(records.glob("*.json"))) >= 5)
    done = sorted(records.glob("*.json"))
    total = len(json.loads(cfg.annotation_file("org", TRAIN).read_text())["images"])
    assert 5 <= len(done) < total, "the run was not killed mid-way"
    assert not (cfg.variant_root("pixelate") / f"manifest_{TRAIN}.json").exists()
    finished = {p.stem: (cfg.image_dir("pixelate", TRAIN) / f"{p.stem}.png").stat().st_ino for p in done}

    anonymize.run(cfg, "pixelate", splits=[TRAIN])
    assert digests(cfg.variant_root("pixelate")) == digests(reference.variant_root("pixelate"))
    after = {stem: (cfg.image_dir("pixelate", TRAIN) / f"{stem}.png").stat().st_ino for stem in finished}
    assert after == finished, "images completed before the kill were redone"


@pytest.fixture
def bad_coco(tiny_coco: Path, tmp_path: Path) -> Path:
    """tiny_coco's val split with one kind of bad input per image."""
    root = Path(shutil.copytree(tiny_coco, tmp_path / "bad-coco"))
    path = root / "annotations" / f"instances_{VAL}.json"
    instances = json.loads(path.read_text())
    images = sorted(instances["images"], key=lambda im: im["id"])
    degenerate, small, whole, crowd, unreadable = images[:5]
    next_id = max(a["id"] for a in instances["annotations"]) + 1

    def add(image: dict[str, object], **fields: object) -> None:
        nonlocal next_id
        base = {"id": next_id, "image_id": image["id"], "category_id": 1, "iscrowd": 0, "area": 1.0}
        instances["annotations"].append({**base, **fields})
        next_id += 1

    add(degenerate, segmentation=[], bbox=[10, 10, 40, 60])
    add(degenerate, segmentation=[[5.0, 5.0]], bbox=[5, 5, 0, 0])
    instances["annotations"] = [
        a for a in instances["annotations"] if not (a["image_id"] == small["id"] and a["category_id"] == 1)
    ]
    add(small, segmentation=[[20.0, 20.0, 26.0, 20.0, 26.0, 26.0, 20.0, 26.0]], bbox=[20, 20, 6, 6])
    w, h = float(whole["width"]), float(whole["height"])
    add(whole, segmentation=[[0.0, 0.0, w, 0.0, w, h, 0.0, h]], bbox=[0, 0, w, h])
    rectangle = np.zeros((crowd["height"], crowd["width"]), dtype=np.uint8)
    rectangle[30:-30, 30:-30] = 1
    flat = rectangle.flatten(order="F")  # COCO's uncompressed RLE: column-major runs, zeros first
    counts = np.diff(np.r_[0, np.flatnonzero(np.diff(flat)) + 1, flat.size]).tolist()
    size = [crowd["height"], crowd["width"]]
    bbox = [30, 30, crowd["width"] - 60, crowd["height"] - 60]
    add(crowd, segmentation={"size": size, "counts": counts}, bbox=bbox, iscrowd=1)
    (root / VAL / unreadable["file_name"]).write_bytes(b"not a jpeg")
    path.write_text(json.dumps(instances))
    return root


def test_bad_input_gets_a_status_and_a_count(make_config: Callable[..., Config], bad_coco: Path) -> None:
    instances = json.loads((bad_coco / "annotations" / f"instances_{VAL}.json").read_text())
    degenerate, small, whole, crowd, unreadable = (
        im["file_name"] for im in sorted(instances["images"], key=lambda im: im["id"])[:5]
    )
    strict = make_config(f"paths.data={bad_coco.parent / 'strict'}", "workers=1", source=bad_coco)
    with pytest.raises(anonymize.AnonymizeError, match=unreadable):
        anonymize.run(strict, "blur", splits=[VAL])

    cfg = make_config("policy=skip", "workers=1", source=bad_coco)
    anonymize.run(cfg, "blur", splits=[VAL])
    root = cfg.variant_root("blur")
    records = {r["key"]: r for r in json.loads((root / f"manifest_{VAL}.json").read_text())["records"]}
    assert records[degenerate]["details"]["persons_degenerate"] == 1
    assert records[degenerate]["details"]["persons_empty"] == 1
    assert records[small]["status"] == "skipped" and "under 8 px" in records[small]["reason"]
    assert (
        records[small]["details"]["persons_small"] == 1
        and not (root / "masks" / VAL / f"{Path(small).stem}.png").exists()
    )
    assert records[whole]["details"]["full_image"] and records[whole]["details"]["anonymized_fraction"] == 1.0
    assert records[crowd]["details"]["crowd_regions"] >= 1
    assert records[unreadable]["status"] == "error" and "not a decodable image" in records[unreadable]["reason"]
    summary = json.loads((root / f"coverage_{VAL}.json").read_text())
    assert summary["status"] == {"ok": len(records) - 2, "skipped": 1, "error": 1}
    assert (summary["persons_degenerate"], summary["persons_empty"], summary["full_image_masks"]) == (1, 1, 1)
    assert summary["persons_small"] >= 1 and summary["crowd_regions"] >= 1
    variant = json.loads(cfg.annotation_file("blur", VAL).read_text())
    assert unreadable not in {im["file_name"] for im in variant["images"]}
    assert len(variant["images"]) == len(records) - 1  # the unreadable image is left out, and listed
    crowd_mask = cv2.imread(str(root / "masks" / VAL / f"{Path(crowd).stem}.png"), cv2.IMREAD_UNCHANGED) > 0
    assert crowd_mask[40:-40, 40:-40].all() and not np.isnan(records[crowd]["details"]["coverage"])
    # A failed image is not "done": a strict rerun over the same records stops on it again.
    with pytest.raises(anonymize.AnonymizeError, match=unreadable):
        anonymize.run(cfg.model_copy(update={"policy": "strict"}), "blur", splits=[VAL])
