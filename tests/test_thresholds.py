"""Tests for cxr.evaluation.thresholds (choosing a threshold on validation, applying it to test) and the
binary_metrics keys f1/ppv/npv and the argsort-based auroc of cxr.evaluation.metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchmetrics.functional.classification import binary_auroc

from cxr.evaluation.metrics import auroc, binary_metrics
from cxr.evaluation.thresholds import choose_threshold, sensitivity_threshold, youden_threshold

# sorted by probability; at each candidate threshold t (predict 1 when p > t; 0.0 is the one below the lowest):
#   t     0.0  0.10 0.20 0.30 0.35 0.40 0.60 0.70 0.80
#   sens  4/4  4/4  4/4  4/4  3/4  3/4  2/4  1/4  0/4
#   spec  0/4  1/4  2/4  3/4  3/4  4/4  4/4  4/4  4/4
#   J     0    .25  .50  .75  .50  .75  .50  .25  0    -> tie 0.30 / 0.40, 0.40 is closer to 0.5
VAL_LABELS = [0, 0, 0, 1, 0, 1, 1, 1]
VAL_PROBABILITIES = [0.1, 0.2, 0.3, 0.35, 0.4, 0.6, 0.7, 0.8]


def sensitivity(labels, probabilities, threshold) -> float:
    return binary_metrics(labels, probabilities, threshold)["accuracy_class1"]


# ------------------------------------------------------------------------------------------------ youden
def test_youden_unique_optimum():
    # negatives 0.2 0.3 0.6, positives 0.5 0.7 0.8 0.9; J of p > t at each candidate:
    #   0.2: 1/3 | 0.3: 1 + 2/3 - 1 = 2/3 | 0.5: 3/4 + 2/3 - 1 | 0.6: 3/4 + 1 - 1 = 3/4 (best) | 0.7: 1/2 | 0.8: 1/4
    labels = [0, 0, 1, 0, 1, 1, 1]
    probabilities = [0.2, 0.3, 0.5, 0.6, 0.9, 0.7, 0.8]
    assert youden_threshold(labels, probabilities) == 0.6
    j = {
        t: sensitivity(labels, probabilities, t) + binary_metrics(labels, probabilities, t)["accuracy_class0"] - 1
        for t in probabilities
    }
    assert max(j, key=j.get) == 0.6 and j[0.6] == pytest.approx(3 / 4)


def test_youden_tie_goes_to_threshold_closest_to_half():
    assert youden_threshold(VAL_LABELS, VAL_PROBABILITIES) == 0.4
    # shift everything so the tie is 0.50 / 0.60: 0.50 is closer
    shifted = [p + 0.2 for p in VAL_PROBABILITIES]
    assert youden_threshold(VAL_LABELS, shifted) == pytest.approx(0.5)


def test_youden_perfect_separation_and_order_invariance():
    rng = np.random.default_rng(0)
    labels = np.array([0] * 50 + [1] * 50)
    probabilities = np.concatenate([rng.uniform(0.0, 0.3, 50), rng.uniform(0.6, 1.0, 50)])
    threshold = youden_threshold(labels, probabilities)
    assert threshold == probabilities[:50].max()  # the highest negative score: J = 1, the only one with it
    metrics = binary_metrics(labels, probabilities, threshold)
    assert metrics["accuracy_class0"] == metrics["accuracy_class1"] == 1.0
    permutation = rng.permutation(100)
    assert youden_threshold(labels[permutation], probabilities[permutation]) == threshold


def test_youden_agrees_with_brute_force():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 300)
    probabilities = np.round(np.clip(rng.normal(0.4 + 0.2 * labels, 0.2), 0, 1), 2)
    best = max(
        (
            binary_metrics(labels, probabilities, t)["accuracy_class1"]
            + binary_metrics(labels, probabilities, t)["accuracy_class0"]
            - 1,
            -abs(t - 0.5),
            -t,
        )
        for t in np.unique(probabilities)
    )
    chosen = youden_threshold(labels, probabilities)
    m = binary_metrics(labels, probabilities, chosen)
    assert m["accuracy_class1"] + m["accuracy_class0"] - 1 == pytest.approx(best[0])
    assert abs(chosen - 0.5) == pytest.approx(-best[1])


# ----------------------------------------------------------------------------------------- sensitivity
@pytest.mark.parametrize("target, expected", [(1.0, 0.3), (0.75, 0.4), (0.7, 0.4), (0.5, 0.6), (0.25, 0.7), (0.0, 0.8)])
def test_sensitivity_threshold_hand_made(target, expected):
    assert sensitivity_threshold(VAL_LABELS, VAL_PROBABILITIES, target) == expected


def test_sensitivity_target_met_and_not_at_the_next_higher_candidate():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 2, 500)
    probabilities = np.round(np.clip(rng.normal(0.4 + 0.2 * labels, 0.2), 0, 1), 3)
    candidates = np.r_[0.0, np.unique(probabilities)]
    for target in (0.5, 0.8, 0.9, 0.95):
        threshold = sensitivity_threshold(labels, probabilities, target)
        assert threshold in candidates
        assert sensitivity(labels, probabilities, threshold) >= target
        higher = candidates[candidates > threshold]
        assert sensitivity(labels, probabilities, higher[0]) < target


def test_sensitivity_exact_fraction_is_met():
    # 5 positives: 0.8 = 4/5 exactly (floating 0.8 * 5 must not miss it)
    labels = [1, 1, 1, 1, 1, 0, 0]
    probabilities = [0.9, 0.8, 0.7, 0.6, 0.2, 0.1, 0.65]
    assert sensitivity_threshold(labels, probabilities, 0.8) == 0.2
    assert sensitivity(labels, probabilities, 0.2) == pytest.approx(0.8)


# ------------------------------------------------------------------------------------------ choose
def test_choose_threshold_methods():
    assert choose_threshold(VAL_LABELS, VAL_PROBABILITIES) == 0.4
    assert choose_threshold(VAL_LABELS, VAL_PROBABILITIES, "youden") == 0.4
    assert choose_threshold(VAL_LABELS, VAL_PROBABILITIES, "sensitivity", target_sensitivity=1.0) == 0.3
    assert choose_threshold(VAL_LABELS, VAL_PROBABILITIES, "fixed") == 0.5
    assert choose_threshold([1, 1], [0.2, 0.3], "fixed") == 0.5  # fixed needs no data
    assert isinstance(choose_threshold(np.array(VAL_LABELS), torch.tensor(VAL_PROBABILITIES)), float)


def test_choose_threshold_errors_name_the_bad_argument():
    with pytest.raises(ValueError, match="method"):
        choose_threshold(VAL_LABELS, VAL_PROBABILITIES, "roc")
    with pytest.raises(ValueError, match="target_sensitivity"):
        choose_threshold(VAL_LABELS, VAL_PROBABILITIES, "sensitivity")
    with pytest.raises(ValueError, match="target_sensitivity"):
        choose_threshold(VAL_LABELS, VAL_PROBABILITIES, "sensitivity", target_sensitivity=1.5)
    with pytest.raises(ValueError, match="target"):
        sensitivity_threshold(VAL_LABELS, VAL_PROBABILITIES, -0.1)
    with pytest.raises(ValueError, match="length"):
        youden_threshold([0, 1, 1], [0.1, 0.2])


@pytest.mark.parametrize("method, kwargs", [("youden", {}), ("sensitivity", {"target_sensitivity": 0.9})])
@pytest.mark.parametrize("label", [0, 1])
def test_single_class_set_raises(method, kwargs, label):
    with pytest.raises(ValueError, match="one class"):
        choose_threshold([label] * 4, [0.1, 0.4, 0.6, 0.9], method, **kwargs)


# -------------------------------------------------------------------------------------- transfer
def test_threshold_chosen_on_validation_applied_to_test():
    threshold = choose_threshold(VAL_LABELS, VAL_PROBABILITIES, "youden")
    assert threshold == 0.4
    # test set at 0.4:  0.35 (0) tn | 0.45 (0) fp | 0.41 (1) tp | 0.40 (1) fn (a tie is class 0) | 0.10 (0) tn |
    # 0.90 (1) tp
    test_labels = [0, 0, 1, 1, 0, 1]
    test_probabilities = [0.35, 0.45, 0.41, 0.40, 0.10, 0.90]
    metrics = binary_metrics(test_labels, test_probabilities, threshold=threshold)
    assert metrics["threshold"] == 0.4
    assert metrics["confusion_matrix"] == [[2, 1], [1, 2]]
    assert metrics["accuracy_class0"] == pytest.approx(2 / 3) and metrics["accuracy_class1"] == pytest.approx(2 / 3)
    # the default 0.5 would have called 0.41 and 0.45 negative
    assert binary_metrics(test_labels, test_probabilities)["confusion_matrix"] == [[3, 0], [2, 1]]
    # sensitivity 1.0 chosen on validation (0.3) finds every positive of the test set too
    high_sensitivity = choose_threshold(VAL_LABELS, VAL_PROBABILITIES, "sensitivity", target_sensitivity=1.0)
    assert binary_metrics(test_labels, test_probabilities, high_sensitivity)["confusion_matrix"] == [[1, 2], [0, 3]]


# ------------------------------------------------------------------------- binary_metrics additions
def test_f1_ppv_npv_hand_computed():
    # at 0.5: tn=4 fp=1 fn=2 tp=1 (0.5 counts as class 0: p > 0.5 is class 1)
    labels = [0, 0, 0, 0, 0, 1, 1, 1]
    probabilities = [0.1, 0.5, 0.3, 0.2, 0.6, 0.5, 0.9, 0.4]
    metrics = binary_metrics(labels, probabilities)
    assert metrics["confusion_matrix"] == [[4, 1], [2, 1]]
    assert metrics["ppv"] == pytest.approx(1 / 2)
    assert metrics["npv"] == pytest.approx(4 / 6)
    assert metrics["f1"] == pytest.approx(2 * 1 / (2 * 1 + 1 + 2))
    precision, recall = metrics["ppv"], metrics["accuracy_class1"]
    assert metrics["f1"] == pytest.approx(2 * precision * recall / (precision + recall))


def test_f1_ppv_npv_undefined_cases():
    nothing_predicted = binary_metrics([0, 1, 1], [0.1, 0.2, 0.3])  # tn=1 fn=2, no positive prediction
    assert nothing_predicted["ppv"] is None and nothing_predicted["npv"] == pytest.approx(1 / 3)
    assert nothing_predicted["f1"] == 0.0  # 2tp + fp + fn = 2 > 0
    only_negatives = binary_metrics([0, 0], [0.1, 0.2])  # tn=2 only
    assert only_negatives["f1"] is None and only_negatives["ppv"] is None and only_negatives["npv"] == 1.0
    everything_predicted = binary_metrics([0, 1], [0.7, 0.8])
    assert everything_predicted["npv"] is None and everything_predicted["ppv"] == 0.5
    assert binary_metrics([], [])["f1"] is None


@pytest.mark.parametrize("seed", [0, 1])
def test_auroc_matches_torchmetrics_on_large_data_with_ties(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 100_000)
    scores = np.round(np.clip(rng.normal(0.45 + 0.1 * labels, 0.2), 0, 1), 2)  # ~100 distinct values
    expected = binary_auroc(torch.tensor(scores), torch.tensor(labels)).item()
    assert auroc(labels, scores) == pytest.approx(expected, abs=1e-6)
    # order does not matter; a constant shift of the scores does not change the ranking
    permutation = rng.permutation(labels.size)
    assert auroc(labels[permutation], scores[permutation]) == pytest.approx(auroc(labels, scores), abs=1e-12)


def test_auroc_exact_half_tie_and_nan():
    assert auroc([0, 1], [0.3, 0.3]) == 0.5
    assert auroc([0, 1, 0, 1], [0.1, 0.2, 0.2, 0.4]) == pytest.approx(3.5 / 4)
    assert np.isnan(auroc([0, 1], [0.3, np.nan]))
    with pytest.raises(ValueError, match="length"):
        auroc([0, 1, 1], [0.3, 0.4])
