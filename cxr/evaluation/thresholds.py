"""Choosing a decision threshold on one set (validation) to apply unchanged to another (test).

A probability > threshold predicts class 1, as everywhere in cxr (``cxr.evaluation.metrics.predicted_class``).
The candidate thresholds are the distinct predicted probabilities of the set the threshold is chosen on (each
calls the rows strictly above it class 1), and one below the lowest (every row class 1).
"""

from __future__ import annotations

import numpy as np

METHODS = ("youden", "sensitivity", "fixed")
FIXED_THRESHOLD = 0.5


def _candidates(labels, probabilities) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
    """Candidate thresholds (ascending: one below the lowest probability, then the distinct probabilities); at each,
    the numbers of true positives and true negatives (integers) of the rule p > threshold; the numbers of class-1
    and class-0 rows."""
    labels = np.asarray(labels).reshape(-1)
    probabilities = np.asarray(probabilities, dtype=np.float64).reshape(-1)
    if labels.shape != probabilities.shape:
        raise ValueError(f"labels and probabilities differ in length: {labels.size} != {probabilities.size}")
    if np.isnan(probabilities).any():
        raise ValueError("probabilities contain NaN")
    numeric = labels.astype(np.float64)
    if not np.isin(numeric, (0.0, 1.0)).all():
        raise ValueError("labels must be 0/1")
    positive = numeric == 1.0
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(
            f"a threshold cannot be chosen on a set with one class ({n_neg} of class 0, {n_pos} of class 1)"
        )
    values, levels = np.unique(probabilities, return_inverse=True)
    levels = levels.reshape(-1)
    positives = np.bincount(levels[positive], minlength=values.size)
    negatives = np.bincount(levels[~positive], minlength=values.size)
    # threshold values[i]: rows at levels > i are predicted positive
    true_positives = n_pos - np.cumsum(positives)
    true_negatives = np.cumsum(negatives)
    below = 0.0 if values[0] > 0 else float(np.nextafter(0.0, -1.0))  # every row above it: all predicted positive
    return (np.r_[below, values], np.r_[n_pos, true_positives], np.r_[0, true_negatives], n_pos, n_neg)


def youden_threshold(labels, probabilities) -> float:
    """The candidate threshold maximising sensitivity + specificity - 1 (Youden's J); among equally good
    ones the closest to 0.5 (the lower one when two are equally close)."""
    values, true_positives, true_negatives, n_pos, n_neg = _candidates(labels, probabilities)
    # J * n_pos * n_neg in integers, so that equal J compare equal
    scaled_j = true_positives * n_neg + true_negatives * n_pos
    best = np.flatnonzero(scaled_j == scaled_j.max())
    distance = np.abs(values[best] - 0.5)
    return float(values[best[np.flatnonzero(distance == distance.min())[0]]])


def sensitivity_threshold(labels, probabilities, target: float) -> float:
    """The highest candidate threshold whose sensitivity (class-1 accuracy, prediction = probability >
    threshold) is >= target."""
    if target is None or not 0.0 <= float(target) <= 1.0:
        raise ValueError(f"target (sensitivity) must lie in [0, 1], got {target!r}")
    values, true_positives, _, n_pos, _ = _candidates(labels, probabilities)
    # true_positives / n_pos >= target, in integers up to a rounding tolerance of the target
    reached = np.flatnonzero(true_positives >= float(target) * n_pos - 1e-9)
    return float(values[reached[-1]])  # sensitivity does not increase with the threshold


def choose_threshold(labels, probabilities, method: str = "youden", target_sensitivity: float | None = None) -> float:
    """A threshold chosen on (labels, probabilities) by ``method``: "youden" (youden_threshold),
    "sensitivity" (sensitivity_threshold with ``target_sensitivity``) or "fixed" (0.5, data unused)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method == "fixed":
        return FIXED_THRESHOLD
    if method == "youden":
        return youden_threshold(labels, probabilities)
    if target_sensitivity is None:
        raise ValueError('target_sensitivity is required with method="sensitivity"')
    if not 0.0 <= float(target_sensitivity) <= 1.0:
        raise ValueError(f"target_sensitivity must lie in [0, 1], got {target_sensitivity!r}")
    return sensitivity_threshold(labels, probabilities, target_sensitivity)
