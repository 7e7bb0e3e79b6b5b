"""The ssim stage on a real `mask` variant of coco-mini images: tables, summary, figures, tracking, bad input."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from skimage.metrics import structural_similarity
from typer.testing import CliRunner

from anonbench.cli import app
from anonbench.config import Config
from anonbench.images import encode_image, read_image
from anonbench.ssim_fast import COMPONENTS, crop_bounds
from anonbench.stages import ssim
from tests.conftest import made_variant

REPO = Path(__file__).resolve().parents[2]
VAL = "val2017"


@pytest.fixture(scope="module")
def mask_variant(tiny_coco: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real `mask` variant of tiny_coco's val split, made once by the anonymize stage."""
    return made_variant(tiny_coco, tmp_path_factory.mktemp("anonymized"), "mask", VAL)


@pytest.fixture
def variant_cfg(make_config: Callable[..., Config], tiny_coco: Path, mask_variant: Path) -> Config:
    """A test's own copy of the `mask` variant beside tiny_coco."""
    cfg = make_config("workers=1", source=tiny_coco)
    shutil.copytree(mask_variant, cfg.variant_root("mask"))
    return cfg


def ssim_runs(cfg: Config) -> pd.DataFrame:
    mlflow.set_tracking_uri(cfg.tracking.resolved_uri)
    return mlflow.search_runs(experiment_names=[cfg.tracking.experiment], filter_string="tags.stage = 'ssim'")


def digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*.*"))}


def test_tables_summary_figures_and_tracking(
    make_config: Callable[..., Config], tiny_coco: Path, variant_cfg: Config
) -> None:
    cfg = make_config("workers=2", source=tiny_coco)  # over a process pool; the same folders as variant_cfg
    written = ssim.run(cfg, "mask", splits=[VAL])
    out = cfg.paths.data / "ssim" / "mask"
    assert {p.relative_to(out).as_posix() for p in written} == {
        f"{VAL}_boxes.parquet",
        f"{VAL}_images.parquet",
        f"manifest_{VAL}.json",
        "summary.json",
        *(f"figures/{VAL}_{name}.png" for name in ("distributions", "use_case_groups", "classes")),
    }
    instances = json.loads(cfg.annotation_file("org", VAL).read_text())
    images = pd.read_parquet(out / f"{VAL}_images.parquet")
    boxes = pd.read_parquet(out / f"{VAL}_boxes.parquet")
    assert list(images.columns) == [field.name for field in ssim.IMAGE_SCHEMA]
    assert list(boxes.columns) == [field.name for field in ssim.BOX_SCHEMA]
    assert sorted(images["image_id"]) == sorted(im["id"] for im in instances["images"])
    assert sorted(boxes["ann_id"]) == sorted(a["id"] for a in instances["annotations"])

    # Whole-image and box scores are skimage's on the same crops.
    info = next(im for im in instances["images"] if images.set_index("image_id").loc[im["id"], "has_person"])
    original = read_image(cfg.image_dir("org", VAL) / info["file_name"])
    variant = read_image(cfg.image_dir("mask", VAL) / f"{Path(info['file_name']).stem}.png")
    row = images.set_index("image_id").loc[info["id"]]
    assert row["ssim"] == pytest.approx(structural_similarity(original, variant, data_range=255, channel_axis=2))
    region = read_image(cfg.variant_root("mask") / "masks" / VAL / f"{Path(info['file_name']).stem}.png")[..., 0] > 0
    assert row["anonymized_fraction"] == pytest.approx(region.mean()) and row["reason"] == ""
    assert row["changed_fraction"] == pytest.approx((original != variant).any(axis=2).mean())
    for box in boxes[boxes["image_id"] == info["id"]].itertuples():
        x0, y0, x1, y1 = crop_bounds([box.x, box.y, box.w, box.h], info["width"], info["height"])
        assert box.inside_anonymized == pytest.approx(region[y0:y1, x0:x1].mean())
        if min(x1 - x0, y1 - y0) < 7:
            assert math.isnan(box.ssim) and "smaller than the 7x7 window" in box.reason
            continue
        expected = structural_similarity(original[y0:y1, x0:x1], variant[y0:y1, x0:x1], data_range=255, channel_axis=2)
        assert box.ssim == pytest.approx(expected, abs=1e-6)
    # Persons overlap the anonymized region and changed; a box apart from it sees no change (1 to rounding).
    people = boxes[boxes["category"] == "person"]
    assert (people["inside_anonymized"] > 0.3).all() and (people["ssim"].dropna() < 1).all()
    apart = boxes[boxes["inside_anonymized"] == 0].dropna(subset=["ssim"])
    assert len(apart) and np.abs(apart[list(COMPONENTS)].to_numpy() - 1.0).max() < 1e-12
    untouched = images[~images["has_person"]]
    assert (untouched["ssim"] == 1.0).all() and (untouched["changed_fraction"] == 0).all()

    summary = json.loads((out / "summary.json").read_text())
    scope = summary["splits"][VAL]["with_person"]
    assert summary["variant"] == "mask" and set(summary["splits"][VAL]) == {"with_person", "all"}
    assert scope["image"]["count"] == int(images["has_person"].sum())
    assert scope["classes"]["person"]["box"]["ssim"]["mean"] == pytest.approx(people["ssim"].mean())
    assert set(scope["use_case_groups"]) == set(cfg.classes.use_case_groups)
    for entry in scope["use_case_groups"].values():
        assert {"classes", "image", "box", "box_overlapping_anonymized", "box_outside_anonymized"} <= set(entry)
        assert set(entry["box"]) == {"count", "ssim", "luminance", "contrast", "structure"}
    manifest = json.loads((out / f"manifest_{VAL}.json").read_text())
    assert manifest["counts"] == {"ok": len(images), "skipped": 0, "error": 0}

    runs = ssim_runs(cfg)
    assert len(runs) == 1
    assert runs[f"metrics.{VAL}/with_person/all/image_ssim"][0] == scope["image"]["ssim"]["mean"]

    # Rerun: nothing to measure, same bytes; measured again from scratch: still the same bytes.
    reference = digests(out)
    ssim.run(cfg, "mask", splits=[VAL])
    assert digests(out) == reference
    (out / f".stamp_{VAL}").unlink()
    ssim.run(cfg, "mask", splits=[VAL])
    assert digests(out) == reference
    assert len(ssim_runs(cfg)) == 2


def corrupt(cfg: Config, problem: str) -> str:
    """Break the variant's first image in one way; return the original file name."""
    instances = json.loads(cfg.annotation_file("mask", VAL).read_text())
    info = instances["images"][0]
    target = cfg.image_dir("mask", VAL) / info["file_name"]
    if problem == "missing":
        target.unlink()
    elif problem == "unreadable":
        target.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    elif problem == "size":
        target.write_bytes(encode_image(np.zeros((info["height"], info["width"] + 3, 3), np.uint8)))
    elif problem == "not in variant":
        instances["images"] = instances["images"][1:]
        cfg.annotation_file("mask", VAL).write_text(json.dumps(instances))
    return f"{Path(info['file_name']).stem}.jpg"


@pytest.mark.parametrize(
    ("problem", "message"),
    [
        ("missing", "variant image missing"),
        ("unreadable", "not a decodable image"),
        ("size", "sizes differ"),
        ("not in variant", "not in the variant's annotations"),
    ],
)
def test_bad_input_stops_naming_the_image(variant_cfg: Config, problem: str, message: str) -> None:
    name = corrupt(variant_cfg, problem)
    with pytest.raises(ssim.SsimStageError, match=message) as caught:
        ssim.run(variant_cfg, "mask", splits=[VAL])
    assert name in str(caught.value)


def test_bad_input_under_skip_is_counted_and_listed(
    make_config: Callable[..., Config], tiny_coco: Path, variant_cfg: Config
) -> None:
    cfg = make_config("policy=skip", source=tiny_coco)  # the same folders as variant_cfg (same tmp_path)
    instances = json.loads(cfg.annotation_file("mask", VAL).read_text())
    broken = {
        f"{Path(instances['images'][0]['file_name']).stem}.jpg": "sizes differ",
        f"{Path(instances['images'][1]['file_name']).stem}.jpg": "variant image missing",
    }
    (cfg.image_dir("mask", VAL) / instances["images"][0]["file_name"]).write_bytes(
        encode_image(np.zeros((9, 9, 3), np.uint8))
    )
    (cfg.image_dir("mask", VAL) / instances["images"][1]["file_name"]).unlink()
    ssim.run(cfg, "mask", splits=[VAL])
    out = cfg.paths.data / "ssim" / "mask"
    manifest = json.loads((out / f"manifest_{VAL}.json").read_text())
    skipped = {r["key"]: r["reason"] for r in manifest["records"] if r["status"] == "skipped"}
    assert skipped.keys() == broken.keys()
    assert all(broken[key] in reason for key, reason in skipped.items())
    assert manifest["counts"]["ok"] == len(instances["images"]) - 2
    assert len(pd.read_parquet(out / f"{VAL}_images.parquet")) == len(instances["images"]) - 2


def test_cli_measures_a_split_and_names_a_missing_variant(variant_cfg: Config) -> None:
    settings = ["--params", str(REPO / "params.yaml"), "--set", f"paths.data={variant_cfg.paths.data}"]
    settings += ["--set", f"tracking.uri={variant_cfg.tracking.uri}", "--set", "workers=1"]
    result = CliRunner().invoke(app, ["ssim", "--variant", "mask", "--split", VAL, *settings])
    assert result.exit_code == 0, result.output
    assert f"wrote {variant_cfg.paths.data / 'ssim' / 'mask' / 'summary.json'}" in result.output
    result = CliRunner().invoke(app, ["ssim", "--variant", "blur", "--split", VAL, *settings])
    assert result.exit_code == 1 and "no such variant" in result.output


def test_tables_written_in_row_groups_hold_the_rows_one_group_holds(
    variant_cfg: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tables are written as results come, a row group at a time; a split bigger than one group gives the
    same sorted rows as a split that fits in one."""
    import pyarrow.parquet as pq

    folder = variant_cfg.paths.data / "ssim" / "mask"
    ssim.measure_split(variant_cfg, "mask", VAL)
    whole = {name: pq.read_table(folder / f"{VAL}_{name}.parquet") for name in ("boxes", "images")}
    monkeypatch.setattr(ssim._TableWriter, "ROWS_PER_GROUP", 3)
    (folder / f".stamp_{VAL}").unlink()
    ssim.measure_split(variant_cfg, "mask", VAL)
    for name, table in whole.items():
        grouped = pq.ParquetFile(folder / f"{VAL}_{name}.parquet")
        assert grouped.metadata.num_row_groups == math.ceil(table.num_rows / 3) > 1
        assert grouped.read().equals(table)
    boxes = whole["boxes"].to_pandas()
    assert list(zip(boxes["image_id"], boxes["ann_id"], strict=True)) == sorted(
        zip(boxes["image_id"], boxes["ann_id"], strict=True)
    )
