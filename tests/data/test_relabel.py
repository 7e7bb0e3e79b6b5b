"""Relabel stage on a real masked variant of coco-mini: proposals, review round-trips, AP deltas.

The variant and its SSIM tables come from the anonymize and ssim stages on tiny-coco's val split.
"""

from __future__ import annotations

import copy
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from anonbench.analysis.stale_labels import extension_proposals
from anonbench.anonymizers.masks import dilate, paint_record
from anonbench.coco import CocoError, indexed
from anonbench.config import Config, load_config
from anonbench.images import encode_image, read_image
from anonbench.stages import anonymize, relabel, ssim
from tests.conftest import PARAMS

VARIANT = "mask"


@pytest.fixture(scope="module")
def masked(tmp_path_factory: pytest.TempPathFactory, tiny_coco: Path, mlflow_template: Path) -> Path:
    """The mask variant of tiny-coco's val split with its SSIM table, made once per module."""
    root = tmp_path_factory.mktemp("masked")
    db = shutil.copyfile(mlflow_template, root / "mlflow.db")
    cfg = load_config(PARAMS, None, [f"paths.data={root / 'data'}", f"tracking.uri=sqlite:///{db}", "workers=1"])
    cfg.source_root.parent.mkdir(parents=True)
    cfg.source_root.symlink_to(tiny_coco, target_is_directory=True)
    anonymize.run(cfg, VARIANT, splits=[cfg.data.val_split])
    ssim.run(cfg, VARIANT, splits=[cfg.data.val_split])
    return root / "data"


@pytest.fixture
def cfg(make_config: Callable[..., Config], masked: Path, tiny_coco: Path, tmp_path: Path, mlflow_db: Path) -> Config:
    for folder in ("variants", "ssim"):
        shutil.copytree(masked / folder, tmp_path / "data" / folder)
    return make_config("workers=1", source=tiny_coco)


def read(path: Path) -> Any:
    return json.loads(path.read_text())


def boxes(instances: dict[str, Any]) -> dict[int, list[float]]:
    return {a["id"]: a["bbox"] for a in instances["annotations"]}


def test_automatic_relabel_applies_every_proposal(cfg: Config) -> None:
    paths = relabel.run(cfg, VARIANT)
    val = cfg.data.val_split
    out = relabel.output_dir(cfg, VARIANT)
    doc = read(out / f"proposals_{val}.json")
    proposals = doc["proposals"]
    assert doc["counts"]["remove"] >= 1
    assert doc["counts"]["extend"] == 0, "a mask on ground-truth masks covers the labelled person, no larger"
    for p in proposals:
        assert p["reason"] and p["evidence"]["old_bbox"] and {"ssim", "inside_anonymized"} <= p["evidence"].keys()
        if p["action"] == "remove":
            assert p["evidence"]["inside_anonymized"] >= 0.5 and p["evidence"]["ssim"] < 0.5
            assert p["category"] != "person"
    original = boxes(read(cfg.annotation_file(VARIANT, val)))
    corrected = boxes(read(relabel.corrected_file(cfg, VARIANT, val)))
    removed = {p["ann_id"] for p in proposals if p["action"] == "remove"}
    extended = {p["ann_id"]: p["evidence"]["new_bbox"] for p in proposals if p["action"] == "extend"}
    assert set(corrected) == set(original) - removed
    assert all(corrected[i] == (extended.get(i) or original[i]) for i in corrected)
    tasks = read(out / f"labelstudio_{val}.json")
    assert len(tasks) == doc["counts"]["images"]
    review = read(out / f"review_{val}.json")
    assert review["counts"]["accepted"] == len(proposals) and review["corrections"] == "auto-accepted"
    before = {p: p.read_bytes() for p in paths}
    relabel.run(cfg, VARIANT)
    assert {p: p.read_bytes() for p in paths} == before, "a rerun must be byte-identical"


def simulated_review(tasks: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """What a reviewer's Label Studio JSON export looks like after some edits, and what was done."""
    export, done = [], {"rejected_removal": None, "moved": None, "deleted": None, "unreviewed": None}
    for index, task in enumerate(tasks):
        proposed, original = (copy.deepcopy(p["result"]) for p in task["predictions"])
        exported = {**task, "id": index + 1, "meta": {}, "created_at": "2026-11-20T10:00:00Z"}
        if index == len(tasks) - 1 and len(tasks) > 1:
            exported["annotations"] = []  # nobody got to this one
            done["unreviewed"] = task["data"]["image_id"]
            export.append(exported)
            continue
        ids = {r["id"] for r in proposed}
        dropped = [r for r in original if r["id"] not in ids]
        others = list(proposed)  # boxes the reviewer may still move or delete
        if dropped and done["rejected_removal"] is None:
            proposed.append(dropped[0])  # the reviewer restores a box the proposal removed
            done["rejected_removal"] = int(dropped[0]["id"][1:])
        if others and done["moved"] is None:
            others[0]["value"]["x"] += 2.0  # drags a box
            done["moved"] = int(others[0]["id"][1:])
            if len(others) > 1:
                proposed.remove(others[-1])
                done["deleted"] = int(others[-1]["id"][1:])
        proposed.append({"id": "Xy12Ab", "type": "rectanglelabels", "from_name": "label", "to_name": "image",
                         "original_width": 640, "original_height": 480, "origin": "manual",
                         "value": {"x": 1.0, "y": 1.0, "width": 5.0, "height": 5.0, "rotation": 0,
                                   "rectanglelabels": ["sports ball"]}})  # fmt: skip
        exported["annotations"] = [
            {"id": 90, "result": [], "was_cancelled": True, "updated_at": "2026-11-21T09:00:00Z"},
            {"id": 91, "completed_by": 1, "result": proposed, "was_cancelled": False, "ground_truth": False,
             "updated_at": "2026-11-21T10:00:00Z", "lead_time": 12.5, "task": index + 1, "project": 3},
        ]  # fmt: skip
        export.append(exported)
    return export, done


def test_label_studio_round_trip(cfg: Config, tmp_path: Path) -> None:
    relabel.run(cfg, VARIANT)
    val = cfg.data.val_split
    out = relabel.output_dir(cfg, VARIANT)
    export, done = simulated_review(read(out / f"labelstudio_{val}.json"))
    assert done["rejected_removal"] and done["moved"] and done["unreviewed"], "the case must exercise every edit"
    reviewed = tmp_path / "project-3-at-2026-11-21.json"
    reviewed.write_text(json.dumps(export))
    relabel.run(cfg, VARIANT, reviewed=reviewed)

    assert relabel.review_file(cfg, VARIANT, val).read_bytes() == reviewed.read_bytes()
    variant = read(cfg.annotation_file(VARIANT, val))
    original = boxes(variant)
    corrected = read(relabel.corrected_file(cfg, VARIANT, val))
    final = boxes(corrected)
    review = read(out / f"review_{val}.json")
    assert review["corrections"] == "reviewed"
    assert done["rejected_removal"] in final and final[done["rejected_removal"]] == original[done["rejected_removal"]]
    assert review["decisions"][f"{done['rejected_removal']}:remove"] == "rejected"
    assert final[done["moved"]] != original[done["moved"]]
    assert done["deleted"] is None or done["deleted"] not in final
    balls = [a for a in corrected["annotations"] if a["category_id"] == 37 and a["id"] not in original]
    assert len(balls) == len(export) - 1 and review["added"] == sorted(a["id"] for a in balls)
    assert all(b["bbox"] == pytest.approx([6.4, 4.8, 32.0, 24.0]) for b in balls)  # percent of 640 x 480
    unreviewed = [a for a in variant["annotations"] if a["image_id"] == done["unreviewed"]]
    assert all(final[a["id"]] == a["bbox"] for a in unreviewed), "an unreviewed image keeps its ground truth"
    assert review["unreviewed_images"] == [done["unreviewed"]]


def test_cvat_coco_round_trip_equals_accepting_everything(cfg: Config, tmp_path: Path) -> None:
    relabel.run(cfg, VARIANT)
    val = cfg.data.val_split
    out = relabel.output_dir(cfg, VARIANT)
    automatic = relabel.corrected_file(cfg, VARIANT, val).read_bytes()
    cvat = read(out / f"cvat_{val}.json")
    # CVAT renumbers images and annotations from 1 and rounds nothing we rely on.
    new_image = {im["id"]: n for n, im in enumerate(cvat["images"], start=1)}
    cvat["images"] = [{**im, "id": new_image[im["id"]]} for im in cvat["images"]]
    cvat["annotations"] = [
        {**a, "id": n, "image_id": new_image[a["image_id"]], "attributes": {"occluded": False}}
        for n, a in enumerate(cvat["annotations"], start=1)
    ]
    reviewed = tmp_path / "instances_default.json"
    reviewed.write_text(json.dumps(cvat))
    relabel.run(cfg, VARIANT, reviewed=reviewed)
    assert relabel.corrected_file(cfg, VARIANT, val).read_bytes() == automatic


def test_review_that_does_not_fit_is_not_kept(cfg: Config, tmp_path: Path) -> None:
    kept = relabel.review_file(cfg, VARIANT, cfg.data.val_split)
    bad = tmp_path / "export.json"
    bad.write_text(json.dumps([{"data": {}, "annotations": []}]))
    with pytest.raises(CocoError, match=r"no data\.image_id"):
        relabel.run(cfg, VARIANT, reviewed=bad)
    assert not kept.exists(), "a later run without --reviewed must not read the bad review"
    relabel.run(cfg, VARIANT)


def fake_evaluation(
    cfg: Config, model_id: str, truth: dict[str, Any] | None, sure: frozenset[int] = frozenset()
) -> None:
    """An evaluate-stage output whose predictions are ``truth``'s boxes, scored 1.0 for the annotation ids in
    ``sure`` and 0.9 for the rest; void (no detections) when ``truth`` is None."""
    folder = cfg.paths.metrics / "eval" / f"{model_id}_on_{VARIANT}"
    folder.mkdir(parents=True)
    predictions = [
        {
            "image_id": a["image_id"],
            "category_id": a["category_id"],
            "bbox": a["bbox"],
            "score": 1.0 if a["id"] in sure else 0.9,
        }
        for a in (truth or {"annotations": []})["annotations"]
        if not a.get("iscrowd")
    ]
    (folder / "predictions.json").write_text(json.dumps(predictions))
    metrics = {"model_id": model_id, "train_data": "org", "model_size": "n", "eval_data": VARIANT,
               "combination": f"org on {VARIANT}", "mlflow_run_id": "0123abcd", "void": truth is None,
               "void_reason": "no detections" if truth is None else None}  # fmt: skip
    (folder / "metrics.json").write_text(json.dumps(metrics))


def test_models_scored_against_both_ground_truths(cfg: Config) -> None:
    relabel.run(cfg, VARIANT)
    val = cfg.data.val_split
    proposals = read(relabel.output_dir(cfg, VARIANT) / f"proposals_{val}.json")["proposals"]
    removed_ids = frozenset(p["ann_id"] for p in proposals if p["action"] == "remove")
    # A stale model still finds the objects that anonymization removed, and is surest of them.
    fake_evaluation(cfg, "org-n", read(cfg.annotation_file(VARIANT, val)), sure=removed_ids)
    fake_evaluation(cfg, "ft-neck", read(relabel.corrected_file(cfg, VARIANT, val)))
    relabel.run(cfg, VARIANT)
    stale = read(relabel.metrics_file(cfg, "org-n", VARIANT))
    fresh = read(relabel.metrics_file(cfg, "ft-neck", VARIANT))
    assert stale["original"]["AP"] == pytest.approx(1.0) and stale["corrected"]["AP"] < 1.0
    assert fresh["corrected"]["AP"] == pytest.approx(1.0) and fresh["delta"]["AP"]["value"] > 0
    for doc in (stale, fresh):
        low, high = doc["delta"]["AP"]["ci"]
        assert low <= doc["delta"]["AP"]["value"] <= high
        assert doc["eval_mlflow_run_id"] == "0123abcd" and doc["mlflow_run_id"]
        assert set(doc["original"]) >= {"AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "per_class"}
    removed = {p["category"] for p in read(relabel.output_dir(cfg, VARIANT) / f"proposals_{val}.json")["proposals"]
               if p["action"] == "remove"}  # fmt: skip
    # A class that lost its only box drops out of COCO's mean (None); one that lost some scores lower.
    changes = [stale["delta"]["per_class"][c]["AP"]["value"] for c in removed]
    assert any(change is not None and change < 0 for change in changes)
    before = relabel.metrics_file(cfg, "org-n", VARIANT).read_bytes()
    relabel.run(cfg, VARIANT)
    assert relabel.metrics_file(cfg, "org-n", VARIANT).read_bytes() == before, "unchanged inputs are not rescored"


def test_a_void_evaluation_stays_void(cfg: Config) -> None:
    relabel.run(cfg, VARIANT)
    fake_evaluation(cfg, "blur-n", None)
    relabel.run(cfg, VARIANT)
    doc = read(relabel.metrics_file(cfg, "blur-n", VARIANT))
    assert (doc["void"], doc["void_reason"]) == (True, "no detections")
    assert not {"original", "corrected", "delta"} & doc.keys(), "a void evaluation has no numbers to compare"
    assert doc["model_id"] == "blur-n" and doc["eval_mlflow_run_id"] == "0123abcd"


@pytest.mark.parametrize("method", ["blur", "pixelate", "mask"])
def test_classic_methods_get_no_extension_proposals(
    make_config: Callable[..., Config], tiny_coco: Path, mlflow_db: Path, method: str
) -> None:
    """The classic methods anonymize the ground-truth masks grown by the dilation and nothing more, so no
    person is larger than labelled; the old comparison with the boxes proposed an extension for nearly every
    person (the dilation itself), which this test would catch."""
    cfg = make_config("workers=1", source=tiny_coco)
    val = cfg.data.val_split
    anonymize.run(cfg, method, splits=[val])
    ssim.run(cfg, method, splits=[val])
    instances = read(cfg.annotation_file(method, val))
    with indexed(cfg.annotation_file(method, val)) as index:
        proposals, record = relabel.propose(cfg, method, val, index)
    assert record["images_with_person"] > 0 and record["images_with_person_without_mask"] == 0
    assert [p for p in proposals if p.action == "extend"] == []
    masks = cfg.variant_root(method) / "masks" / val
    persons = [a for a in instances["annotations"] if a["category_id"] == 1]
    by_image = {im["id"]: Path(im["file_name"]).stem for im in instances["images"]}
    old_rule = [
        p
        for image_id in sorted({a["image_id"] for a in persons})
        for p in extension_proposals(
            [a for a in persons if a["image_id"] == image_id],
            read_image(masks / f"{by_image[image_id]}.png")[..., 0] > 127,
            cfg.relabel.min_extend_px,
        )
    ]
    assert len(old_rule) >= 3


def extensions_of(tmp_path: Path, record: np.ndarray, generated: bool) -> list[Any]:
    """relabel's extension check of one synthetic image whose one labelled person is LABEL."""
    coco = {"images": [{"id": 1, "file_name": "a.jpg", "height": 120, "width": 100}],
            "annotations": [{"id": 7, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": 2100.0,
                             "bbox": [30.0, 20.0, 30.0, 70.0], "segmentation": [LABEL]}],
            "categories": [{"id": 1, "name": "person"}]}  # fmt: skip
    (tmp_path / "instances.json").write_text(json.dumps(coco))
    (tmp_path / "a.png").write_bytes(encode_image(record if generated else record.astype(np.uint8) * 255))
    with indexed(tmp_path / "instances.json") as index:
        job = relabel._ExtendJob(tmp_path / "a.png", 1, index.lookup, 1, generated, 3, 1.0)
        return relabel._extend_image(job)


LABEL = [30.0, 20.0, 60.0, 20.0, 60.0, 90.0, 30.0, 90.0]


def test_a_generated_person_extends_its_box_and_dp2s_own_dilation_does_not(tmp_path: Path) -> None:
    """DP2's paint record: a generated person larger than the labelled one (an arm up and to the right)
    grows the box to exactly that person; DP2's dilated paint region around the labelled person alone
    (radius 10, about what DP2's radius-4 disk in its 288x160 crop is for a large person) grows nothing,
    where the classic reading of that region (beyond the ground truth grown by 3 px) would have."""
    label = mask_utils.decode(mask_utils.frPyObjects([LABEL], 120, 100)).any(axis=2)
    larger = label.copy()
    larger[12:60, 40:71] = True
    assert not larger[:12].any() and not larger[:, 71:].any()
    (proposal,) = extensions_of(tmp_path, paint_record(dilate(larger, 10), larger), generated=True)
    assert (proposal.ann_id, proposal.action) == (7, "extend")
    assert proposal.evidence["new_bbox"] == [30.0, 12.0, 41.0, 78.0]
    assert proposal.evidence["growth_px"] == {"left": 0.0, "top": 8.0, "right": 11.0, "bottom": 0.0}
    ring = dilate(label, 10)
    assert extensions_of(tmp_path, paint_record(ring, label), generated=True) == []
    assert len(extensions_of(tmp_path, ring, generated=False)) == 1, "the dilation ring as read before"
