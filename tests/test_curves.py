"""Tests for cxr.evaluation.curves: ROC / PR curves, average precision, calibration bins and ECE."""

import numpy as np
import pandas as pd
import pytest

from cxr.evaluation.curves import (
    average_precision,
    calibration_bins,
    expected_calibration_error,
    precision_recall_curve,
    roc_curve,
)
from cxr.evaluation.metrics import auroc, binary_metrics


def _trapezoid(x, y) -> float:
    x, y = np.asarray(x), np.asarray(y)
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2))


def _random_with_ties(seed: int, n: int = 300):
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.35).astype(int)
    probabilities = np.clip(rng.normal(0.4 + 0.2 * labels, 0.2), 0, 1).round(1)  # only 11 distinct values
    return labels, probabilities


def test_roc_curve_hand_example():
    fpr, tpr, thresholds = roc_curve([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    np.testing.assert_allclose(fpr, [0, 0, 0.5, 0.5, 1])
    np.testing.assert_allclose(tpr, [0, 0.5, 0.5, 1, 1])
    np.testing.assert_array_equal(thresholds, [np.inf, 0.8, 0.4, 0.35, 0.1])


def test_roc_curve_ties_give_one_point_per_distinct_probability():
    fpr, tpr, thresholds = roc_curve([0, 1, 1, 0, 1], [0.2, 0.5, 0.5, 0.5, 0.9])
    np.testing.assert_array_equal(thresholds, [np.inf, 0.9, 0.5, 0.2])
    np.testing.assert_allclose(fpr, [0, 0, 0.5, 1])
    np.testing.assert_allclose(tpr, [0, 1 / 3, 1, 1])
    # all samples tied: straight from (0, 0) to (1, 1)
    fpr, tpr, thresholds = roc_curve([0, 1, 0, 1], [0.3] * 4)
    np.testing.assert_allclose(fpr, [0, 1])
    np.testing.assert_allclose(tpr, [0, 1])


@pytest.mark.parametrize("seed", range(5))
def test_roc_curve_shape_and_trapezoid_equals_auroc(seed):
    labels, probabilities = _random_with_ties(seed)
    fpr, tpr, thresholds = roc_curve(labels, probabilities)
    assert (fpr[0], tpr[0]) == (0.0, 0.0) and (fpr[-1], tpr[-1]) == (1.0, 1.0)
    assert np.all(np.diff(thresholds) < 0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    assert len(thresholds) == len(np.unique(probabilities)) + 1
    assert _trapezoid(fpr, tpr) == pytest.approx(auroc(labels, probabilities), abs=1e-12)


def test_roc_points_match_binary_metrics_at_each_threshold():
    labels, probabilities = _random_with_ties(7, n=120)
    fpr, tpr, thresholds = roc_curve(labels, probabilities)
    for f, t, threshold in zip(fpr[1:], tpr[1:], thresholds[1:]):
        # point i counts p >= thresholds[i]: the decision rule p > t for t just below it
        metrics = binary_metrics(labels, probabilities, np.nextafter(threshold, -np.inf))
        assert t == pytest.approx(metrics["accuracy_class1"])
        assert f == pytest.approx(1 - metrics["accuracy_class0"])


@pytest.mark.parametrize("labels, probabilities", [([1, 1, 1], [0.2, 0.5, 0.9]), ([0, 0], [0.1, 0.7]), ([], [])])
def test_single_class_or_empty_returns_none(labels, probabilities):
    assert roc_curve(labels, probabilities) is None
    assert precision_recall_curve(labels, probabilities) is None
    assert average_precision(labels, probabilities) is None


@pytest.mark.parametrize(
    "labels, probabilities",
    [
        ([0, 1, 1], [0.2, 0.5]),  # length mismatch
        ([0, 1], [0.2, np.nan]),  # NaN probability
        ([0, 2], [0.2, 0.4]),  # label outside {0, 1}
    ],
)
def test_invalid_inputs_raise(labels, probabilities):
    with pytest.raises(ValueError):
        roc_curve(labels, probabilities)
    with pytest.raises(ValueError):
        calibration_bins(labels, probabilities)


def test_precision_recall_curve_hand_example():
    precision, recall, thresholds = precision_recall_curve([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    np.testing.assert_array_equal(thresholds, [np.inf, 0.8, 0.4, 0.35, 0.1])
    np.testing.assert_allclose(recall, [0, 0.5, 0.5, 1, 1])
    np.testing.assert_allclose(precision, [1, 1, 0.5, 2 / 3, 0.5])
    # sum of (R_i - R_{i-1}) * P_i = 0.5 * 1 + 0.5 * 2/3 (scikit-learn gives 0.8333 too)
    assert average_precision([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(5 / 6)


def test_precision_recall_ties_and_last_point_is_prevalence():
    labels, probabilities = _random_with_ties(3)
    precision, recall, thresholds = precision_recall_curve(labels, probabilities)
    assert recall[0] == 0 and recall[-1] == 1 and precision[0] == 1
    assert precision[-1] == pytest.approx(np.mean(labels))
    assert np.all(np.diff(recall) >= 0) and np.all(np.diff(thresholds) < 0)


def test_average_precision_perfect_constant_and_brute_force():
    assert average_precision([0, 0, 1, 1, 1], [0.1, 0.2, 0.7, 0.8, 0.9]) == pytest.approx(1.0)
    assert average_precision([0, 1, 0, 1, 0], [0.5] * 5) == pytest.approx(0.4)  # constant score: prevalence
    rng = np.random.default_rng(11)
    labels = (rng.random(200) < 0.3).astype(int)
    probabilities = rng.random(200)  # no ties: AP = mean over positives of the precision at their rank
    order = np.argsort(-probabilities)
    hits = labels[order]
    precision_at_k = np.cumsum(hits) / np.arange(1, hits.size + 1)
    assert average_precision(labels, probabilities) == pytest.approx(precision_at_k[hits == 1].mean())


def test_calibration_bins_columns_edges_and_empty_bins():
    bins = calibration_bins([0, 1, 0, 1, 1], [0.0, 0.1, 0.5, 0.99, 1.0], n_bins=10)
    assert list(bins.columns) == ["bin_low", "bin_high", "count", "mean_probability", "observed_rate"]
    assert len(bins) == 10
    np.testing.assert_allclose(bins["bin_low"], np.arange(10) / 10)
    np.testing.assert_allclose(bins["bin_high"], np.arange(1, 11) / 10)
    assert bins["count"].tolist() == [1, 1, 0, 0, 0, 1, 0, 0, 0, 2]  # 1.0 falls into the last bin
    assert bins.loc[9, "mean_probability"] == pytest.approx(0.995)
    assert bins.loc[9, "observed_rate"] == 1.0 and bins.loc[5, "observed_rate"] == 0.0
    assert bins.loc[2, ["mean_probability", "observed_rate"]].isna().all()
    # a probability on an inner edge belongs to the bin it opens
    assert calibration_bins([1, 1], [0.3, 0.7])["count"].tolist() == [0, 0, 0, 1, 0, 0, 0, 1, 0, 0]


def test_calibration_bins_validation_and_empty_input():
    with pytest.raises(ValueError):
        calibration_bins([0, 1], [0.2, 1.2])
    with pytest.raises(ValueError):
        calibration_bins([0, 1], [0.2, 0.4], n_bins=0)
    empty = calibration_bins([], [], n_bins=5)
    assert len(empty) == 5 and empty["count"].sum() == 0
    assert np.isnan(expected_calibration_error([], []))


def test_expected_calibration_error_known_values():
    # perfectly calibrated binned data: 1 of 4 at 0.25, 3 of 4 at 0.75
    labels = [1, 0, 0, 0, 1, 1, 1, 0]
    probabilities = [0.25] * 4 + [0.75] * 4
    assert expected_calibration_error(labels, probabilities) == pytest.approx(0.0)
    # everything at 0.8 but only half are findings: |0.5 - 0.8| = 0.3
    assert expected_calibration_error([1, 0] * 10, [0.8] * 20) == pytest.approx(0.3)
    # two bins weighted by their counts: 3/4 * |0 - 0.1| + 1/4 * |1 - 0.6|
    assert expected_calibration_error([0, 0, 0, 1], [0.1, 0.1, 0.1, 0.6]) == pytest.approx(0.075 + 0.1)
    # n_bins matters: one bin averages everything (mean p 0.475, observed 0.5)
    assert expected_calibration_error([0, 0, 0, 1, 1, 1], [0.1] * 3 + [0.85] * 3, n_bins=1) == pytest.approx(0.025)


def test_calibration_bins_returns_dataframe_with_integer_counts():
    bins = calibration_bins([0, 1], [0.2, 0.4], n_bins=4)
    assert isinstance(bins, pd.DataFrame)
    assert pd.api.types.is_integer_dtype(bins["count"])
