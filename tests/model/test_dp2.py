"""DeepPrivacy2's real code path on coco-mini, with untrained generators (marker dp2: .venv-dp2, make test).

`untrained: true` builds DP2's real generators from its configs with random weights (no checkpoint
can be had here), so its pixels are noise; where it writes, what it leaves alone, its size filter
and its determinism are DP2's own. The checks here are independent of DP2's code: person masks
decoded with pycocotools, DP2's expanded boxes as DP2 reports them, pixels compared as decoded.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import pickle
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import mlflow
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from anonbench.analysis.stale_labels import extension_proposals
from anonbench.anonymizers import container
from anonbench.anonymizers.dp2 import STUDY_CONFIG, Dp2Anonymizer, Dp2Output, Dp2Unavailable, repo_dir
from anonbench.anonymizers.dp2_weights import WeightsError, lay_out, required
from anonbench.anonymizers.masks import dilate, person_masks, read_paint_record
from anonbench.coco import indexed
from anonbench.config import Config, DeepPrivacy2, load_config
from anonbench.images import read_image
from anonbench.stages import anonymize, privacy, relabel
from tests.conftest import DP2_UNTRAINED_GT, PARAMS, coco_slice

pytestmark = pytest.mark.dp2
VAL = "val2017"
METHOD = "dp2_fullbody"
UNTRAINED_GT = ("anonymize.dp2.mode=gt", "anonymize.dp2.untrained=true", "policy=strict")
# Persons of every size, one to two an image: 346x374 down to 3x3 px (the smallest are under DP2's
# size filter, an expanded box of at least 32x32), and two images without a person.
WITH_PERSONS = [
    "000000085329.jpg",
    "000000386912.jpg",
    "000000143931.jpg",
    "000000322864.jpg",
    "000000460347.jpg",
    "000000522713.jpg",
]
WITHOUT = ["000000006818.jpg", "000000037777.jpg"]
# DP2 dilates in its 288 x 160 crop by int(sqrt(288 * 160) * 0.02) = 4 px; back in the image that is
# 4 crop pixels times the crop's scale, plus a crop pixel for the nearest-neighbour resize.
DILATION_CROP_PX = 4 + 1
# Persons passing / failing DP2's size filter per image (expanded box of at least 32x32, FB_cse.py), from
# DP2's own box expansion of the ground-truth masks: 4 pass (346x374 down to 26x19 px: its expanded box is
# 27x48) and 4 fail (15x28 px, expanded to 17x30, down to 3x3).
SIZE_FILTER = {
    "000000085329.jpg": (1, 0),
    "000000386912.jpg": (1, 0),
    "000000143931.jpg": (1, 0),
    "000000322864.jpg": (0, 1),
    "000000460347.jpg": (1, 1),
    "000000522713.jpg": (0, 2),
}


@pytest.fixture(scope="module")
def slice_coco(coco_mini: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return coco_slice(coco_mini, tmp_path_factory.mktemp("dp2-coco"), {VAL: WITH_PERSONS + WITHOUT})


@pytest.fixture(scope="module")
def module_monkeypatch() -> Iterator[pytest.MonkeyPatch]:
    with pytest.MonkeyPatch.context() as patch:
        yield patch


@pytest.fixture(scope="module")
def calls(module_monkeypatch: pytest.MonkeyPatch) -> list[tuple[np.ndarray, Dp2Output]]:
    """Every image that reaches the adapter, with DP2's answer (a spy around the real call)."""
    seen: list[tuple[np.ndarray, Dp2Output]] = []
    real = Dp2Anonymizer.__call__

    def spy(self: Dp2Anonymizer, image: np.ndarray, masks: Any, seed: int) -> Dp2Output:
        out = real(self, image, masks, seed)
        seen.append((image.copy(), out))
        return out

    module_monkeypatch.setattr(Dp2Anonymizer, "__call__", spy)
    return seen


def settings(tmp: Path) -> list[str]:
    """Overrides for an untrained gt run writing under ``tmp``."""
    return [f"paths.data={tmp / 'data'}", f"tracking.uri=sqlite:///{tmp / 'mlflow.db'}", *UNTRAINED_GT]


def config(tmp: Path, source: Path, *overrides: str) -> Config:
    """The real params.yaml with outputs under ``tmp`` and ``source`` as the original dataset."""
    cfg = load_config(PARAMS, None, [*settings(tmp), *overrides])
    cfg.source_root.parent.mkdir(parents=True, exist_ok=True)
    cfg.source_root.symlink_to(source, target_is_directory=True)
    return cfg


@pytest.fixture(scope="module")
def run(
    slice_coco: Path, tmp_path_factory: pytest.TempPathFactory, calls: list[tuple[np.ndarray, Dp2Output]]
) -> Config:
    """The anonymize stage with dp2_fullbody, mode gt, untrained, on the slice (val)."""
    cfg = config(tmp_path_factory.mktemp("dp2-run"), slice_coco)
    anonymize.run(cfg, METHOD, splits=[VAL])
    return cfg


def persons(coco: Path) -> dict[str, list[tuple[np.ndarray, list[float]]]]:
    """Ground-truth person masks (pycocotools) and boxes per file name."""
    instances = json.loads((coco / "annotations" / f"instances_{VAL}.json").read_text())
    names = {im["id"]: im for im in instances["images"]}
    out: dict[str, list[tuple[np.ndarray, list[float]]]] = {im["file_name"]: [] for im in instances["images"]}
    for ann in instances["annotations"]:
        if ann["category_id"] != 1:
            continue
        im = names[ann["image_id"]]
        rle = mask_utils.merge(mask_utils.frPyObjects(ann["segmentation"], im["height"], im["width"]))
        out[im["file_name"]].append((mask_utils.decode(rle).astype(bool), ann["bbox"]))
    return out


def manifest(cfg: Config) -> dict[str, dict[str, Any]]:
    data = json.loads((cfg.variant_root(METHOD) / f"manifest_{VAL}.json").read_text())
    return {r["key"]: r for r in data["records"]}


def dilated(mask: np.ndarray, box: np.ndarray) -> np.ndarray:
    """A person's mask grown by DP2's dilation at the scale of its crop box."""
    scale = max((box[3] - box[1]) / 288, (box[2] - box[0]) / 160)
    radius = math.ceil(DILATION_CROP_PX * scale) + 1
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1,) * 2)
    return cv2.dilate(mask.astype(np.uint8), kernel).astype(bool)


def test_the_slice_spans_person_sizes(slice_coco: Path) -> None:
    sizes = [bbox[2] * bbox[3] for name in WITH_PERSONS for _, bbox in persons(slice_coco)[name]]
    assert len(WITH_PERSONS) >= 5 and len(WITHOUT) >= 2
    assert max(sizes) > 200 * 200 and min(sizes) < 10 * 10


def test_person_free_images_are_copied_and_never_reach_dp2(
    run: Config, slice_coco: Path, calls: list[tuple[np.ndarray, Dp2Output]]
) -> None:
    records = manifest(run)
    for name in WITHOUT:
        copy = run.image_dir(METHOD, VAL) / name
        assert copy.read_bytes() == (slice_coco / VAL / name).read_bytes(), name
        assert records[name]["status"] == "ok" and records[name]["details"]["copied"] is True
        assert not (run.variant_root(METHOD) / "masks" / VAL / f"{Path(name).stem}.png").exists()
    reached = {hashlib.sha256(image.tobytes()).hexdigest() for image, _ in calls}
    originals = {
        name: hashlib.sha256(read_image(slice_coco / VAL / name).tobytes()).hexdigest()
        for name in WITH_PERSONS + WITHOUT
    }
    assert reached == {originals[name] for name in WITH_PERSONS}
    variant = json.loads(run.annotation_file(METHOD, VAL).read_text())
    assert sorted(im["file_name"] for im in variant["images"]) == sorted(
        [f"{Path(n).stem}.png" for n in WITH_PERSONS] + WITHOUT
    )


def passes_size_filter(mask: np.ndarray) -> bool:
    """Whether DP2's own box expansion and size filter (FB_cse.py's settings) keep a ground-truth person."""
    import torch
    from dp2.detection.box_utils import get_expanded_bbox, include_box
    from dp2.detection.utils import masks_to_boxes
    from tops.config import LazyConfig

    repo = repo_dir(DeepPrivacy2())
    post = LazyConfig.load(str(repo / STUDY_CONFIG)).detector.cse_post_process_cfg
    segmentation = torch.from_numpy(mask[None])
    height, width = post.target_imsize
    box = get_expanded_bbox(
        masks_to_boxes(segmentation)[0], mask.shape, segmentation[0], **post.exp_bbox_cfg,
        target_aspect_ratio=height / width,
    )  # fmt: skip
    return bool(include_box(box, imshape=mask.shape, **post.exp_bbox_filter))


def test_size_filter_counts_are_dp2s_own(run: Config, slice_coco: Path) -> None:
    truth = persons(slice_coco)
    expected = {name: (sum(map(passes_size_filter, masks)), sum(not passes_size_filter(m) for m in masks))
                for name in WITH_PERSONS for masks in [[mask for mask, _ in truth[name]]]}  # fmt: skip
    assert expected == SIZE_FILTER
    records = manifest(run)
    details = {name: records[name]["details"] for name in WITH_PERSONS}
    found = {name: (d["persons_anonymized"], d["persons_below_size_filter"]) for name, d in details.items()}
    assert found == SIZE_FILTER
    for name, (kept, _) in SIZE_FILTER.items():
        assert records[name]["status"] == ("ok" if kept else "skipped"), name
    coverage = json.loads((run.variant_root(METHOD) / f"coverage_{VAL}.json").read_text())
    assert (coverage["persons_anonymized"], coverage["persons_below_size_filter"]) == (4, 4)


def test_dp2_writes_only_inside_its_boxes_and_the_dilated_persons(
    run: Config, slice_coco: Path, calls: list[tuple[np.ndarray, Dp2Output]]
) -> None:
    by_image = {hashlib.sha256(image.tobytes()).hexdigest(): out for image, out in calls}
    truth = persons(slice_coco)
    for name in WITH_PERSONS:
        before = read_image(slice_coco / VAL / name)
        after = cv2.imread(str(run.image_dir(METHOD, VAL) / f"{Path(name).stem}.png"), cv2.IMREAD_COLOR)
        out = by_image[hashlib.sha256(before.tobytes()).hexdigest()]
        assert (after == out.image).all(), f"{name}: the written PNG is not DP2's output"
        changed = (after != before).any(axis=2)
        inside_boxes = np.zeros(changed.shape, dtype=bool)
        for x0, y0, x1, y1 in out.boxes:
            inside_boxes[max(y0, 0) : max(y1, 0), max(x0, 0) : max(x1, 0)] = True
        assert not (changed & ~inside_boxes).any(), f"{name}: pixels changed outside DP2's expanded boxes"
        allowed, kept = np.zeros(changed.shape, dtype=bool), np.zeros(changed.shape, dtype=bool)
        for mask, bbox in truth[name]:
            share = changed[mask].mean()
            if not passes_size_filter(mask):
                assert share == 0, f"{name}: a {bbox[2]:.0f}x{bbox[3]:.0f} person under DP2's size filter changed"
                continue
            assert share >= 0.9, f"{name}: only {share:.1%} of a {bbox[2]:.0f}x{bbox[3]:.0f} person changed"
            x, y, w, h = bbox
            around = [b for b in out.boxes if b[0] <= x and b[1] <= y and b[2] >= x + w and b[3] >= y + h]
            box = min(around, key=lambda b: (b[2] - b[0]) * (b[3] - b[1]))  # this person's crop box
            allowed |= dilated(mask, box)
            kept |= mask
        assert not (changed & ~allowed).any(), f"{name}: pixels changed outside the dilated person masks"
        # The paint record: DP2 repaints all of its region (noise equals the original by chance only) and
        # nothing else; its persons are exactly the ground-truth persons DP2 kept.
        record = run.variant_root(METHOD) / "paint" / VAL / f"{Path(name).stem}.png"
        if not kept.any():
            assert not record.exists(), name
            continue
        painted, generated = read_paint_record(read_image(record))
        assert not (changed & ~painted).any() and changed[painted].mean() > 0.99, name
        assert not (painted & ~allowed).any(), name
        assert (generated == kept).all(), f"{name}: the recorded persons are not the kept ground truth"


def test_untrained_gt_gets_no_extension_from_dp2s_dilation(run: Config) -> None:
    """Relabel's extension check on the run: the old rule (the changed pixels beyond the ground truth grown by
    anonymize.dilation_px) proposed one for every large person, from DP2's dilation alone."""
    val = run.annotation_file(METHOD, VAL)
    with indexed(val) as index:
        person = 1
        jobs = [
            relabel._ExtendJob(
                run.variant_root(METHOD) / "paint" / VAL / f"{Path(im['file_name']).stem}.png",
                im["id"], index.lookup, person, True, run.anonymize.dilation_px, run.relabel.min_extend_px,
            )
            for im in index.images
        ]  # fmt: skip
        jobs = [job for job in jobs if job.mask.is_file()]
        assert len(jobs) == 4
        assert [p for job in jobs for p in relabel._extend_image(job)] == []
        old = []
        for job in jobs:
            annotations = [a for a in index.lookup.of(job.image_id) if a["category_id"] == person]
            changed = read_image(run.variant_root(METHOD) / "masks" / VAL / job.mask.name)[..., 0] > 127
            truth = person_masks(annotations, person, *changed.shape, 0, 0).gt
            explained = dilate(truth, run.anonymize.dilation_px)
            old += extension_proposals(annotations, changed, run.relabel.min_extend_px, explained)
    assert len(old) == 3  # the three largest persons, by up to 11.4, 7.9 and 3.3 px


def test_the_privacy_audit_runs_on_dp2s_output(run: Config) -> None:
    tmp = run.paths.data.parent
    overrides = [f"paths.metrics={tmp / 'metrics'}", "privacy.upsample=1", "workers=1"]
    cfg = load_config(PARAMS, None, [*settings(tmp), *overrides])
    privacy.run(cfg, METHOD)
    metrics = json.loads((tmp / "metrics" / "privacy" / f"{METHOD}.json").read_text())
    faces = pd.read_parquet(cfg.paths.data / "privacy" / METHOD / "faces.parquet")
    assert metrics["images"] == len(WITH_PERSONS + WITHOUT)
    # HOG at upsample 1 finds one face each on 000000085329 and 000000386912, persons DP2 repaints.
    assert metrics["faces"] == len(faces) == 2 and faces["in_region"].all()
    assert metrics["linkage"]["inversion"] == {"rank1": None, "tmr_at_fmr_1pct": None, "how": None}
    assert metrics["linkage"]["appearance"]["persons"] > 0


def test_coverage_and_mlflow_say_which_dp2_ran(run: Config) -> None:
    coverage = json.loads((run.variant_root(METHOD) / f"coverage_{VAL}.json").read_text())
    assert coverage["dp2"] == DP2_UNTRAINED_GT
    assert isinstance(coverage["persons_below_size_filter"], int)
    mlflow.set_tracking_uri(run.tracking.resolved_uri)
    runs = mlflow.search_runs(experiment_names=[run.tracking.experiment], filter_string="tags.stage = 'anonymize'")
    assert len(runs) == 1
    assert runs["tags.dp2_mode"][0] == "gt" and runs["tags.dp2_untrained"][0] == "true"


def test_dp2_through_the_container_contract_writes_the_pixels_the_built_in_writes(
    run: Config, slice_coco: Path, tmp_path: Path
) -> None:
    """The DP2 image as a container method (anonbench run-job --method dp2_fullbody, masks as annotated): every
    image with a person, its region and the size filter's count are the built-in dp2_fullbody's, byte for byte."""
    params = json.dumps(run.anonymize.dp2.model_dump(mode="json"))
    box = (
        "anonymize.containers={dp2_box: {image: anonbench-dp2:test, command: [anonbench, run-job, --method, "
        f"{METHOD}], counts: [persons_below_size_filter], dilation_px: 0, min_person_px: 0, params: {params}}}}}"
    )
    cfg = config(tmp_path, slice_coco, box, "anonymize.methods=[blur,pixelate,mask,dp2_box]")
    [job] = anonymize.run(cfg, "dp2_box", splits=[VAL], prepare_only=True)
    assert container.serve(job, METHOD) == {"ok": len(WITH_PERSONS), "error": 0}  # what the image's command does
    anonymize.run(cfg, "dp2_box", splits=[VAL])
    for name in WITH_PERSONS:
        for folder in (VAL, f"masks/{VAL}"):
            built_in = run.variant_root(METHOD) / folder / f"{Path(name).stem}.png"
            boxed = cfg.variant_root("dp2_box") / folder / f"{Path(name).stem}.png"
            assert boxed.exists() == built_in.exists() and (
                not boxed.exists() or boxed.read_bytes() == built_in.read_bytes()
            )
    below = [json.loads((c.variant_root(m) / f"coverage_{VAL}.json").read_text())["persons_below_size_filter"]
             for c, m in ((cfg, "dp2_box"), (run, METHOD))]  # fmt: skip
    assert below[0] == below[1] == sum(failed for _, failed in SIZE_FILTER.values())
    records = json.loads((cfg.variant_root("dp2_box") / f"manifest_{VAL}.json").read_text())["records"]
    boxed = {r["key"]: (r["status"], r["details"]["persons_anonymized"]) for r in records if r["key"] in WITH_PERSONS}
    assert boxed == {name: (r["status"], r["details"]["persons_anonymized"]) for name, r in manifest(run).items()
                     if name in WITH_PERSONS}  # fmt: skip


def test_same_seed_same_bytes_on_the_cpu(run: Config, slice_coco: Path, tmp_path: Path) -> None:
    again = config(tmp_path, slice_coco)
    anonymize.run(again, METHOD, splits=[VAL])

    def digests(cfg: Config) -> dict[str, str]:
        root = cfg.variant_root(METHOD)
        return {
            str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))
            if p.is_file() and "records" not in p.parts and not p.name.startswith("timings_")
        }

    assert digests(again) == digests(run)


def test_the_per_image_seed_decides_the_generated_pixels(
    coco_mini: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With truncation above 0 each person's latent is drawn from DP2's global RNGs, which the adapter seeds
    per image: two runs, each with a freshly loaded anonymizer, write the same pixels, and another per-image
    seed other ones. Without the seeding the second run would draw from wherever the RNGs stood."""
    name = "000000143931.jpg"
    coco = coco_slice(coco_mini, tmp_path / "coco", {VAL: [name]})

    def once(folder: str) -> np.ndarray:
        anonymize._dp2.cache_clear()  # a fresh anonymizer: nothing carried over from an earlier run
        cfg = config(tmp_path / folder, coco, "anonymize.dp2.truncation=0.5")
        anonymize.run(cfg, METHOD, splits=[VAL])
        return read_image(cfg.image_dir(METHOD, VAL) / f"{Path(name).stem}.png")

    first, second = once("a"), once("b")
    assert (first == second).all()
    monkeypatch.setattr(anonymize, "image_seed", lambda seed, image_id: 12345)
    other = once("c")
    assert (other != first).any(axis=2).sum() > 1000, "the per-image seed does not reach DP2's latents"
    anonymize._dp2.cache_clear()


def test_any_image_format_reaches_dp2_as_rgb(coco_mini: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dp2.anonymizer import Anonymizer

    name = "000000143931.jpg"
    coco = coco_slice(coco_mini, tmp_path / "coco", {VAL: [name]})
    instances = json.loads((coco / "annotations" / f"instances_{VAL}.json").read_text())
    rgb = np.asarray(Image.open(coco / VAL / name).convert("RGB"))
    gray = np.asarray(Image.open(coco / VAL / name).convert("L"))
    Image.fromarray(gray).save(coco / VAL / "gray.jpg", quality=100)
    Image.fromarray(rgb).convert("CMYK").save(coco / VAL / "cmyk.jpg", quality=100)
    cv2.imwrite(str(coco / VAL / "deep.png"), rgb[:, :, ::-1].astype(np.uint16) * 257)  # 16 bits a channel
    original = instances["images"][0]
    instances["images"] = [
        {**original, "id": i, "file_name": f} for i, f in enumerate(("gray.jpg", "cmyk.jpg", "deep.png"), 1)
    ]
    person = next(a for a in instances["annotations"] if a["category_id"] == 1)
    instances["annotations"] = [{**person, "id": i, "image_id": i} for i in (1, 2, 3)]
    (coco / "annotations" / f"instances_{VAL}.json").write_text(json.dumps(instances))
    assert Image.open(coco / VAL / "cmyk.jpg").mode == "CMYK"
    assert cv2.imread(str(coco / VAL / "deep.png"), cv2.IMREAD_UNCHANGED).dtype == np.uint16

    seen: list[np.ndarray] = []
    forward = Anonymizer.forward

    def spy(self: Anonymizer, im: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(im.cpu().numpy().copy())  # DP2 writes into its input
        return forward(self, im, *args, **kwargs)

    monkeypatch.setattr(Anonymizer, "forward", spy)
    cfg = config(tmp_path, coco)
    anonymize.run(cfg, METHOD, splits=[VAL])
    assert len(seen) == 3 and all(t.shape == (3, *rgb.shape[:2]) and t.dtype == np.uint8 for t in seen)
    gray_seen, cmyk_seen, deep_seen = (t.transpose(1, 2, 0) for t in seen)
    decoded_gray = np.asarray(Image.open(coco / VAL / "gray.jpg").convert("L"))
    assert (gray_seen == decoded_gray[:, :, None]).all()  # one value in all three channels
    assert (deep_seen == rgb).all()  # the high byte of each 16-bit channel, in RGB order
    reference = np.asarray(Image.open(coco / VAL / "cmyk.jpg").convert("RGB")).astype(int)
    assert np.abs(cmyk_seen.astype(int) - reference).mean() < 3  # RGB, not CMY or BGR
    assert manifest(cfg)["cmyk.jpg"]["status"] == "ok"


def test_an_image_dp2_raises_on_is_a_failed_record(
    coco_mini: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dp2.anonymizer import Anonymizer

    def broken(self: Anonymizer, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("CUDA out of memory (simulated)")

    monkeypatch.setattr(Anonymizer, "forward", broken)  # DP2's own call fails on every image with a person
    coco = coco_slice(coco_mini, tmp_path / "coco", {VAL: ["000000143931.jpg", *WITHOUT]})
    strict = config(tmp_path / "strict", coco)
    with pytest.raises(anonymize.AnonymizeError, match=r"000000143931\.jpg.*DeepPrivacy2 raised RuntimeError"):
        anonymize.run(strict, METHOD, splits=[VAL])
    skip = config(tmp_path / "skip", coco, "policy=skip")
    anonymize.run(skip, METHOD, splits=[VAL])
    records = manifest(skip)
    failed = records["000000143931.jpg"]
    assert failed["status"] == "error" and "CUDA out of memory (simulated)" in failed["reason"]
    assert json.loads((skip.variant_root(METHOD) / f"coverage_{VAL}.json").read_text())["status"]["error"] == 1
    assert not (skip.image_dir(METHOD, VAL) / "000000143931.png").exists()
    variant = json.loads(skip.annotation_file(METHOD, VAL).read_text())
    assert sorted(im["file_name"] for im in variant["images"]) == sorted(WITHOUT)


def untrained_detector_weights(folder: Path) -> Path:
    """A weights folder with the study detector's files, none of them trained: each detectron2 checkpoint holds
    no parameter (detectron2 logs the missing keys and keeps the model's random initialisation), the CSE
    vertex embedding is random, and the three CSE configs are the pinned detectron2 tree's."""
    rng = np.random.default_rng(0)
    for file in required(repo_dir(DeepPrivacy2()), STUDY_CONFIG, generators=False):
        target = folder / file.path
        target.parent.mkdir(parents=True, exist_ok=True)
        if file.bundled is not None:
            shutil.copyfile(file.bundled, target)
        elif "vertex embedding" in file.what:
            features = rng.standard_normal((27554, 256), dtype=np.float32)
            target.write_bytes(pickle.dumps({"features": features, "embeddings": rng.standard_normal((256, 16))}))
        else:
            target.write_bytes(pickle.dumps({"model": {}, "__author__": "anonbench tests: untrained"}))
    return folder


def test_detector_mode_runs_end_to_end_on_untrained_detectors(
    slice_coco: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The seed study's path (FB_cse.py: Mask R-CNN X101 and CSE DensePose R101 loaded from the weights folder,
    their detections combined, then DP2) with every model untrained. Untrained detectors find no person, and
    no threshold changes that: Mask R-CNN's classifier is near uniform (person scores 0.0115 to 0.0137 on this
    image, the best person 1579th of all class scores, and detectron2 keeps the top 100), and the untrained
    CSE backbone's features reach 1e7 (frozen batch norm normalises nothing), so its region proposals are
    all degenerate. What runs is the whole path; what is checked is that a person DP2's detector misses keeps
    its pixels and is reported, the person-free image never reaches DP2, and the files say which mode ran."""
    anonymize._dp2.cache_clear()
    name = "000000143931.jpg"
    coco = coco_slice(slice_coco, tmp_path / "coco", {VAL: [name, WITHOUT[0]]})
    weights = untrained_detector_weights(tmp_path / "weights")
    cfg = config(tmp_path, coco, "anonymize.dp2.mode=detector", f"anonymize.dp2.weights_dir={weights}")
    seen: list[Dp2Output] = []
    call = Dp2Anonymizer.__call__

    def spy(self: Dp2Anonymizer, image: np.ndarray, masks: Any, seed: int) -> Dp2Output:
        assert masks is None, "mode detector passes no ground truth"
        seen.append(call(self, image, masks, seed))
        return seen[-1]

    monkeypatch.setattr(Dp2Anonymizer, "__call__", spy)
    try:
        anonymize.run(cfg, METHOD, splits=[VAL])
    finally:
        anonymize._dp2.cache_clear()
    (out,) = seen  # the person-free image never reaches DP2
    assert (out.anonymized, out.below_size_filter, len(out.boxes)) == (0, 0, 0)
    assert not out.painted.any() and not out.persons.any()
    stem = Path(name).stem
    assert (read_image(cfg.image_dir(METHOD, VAL) / f"{stem}.png") == read_image(coco / VAL / name)).all()
    assert (cfg.image_dir(METHOD, VAL) / WITHOUT[0]).read_bytes() == (coco / VAL / WITHOUT[0]).read_bytes()
    for folder in ("masks", "paint"):
        assert not (cfg.variant_root(METHOD) / folder / VAL / f"{stem}.png").exists()
    record = manifest(cfg)[name]
    assert (
        record["status"] == "skipped"
        and record["reason"] == "1 person(s) in ground truth, none anonymized (none detected)"
    )
    coverage = json.loads((cfg.variant_root(METHOD) / f"coverage_{VAL}.json").read_text())
    assert coverage["dp2"] == {**DP2_UNTRAINED_GT, "mode": "detector", "config": STUDY_CONFIG}
    assert coverage["persons_anonymized"] == 0 and coverage["coverage"] == 0.0


def test_detector_mode_a_larger_detected_person_extends_its_box(
    slice_coco: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Mode detector with the two detectors' outputs faked (trained detectors cannot be had here): a patch of the
    person pasted above its head makes a person larger than its label, both detectors report that larger person,
    and DP2's own combination of their masks, box expansion, CSE generator and paste-back run on it. The paint
    record's persons are the detected person, and relabel extends the label upward to the pasted patch; the
    ring DP2 paints around the person extends nothing."""
    import torch
    from dp2.detection.models.cse import CSEDetector, cse_det_to_global
    from dp2.detection.models.mask_rcnn import MaskRCNNDetector
    from torchvision.transforms import functional

    name = "000000143931.jpg"
    coco = coco_slice(slice_coco, tmp_path / "coco", {VAL: [name]})
    ((label, bbox),) = persons(coco)[name]
    x, y = int(bbox[0]), int(bbox[1])
    image = read_image(coco / VAL / name)
    image[y - 24 : y + 4, x + 30 : x + 50] = image[y + 4 : y + 32, x + 30 : x + 50]
    cv2.imwrite(str(coco / VAL / name), image)
    larger = label.copy()
    larger[y - 24 : y + 4, x + 30 : x + 50] = True
    rows, cols = np.flatnonzero(larger.any(axis=1)), np.flatnonzero(larger.any(axis=0))
    box = torch.tensor([[cols[0], rows[0], cols[-1] + 1, rows[-1] + 1]])
    crop = torch.from_numpy(larger[None, rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]).long()
    coarse = functional.resize(crop, [112, 112], functional.InterpolationMode.NEAREST)

    def mask_rcnn(self: Any, im: Any) -> dict[str, Any]:
        found = {"scores": torch.ones(1), "segmentation": torch.from_numpy(larger[None])}
        return {**found, "classes": torch.zeros(1, dtype=torch.long), "is_person": torch.ones(1, dtype=torch.bool)}

    def cse(self: Any, im: Any) -> dict[str, Any]:
        found = {"instance_segmentation": coarse, "instance_embedding": torch.zeros((1, 16, 112, 112))}
        return {**found, "bbox_XYXY": box, "im_segmentation": cse_det_to_global(box, coarse, list(larger.shape)),
                "scores": torch.ones(1)}  # fmt: skip

    monkeypatch.setattr(MaskRCNNDetector, "forward", mask_rcnn)
    monkeypatch.setattr(CSEDetector, "forward", cse)
    anonymize._dp2.cache_clear()
    weights = untrained_detector_weights(tmp_path / "weights")
    cfg = config(tmp_path, coco, "anonymize.dp2.mode=detector", f"anonymize.dp2.weights_dir={weights}")
    try:
        anonymize.run(cfg, METHOD, splits=[VAL])
    finally:
        anonymize._dp2.cache_clear()
    details = manifest(cfg)[name]["details"]
    assert (details["persons_anonymized"], details["persons_below_size_filter"]) == (1, 0)
    record = cfg.variant_root(METHOD) / "paint" / VAL / f"{Path(name).stem}.png"
    painted, generated = read_paint_record(read_image(record))
    detected = larger | cse_det_to_global(box, coarse, list(larger.shape))[0].numpy()  # DP2 unites the two masks
    assert (generated == detected).all()
    assert painted[~generated].any(), "DP2 paints a ring around the person"
    with indexed(cfg.annotation_file(METHOD, VAL)) as index:
        (image_id,) = [im["id"] for im in index.images]
        job = relabel._ExtendJob(record, image_id, index.lookup, 1, True, 0, cfg.relabel.min_extend_px)
        (proposal,) = relabel._extend_image(job)
    growth = proposal.evidence["growth_px"]
    assert proposal.evidence["new_bbox"][1] == y - 24 and growth["top"] == round(bbox[1] - (y - 24), 2)
    assert max(growth["left"], growth["right"], growth["bottom"]) < 1.0  # DP2's ring is not the person


def test_missing_weights_fail_at_once_naming_each_file(slice_coco: Path, tmp_path: Path) -> None:
    cfg = config(tmp_path, slice_coco, "anonymize.dp2.untrained=false", f"anonymize.dp2.weights_dir={tmp_path / 'w'}")
    with pytest.raises(WeightsError) as caught:
        anonymize.run(cfg, METHOD, splits=[VAL])
    message = str(caught.value)
    assert "\n" not in message and str(tmp_path / "w" / "torch/hub/checkpoints/fdh_styleganL_nocse.ckpt") in message
    assert "anonbench dp2-weights --from" in message
    assert not cfg.variant_root(METHOD).exists()  # nothing started
    detector = config(
        tmp_path / "d", slice_coco, "anonymize.dp2.mode=detector", f"anonymize.dp2.weights_dir={tmp_path}"
    )
    with pytest.raises(WeightsError) as caught:
        anonymize.run(detector, METHOD, splits=[VAL])
    for name in ("model_final_2d9806.pkl", "model_final_1d3314.pkl", "phi_smpl_27554_256.pkl"):
        assert name in str(caught.value)


def test_a_checkpoint_with_a_wrong_md5_is_refused_naming_it(tmp_path: Path) -> None:
    from anonbench.anonymizers.dp2 import repo_dir
    from anonbench.config import DeepPrivacy2

    files = required(repo_dir(DeepPrivacy2()), "configs/fdh/styleganL_nocse.py")
    assert [(f.name, f.md5) for f in files] == [("fdh_styleganL_nocse.ckpt", "fda0d809741bc67487abada793975c37")]
    (tmp_path / "from").mkdir()
    (tmp_path / "from" / "fdh_styleganL_nocse.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(
        WeightsError, match=r"from/fdh_styleganL_nocse\.ckpt: md5 [0-9a-f]{32}, DP2's config expects fda0d8"
    ):
        lay_out(files, tmp_path / "from", tmp_path / "weights")
    assert not (tmp_path / "weights" / files[0].path).exists()


def test_preflight_names_missing_then_corrupt_weights_with_exit_status_1(tmp_path: Path) -> None:
    # The paper's DP2 method, read from DP2's own configs as the pipeline's preflight-dp2 task does.
    def preflight() -> tuple[int, list[str]]:
        weights = f"anonymize.dp2.weights_dir={tmp_path}"
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "anonbench",
                "preflight",
                "--check",
                "dp2-weights",
                "--profile",
                "paper",
                "--set",
                weights,
            ],
            cwd=PARAMS.parent,
            capture_output=True,
            text=True,
            timeout=600,
        )
        return result.returncode, [x for x in result.stderr.splitlines() if x.startswith("preflight ")]

    status, (line,) = preflight()
    assert status == 1 and line.startswith(f"preflight dp2-weights: FAIL {tmp_path}: missing ")
    assert "model_final_2d9806.pkl" in line and "md5 not DP2's" not in line
    missing = [part.split("missing ", 1)[1] for part in line.split("; ") if "missing " in part]
    for path in missing:  # every file there, none of them DP2's
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_bytes(b"not a checkpoint")

    status, (line,) = preflight()
    # Only the generator, whose md5 DP2's config gives; nothing missing any more.
    assert status == 1 and line.startswith(
        f"preflight dp2-weights: FAIL {tmp_path}: md5 not DP2's: torch/hub/checkpoints/"
    )
    assert "; missing" not in line


def test_the_study_detector_needs_these_files(tmp_path: Path) -> None:
    from anonbench.anonymizers.dp2 import STUDY_CONFIG, repo_dir
    from anonbench.config import DeepPrivacy2

    repo = repo_dir(DeepPrivacy2())
    files = {f.path: f for f in required(repo, STUDY_CONFIG)}
    assert set(files) == {
        "fvcore/detectron2/COCO-InstanceSegmentation/mask_rcnn_X_101_32x8d_FPN_3x/139653917/model_final_2d9806.pkl",
        "torch/hub/checkpoints/densepose_rcnn_R_101_FPN_DL_soft_s1x.yaml",
        "torch/hub/checkpoints/Base-DensePose-RCNN-FPN.yaml",
        "torch/hub/checkpoints/Base-DensePose-RCNN-FPN-Human.yaml",
        "torch/hub/checkpoints/model_final_1d3314.pkl",
        "fvcore/densepose/data/cse/lbo/phi_smpl_27554_256.pkl",
        next(p for p, f in files.items() if f.md5 == "3411478b5ec600a4219cccf4499732bd"),  # the CSE generator
    }
    assert all(f.bundled is not None and f.bundled.is_file() for f in files.values() if f.path.endswith(".yaml"))


def test_wrong_repo_dir_or_missing_cuda_is_one_line(slice_coco: Path, tmp_path: Path) -> None:
    cfg = config(tmp_path, slice_coco, f"anonymize.dp2.repo_dir={tmp_path}")
    with pytest.raises(Dp2Unavailable, match=rf"^anonymize.dp2.repo_dir {tmp_path}: not a DeepPrivacy2 source tree"):
        anonymize.run(cfg, METHOD, splits=[VAL])
    import torch

    if not torch.cuda.is_available():
        cuda = config(tmp_path / "cuda", slice_coco, "anonymize.dp2.device=cuda")
        with pytest.raises(Dp2Unavailable, match=r"^anonymize.dp2.device=cuda, but torch .* sees no CUDA device") as e:
            anonymize.run(cuda, METHOD, splits=[VAL])
        assert "\n" not in str(e.value)


@pytest.mark.gpu
def test_cuda_with_amp_writes_where_the_cpu_does(slice_coco: Path, tmp_path: Path) -> None:
    """On a lent GPU: the same untrained run through the CLI on CUDA with AMP (its own process: the CPU
    runs of this session hide the GPU from theirs)."""
    cfg = config(tmp_path, slice_coco, "anonymize.dp2.device=cuda", "anonymize.dp2.amp=true")
    overrides = [arg for item in [*settings(tmp_path), "anonymize.dp2.device=cuda", "anonymize.dp2.amp=true"]
                 for arg in ("--set", item)]  # fmt: skip
    command = [sys.executable, "-m", "anonbench", "anonymize", "--method", METHOD, "--split", VAL, "--params", PARAMS]
    env = {k: v for k, v in os.environ.items() if not (k == "CUDA_VISIBLE_DEVICES" and v == "")}  # device=cpu's
    proc = subprocess.run([*map(str, command), *overrides], capture_output=True, text=True, check=False, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    coverage = json.loads((cfg.variant_root(METHOD) / f"coverage_{VAL}.json").read_text())
    assert coverage["dp2"]["device"] == "cuda" and coverage["dp2"]["amp"] is True
    for name in WITHOUT:
        assert (cfg.image_dir(METHOD, VAL) / name).read_bytes() == (slice_coco / VAL / name).read_bytes()
    assert coverage["persons_anonymized"] >= 4 and coverage["coverage"] > 0.5
