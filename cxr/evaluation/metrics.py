"""Threshold and ranking metrics of a binary classifier from labels and predicted probabilities."""
from __future__ import annotations

import numpy as np
import pandas as pd


def auroc(labels, scores) -> float | None:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties); None with a single class."""
    labels = np.asarray(labels).astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = pd.Series(np.asarray(scores, dtype=np.float64)).rank(method="average").to_numpy()
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _ratio(numerator: int, denominator: int) -> float | None:
    return numerator / denominator if denominator else None


def binary_metrics(labels, probabilities, threshold: float = 0.5) -> dict:
    """Counts, accuracy, per-class accuracy (class 0 = specificity, class 1 = sensitivity), AUROC and the
    confusion matrix ``[[tn, fp], [fn, tp]]``; a probability >= threshold predicts class 1."""
    labels = np.asarray(labels).astype(int)
    predicted = (np.asarray(probabilities, dtype=np.float64) >= threshold).astype(int)
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
        "auroc": auroc(labels, probabilities),
        "predicted_class1_share": _ratio(fp + tp, len(labels)),
        "confusion_matrix": [[tn, fp], [fn, tp]],
    }
