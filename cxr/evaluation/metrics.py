"""Threshold and ranking metrics of a binary classifier from labels and predicted probabilities.

The decision rule, used everywhere in cxr (training metrics via torchmetrics, evaluation, bootstrap, operating
points, figures, reports): a probability **strictly above** the threshold is class 1, ``p > 0.5``, as torchmetrics
and Keras' ``predict_classes``. A tie (``p == 0.5``, what an untrained or dead network outputs) is class 0.
"""

from __future__ import annotations

import numpy as np


def predicted_class(probabilities, threshold: float = 0.5) -> np.ndarray:
    """0/1 predictions by the one decision rule of cxr: class 1 where ``probability > threshold``."""
    return (np.asarray(probabilities, dtype=np.float64) > threshold).astype(np.int64)


def auroc(labels, scores) -> float | None:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties); None with a single class.

    Ranks come from one stable argsort; tied scores share the average of their ranks, so a tie between a
    positive and a negative counts one half. Integer arithmetic up to the final division keeps it exact.
    A NaN score cannot be ranked: the result is then NaN."""
    labels = np.asarray(labels).astype(bool).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if scores.shape != labels.shape:
        raise ValueError(f"labels and scores differ in length: {labels.size} != {scores.size}")
    n_pos = int(labels.sum())
    n_neg = int(labels.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        return None
    if np.isnan(scores).any():
        return float("nan")
    order = np.argsort(scores, kind="stable")
    ordered = scores[order]
    first_of_group = np.empty(ordered.size, dtype=bool)
    first_of_group[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=first_of_group[1:])
    starts = np.flatnonzero(first_of_group)  # 0-based position of each group of tied scores
    ends = np.append(starts[1:], ordered.size)  # exclusive
    positives_per_group = np.add.reduceat(labels[order].astype(np.int64), starts)
    # a group covers the 1-based ranks starts+1 .. ends: twice their average is starts + 1 + ends
    twice_rank_sum = int((positives_per_group * (starts + 1 + ends)).sum())
    twice_u = twice_rank_sum - n_pos * (n_pos + 1)
    return twice_u / (2 * n_pos * n_neg)


def _ratio(numerator: int, denominator: int) -> float | None:
    return numerator / denominator if denominator else None


def binary_metrics(labels, probabilities, threshold: float = 0.5) -> dict:
    """Counts, accuracy, per-class accuracy (class 0 = specificity, class 1 = sensitivity), F1, positive and
    negative predictive value, AUROC and the confusion matrix ``[[tn, fp], [fn, tp]]``; a probability >
    threshold predicts class 1 (``predicted_class``). A ratio whose denominator is zero is None."""
    labels = np.asarray(labels).astype(int)
    predicted = predicted_class(probabilities, threshold)
    tn = int(((labels == 0) & (predicted == 0)).sum())
    fp = int(((labels == 0) & (predicted == 1)).sum())
    fn = int(((labels == 1) & (predicted == 0)).sum())
    tp = int(((labels == 1) & (predicted == 1)).sum())
    class0, class1 = _ratio(tn, tn + fp), _ratio(tp, tp + fn)
    balanced = (class0 + class1) / 2 if class0 is not None and class1 is not None else None
    return {
        "n": int(len(labels)),
        "n_class0": tn + fp,
        "n_class1": tp + fn,
        "threshold": float(threshold),
        "accuracy": _ratio(tn + tp, len(labels)),
        "accuracy_class0": class0,
        "accuracy_class1": class1,
        "balanced_accuracy": balanced,
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "ppv": _ratio(tp, tp + fp),
        "npv": _ratio(tn, tn + fn),
        "auroc": auroc(labels, probabilities),
        "predicted_class1_share": _ratio(fp + tp, len(labels)),
        "confusion_matrix": [[tn, fp], [fn, tp]],
    }
