"""The report's chart types: grouped bars, heatmap panels, lines, stacked bars and box plots, written as PNG.

Missing values (None: undefined or void) are drawn as gaps, never as zeros, so
an undefined AP is not mistaken for a collapsed one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from anonbench.figures import save_png

Value = float | None


def _nan(values: Sequence[Value]) -> list[float]:
    return [math.nan if v is None else float(v) for v in values]


def _subplots(**kwargs: Any) -> tuple[Any, Any]:
    import matplotlib.pyplot as plt

    return plt.subplots(**kwargs)


def grouped_bars(
    labels: Sequence[str],
    series: Mapping[str, Sequence[Value]],
    title: str,
    ylabel: str,
    path: Path,
    colors: Sequence[str] | None = None,
    levels: Mapping[str, float] | None = None,
) -> Path:
    """One group of bars per label, one bar per series.

    Args:
        labels: Group names (x axis).
        series: Series name -> one value per label.
        title: Figure title.
        ylabel: Value axis label.
        path: PNG to write.
        colors: One colour per series (default: matplotlib's cycle).
        levels: Named horizontal reference lines (for example the frequency group borders).

    Returns:
        ``path``.
    """
    fig, ax = _subplots(figsize=(_width(labels, series, 0.55), 4.2))
    positions = np.arange(len(labels))
    width = 0.8 / max(1, len(series))
    for k, (name, values) in enumerate(series.items()):
        color = None if colors is None else colors[k]
        ax.bar(positions + (k - (len(series) - 1) / 2) * width, _nan(values), width, label=name, color=color)
    for name, level in (levels or {}).items():
        ax.axhline(level, color="#777", linestyle="--", linewidth=0.8)
        ax.text(len(labels) - 0.5, level, name, ha="right", va="bottom", fontsize=7, color="#555")
    ax.axhline(0.0, color="#444", linewidth=0.6)
    return _finish(fig, ax, labels, title, ylabel, path, len(series) > 1)


def _width(labels: Sequence[str], series: Mapping[str, Any], per_group: float) -> float:
    """Figure width in inches for grouped bars or boxes: grows with the groups, at most a report page (14 in)."""
    return min(14.0, max(6.0, per_group * len(labels) * max(1, len(series)) ** 0.5 + 2.5))


def _finish(fig: Any, ax: Any, labels: Sequence[str], title: str, ylabel: str, path: Path, legend: bool) -> Path:
    """Label the groups of a bar or box chart (upright when there are many), title it, legend beside it, write it."""
    many = len(labels) > 16
    ax.set_xticks(range(len(labels)), labels, rotation=90 if many else 35, ha="center" if many else "right")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if legend:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    return save_png(fig, path)


@dataclass(frozen=True)
class Panel:
    """One heatmap: values[row][column]; ``diverging`` centres the colours on zero (differences)."""

    rows: Sequence[str]
    columns: Sequence[str]
    values: Sequence[Sequence[Value]]
    diverging: bool = False


def heatmaps(panels: Mapping[str, Panel], title: str, path: Path, digits: int = 1) -> Path:
    """Annotated heatmaps side by side, one per panel; panels of one kind (absolute, difference) share a scale.

    Values are percentages or percentage points: a colour scale spans at least 1.

    Args:
        panels: Panel title -> panel.
        title: Figure title.
        path: PNG to write.
        digits: Decimals of the printed values (differences carry a sign).

    Returns:
        ``path``.
    """
    count = max(1, len(panels))
    columns = min(count, 3)
    rows = math.ceil(count / columns)
    shapes = [(len(p.rows), len(p.columns)) for p in panels.values()] or [(1, 1)]
    width = max(4.2, 0.75 * max(c for _, c in shapes) + 2.5)
    height = max(3.6, 0.32 * max(r for r, _ in shapes) + 2.6)
    fig, axes = _subplots(nrows=rows, ncols=columns, figsize=(min(14.0, width * columns), height * rows), squeeze=False)
    grids = {name: np.array([_nan(r) for r in p.values], dtype=float) for name, p in panels.items()}
    bounds = {}
    for kind in (False, True):
        chosen = [grids[n][np.isfinite(grids[n])] for n, p in panels.items() if p.diverging == kind]
        finite = np.concatenate(chosen) if chosen else np.array([])
        bounds[kind] = max(float(np.abs(finite).max()), 1.0) if finite.size else 1.0  # percent: at least 1
    for ax, (name, panel) in zip(axes.flat, panels.items(), strict=False):
        grid, bound = grids[name], bounds[panel.diverging]
        limits = (-bound, bound) if panel.diverging else (0.0, bound)
        image = ax.imshow(grid, cmap="RdBu" if panel.diverging else "viridis", vmin=limits[0], vmax=limits[1])
        ax.set_xticks(range(len(panel.columns)), panel.columns, rotation=30, ha="right")
        ax.set_yticks(range(len(panel.rows)), panel.rows)
        ax.set_title(name, fontsize=9)
        for (i, j), value in np.ndenumerate(grid):
            sign = "+" if panel.diverging else ""
            text = "n/a" if math.isnan(value) else f"{value:{sign}.{digits}f}"
            # Light text on the dark ends of the colour map, dark text elsewhere.
            share = (value - limits[0]) / (limits[1] - limits[0]) if not math.isnan(value) else 0.5
            dark = abs(share - 0.5) > 0.3 if panel.diverging else share < 0.45
            ax.text(j, i, text, ha="center", va="center", fontsize=7, color="white" if dark else "black")
        fig.colorbar(image, ax=ax, shrink=0.75)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    return save_png(fig, path)


def lines(
    series: Mapping[str, Sequence[tuple[float, Value]]], title: str, xlabel: str, ylabel: str, path: Path, logx: bool
) -> Path:
    """One line (with markers) per series over a shared x axis.

    Args:
        series: Name -> (x, y) points.
        title: Figure title.
        xlabel: x axis label.
        ylabel: y axis label.
        path: PNG to write.
        logx: Logarithmic x axis.

    Returns:
        ``path``.
    """
    fig, ax = _subplots(figsize=(9.5, 4.4))
    for name, points in series.items():
        ax.plot([x for x, _ in points], _nan([y for _, y in points]), marker="o", label=name)
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    return save_png(fig, path)


def stacked_bars(
    labels: Sequence[str], stacks: Mapping[str, Sequence[float]], title: str, ylabel: str, path: Path
) -> Path:
    """One bar per label made of stacked parts.

    Args:
        labels: Bar names.
        stacks: Part name -> one value per bar.
        title: Figure title.
        ylabel: Value axis label.
        path: PNG to write.

    Returns:
        ``path``.
    """
    fig, ax = _subplots(figsize=(max(5.0, 1.1 * len(labels) + 2), 4.2))
    bottom = np.zeros(len(labels))
    for name, values in stacks.items():
        ax.bar(labels, values, bottom=bottom, label=name)
        bottom += np.asarray(values, dtype=float)
    return _finish(fig, ax, labels, title, ylabel, path, legend=True)


def grouped_boxes(
    labels: Sequence[str], series: Mapping[str, Sequence[Sequence[float]]], title: str, ylabel: str, path: Path
) -> Path:
    """Box plots of distributions: one group per label, one box per series (an empty one is left out).

    Args:
        labels: Group names (x axis).
        series: Series name -> one list of values per label.
        title: Figure title.
        ylabel: Value axis label.
        path: PNG to write.

    Returns:
        ``path``.
    """
    fig, ax = _subplots(figsize=(_width(labels, series, 0.5), 4.4))
    width = 0.8 / max(1, len(series))
    colours = [f"C{k}" for k in range(len(series))]
    for k, (name, groups) in enumerate(series.items()):
        filled = [(i, list(values)) for i, values in enumerate(groups) if len(values)]
        if not filled:
            continue
        positions = [i + (k - (len(series) - 1) / 2) * width for i, _ in filled]
        parts = ax.boxplot(
            [values for _, values in filled], positions=positions, widths=width * 0.9, patch_artist=True,
            showfliers=True, flierprops={"markersize": 2},
        )  # fmt: skip
        for box in parts["boxes"]:
            box.set_facecolor(colours[k])
            box.set_alpha(0.6)
        ax.plot([], [], color=colours[k], linewidth=6, alpha=0.6, label=name)
    ax.set_xlim(-0.6, len(labels) - 0.4)
    return _finish(fig, ax, labels, title, ylabel, path, len(series) > 1)


@dataclass(frozen=True)
class Scatter:
    """One scatter panel: its x axis and, per series, labelled points ``(label, x, y)``; a None is not drawn."""

    xlabel: str
    series: Mapping[str, Sequence[tuple[str, Value, Value]]]


def scatters(
    panels: Mapping[str, Scatter], title: str, ylabel: str, path: Path, levels: Mapping[str, float] | None = None
) -> Path:
    """Labelled scatter plots side by side sharing the y axis, one marker and colour per series.

    Args:
        panels: Panel title -> panel.
        title: Figure title.
        ylabel: The shared y axis label.
        path: PNG to write.
        levels: Named horizontal reference lines drawn in every panel (for example chance levels).

    Returns:
        ``path``.
    """
    fig, axes = _subplots(ncols=max(1, len(panels)), figsize=(min(14.0, 5.2 * len(panels) + 1.5), 4.4), sharey=True,
                          squeeze=False)  # fmt: skip
    markers = "os^Dv"
    for ax, (name, panel) in zip(axes.flat, panels.items(), strict=False):
        for k, (series, points) in enumerate(panel.series.items()):
            shown = [(label, x, y) for label, x, y in points if x is not None and y is not None]
            ax.scatter([x for _, x, _ in shown], [y for _, _, y in shown], marker=markers[k % len(markers)],
                       color=f"C{k}", label=series)  # fmt: skip
            for label, x, y in shown:
                ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7)
        for level_name, level in (levels or {}).items():
            ax.axhline(level, color="#777", linestyle="--", linewidth=0.8)
            ax.text(1.0, level, level_name, transform=ax.get_yaxis_transform(), ha="right", va="bottom", fontsize=7,
                    color="#555")  # fmt: skip
        ax.margins(0.12)  # room for the labels of the outermost points
        ax.set_xlabel(panel.xlabel)
        ax.set_title(name, fontsize=9)
    axes.flat[0].set_ylabel(ylabel)
    axes.flat[-1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.suptitle(title)
    fig.tight_layout()
    return save_png(fig, path)


def image_row(
    images: Mapping[str, np.ndarray], boxes: Sequence[Sequence[float]], boxed: str, title: str, path: Path
) -> Path:
    """Whole images side by side (RGB, or one channel shown in greys), boxes ``x, y, w, h`` drawn on one of them.

    Args:
        images: Panel title -> the image (H x W x 3 uint8 RGB, or H x W values).
        boxes: Boxes in the images' pixels.
        boxed: The panel the boxes are drawn on.
        title: Figure title.
        path: PNG to write.

    Returns:
        ``path``.
    """
    import matplotlib.patches as patches

    fig, axes = _subplots(ncols=len(images), figsize=(4.2 * len(images), 3.6), squeeze=False)
    for ax, (name, image) in zip(axes.flat, images.items(), strict=True):
        ax.imshow(image, cmap=None if image.ndim == 3 else "gray", interpolation="antialiased")
        if name == boxed:
            for x, y, w, h in boxes:
                ax.add_patch(patches.Rectangle((x, y), w, h, fill=False, edgecolor="#00e000", linewidth=1.2))
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    return save_png(fig, path)
