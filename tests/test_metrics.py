"""Tests for cxr.evaluation.metrics: confusion matrix, (balanced) accuracy and AUROC of a binary classifier."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchmetrics.functional.classification import binary_auroc

from cxr.evaluation.metrics import auroc, binary_metrics

# labels 0: 0.1 0.5 0.3 0.2 0.6  -> at 0.5: tn=4 fp=1 (0.5 counts as class 0: p > 0.5 is class 1)
# labels 1: 0.5 0.9 0.4          -> at 0.5: tp=1 fn=2
LABELS = [0, 0, 0, 0, 0, 1, 1, 1]
PROBABILITIES = [0.1, 0.5, 0.3, 0.2, 0.6, 0.5, 0.9, 0.4]


def test_hand_computed_example():
    metrics = binary_metrics(LABELS, PROBABILITIES)
    assert metrics["confusion_matrix"] == [[4, 1], [2, 1]]
    assert metrics["n"] == 8 and metrics["n_class0"] == 5 and metrics["n_class1"] == 3
    assert metrics["threshold"] == 0.5
    assert metrics["accuracy"] == pytest.approx(5 / 8)
    assert metrics["accuracy_class0"] == pytest.approx(4 / 5)
    assert metrics["accuracy_class1"] == pytest.approx(1 / 3)
    assert metrics["balanced_accuracy"] == pytest.approx((4 / 5 + 1 / 3) / 2)
    assert metrics["predicted_class1_share"] == pytest.approx(2 / 8)
    # pairs (positive, negative) ranked right: 0.5 -> 3 + one tie; 0.9 -> 5; 0.4 -> 3  => 11.5 of 15
    assert metrics["auroc"] == pytest.approx(11.5 / 15)


def test_threshold_is_honoured_strictly_greater():
    at_06 = binary_metrics(LABELS, PROBABILITIES, threshold=0.6)
    assert at_06["confusion_matrix"] == [[5, 0], [2, 1]]  # 0.6 itself predicts class 0
    assert at_06["threshold"] == 0.6
    assert at_06["accuracy"] == pytest.approx(6 / 8)
    assert at_06["balanced_accuracy"] == pytest.approx((5 / 5 + 1 / 3) / 2)
    just_below = binary_metrics(LABELS, PROBABILITIES, threshold=0.5999999)
    assert just_below["confusion_matrix"] == [[4, 1], [2, 1]]
    # the threshold does not change the ranking metric
    assert at_06["auroc"] == just_below["auroc"] == binary_metrics(LABELS, PROBABILITIES)["auroc"]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auroc_matches_torchmetrics_with_ties(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size=300)
    scores = rng.integers(0, 8, size=300) / 8  # only 8 distinct values: many ties
    scores = np.clip(scores + 0.1 * labels, 0, 1)  # some signal
    expected = binary_auroc(torch.tensor(scores), torch.tensor(labels)).item()
    assert auroc(labels, scores) == pytest.approx(expected, abs=1e-6)
    assert 0.5 < auroc(labels, scores) < 1.0


def test_auroc_extremes():
    labels = np.array([0, 0, 1, 1, 0, 1])
    scores = np.array([0.1, 0.2, 0.8, 0.9, 0.3, 0.7])
    assert auroc(labels, scores) == 1.0
    assert auroc(labels, 1 - scores) == 0.0
    assert auroc(labels, np.full(6, 0.5)) == 0.5


@pytest.mark.parametrize("label", [0, 1])
def test_single_class(label):
    labels = np.full(5, label)
    assert auroc(labels, np.linspace(0, 1, 5)) is None
    metrics = binary_metrics(labels, np.linspace(0, 1, 5))
    assert metrics["auroc"] is None and metrics["balanced_accuracy"] is None
    present = "accuracy_class1" if label else "accuracy_class0"
    absent = "accuracy_class0" if label else "accuracy_class1"
    assert metrics[absent] is None and metrics[present] is not None


def test_always_finding_predictor():
    rng = np.random.default_rng(3)
    labels = (rng.random(500) < 0.37).astype(int)
    metrics = binary_metrics(labels, np.ones(500))
    assert metrics["accuracy"] == pytest.approx(labels.mean())
    assert metrics["accuracy_class0"] == 0.0 and metrics["accuracy_class1"] == 1.0
    assert metrics["balanced_accuracy"] == 0.5
    assert metrics["predicted_class1_share"] == 1.0
    assert metrics["confusion_matrix"] == [[0, int((labels == 0).sum())], [0, int(labels.sum())]]
    assert metrics["auroc"] == 0.5


def test_accepts_lists_tensors_and_bool_labels():
    from_lists = binary_metrics(LABELS, PROBABILITIES)
    from_tensors = binary_metrics(torch.tensor(LABELS), torch.tensor(PROBABILITIES, dtype=torch.float64))
    from_bools = binary_metrics(np.array(LABELS, dtype=bool), np.array(PROBABILITIES))
    assert from_lists == from_tensors == from_bools


def test_empty_input():
    metrics = binary_metrics([], [])
    assert metrics["n"] == 0 and metrics["accuracy"] is None and metrics["auroc"] is None
    assert metrics["confusion_matrix"] == [[0, 0], [0, 0]]
