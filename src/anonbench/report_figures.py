"""The report's chart types: grouped bars, heatmap panels, lines and stacked bars, written as PNG.

Missing values (None) are drawn as gaps, never as zeros, so an undefined AP is
not mistaken for a collapsed one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
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
    labels: Sequence[str], series: Mapping[str, Sequence[Value]], title: str, ylabel: str, path: Path
) -> Path:
    """One group of bars per label, one bar per series.

    Args:
        labels: Group names (x axis).
        series: Series name -> one value per label.
        title: Figure title.
        ylabel: Value axis label.
        path: PNG to write.

    Returns:
        ``path``.
    """
    fig, ax = _subplots(figsize=(max(6.0, 0.55 * len(labels) * max(1, len(series)) ** 0.5 + 2), 4.2))
    positions = np.arange(len(labels))
    width = 0.8 / max(1, len(series))
    for k, (name, values) in enumerate(series.items()):
        ax.bar(positions + (k - (len(series) - 1) / 2) * width, _nan(values), width, label=name)
    ax.set_xticks(positions, labels, rotation=35, ha="right")
    ax.axhline(0.0, color="#444", linewidth=0.6)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if len(series) > 1:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return save_png(fig, path)


def heatmaps(
    panels: Mapping[str, tuple[Sequence[str], Sequence[str], Sequence[Sequence[Value]]]],
    title: str,
    path: Path,
    diverging: bool = False,
) -> Path:
    """Annotated heatmaps side by side, one per panel (rows x columns of values).

    Args:
        panels: Panel title -> (row labels, column labels, values[row][column]).
        title: Figure title.
        path: PNG to write.
        diverging: Centre the colours on zero (for differences).

    Returns:
        ``path``.
    """
    count = max(1, len(panels))
    columns = min(count, 3)
    rows = math.ceil(count / columns)
    shapes = [(len(r), len(c)) for r, c, _ in panels.values()] or [(1, 1)]
    width = max(4.2, 0.75 * max(c for _, c in shapes) + 2.5)
    height = max(3.6, 0.32 * max(r for r, _ in shapes) + 2.6)
    fig, axes = _subplots(nrows=rows, ncols=columns, figsize=(width * columns, height * rows), squeeze=False)
    grids = [np.array([_nan(r) for r in values], dtype=float) for _, _, values in panels.values()]
    finite = np.concatenate([g[np.isfinite(g)] for g in grids]) if grids else np.array([])
    bound = float(np.abs(finite).max()) if finite.size else 1.0
    limits = (-bound, bound) if diverging else (0.0, max(bound, 1e-9))
    for ax, (name, (row_labels, col_labels, _)), grid in zip(axes.flat, panels.items(), grids, strict=False):
        image = ax.imshow(grid, cmap="RdBu" if diverging else "viridis", vmin=limits[0], vmax=limits[1])
        ax.set_xticks(range(len(col_labels)), col_labels, rotation=30, ha="right")
        ax.set_yticks(range(len(row_labels)), row_labels)
        ax.set_title(name, fontsize=9)
        for (i, j), value in np.ndenumerate(grid):
            text = "n/a" if math.isnan(value) else f"{value:+.3f}" if diverging else f"{value:.3f}"
            ax.text(j, i, text, ha="center", va="center", fontsize=7, color="black")
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
    fig, ax = _subplots(figsize=(7.5, 4.4))
    for name, points in series.items():
        ax.plot([x for x, _ in points], _nan([y for _, y in points]), marker="o", label=name)
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=7, ncol=2)
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
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.tick_params(axis="x", rotation=30)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_png(fig, path)
