"""Draw the thesis' figures (Appendix A training curves, Appendix B confusion matrices) and diagnostic figures
of a binary classifier: ROC / precision-recall with operating points, reliability diagram, probability histograms
per true class, and a ROC overlay of several runs. Operating points and thresholds use the rule of
:mod:`cxr.evaluation.metrics`: a probability ``> threshold`` predicts 'Finding'.

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

from cxr.evaluation.curves import (
    _validate,
    average_precision,
    calibration_bins,
    expected_calibration_error,
    precision_recall_curve,
    roc_curve,
)
from cxr.evaluation.metrics import auroc, predicted_class

_PANELS = (("acc", "model accuracy", "accuracy"), ("loss", "model loss", "loss"), ("auroc", "model AUROC", "AUROC"))
_SPLITS = (("train", "train"), ("val", "validation"))
CLASS_NAMES = ("No Finding", "Finding")
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
_LINESTYLES = ("--", "-.", ":", (0, (5, 1, 1, 1, 1, 1)))
_CHANCE = {"color": "grey", "linestyle": "--", "linewidth": 1}


def _new_figure(figsize) -> Figure:
    """Return a Figure bound to an Agg canvas (no pyplot, no window)."""
    figure = Figure(figsize=figsize)
    FigureCanvasAgg(figure)
    return figure


def confusion_matrix_figure(
    cm, normalize: bool = False, title: str = "Confusion matrix", class_names=("No Finding", "Finding")
) -> Figure:
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
        ax.text(
            j, i, format(value, fmt), ha="center", va="center", color="white" if matrix[i, j] > threshold else "black"
        )
    ax.set_ylabel("True label")
    ax.set_xlabel("Predicted label")
    figure.tight_layout()
    return figure


def training_curves_figure(history, title: str = "", scored_epoch: int | None = None, scored_by: str = "") -> Figure:
    """Appendix A style panels side by side, per epoch (counted from 1): accuracy, loss and AUROC, train and
    validation where logged; the scored epoch (``scored_epoch``, chosen by ``scored_by``) marked on each panel."""
    figure = _new_figure((16, 4.5))
    if title:
        figure.suptitle(title)
    if history is None or len(history) == 0:
        ax = figure.add_subplot()
        ax.set_axis_off()
        ax.text(0.5, 0.5, "no completed epoch", ha="center", va="center", fontsize=14, transform=ax.transAxes)
        return figure
    epochs = history["epoch"] if "epoch" in history else np.arange(1, len(history) + 1)
    for index, (metric, panel_title, ylabel) in enumerate(_PANELS, start=1):
        ax = figure.add_subplot(1, len(_PANELS), index)
        for split, label in _SPLITS:
            column = f"{split}/{metric}"
            if column in history:
                values = history[column].astype(float)
                mask = values.notna().to_numpy()
                if mask.any():
                    ax.plot(np.asarray(epochs)[mask], values.to_numpy()[mask], marker="o", label=label)
        if not ax.lines:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        elif scored_epoch is not None:
            ax.axvline(
                scored_epoch,
                color="grey",
                linestyle="--",
                linewidth=1.5,
                label=f"scored: epoch {scored_epoch}" + (f" ({scored_by})" if scored_by else ""),
            )
        if ax.lines:
            ax.legend(loc="best", fontsize="small")
        ax.set_title(panel_title)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    figure.tight_layout()
    return figure


def _point_label(name, threshold) -> str:
    """``"name (t=0.43)"``; more digits where two decimals would round a threshold inside (0, 1) to 0 or 1."""
    threshold = float(threshold)
    text = f"{threshold:.2f}"
    for decimals in range(3, 9):
        if float(text) not in (0.0, 1.0) or threshold in (0.0, 1.0):
            break
        text = f"{threshold:.{decimals}f}"
    return f"{name} (t={text})"


def _note(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=12, transform=ax.transAxes)


def _unit_axes(ax, xlabel: str, ylabel: str, title: str) -> None:
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)


def _operating_point(labels, probabilities, threshold) -> tuple[float, float, float]:
    """(fpr, tpr = recall, precision) of ``probability > threshold``; precision NaN when nothing is positive."""
    predicted = predicted_class(probabilities, threshold).astype(bool)
    tp, fp = int((predicted & labels).sum()), int((predicted & ~labels).sum())
    precision = tp / (tp + fp) if tp + fp else float("nan")
    return fp / int((~labels).sum()), tp / int(labels.sum()), precision


def roc_pr_figure(labels, probabilities, operating_points: dict[str, float] | None = None, title: str = "") -> Figure:
    """Two panels: ROC (chance diagonal, AUROC in the legend) and precision-recall (prevalence baseline,
    average precision in the legend). Each operating point ``name -> threshold`` gets its own marker on both
    panels, labelled ``"name (t=0.43)"`` (on the PR panel only in the legend when nothing is predicted positive).
    With a single class both panels say so instead of drawing curves."""
    labels, probabilities = _validate(labels, probabilities)
    figure = _new_figure((11, 4.8))
    roc_ax, pr_ax = figure.add_subplot(1, 2, 1), figure.add_subplot(1, 2, 2)
    _unit_axes(roc_ax, "false positive rate (1 - specificity)", "true positive rate (sensitivity)", "ROC curve")
    _unit_axes(pr_ax, "recall (sensitivity)", "precision (PPV)", "Precision-recall curve")
    if title:
        figure.suptitle(title)
    roc, pr = roc_curve(labels, probabilities), precision_recall_curve(labels, probabilities)
    if roc is None or pr is None:
        for ax in (roc_ax, pr_ax):
            _note(ax, "needs both classes")
        figure.tight_layout()
        return figure
    roc_ax.plot([0, 1], [0, 1], label="chance", **_CHANCE)
    roc_ax.plot(roc[0], roc[1], color="C0", linewidth=2, label=f"ROC (AUROC = {auroc(labels, probabilities):.3f})")
    prevalence = float(labels.mean())
    pr_ax.axhline(prevalence, label=f"prevalence = {prevalence:.2f}", **_CHANCE)
    pr_ax.plot(
        pr[1],
        pr[0],
        color="C0",
        linewidth=2,
        drawstyle="steps-pre",
        label=f"PR (AP = {average_precision(labels, probabilities):.3f})",
    )
    for index, (name, threshold) in enumerate((operating_points or {}).items()):
        fpr, tpr, precision = _operating_point(labels, probabilities, threshold)
        style = {
            "marker": _MARKERS[index % len(_MARKERS)],
            "color": f"C{index % 9 + 1}",
            "markersize": 9,
            "markeredgecolor": "black",
            "linestyle": "none",
            "label": _point_label(name, threshold),
        }
        roc_ax.plot([fpr], [tpr], **style)
        pr_ax.plot([tpr], [precision], **style)
    roc_ax.legend(loc="lower right", fontsize="small")
    pr_ax.legend(loc="best", fontsize="small")
    figure.tight_layout()
    return figure


def calibration_figure(labels, probabilities, n_bins: int = 10, title: str = "") -> Figure:
    """Reliability diagram: observed rate of 'Finding' against mean predicted probability per bin (points and
    line) with the perfect-calibration diagonal and ECE in the legend; bin counts as light bars underneath."""
    bins = calibration_bins(labels, probabilities, n_bins)
    figure = _new_figure((6, 6.5))
    grid = figure.add_gridspec(2, 1, height_ratios=(3, 1), hspace=0.08)
    ax = figure.add_subplot(grid[0])
    count_ax = figure.add_subplot(grid[1], sharex=ax)
    _unit_axes(ax, "", "observed rate of Finding", title or "Reliability diagram")
    ax.tick_params(labelbottom=False)
    ax.plot([0, 1], [0, 1], label="perfectly calibrated", **_CHANCE)
    filled = bins[bins["count"] > 0]
    if filled.empty:
        _note(ax, "no sample")
    else:
        ece = expected_calibration_error(labels, probabilities, n_bins)
        ax.plot(
            filled["mean_probability"],
            filled["observed_rate"],
            marker="o",
            color="C0",
            linewidth=2,
            label=f"model (ECE = {ece:.3f})",
        )
    ax.legend(loc="upper left", fontsize="small")
    count_ax.bar(
        bins["bin_low"],
        bins["count"],
        width=bins["bin_high"] - bins["bin_low"],
        align="edge",
        color="C0",
        alpha=0.3,
        edgecolor="C0",
        label="count",
    )
    count_ax.set_xlabel("mean predicted probability of Finding")
    count_ax.set_ylabel("count")
    count_ax.grid(alpha=0.3)
    figure.subplots_adjust(left=0.13, right=0.96, top=0.94, bottom=0.09)
    return figure


def probability_histogram_figure(
    labels, probabilities, thresholds: dict[str, float] | None = None, title: str = ""
) -> Figure:
    """Histograms of the predicted probability per true class ('No Finding', 'Finding'; semi-transparent,
    the same 20 bins on [0, 1], each class normalised to its share so that a rare class stays visible; n in the
    legend) and a vertical line per threshold ``name -> t``. A collapsed model shows all mass in one spot."""
    labels, probabilities = _validate(labels, probabilities)
    figure = _new_figure((8, 4.8))
    ax = figure.add_subplot()
    edges = np.linspace(0, 1, 21)
    for value, name in enumerate(CLASS_NAMES):
        values = probabilities[labels == bool(value)]
        weights = np.full(values.shape, 1 / max(values.size, 1))
        ax.hist(
            values,
            bins=edges,
            weights=weights,
            alpha=0.5,
            color=f"C{value}",
            edgecolor=f"C{value}",
            label=f"{name} (n={values.size})",
        )
    for index, (name, threshold) in enumerate((thresholds or {}).items()):
        ax.axvline(
            threshold,
            color=f"C{index % 8 + 2}",
            linewidth=2,
            linestyle=_LINESTYLES[index % len(_LINESTYLES)],
            label=_point_label(name, threshold),
        )
    ax.set_xlim(0, 1)
    ax.set_xlabel("predicted probability of Finding")
    ax.set_ylabel("share of the true class")
    ax.set_title(title or "Predicted probability by true class")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    figure.tight_layout()
    return figure


def roc_overlay_figure(curves: dict[str, tuple], title: str = "") -> Figure:
    """One ROC line per run (``name -> (labels, probabilities)``) with its AUROC in the legend, plus the chance
    diagonal; a run with a single class is listed as 'AUROC n/a' without a line."""
    figure = _new_figure((6.5, 6))
    ax = figure.add_subplot()
    _unit_axes(ax, "false positive rate (1 - specificity)", "true positive rate (sensitivity)", title or "ROC curves")
    ax.plot([0, 1], [0, 1], label="chance", **_CHANCE)
    for index, (name, (labels, probabilities)) in enumerate(curves.items()):
        roc = roc_curve(labels, probabilities)
        if roc is None:
            ax.plot([], [], color=f"C{index % 10}", label=f"{name} (AUROC n/a)")
        else:
            ax.plot(
                roc[0],
                roc[1],
                color=f"C{index % 10}",
                linewidth=2,
                label=f"{name} (AUROC = {auroc(labels, probabilities):.3f})",
            )
    if not curves:
        _note(ax, "no runs")
    ax.legend(loc="lower right", fontsize="small")
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
