"""Matplotlib figures written atomically, and the one confusion-matrix plot (validation, training, explain)."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

import numpy as np

from dfdc_core.io import write_atomic


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure, path: str | Path, dpi: int = 100) -> Path:
    """Save `figure` as PNG at `path` atomically and close it."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    pyplot().close(figure)
    write_atomic(path, buffer.getvalue())
    return Path(path)


def plot_confusion_matrix(matrix: np.ndarray, classes: Sequence[str], path: str | Path, title: str) -> Path:
    """Counts of true (rows) vs predicted (columns) classes, each true class's accuracy beside its name."""
    plt = pyplot()
    matrix = np.asarray(matrix)
    size = max(4.0, 1.1 * len(classes) + 1.5)
    figure, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues")
    for (i, j), count in np.ndenumerate(matrix):
        colour = "white" if count > matrix.max() / 2 else "black"
        ax.text(j, i, str(count), ha="center", va="center", fontsize=12, color=colour)
    totals = matrix.sum(axis=1)
    row_names = [f"{name}\n{matrix[i, i] / totals[i]:.0%} of {totals[i]}" if totals[i] else f"{name}\n(none)"
                 for i, name in enumerate(classes)]
    ax.set_xticks(range(len(classes)), list(classes), rotation=30, ha="right")
    ax.set_yticks(range(len(classes)), row_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=10)
    figure.tight_layout()
    return save_figure(figure, path)
