"""The paper-scale rehearsal (benchmarks/scale) at a small scale: correctness only, no timing assertions.

The generator's counts are checked against COCO 2017's published totals (exactly at s = 1, where only
the plan is drawn, and on the files it writes at s = 0.002, where pycocotools and the prepare stage read
them), and one small rehearsal runs every step through the real stages, the DVC CLI and a real S3
server, then its records are checked against the stages' own outputs.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from anonbench.coco_classes import COCO_CATEGORIES, COCO_ID_TO_NAME
from benchmarks.scale import generate, rehearse

SCALE = 0.002
COCO_2017 = {  # published totals: images, annotations, images with a person, persons, images without annotations
    "train2017": (118287, 860001, 64115, 262465, 1021),
    "val2017": (5000, 36781, 2693, 11004, 48),
}


def test_full_scale_plan_has_coco_2017_totals() -> None:
    for split, (images, anns, with_person, persons, empty) in COCO_2017.items():
        expected = generate.split_totals(split, 1.0)
        assert (expected["images"], expected["annotations"]) == (images, anns)
        assert (expected["images_with_person"], expected["persons"], expected["empty_images"]) == (
            with_person,
            persons,
            empty,
        )
        assert sum(expected["per_class"].values()) == anns
    assert generate.split_totals("train2017", 1.0)["per_class"] == generate.TRAIN_INSTANCES
    plan = generate.plan_split("val2017", 1.0, seed=0)
    assert len(plan.frames) == 5000
    assert len(plan.ann_image) == 36781
    assert len(np.unique(plan.ann_image[plan.ann_category == 1])) == 2693
    assert 5000 - len(np.unique(plan.ann_image)) == 48
    persons = np.bincount(plan.ann_image[plan.ann_category == 1])
    persons = persons[persons > 0]
    assert 0.25 < np.mean(persons == 1) < 0.45  # COCO: about a third of person images show one person
    assert persons.max() >= 20


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("scale") / "coco"
    generate.generate(root, SCALE, seed=0, workers=2)
    return root


def _instances(root: Path, split: str) -> dict[str, Any]:
    return json.loads((root / "annotations" / f"instances_{split}.json").read_text())


def test_small_scale_files_have_the_expected_counts(small: Path) -> None:
    from pycocotools.coco import COCO

    for split in COCO_2017:
        expected = generate.split_totals(split, SCALE)
        data = _instances(small, split)
        images, annotations = data["images"], data["annotations"]
        assert [(c["id"], c["name"]) for c in data["categories"]] == list(COCO_CATEGORIES)
        assert len(images) == expected["images"]
        assert len(annotations) == expected["annotations"]
        assert Counter(COCO_ID_TO_NAME[a["category_id"]] for a in annotations) == {
            name: n for name, n in expected["per_class"].items() if n
        }
        with_person = {a["image_id"] for a in annotations if a["category_id"] == 1}
        assert len(with_person) == expected["images_with_person"]
        assert len({im["id"] for im in images} - {a["image_id"] for a in annotations}) == expected["empty_images"]
        assert len({a["id"] for a in annotations}) == len(annotations)
        sizes = {im["id"]: (im["width"], im["height"]) for im in images}
        crowd = [a for a in annotations if a["iscrowd"]]
        assert len(crowd) == round(0.01 * len(annotations))
        assert sum(a["category_id"] == 1 for a in crowd) >= len(crowd) / 2  # most crowd regions are persons
        for ann in annotations:
            width, height = sizes[ann["image_id"]]
            x, y, w, h = ann["bbox"]
            assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= width + 0.01 and y + h <= height + 0.01
        # COCO's size buckets (area in COCO's 640-px frame; the images are 160 px wide): 41 / 34 / 24 %.
        areas = np.array([a["area"] * (640 / 160) ** 2 for a in annotations if not a["iscrowd"]])
        buckets = [np.mean(areas < 32**2), np.mean((areas >= 32**2) & (areas < 96**2)), np.mean(areas >= 96**2)]
        assert buckets == pytest.approx([0.41, 0.34, 0.24], abs=0.06)
        for ann in crowd:
            assert sum(ann["segmentation"]["counts"]) == ann["segmentation"]["size"][0] * ann["segmentation"]["size"][1]
        coco = COCO(str(small / "annotations" / f"instances_{split}.json"))
        for ann in annotations[:200]:  # a sub-pixel object (about 1 % at 160 px wide) may cover no pixel centre
            assert coco.annToMask(ann).sum() > 0 or ann["area"] < 4
        for image in images:
            with Image.open(small / split / image["file_name"]) as img:
                assert img.format == "JPEG" and img.size == sizes[image["id"]]


def _digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.name != generate.STAMP):
        digest.update(path.relative_to(root).as_posix().encode() + path.read_bytes())
    return digest.hexdigest()


def test_generator_is_deterministic_and_reuses_a_matching_dataset(small: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    generate.generate(again, SCALE, seed=0, workers=1)
    assert _digest(again) == _digest(small)
    stamp = (again / generate.STAMP).stat().st_mtime_ns
    generate.generate(again, SCALE, seed=0, workers=1)
    assert (again / generate.STAMP).stat().st_mtime_ns == stamp
    generate.generate(again, SCALE, seed=1, workers=1)
    assert _digest(again) != _digest(small)


def _one(doc: dict[str, Any], name: str) -> dict[str, Any]:
    """The measurement ``name`` at the test's scale (the `real` step adds others of some stages)."""
    (record,) = (p for p in doc["measurements"][name] if p["key"] == f"{name}/s{SCALE:g}")
    return record


def test_rehearsal_runs_every_step_on_the_real_stages(small: Path, tmp_path: Path) -> None:
    s3 = os.environ.get("CI") == "true" or os.geteuid() == 0 or shutil.which("radosgw") is not None
    data = tmp_path / "scale"
    args = ["--data-dir", str(data), "--results", str(tmp_path / "results"), "--samples", "20"]
    # The `real` step on the small generated set instead of coco-mini, and its 640-px data at the same s.
    args += ["--coco-mini", str(small), "--fullsize-scale", str(SCALE)]
    args += ["--report-grids", "one-size", "--bootstrap-grid", "one-size"]
    for option in ("--scales", "--image-scales", "--eval-scales", "--dvc-scales"):
        args += [option, str(SCALE)]
    doc = rehearse.main(args + ([] if s3 else ["--no-s3"]))

    assert json.loads((tmp_path / "results" / "scale.json").read_text()) == json.loads(json.dumps(doc))
    with Image.open(tmp_path / "results" / "scale.png") as figure:
        assert figure.size[0] > 1000
    counts = generate.split_totals("train2017", SCALE), generate.split_totals("val2017", SCALE)
    images = sum(c["images"] for c in counts)
    for name, record in doc["measurements"].items():
        for point in record:
            if name != "generate":
                assert point["seconds"] > 0 and point["peak_rss_mb"] > 0, name
    prepared = _one(doc, "prepare")["outputs"]
    for split, expected in zip(COCO_2017, counts, strict=True):
        assert prepared[split]["images"] == expected["images"]
        assert prepared[split]["annotations"] == expected["annotations"]
        assert prepared[split]["manifest_counts"]["skipped"] == 0
    assert sum(sum(s.values()) for s in _one(doc, "anonymize")["outputs"].values()) == images
    ssim = _one(doc, "ssim")["outputs"]
    assert [ssim[split]["boxes"] for split in COCO_2017] == [c["annotations"] for c in counts]
    for stage in ("anonymize", "ssim", "export_blur"):  # the `real` step: given images, and 640 px wide
        assert {p["key"] for p in doc["measurements"][stage]} >= {f"{stage}/coco-mini", f"{stage}/s{SCALE:g}-w640"}
    for name in ("export_org", "export_blur"):
        assert sum(s["ok"] for s in _one(doc, name)["outputs"].values()) == images
    assert sum(s["remove"] + s["extend"] for s in _one(doc, "relabel")["outputs"].values()) > 0

    fast, reference = _one(doc, "score_faster_coco_eval")["result"], _one(doc, "score_pycocotools")["result"]
    assert fast["detections"] == 100 * counts[1]["images"]
    assert 0.1 < reference["AP"] < 0.9
    assert fast["AP"] == pytest.approx(reference["AP"], abs=1e-9)
    boot = _one(doc, "bootstrap")["result"]
    assert boot["file_opens"] == {"truth": 1, "predictions": 1}
    assert boot["resamples"] == 20
    assert boot["ap_interval"][0] <= reference["AP"] <= boot["ap_interval"][1]
    reports = {p["key"]: p for p in doc["measurements"]["report"]}
    assert reports["report/one-size"]["evaluations"] == 4 * 4 + 6 * 4
    assert reports["report/one-size-bootstrap"]["bootstrapped"]
    assert all(p["outputs"]["figures"] >= 3 for p in reports.values())

    files = counts[0]["images"]
    assert _one(doc, "dvc_commit_copy")["files"] == files
    assert _one(doc, "dvc_commit_copy")["cache_bytes"] >= _one(doc, "dvc_commit_copy")["bytes"]
    assert _one(doc, "dvc_commit_hardlink")["repository_bytes"] < _one(doc, "dvc_commit_copy")["repository_bytes"]
    assert all(_one(doc, f"dvc_{name}")["up_to_date"] for name in ("status", "repro_noop", "repro_noop_again"))
    if s3:
        assert _one(doc, "dvc_push_s3")["objects_in_bucket"] == files + 1  # every file and the directory listing
    targets = doc["targets"]
    assert targets["bootstrap"]["no_resample_rereads_files"]
    assert set(targets["per_image_stages"]) == {"anonymize", "ssim", "export_org", "export_blur", "relabel"}

    # A rerun measures nothing again: every record is kept in the data folder.
    kept = json.loads((data / "results.json").read_text())
    again = rehearse.main([*args, "--no-s3", "--steps", "prepare,evaluate"])
    assert json.loads((data / "results.json").read_text()) == kept
    assert again["measurements"]["prepare"] == doc["measurements"]["prepare"]
