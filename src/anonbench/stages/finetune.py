"""finetune: the trained base model fine-tuned on an anonymized subset with one freeze config (Q6, Q7).

The subset (DESIGN.md): the anonymized training images (``finetune.variant``)
that contain a person and at least one size x frequency class (the eligible
images), from which a seeded random draw takes ``finetune.fraction`` of the
whole training split (``fraction_of: train``, the paper's "about 20 % of the
training set") or of the eligible images (``fraction_of: eligible``). A draw
larger than the eligible images takes them all and says so (``capped``). It is written once to
``data/finetune_subset/`` (a YOLO layout linked to the variant's export, its
dataset yaml, the image id map, ``class_counts.csv``, ``class_counts.png`` and
``summary.json``) and reused by every freeze config while its settings stay the
same. Fine-tunes that start together on one workspace (the KFP fan-out) may each
find it missing and build it: the draw is seeded, so their builds are identical,
and the first to move its folder in wins (one ``rename``, atomic on NFS too, no
lock); the others discard theirs and read the winner's, which nobody deletes
(``anonbench.io.atomic_dir``). Only a subset with other settings is replaced,
which happens in the repository after a parameter change, one ``dvc repro`` at a
time; a workspace holds one configuration. Whether the subset follows the full set is checked per class: the share
of images holding the class, subset against full set (max absolute
difference), and a chi-square of the subset's class occurrences against the
full set's proportions. Images carry several classes, so the p-value is
descriptive, not a test of independent draws.

Presence counts every annotation, crowd regions included, as prepare's
co-occurrence statistics do. The fine-tune itself starts from
``models/<base.variant>-<base.size>/weights/<train.checkpoint>.pt`` (the checkpoint
the grid reports) with the paper's
hyper-parameters and ``freeze=`` the config's layer list, checked against the
model's real layers; Ultralytics' resolved frozen parameters are logged, and so
is the mode of the BatchNorm layers inside the frozen layers (Ultralytics 8.4
keeps them in eval mode, so their running statistics stay the base model's).
"""

from __future__ import annotations

import io
import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from anonbench.coco import annotations_by_image, read_instances
from anonbench.coco_classes import PERSON
from anonbench.config import Config, finetune_model_id
from anonbench.families import DEFAULT_FAMILY
from anonbench.io import atomic_dir, atomic_write_bytes, atomic_write_json, atomic_write_text
from anonbench.stages.export import dataset_names, dataset_text, image_job, write_images
from anonbench.yolo import (
    TrainJob,
    check_layers,
    chosen_weights,
    dataset_yaml,
    export_root,
    image_ids_file,
    load_net,
    model_dir,
    require,
    runtime_args,
    train_tracked,
)

SUMMARY = "summary.json"
log = logging.getLogger(__name__)


def subset_root(cfg: Config) -> Path:
    """Where the fine-tune subset lives: ``data/finetune_subset/``."""
    return cfg.paths.data / "finetune_subset"


def _settings(cfg: Config) -> dict[str, Any]:
    """What the subset depends on; a stored subset with other settings is rebuilt."""
    ft = cfg.finetune
    return {
        "variant": ft.variant,
        "fraction": ft.fraction,
        "fraction_of": ft.fraction_of,
        "seed": cfg.seed,
        "split": cfg.data.train_split,
        "classes": cfg.classes.size_frequency_classes,
    }


def eligible_images(instances: dict[str, Any], classes: list[str]) -> dict[int, set[str]]:
    """Images that contain a person and at least one of ``classes``, with the selected classes they hold."""
    names = {int(c["id"]): c["name"] for c in instances["categories"]}
    selected = set(classes)
    eligible = {}
    for image_id, anns in annotations_by_image(instances).items():
        present = {names[a["category_id"]] for a in anns if a["category_id"] in names}
        if PERSON in present and present & selected:
            eligible[image_id] = present & selected
    return eligible


def subset_size(fraction: float, of: int, eligible: int) -> tuple[int, bool]:
    """How many images to draw: ``fraction`` of ``of`` images (at least one), at most the ``eligible`` ones.

    Returns:
        The size, and whether it was capped at the eligible count.
    """
    wanted = max(1, round(fraction * of))
    return min(wanted, eligible), wanted > eligible


def draw(image_ids: list[int], size: int, seed: int) -> list[int]:
    """A seeded random draw of ``size`` of ``image_ids``, sorted."""
    chosen = np.random.default_rng(seed).choice(sorted(image_ids), size=size, replace=False)
    return sorted(int(i) for i in chosen)


def class_counts(eligible: dict[int, set[str]], chosen: list[int], classes: list[str]) -> pd.DataFrame:
    """Images per class in the full set and in the subset, and each as a share of its images."""
    full = Counter(c for held in eligible.values() for c in held)
    subset = Counter(c for i in chosen for c in eligible[i])
    table = pd.DataFrame(
        {"class": classes, "full_images": [full[c] for c in classes], "subset_images": [subset[c] for c in classes]}
    )
    table["full_share"] = table["full_images"] / len(eligible)
    table["subset_share"] = table["subset_images"] / len(chosen)
    return table


def agreement(table: pd.DataFrame) -> dict[str, float]:
    """How closely the subset's per-class counts follow the full set's.

    Returns:
        ``max_abs_share_diff`` (largest difference of per-class image shares),
        ``chi2``, ``chi2_dof`` and ``chi2_p`` of the subset's class occurrences
        against the full set's proportions (classes absent from the full set left out).
    """
    from scipy.stats import chisquare

    present = table[table["full_images"] > 0]
    observed = present["subset_images"].to_numpy(dtype=float)
    expected = present["full_images"].to_numpy(dtype=float)
    expected *= observed.sum() / expected.sum()
    chi2, p = chisquare(observed, expected) if len(present) > 1 else (0.0, 1.0)
    return {
        "max_abs_share_diff": float((table["subset_share"] - table["full_share"]).abs().max()),
        "chi2": float(chi2),
        "chi2_dof": float(max(len(present) - 1, 0)),
        "chi2_p": float(p),
    }


def counts_figure(table: pd.DataFrame, title: str) -> bytes:
    """Figure-6-style bars: per class, the share of images holding it in the full set and in the subset."""
    import matplotlib.pyplot as plt

    shown = table.sort_values(["full_images", "class"], ascending=[False, True])
    x = np.arange(len(shown))
    fig, ax = plt.subplots(figsize=(14, 5))
    ax.bar(x - 0.2, 100 * shown["full_share"], width=0.4, label=f"full set ({shown['full_images'].sum()} class-images)")
    ax.bar(x + 0.2, 100 * shown["subset_share"], width=0.4, label=f"subset ({shown['subset_images'].sum()})")
    ax.set_xticks(x, shown["class"], rotation=90, fontsize=7)
    ax.set_ylabel("% of images with a person holding the class")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)
    return buffer.getvalue()


def make_subset(cfg: Config) -> tuple[list[Path], dict[str, Any]]:
    """Write (or reuse) the fine-tune subset of the exported anonymized variant.

    Args:
        cfg: Configuration (``finetune``, ``classes``, seed, link mode).

    Returns:
        The subset's files and its summary (settings, sizes, agreement statistics).

    Raises:
        FileNotFoundError: If the variant has not been exported.
        ValueError: If no training image holds a person and a selected class.
    """
    root, settings = subset_root(cfg), _settings(cfg)
    variant, split = settings["variant"], settings["split"]
    outputs = [root / name for name in ("dataset.yaml", f"image_ids_{split}.json", "class_counts.csv")]
    outputs += [root / "class_counts.png", root / SUMMARY, root / "images" / split, root / "labels" / split]
    if (root / SUMMARY).is_file():
        stored = json.loads((root / SUMMARY).read_text())
        if stored["settings"] == settings:
            return outputs, stored
    stale = root.exists()  # other settings (the repository after a change): replaced; missing: first one wins
    exported = export_root(cfg, variant)
    ids = json.loads(require(image_ids_file(cfg, variant, split), f"export --variant {variant}").read_text())
    by_id = {image_id: stem for stem, image_id in ids.items()}
    instances = read_instances(cfg.annotation_file(variant, split))
    eligible = {i: held for i, held in eligible_images(instances, settings["classes"]).items() if i in by_id}
    if not eligible:
        raise ValueError(f"{cfg.annotation_file(variant, split)}: no exported image has a person and a selected class")
    ft = cfg.finetune
    size, capped = subset_size(ft.fraction, len(ids) if ft.fraction_of == "train" else len(eligible), len(eligible))
    if capped:
        log.warning(
            "finetune subset: %s of the %d training images is more than the %d eligible ones; taking them all",
            ft.fraction,
            len(ids),
            len(eligible),
        )
    chosen = draw(list(eligible), size, cfg.seed)
    table = class_counts(eligible, chosen, settings["classes"])
    stats = agreement(table)
    absent = sorted(set(settings["classes"]) - {str(c["name"]) for c in instances["categories"]})
    summary = {
        "settings": settings,
        "fraction": ft.fraction,
        "fraction_of": ft.fraction_of,
        "train_images": len(ids),
        "eligible_images": len(eligible),
        "subset_images": len(chosen),
        "capped": capped,
        "classes_absent_from_dataset": absent,
        **stats,
    }
    files = {p.stem: p for p in (exported / "images" / split).iterdir()}
    with atomic_dir(root, replace=stale) as tmp:
        jobs = []
        for image_id in chosen:
            stem = by_id[image_id]
            lines = (exported / "labels" / split / f"{stem}.txt").read_text().splitlines()
            jobs.append(image_job(files[stem], tmp, root, split, cfg.export.link, lines))
        write_images(jobs, (split,), tmp, cfg.n_workers, f"finetune subset {variant}/{split}")
        val = f"../yolo/{variant}/images/{cfg.data.val_split}"
        comment = f"anonbench fine-tune subset of {variant!r}; paths are relative to this file"
        names = dataset_names(exported / "dataset.yaml")
        atomic_write_text(tmp / "dataset.yaml", dataset_text(f"images/{split}", val, names, comment))
        atomic_write_json(tmp / f"image_ids_{split}.json", {by_id[i]: i for i in chosen})
        atomic_write_text(tmp / "class_counts.csv", table.to_csv(index=False, lineterminator="\n"))
        title = (
            f"fine-tune subset of {variant}: {len(chosen)} of {len(eligible)} eligible images "
            f"({len(ids)} in {split}), "
            f"max |share diff| {stats['max_abs_share_diff']:.3f}, chi2 p {stats['chi2_p']:.3f}"
        )
        atomic_write_bytes(tmp / "class_counts.png", counts_figure(table, title))
        atomic_write_json(tmp / SUMMARY, summary)
    return outputs, json.loads((root / SUMMARY).read_text())  # a parallel fine-tune's may have won: the same draw


def finetune_args(cfg: Config, data: Path, layers: list[int]) -> dict[str, Any]:
    """The Ultralytics arguments of a fine-tune on the subset's dataset yaml ``data`` with ``layers`` frozen.

    docs/fidelity.md compares them, resolved over Ultralytics' defaults, with the authors' run.
    """
    ft = cfg.finetune
    return {
        **runtime_args(cfg),
        "data": str(data.resolve()),
        "epochs": ft.epochs,
        "batch": ft.batch,
        "optimizer": ft.optimizer,
        "lr0": ft.lr0,
        "lrf": ft.lrf,
        "momentum": ft.momentum,
        "weight_decay": ft.weight_decay,
        "warmup_epochs": ft.warmup_epochs,
        "warmup_momentum": ft.warmup_momentum,
        "freeze": layers,
    }


def run(cfg: Config, freeze_name: str) -> list[Path]:
    """Fine-tune the base model with freeze config ``freeze_name`` into ``models/ft-<freeze_name>/``.

    Args:
        cfg: Configuration (``finetune`` and the runtime settings of ``train``).
        freeze_name: A key of ``finetune.freeze``.

    Returns:
        The subset's files, then ``weights/best.pt``, ``weights/last.pt`` and ``train.json``.

    Raises:
        ValueError: For an unknown freeze config or a layer the base model does not have.
        FileNotFoundError: If the base model or the variant's export is missing.
    """
    ft = cfg.finetune
    if freeze_name not in ft.freeze:
        raise ValueError(f"freeze config {freeze_name!r} is not one of {sorted(ft.freeze)} (finetune.freeze)")
    base_id = f"{ft.base.variant}-{ft.base.size}"
    base = require(chosen_weights(cfg, base_id), f"train --variant {ft.base.variant} --size {ft.base.size}")
    layers = check_layers(load_net(base), ft.frozen_layers(freeze_name))
    require(dataset_yaml(cfg, ft.variant), f"export --variant {ft.variant}")
    subset, summary = make_subset(cfg)
    keys = ("train_images", "eligible_images", "subset_images", "max_abs_share_diff", "chi2", "chi2_p")
    stats = {k: summary[k] for k in keys}
    job = TrainJob(
        out_dir=model_dir(cfg, finetune_model_id(freeze_name)),
        start=str(base),
        args=finetune_args(cfg, subset_root(cfg) / "dataset.yaml", layers),
        stage="finetune",
        tags={
            "freeze": freeze_name,
            "train_data": ft.variant,
            "family": DEFAULT_FAMILY,  # the base model's: fine-tunes are YOLOv10's (freeze ranges of its layers)
            "model_size": ft.base.size,
            "base_model": base_id,
        },
        reads=[base, cfg.variant_root(ft.variant)],
        params={
            "freeze_config": freeze_name,
            "freeze_range": str(ft.freeze[freeze_name]),
            "subset_fraction": ft.fraction,
            "subset_fraction_of": ft.fraction_of,
            "checkpoint": cfg.train.checkpoint,
        },
        metrics={f"subset/{key}": float(value) for key, value in stats.items()},
        artifacts=[subset_root(cfg) / name for name in ("class_counts.csv", "class_counts.png", SUMMARY)],
    )
    return [*subset, *train_tracked(cfg, job)]
