"""The privacy stage on coco-mini images with faces: the identity control, a masked variant, the contract, reruns."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from typer.testing import CliRunner

from anonbench.analysis.privacy import BUCKETS
from anonbench.cli import app
from anonbench.config import Config
from anonbench.stages import privacy
from tests.conftest import cli_args, coco_slice, made_variant

VAL = "val2017"
# The four val images where dlib's HOG detector at upsample 1 finds faces (five in all), and one without a person.
FACES = ["000000085329.jpg", "000000233771.jpg", "000000329323.jpg", "000000386912.jpg"]
NO_PERSON = ["000000006818.jpg"]
FAST = ("privacy.upsample=1", "workers=1")
CONTRACT_COLUMNS = ["image_id", "x", "y", "w", "h", "detected_after", "in_region", "linked_naive"]


@pytest.fixture(scope="module")
def face_coco(coco_mini: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return coco_slice(coco_mini, tmp_path_factory.mktemp("face-coco"), {VAL: FACES + NO_PERSON})


@pytest.fixture(scope="module")
def mask_variant(face_coco: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The slice's `mask` variant, made once by the anonymize stage."""
    return made_variant(face_coco, tmp_path_factory.mktemp("masked"), "mask", VAL)


@pytest.fixture
def cfg(make_config: Callable[..., Config], face_coco: Path, mask_variant: Path) -> Config:
    config = make_config(*FAST, source=face_coco)
    config.variant_root("mask").parent.mkdir(parents=True)
    config.variant_root("mask").symlink_to(mask_variant, target_is_directory=True)
    return config


def outputs(cfg: Config, variant: str) -> tuple[dict, pd.DataFrame]:
    metrics = json.loads((cfg.paths.metrics / "privacy" / f"{variant}.json").read_text())
    return metrics, pd.read_parquet(cfg.paths.data / "privacy" / variant / "faces.parquet")


def test_the_original_is_the_identity_control_and_a_rerun_does_nothing(cfg: Config) -> None:
    written = privacy.run(cfg, "org")
    metrics, faces = outputs(cfg, "org")
    assert metrics["faces"] == len(faces) == 5 and metrics["images"] == 5 and metrics["images_with_faces"] == 4
    assert metrics["detected_rate"] == 1.0
    naive = metrics["linkage"]["naive"]
    assert naive["rank1"] == 1.0 and naive["chance"] == pytest.approx(1 / 5) and naive["tmr_at_fmr_1pct"] == 1.0
    assert metrics["linkage"]["inversion"] == {"rank1": None, "tmr_at_fmr_1pct": None, "how": None}
    appearance = metrics["linkage"]["appearance"]
    assert appearance["rank1"] == 1.0 and appearance["chance"] == pytest.approx(1 / appearance["persons"])
    # Nothing is anonymized: every face is residual, in its image.
    assert metrics["residual_faces"] == 5 and metrics["residual_image_ids"] == sorted(set(faces["image_id"]))
    assert set(metrics["by_size"]) == set(BUCKETS)
    assert sum(entry["faces"] for entry in metrics["by_size"].values()) == 5
    assert list(faces.columns[:5]) == CONTRACT_COLUMNS[:5] and set(CONTRACT_COLUMNS) <= set(faces.columns)
    assert faces["detected_after"].all() and faces["linked_naive"].all() and not faces["in_region"].any()
    assert faces["linked_inverted"].isna().all()
    manifest = json.loads((cfg.paths.data / "privacy" / "org" / "manifest.json").read_text())
    assert manifest["counts"] == {"ok": 5, "skipped": 0, "error": 0}

    mlflow.set_tracking_uri(cfg.tracking.resolved_uri)
    runs = mlflow.search_runs(experiment_names=[cfg.tracking.experiment], filter_string="tags.stage = 'privacy'")
    assert len(runs) == 1 and runs.iloc[0]["metrics.linkage/naive/rank1"] == 1.0
    stamps = [p.stat().st_mtime_ns for p in written]
    assert privacy.run(cfg, "org") == written and [p.stat().st_mtime_ns for p in written] == stamps
    assert len(mlflow.search_runs(experiment_names=[cfg.tracking.experiment])) == len(runs) + 1  # + the study run


def test_mask_leaves_no_face_and_links_at_chance(cfg: Config) -> None:
    result = CliRunner().invoke(app, ["privacy", "--variant", "mask", *cli_args(cfg, *FAST)])
    assert result.exit_code == 0, result.output
    metrics, faces = outputs(cfg, "mask")
    assert metrics["faces"] == len(faces) == 5
    # No face is found inside a masked region.
    assert not faces.loc[faces["detected_after"], "in_region"].any()
    assert metrics["detected_rate"] == 0.0 and metrics["residual_faces"] == 0
    # Every face of the slice lies in a masked person. The embedding there reads a solid-colour patch, so
    # all probes are the same vector and share one nearest original: at most one face is linked, and the
    # rank-1 rate is at most 1/5, the chance level. Detection and embedding are deterministic (pinned
    # models, fixed images, no sampling), so this bound holds or fails the same way on every run.
    assert faces["in_region"].all()
    assert faces["linked_naive"].sum() <= 1
    assert metrics["linkage"]["naive"]["rank1"] <= metrics["linkage"]["naive"]["chance"] + 1e-12
    assert metrics["linkage"]["naive"]["tmr_at_fmr_1pct"] == 0.0
    appearance = metrics["linkage"]["appearance"]
    assert appearance["rank1"] <= appearance["chance"] + 1e-12


def test_an_unmade_variant_is_one_line(cfg: Config) -> None:
    result = CliRunner().invoke(app, ["privacy", "--variant", "blur", *cli_args(cfg, *FAST)])
    assert result.exit_code == 1 and "no such variant" in result.output


def test_a_missing_variant_image_stops_strict_and_is_listed_under_skip(
    make_config: Callable[..., Config], face_coco: Path, mask_variant: Path
) -> None:
    cfg = make_config(*FAST, "policy=skip", source=face_coco)
    shutil.copytree(mask_variant, cfg.variant_root("mask"))
    gone = cfg.image_dir("mask", VAL) / "000000006818.png"
    gone.unlink()
    strict = make_config(*FAST, "policy=strict", source=face_coco)
    with pytest.raises(privacy.PrivacyStageError, match=r"000000006818\.jpg: variant image missing"):
        privacy.run(strict, "mask")
    privacy.run(cfg, "mask")
    manifest = json.loads((cfg.paths.data / "privacy" / "mask" / "manifest.json").read_text())
    assert manifest["counts"] == {"ok": 4, "skipped": 1, "error": 0}
    skipped = next(r for r in manifest["records"] if r["status"] == "skipped")
    assert skipped["key"] == "000000006818.jpg" and str(gone) in skipped["reason"]
    assert outputs(cfg, "mask")[0]["images"] == 4
