"""Plots with matplotlib's Agg backend (no display needed): training curves and image grids.

Every figure is written atomically (temporary file, then rename).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from tnbc_pipeline.io import atomic_write_bytes  # noqa: E402


def _save(fig: plt.Figure, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def read_history(path: Path) -> list[dict[str, float]]:
    """history.csv rows, one per epoch (a resumed run may have logged an epoch twice: the last wins)."""
    if not path.exists():
        return []
    rows: dict[int, dict[str, float]] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            try:
                values = {k: float(v) for k, v in row.items() if k and v not in (None, "")}
            except ValueError:
                continue  # a line cut short by a kill
            if "epoch" in values:
                rows[int(values["epoch"])] = values
    return [rows[e] for e in sorted(rows)]


def plot_history(history: list[dict[str, float]], out_dir: Path) -> None:
    """train_losses.png (loss, val_loss) and train_metrics.png (every other metric, train and valid)."""
    if not history:
        return
    epochs = [int(r["epoch"]) + 1 for r in history]
    names = sorted({k.removeprefix("val_") for r in history for k in r} - {"epoch", "learning_rate", "lr"})
    for filename, keys in (("train_losses.png", [n for n in names if n == "loss"]),
                           ("train_metrics.png", [n for n in names if n != "loss"])):
        fig, ax = plt.subplots(figsize=(7, 4))
        for key in keys:
            for prefix, style in (("", "-"), ("val_", "--")):
                values = [r.get(prefix + key, np.nan) for r in history]
                if not np.all(np.isnan(values)):
                    ax.plot(epochs, values, style, marker=".", label=prefix + key)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        _save(fig, out_dir / filename)


def image_grid(rows: list[list[np.ndarray]], titles: list[str], path: Path, row_labels: list[str] | None = None) -> None:
    """A grid of images: each row a list of arrays (RGB uint8 / grey / float in [0, 1]), one title per column."""
    n_rows, n_cols = len(rows), len(titles)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(3 * n_cols, 3 * n_rows), squeeze=False)
    for r, row in enumerate(rows):
        for c, arr in enumerate(row):
            ax = axes[r][c]
            arr = np.squeeze(arr)
            ax.imshow(arr, cmap="gray" if arr.ndim == 2 else None, vmin=0, vmax=255 if arr.dtype == np.uint8 else 1)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(titles[c], fontsize=9)
            if c == 0 and row_labels:
                ax.set_ylabel(row_labels[r], fontsize=8)
    _save(fig, path)


def bar_chart(values: dict[str, list[float]], series: list[str], path: Path) -> None:
    """Grouped bars: one group per metric, one bar per series (e.g. fold), and the mean as a black tick."""
    names = list(values)
    fig, ax = plt.subplots(figsize=(1.4 * len(names) + 2, 4))
    width = 0.8 / max(1, len(series))
    for j, label in enumerate(series):
        ax.bar(np.arange(len(names)) + (j - (len(series) - 1) / 2) * width, [values[n][j] for n in names],
               width, label=label)
    for i, n in enumerate(names):
        ax.hlines(np.mean(values[n]), i - 0.4, i + 0.4, colors="black")
    ax.set_xticks(np.arange(len(names)), names)
    ax.set_ylim(0, 1)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, ncol=min(4, len(series)))
    _save(fig, path)
