"""Aggregates and figures of the ssim stage's tables: per class and use-case group, whole image vs box.

Two scopes: ``with_person`` (images with a ground-truth person, the paper's
setting) and ``all`` (every measured image). A class's ``image`` entry
describes the whole images that contain the class, its ``box`` entry the
class's boxes, so the two sit side by side; boxes that overlap the anonymized
region are also described apart from those that do not (changed objects vs
neighbours of changed people).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from anonbench.figures import save_png
from anonbench.ssim_fast import COMPONENTS

SCOPES = ("with_person", "all")


def _number(value: Any) -> float | None:
    """A JSON-safe float: None for NaN (an empty selection)."""
    return None if value is None or math.isnan(value) else float(value)


def describe(frame: pd.DataFrame) -> dict[str, Any]:
    """Count, mean and median of SSIM, l, c, s over the rows whose SSIM is defined.

    Args:
        frame: Rows of a box or image table.

    Returns:
        ``{"count": n, "ssim": {"mean": .., "median": ..}, "luminance": {...}, ...}``; None for no rows.
    """
    valid = frame[frame["ssim"].notna()]
    stats: dict[str, Any] = {"count": len(valid)}
    for name in COMPONENTS:
        stats[name] = {"mean": _number(valid[name].mean()), "median": _number(valid[name].median())}
    return stats


def _side_by_side(images: pd.DataFrame, boxes: pd.DataFrame, classes: Iterable[str]) -> dict[str, Any]:
    """Whole images containing any of ``classes`` next to the boxes of those classes."""
    chosen = boxes[boxes["category"].isin(list(classes))]
    return {
        "image": describe(images[images["image_id"].isin(chosen["image_id"])]),
        "box": describe(chosen),
        "box_overlapping_anonymized": describe(chosen[chosen["inside_anonymized"] > 0]),
        "box_outside_anonymized": describe(chosen[chosen["inside_anonymized"] == 0]),
    }


def read_tables(folder: Path, split: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The image table and the box table of one split."""
    return pd.read_parquet(folder / f"{split}_images.parquet"), pd.read_parquet(folder / f"{split}_boxes.parquet")


def split_summary(folder: Path, split: str, groups: dict[str, list[str]]) -> dict[str, Any]:
    """Aggregates of one split's tables per scope: overall, per class, per use-case group.

    Args:
        folder: ``data/ssim/<variant>``.
        split: Split name.
        groups: Use-case groups (``classes.use_case_groups``): name to class names.

    Returns:
        ``{scope: {"image", "box", "undefined_boxes", "classes", "use_case_groups"}}`` for each of :data:`SCOPES`.
    """
    images, boxes = read_tables(folder, split)
    summary: dict[str, Any] = {}
    for scope in SCOPES:
        chosen = images[images["has_person"]] if scope == "with_person" else images
        in_scope = boxes[boxes["image_id"].isin(chosen["image_id"])]
        summary[scope] = {
            "image": describe(chosen),
            "box": describe(in_scope),
            "undefined_boxes": int(in_scope["ssim"].isna().sum()),
            "classes": {
                name: _side_by_side(chosen, in_scope, [name]) for name in sorted(in_scope["category"].unique())
            },
            "use_case_groups": {
                group: {"classes": list(classes), **_side_by_side(chosen, in_scope, classes)}
                for group, classes in groups.items()
            },
        }
    return summary


def _distributions(images: pd.DataFrame, boxes: pd.DataFrame, title: str) -> Any:
    """Histograms of SSIM, l, c, s: whole images with a person vs the boxes in them."""
    import matplotlib.pyplot as plt

    chosen = images[images["has_person"]]
    in_scope = boxes[boxes["image_id"].isin(chosen["image_id"]) & boxes["ssim"].notna()]
    fig, axes = plt.subplots(1, len(COMPONENTS), figsize=(14, 3.4))
    for ax, name in zip(axes, COMPONENTS, strict=True):
        for frame, label in ((chosen, "whole image"), (in_scope, "boxes")):
            values = frame[name].dropna()
            if len(values):
                ax.hist(values, bins=40, histtype="step", density=True, label=f"{label} (n={len(values)})")
        ax.set_title(name)
        ax.set_xlabel(name)
    axes[0].set_ylabel("density")
    axes[-1].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def _grouped_bars(entries: dict[str, dict[str, Any]], title: str, components: tuple[str, ...], horizontal: bool) -> Any:
    """Mean whole-image SSIM next to the mean box SSIM (and factors) per class or group."""
    import matplotlib.pyplot as plt
    import numpy as np

    names = {"ssim": "SSIM"}
    series = [("image", "ssim", "whole image SSIM"), *(("box", c, f"box {names.get(c, c)}") for c in components)]
    labels = list(entries)
    positions = np.arange(len(labels))
    width = 0.8 / len(series)
    size = (8, 0.3 * len(labels) + 1.5) if horizontal else (max(6, 1.6 * len(labels)), 4.5)
    fig, ax = plt.subplots(figsize=size)
    for k, (level, name, legend) in enumerate(series):
        values = [entries[label][level][name]["mean"] for label in labels]
        heights = [math.nan if v is None else v for v in values]
        offsets = positions + (k - (len(series) - 1) / 2) * width
        (ax.barh if horizontal else ax.bar)(offsets, heights, width, label=legend)
    if horizontal:
        ax.set_yticks(positions, labels)
        ax.invert_yaxis()
        ax.set_xlabel("mean")
    else:
        ax.set_xticks(positions, labels, rotation=20)
        ax.set_ylabel("mean")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title(title)
    fig.tight_layout()
    return fig


def write_figures(folder: Path, split: str, summary: dict[str, Any], figures: Path) -> list[Path]:
    """Distributions, use-case groups and per-class means of one split, as PNG.

    Args:
        folder: ``data/ssim/<variant>``.
        split: Split name.
        summary: :func:`split_summary` of the split.
        figures: Output folder.

    Returns:
        The figures written.
    """
    images, boxes = read_tables(folder, split)
    scope = summary["with_person"]
    variant = folder.name
    return [
        save_png(
            _distributions(images, boxes, f"{variant} vs original, {split}"), figures / f"{split}_distributions.png"
        ),
        save_png(
            _grouped_bars(
                scope["use_case_groups"], f"{variant}, {split}: use-case groups", COMPONENTS, horizontal=False
            ),
            figures / f"{split}_use_case_groups.png",
        ),
        save_png(
            _grouped_bars(scope["classes"], f"{variant}, {split}: per class", ("ssim",), horizontal=True),
            figures / f"{split}_classes.png",
        ),
    ]
