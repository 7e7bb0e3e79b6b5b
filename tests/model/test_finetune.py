"""finetune: the anonymized subset and its statistics, frozen layers really frozen, freeze ranges checked."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import torch
from PIL import Image

from anonbench.config import Config, ConfigError
from anonbench.stages import anonymize, export, finetune, train
from anonbench.yolo import check_layers, load_net
from tests.conftest import cli_args

TRAIN = "train2017"
TINY = ("workers=1", "train.epochs=1", "train.imgsz=64", "train.batch=4", "train.workers=0")
FINETUNE = ("finetune.epochs=1", "finetune.batch=4")


def classes_by_image(cfg: Config, variant: str) -> dict[int, set[str]]:
    instances = json.loads(cfg.annotation_file(variant, TRAIN).read_text())
    names = {c["id"]: c["name"] for c in instances["categories"]}
    held: dict[int, set[str]] = {im["id"]: set() for im in instances["images"]}
    for ann in instances["annotations"]:
        held[ann["image_id"]].add(names[ann["category_id"]])
    return held


def test_the_subset_holds_persons_with_selected_classes_and_follows_the_full_set(
    make_config: Callable[..., Config], tiny_coco: Path, mlflow_db: Path
) -> None:
    cfg = make_config(*TINY, "finetune.fraction=0.5", source=tiny_coco)
    anonymize.run(cfg, "mask")
    export.run(cfg, "mask")
    files, summary = finetune.make_subset(cfg)
    root = cfg.paths.data / "finetune_subset"
    assert all(p.exists() for p in files)

    selected = set(cfg.classes.size_frequency_classes)
    eligible = {i: held & selected for i, held in classes_by_image(cfg, "mask").items() if "person" in held}
    eligible = {i: held for i, held in eligible.items() if held}
    chosen = json.loads((root / f"image_ids_{TRAIN}.json").read_text())
    assert set(chosen.values()) <= set(eligible)
    assert len(chosen) == summary["subset_images"] == round(0.5 * len(eligible)) and len(eligible) == 10
    assert (summary["eligible_images"], summary["train_images"], summary["capped"]) == (10, 12, False)
    assert (summary["fraction"], summary["fraction_of"]) == (0.5, "eligible")
    assert sorted(p.stem for p in (root / "images" / TRAIN).iterdir()) == sorted(chosen)
    exported = cfg.paths.data / "yolo" / "mask" / "labels" / TRAIN
    for stem in chosen:
        assert (root / "labels" / TRAIN / f"{stem}.txt").read_text() == (exported / f"{stem}.txt").read_text()

    table = pd.read_csv(root / "class_counts.csv").set_index("class")
    full = Counter(c for held in eligible.values() for c in held)
    subset = Counter(c for i in chosen.values() for c in eligible[i])
    assert table["full_images"].to_dict() == {c: full[c] for c in cfg.classes.size_frequency_classes}
    assert table["subset_images"].to_dict() == {c: subset[c] for c in cfg.classes.size_frequency_classes}
    shares = table["subset_images"] / len(chosen) - table["full_images"] / len(eligible)
    assert summary["max_abs_share_diff"] == pytest.approx(shares.abs().max())
    present = table[table["full_images"] > 0]
    expected = present["full_images"] * present["subset_images"].sum() / present["full_images"].sum()
    assert summary["chi2"] == pytest.approx((((present["subset_images"] - expected) ** 2) / expected).sum())
    assert 0.0 <= summary["chi2_p"] <= 1.0
    assert Image.open(root / "class_counts.png").size == (1400, 500)

    first = {p: p.read_bytes() for p in files if p.is_file()}
    stamp = (root / "summary.json").stat().st_mtime_ns
    finetune.make_subset(cfg)
    assert (root / "summary.json").stat().st_mtime_ns == stamp  # same settings: reused by every freeze config
    _, other = finetune.make_subset(cfg.model_copy(update={"seed": 1}))
    assert other["settings"]["seed"] == 1 and json.loads((root / "summary.json").read_text()) == other
    finetune.make_subset(cfg)
    assert {p: p.read_bytes() for p in first} == first  # rebuilt with seed 0: byte-identical


def test_frozen_layers_are_unchanged_by_fine_tuning(
    make_config: Callable[..., Config], tiny_coco: Path, mlflow_db: Path, tmp_path: Path
) -> None:
    cfg = make_config(*TINY, *FINETUNE, source=tiny_coco)
    anonymize.run(cfg, "mask")
    for variant in ("org", "mask"):
        export.run(cfg, variant)
    train.run(cfg, "org", "n")
    written = finetune.run(cfg, "neck")
    out = cfg.paths.models / "ft-neck"
    assert {out / "weights/best.pt", out / "train.json"} <= set(written)

    base = load_net(cfg.paths.models / "org-n/weights/last.pt")  # train.checkpoint: last, the grid's model
    tuned = load_net(out / "weights/last.pt")
    neck = tuple(f"model.{i}." for i in range(11, 23))  # finetune.freeze.neck: [11, 22]
    before, after = base.state_dict(), tuned.state_dict()
    frozen = [k for k in before if k.startswith(neck)]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)  # weights and batch-norm statistics
    assert not all(torch.equal(before[k], after[k]) for k in before if k.startswith("model.0."))  # trained

    names = sorted(n for n, _ in base.named_parameters() if n.startswith(neck) or ".dfl" in n)
    summary = json.loads((out / "train.json").read_text())
    assert summary["frozen_parameters"] == len(names)
    # Ultralytics keeps the frozen layers' BatchNorm in eval mode (the equal statistics above); recorded:
    norms = sum(isinstance(m, torch.nn.BatchNorm2d) for n, m in base.named_modules() if n.startswith(neck))
    assert summary["frozen_batchnorm"] == {"modules": norms, "eval_mode": norms} and norms > 0
    assert (summary["stage"], summary["freeze"], summary["train_data"], summary["base_model"]) == (
        "finetune",
        "neck",
        "mask",
        "org-n",
    )
    client = mlflow.MlflowClient(cfg.tracking.uri)
    run = client.get_run(summary["mlflow_run_id"])
    assert (
        run.data.tags.items()
        >= {"stage": "finetune", "freeze": "neck", "train_data": "mask", "model_size": "n"}.items()
    )
    params = run.data.params
    assert params["freeze"] == str(list(range(11, 23)))
    assert (params["frozen_batchnorm_modules"], params["frozen_batchnorm_eval_mode"]) == (str(norms), str(norms))
    assert params["ultralytics_version"] == summary["ultralytics_version"]
    assert (params["lr0"], params["lrf"], params["momentum"], params["weight_decay"]) == (
        "0.001",
        "0.01",
        "0.85",
        "0.0007",
    )
    assert {"subset/max_abs_share_diff", "subset/chi2_p", "subset/subset_images"} <= run.data.metrics.keys()
    listed = Path(client.download_artifacts(run.info.run_id, "frozen_parameters.txt", str(tmp_path)))
    assert listed.read_text().split() == names
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"class_counts.png", "class_counts.csv", "summary.json", "train.json"} <= artifacts


def tree(root: Path) -> dict[str, bytes | str]:
    """Every file under ``root``: its bytes, or where a link points (not the label cache trainings add)."""
    return {
        str(p.relative_to(root)): os.readlink(p) if p.is_symlink() else p.read_bytes()
        for p in sorted(root.rglob("*"))
        if (p.is_symlink() or p.is_file()) and p.suffix != ".cache"
    }


def test_fine_tunes_started_together_share_one_subset_identical_to_a_single_runs(
    make_config: Callable[..., Config], tiny_coco: Path, mlflow_db: Path, tmp_path: Path
) -> None:
    settings = (*TINY, *FINETUNE)
    cfg = make_config(*settings, source=tiny_coco)
    anonymize.run(cfg, "mask")
    for variant in ("org", "mask"):
        export.run(cfg, variant)
    train.run(cfg, "org", "n")
    configs = ("neck", "backbone")
    command = [sys.executable, "-m", "anonbench", "finetune", "--freeze"]
    procs = [
        subprocess.Popen([*command, name, *cli_args(cfg, *settings)], cwd=tmp_path, stderr=subprocess.PIPE, text=True)
        for name in configs
    ]
    errors = [proc.communicate(timeout=900)[1] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], [e[-2000:] for e in errors]
    for name in configs:
        assert (cfg.paths.models / f"ft-{name}" / "train.json").is_file()
    root = finetune.subset_root(cfg)
    assert [p.name for p in root.parent.iterdir() if "finetune_subset" in p.name] == [root.name]  # no temp left
    together = tree(root)
    shutil.rmtree(root)
    finetune.make_subset(cfg)
    assert tree(root) == together and len(together) > 5


@pytest.mark.parametrize(
    ("overrides", "size", "capped"),
    [(("finetune.fraction_of=train", "finetune.fraction=0.25"), 3, False),  # 25 % of 12 training images
     (("finetune.fraction_of=train", "finetune.fraction=1.0"), 10, True),  # more than the 10 eligible ones
     (("finetune.fraction_of=eligible", "finetune.fraction=0.25"), 2, False)],  # 25 % of the 10 eligible
)  # fmt: skip
def test_the_fraction_is_of_the_training_set_or_of_the_eligible_images(
    make_config: Callable[..., Config], tiny_coco: Path, overrides: tuple[str, ...], size: int, capped: bool
) -> None:
    cfg = make_config(*TINY, *overrides, source=tiny_coco)
    anonymize.run(cfg, "mask")
    export.run(cfg, "mask")
    _, summary = finetune.make_subset(cfg)
    assert (summary["train_images"], summary["eligible_images"]) == (12, 10)
    assert (summary["subset_images"], summary["capped"]) == (size, capped)
    assert summary["fraction_of"] == cfg.finetune.fraction_of


def test_freeze_configs_are_checked_against_the_model(make_config: Callable[..., Config]) -> None:
    with pytest.raises(ConfigError, match=r"finetune\.freeze: bad: layer index outside 0\.\.23"):
        make_config("finetune.freeze.bad=[20, 30]")
    with pytest.raises(ValueError, match=r"freeze config 'nope' is not one of \['backbone', "):
        finetune.run(make_config(), "nope")
    from ultralytics import YOLO

    shorter = YOLO("yolov8n.yaml").model  # 23 layers (0..22): YOLOv10's head index 23 does not exist there
    assert check_layers(shorter, [0, 22]) == [0, 22]
    with pytest.raises(ValueError, match=r"layer index \[23\] does not exist: the model has layers 0\.\.22"):
        check_layers(shorter, list(range(11, 24)))
