"""Draw the thesis' figures: Appendix A training curves and Appendix B confusion matrices.

Everything works on ``matplotlib.figure.Figure`` objects with the Agg canvas and never touches
pyplot's global state, so it is thread-safe and never opens a window.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

_PANELS = (("acc", "model accuracy", "accuracy"), ("loss", "model loss", "loss"))
_SPLITS = (("train", "train"), ("val", "validation"))


def _new_figure(figsize) -> Figure:
    """Return a Figure bound to an Agg canvas (no pyplot, no window)."""
    figure = Figure(figsize=figsize)
    FigureCanvasAgg(figure)
    return figure


def confusion_matrix_figure(cm, normalize: bool = False, title: str = "Confusion matrix",
                            class_names=("No Finding", "Finding")) -> Figure:
    """Thesis Appendix B style confusion matrix: Blues colormap, colorbar, count (or row-normalised, 2 decimals) in each cell, white text on dark cells (threshold = max/1.3 as in the thesis code), 'True label' y axis, 'Predicted label' x axis, ticks with class names, x ticks rotated 45."""
    names = [str(name) for name in class_names]
    matrix = np.asarray(cm, dtype=float)
    if matrix.shape != (len(names), len(names)):
        raise ValueError(f"confusion matrix of shape {matrix.shape} does not match {len(names)} class names")
    if normalize:
        sums = matrix.sum(axis=1, keepdims=True)
        matrix = np.divide(matrix, sums, out=np.zeros_like(matrix), where=sums > 0)
        fmt = ".2f"
    else:
        fmt = "d" if np.all(matrix == np.round(matrix)) else ".2f"
    figure = _new_figure((5.5, 5))
    ax = figure.add_subplot()
    image = ax.imshow(matrix, interpolation="nearest", cmap="Blues")
    figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ax.set_title(title)
    ticks = np.arange(len(names))
    ax.set_xticks(ticks, names, rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticks(ticks, names)
    threshold = matrix.max() / 1.3
    for i, j in np.ndindex(matrix.shape):
        value = int(round(matrix[i, j])) if fmt == "d" else matrix[i, j]
        ax.text(j, i, format(value, fmt), ha="center", va="center",
                color="white" if matrix[i, j] > threshold else "black")
    ax.set_ylabel("True label")
    ax.set_xlabel("Predicted label")
    figure.tight_layout()
    return figure


def training_curves_figure(history) -> Figure:
    """Appendix A style: two panels side by side, accuracy per epoch (train and validation) and loss per epoch (train and validation)."""
    figure = _new_figure((11, 4.5))
    if history is None or len(history) == 0:
        ax = figure.add_subplot()
        ax.set_axis_off()
        ax.text(0.5, 0.5, "no completed epoch", ha="center", va="center", fontsize=14, transform=ax.transAxes)
        return figure
    epochs = history["epoch"] if "epoch" in history else np.arange(len(history))
    for index, (metric, title, ylabel) in enumerate(_PANELS, start=1):
        ax = figure.add_subplot(1, 2, index)
        for split, label in _SPLITS:
            column = f"{split}/{metric}"
            if column in history:
                values = history[column].astype(float)
                mask = values.notna().to_numpy()
                if mask.any():
                    ax.plot(np.asarray(epochs)[mask], values.to_numpy()[mask], marker="o", label=label)
        if ax.lines:
            ax.legend(loc="best")
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    figure.tight_layout()
    return figure


def save_figure(figure: Figure, path) -> Path:
    """Write a PNG atomically (to a temporary file in the same folder, then os.replace) at 100 dpi with tight bbox; create parent folders; return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        figure.savefig(temporary, format="png", dpi=100, bbox_inches="tight")
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path
