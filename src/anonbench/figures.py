"""Matplotlib figures written reproducibly: same data, byte-identical PNG."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from anonbench.io import atomic_write_bytes


def save_png(fig: Any, path: Path, dpi: int = 110) -> Path:
    """Write a figure as PNG atomically, without the version stamp, and close it.

    Args:
        fig: A matplotlib Figure.
        path: Destination file.
        dpi: Resolution.

    Returns:
        ``path``.
    """
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, metadata={"Software": None})
    plt.close(fig)
    return atomic_write_bytes(path, buffer.getvalue())
