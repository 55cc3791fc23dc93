"""ROC and precision-recall curves, average precision and calibration of a binary classifier (numpy only).

Label 1 is 'Finding'. Curves have one point per distinct probability (tied probabilities move together),
ordered by decreasing threshold, after a first point at ``threshold = inf`` where nothing is predicted positive;
point ``i`` counts the rows with probability ``>= thresholds[i]`` (sklearn's convention for curve points), which
is the decision rule of :mod:`cxr.evaluation.metrics` (``p > t``) for any ``t`` just below ``thresholds[i]``.
Curves and average precision need both classes: with a single class (or no sample) they return ``None`` so that
callers can skip the plot or the number.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def _validate(labels, probabilities) -> tuple[np.ndarray, np.ndarray]:
    """Return (labels as bool, probabilities as float64), both 1-D and of equal length."""
    labels = np.asarray(labels).reshape(-1)
    probabilities = np.asarray(probabilities, dtype=np.float64).reshape(-1)
    if labels.shape != probabilities.shape:
        raise ValueError(f"{labels.size} labels but {probabilities.size} probabilities")
    if labels.size and not np.isin(labels, (0, 1)).all():
        raise ValueError("labels must be 0 (No Finding) or 1 (Finding)")
    if not np.isfinite(probabilities).all():
        raise ValueError("probabilities must be finite (no NaN or inf)")
    return labels.astype(bool), probabilities


def _both_classes(labels: np.ndarray) -> bool:
    return bool(labels.any() and (~labels).any())


def _cumulative_counts(labels: np.ndarray, probabilities: np.ndarray):
    """Thresholds (inf, then distinct probabilities decreasing) and the tp / fp counts at each of them."""
    order = np.argsort(-probabilities, kind="stable")
    scores, sorted_labels = probabilities[order], labels[order]
    # last position of each run of tied scores: every tied sample crosses the threshold together
    last = np.r_[np.flatnonzero(np.diff(scores) != 0), scores.size - 1]
    tp = np.r_[0, np.cumsum(sorted_labels)[last]]
    fp = np.r_[0, (last + 1) - tp[1:]]
    thresholds = np.r_[np.inf, scores[last]]
    return thresholds, tp.astype(np.int64), fp.astype(np.int64)


def roc_curve(labels, probabilities) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(fpr, tpr, thresholds) with thresholds decreasing from ``inf``; starts at (0, 0) and ends at (1, 1).

    Point ``i`` is the operating point of the rule ``probability >= thresholds[i]``. Returns None unless both
    classes are present. The trapezoid area under (fpr, tpr) equals :func:`cxr.evaluation.metrics.auroc`.
    """
    labels, probabilities = _validate(labels, probabilities)
    if not _both_classes(labels):
        return None
    thresholds, tp, fp = _cumulative_counts(labels, probabilities)
    return fp / fp[-1], tp / tp[-1], thresholds


def precision_recall_curve(labels, probabilities) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(precision, recall, thresholds) with thresholds decreasing from ``inf``; recall rises from 0 to 1.

    The first point (threshold ``inf``, nothing predicted positive) has precision 1 by convention, the last
    one (everything predicted positive) has precision = prevalence. Returns None unless both classes are present.
    """
    labels, probabilities = _validate(labels, probabilities)
    if not _both_classes(labels):
        return None
    thresholds, tp, fp = _cumulative_counts(labels, probabilities)
    predicted = tp + fp
    precision = np.divide(tp, predicted, out=np.ones(tp.shape, dtype=np.float64), where=predicted > 0)
    return precision, tp / tp[-1], thresholds


def average_precision(labels, probabilities) -> float | None:
    """Step-wise area under the precision-recall curve, ``sum_i (R_i - R_{i-1}) * P_i`` (no interpolation,
    as scikit-learn's ``average_precision_score``); 1.0 for a perfect ranking, the prevalence for a constant
    score. None unless both classes are present."""
    curve = precision_recall_curve(labels, probabilities)
    if curve is None:
        return None
    precision, recall, _ = curve
    return float(np.sum(np.diff(recall) * precision[1:]))


def calibration_bins(labels, probabilities, n_bins: int = 10) -> pd.DataFrame:
    """One row per equal-width bin on [0, 1] (``n_bins`` rows, empty bins included with count 0 and NaN means).

    Bin ``i`` holds probabilities in ``[i / n_bins, (i + 1) / n_bins)``; the last bin also holds 1.0.
    Columns: bin_low, bin_high, count, mean_probability, observed_rate (share of label 1 in the bin).
    """
    if int(n_bins) != n_bins or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")
    n_bins = int(n_bins)
    labels, probabilities = _validate(labels, probabilities)
    if probabilities.size and (probabilities.min() < 0 or probabilities.max() > 1):
        raise ValueError("calibration needs probabilities in [0, 1]")
    index = np.minimum(np.floor(probabilities * n_bins).astype(np.int64), n_bins - 1)
    count = np.bincount(index, minlength=n_bins)
    sum_probability = np.bincount(index, weights=probabilities, minlength=n_bins)
    sum_positive = np.bincount(index, weights=labels.astype(np.float64), minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_probability = np.where(count > 0, sum_probability / count, np.nan)
        observed_rate = np.where(count > 0, sum_positive / count, np.nan)
    edges = np.arange(n_bins + 1) / n_bins
    return pd.DataFrame(
        {
            "bin_low": edges[:-1],
            "bin_high": edges[1:],
            "count": count.astype(np.int64),
            "mean_probability": mean_probability,
            "observed_rate": observed_rate,
        }
    )


def expected_calibration_error(labels, probabilities, n_bins: int = 10) -> float:
    """``sum over bins of count / n * |observed_rate - mean_probability|`` on :func:`calibration_bins`;
    0 for a perfectly calibrated model, NaN when there is no sample."""
    bins = calibration_bins(labels, probabilities, n_bins)
    total = int(bins["count"].sum())
    if total == 0:
        return float("nan")
    filled = bins[bins["count"] > 0]
    gaps = (filled["observed_rate"] - filled["mean_probability"]).abs()
    return float((filled["count"] / total * gaps).sum())
