"""Tests for cxr.evaluation.bootstrap: patient-level bootstrap intervals and the paired AUROC difference."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from torchmetrics.functional.classification import binary_auroc

from cxr.evaluation.bootstrap import (
    CI_METRICS,
    PatientResampler,
    _AurocTable,
    paired_auroc_difference,
    patient_bootstrap,
    patient_codes,
    resample_indices,
)
from cxr.evaluation.metrics import auroc, binary_metrics


def clustered(n_patients: int = 60, images: int = 20, seed: int = 0):
    """Each patient: ``images`` images with one label and near-identical scores (a patient-level score)."""
    rng = np.random.default_rng(seed)
    patient_label = rng.integers(0, 2, n_patients)
    patient_score = np.clip(0.5 + 0.15 * (patient_label - 0.5) + rng.normal(0, 0.15, n_patients), 0, 1)
    labels = np.repeat(patient_label, images)
    scores = np.clip(np.repeat(patient_score, images) + rng.normal(0, 1e-3, n_patients * images), 0, 1)
    patients = np.repeat([f"p{i:03d}" for i in range(n_patients)], images)
    return labels, scores, patients


def width(result: dict, metric: str) -> float:
    return result[metric]["ci_high"] - result[metric]["ci_low"]


# ------------------------------------------------------------------------------------------------ shape
def test_result_layout_and_point_estimates():
    labels, scores, patients = clustered(n_patients=30, images=3)
    result = patient_bootstrap(labels, scores, patients, threshold=0.5, n_resamples=200)
    assert set(result) == set(CI_METRICS) | {"n_resamples", "n_patients"}
    assert result["n_resamples"] == 200 and result["n_patients"] == 30
    assert type(result["n_resamples"]) is int and type(result["n_patients"]) is int
    point = binary_metrics(labels, scores, 0.5)
    for metric in CI_METRICS:
        entry = result[metric]
        assert set(entry) == {"value", "ci_low", "ci_high"}
        assert all(type(v) is float for v in entry.values()), (metric, entry)
        assert entry["value"] == pytest.approx(point[metric])
        assert entry["ci_low"] <= entry["ci_high"]


# -------------------------------------------------------------------------------------- known answers
def test_perfect_classifier_has_degenerate_interval():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 400)
    scores = np.where(labels == 1, 0.6 + 0.4 * rng.random(400), 0.4 * rng.random(400))
    result = patient_bootstrap(labels, scores, np.arange(400) // 2, n_resamples=300)
    for metric in ("auroc", "accuracy", "balanced_accuracy", "f1", "ppv", "npv"):
        assert result[metric] == {"value": 1.0, "ci_low": 1.0, "ci_high": 1.0}, metric


def test_uninformative_classifier_interval_contains_half_and_is_narrow():
    rng = np.random.default_rng(2)
    n = 6000
    labels = rng.integers(0, 2, n)
    scores = rng.random(n)  # independent of the labels
    result = patient_bootstrap(labels, scores, np.arange(n), n_resamples=500, seed=3)
    assert result["auroc"]["ci_low"] < 0.5 < result["auroc"]["ci_high"]
    assert width(result, "auroc") < 0.05  # normal theory: 2 * 1.96 * ~0.0075 = 0.029
    assert result["balanced_accuracy"]["ci_low"] < 0.5 < result["balanced_accuracy"]["ci_high"]


def test_accuracy_interval_matches_binomial_normal_interval():
    rng = np.random.default_rng(4)
    n = 2000
    labels = rng.integers(0, 2, n)
    correct = rng.random(n) < 0.8
    predicted = np.where(correct, labels, 1 - labels)
    scores = np.where(predicted == 1, 0.75, 0.25)
    result = patient_bootstrap(labels, scores, np.arange(n), n_resamples=2000, seed=5)
    p = correct.mean()
    half = 1.96 * math.sqrt(p * (1 - p) / n)  # ~0.0175
    assert result["accuracy"]["value"] == pytest.approx(p)
    assert result["accuracy"]["ci_low"] == pytest.approx(p - half, abs=0.15 * half)
    assert result["accuracy"]["ci_high"] == pytest.approx(p + half, abs=0.15 * half)


def test_level_widens_interval():
    labels, scores, patients = clustered(seed=6)
    narrow = patient_bootstrap(labels, scores, patients, n_resamples=400, level=0.8)
    wide = patient_bootstrap(labels, scores, patients, n_resamples=400, level=0.99)
    assert width(wide, "auroc") > width(narrow, "auroc") > 0


# --------------------------------------------------------------------------------- patient resampling
def test_patient_interval_is_wider_than_image_interval():
    """20 near-copies per patient carry the information of one patient: resampling images would pretend
    there are 20 times as many independent cases and give an interval ~sqrt(20) ~ 4.5 times too narrow."""
    labels, scores, patients = clustered(n_patients=60, images=20, seed=7)
    by_patient = patient_bootstrap(labels, scores, patients, n_resamples=500, seed=8)
    by_image = patient_bootstrap(labels, scores, np.arange(len(labels)), n_resamples=500, seed=8)
    assert by_patient["n_patients"] == 60 and by_image["n_patients"] == 1200
    assert by_patient["auroc"]["value"] == by_image["auroc"]["value"]  # same data, same point estimate
    for metric in ("auroc", "accuracy", "balanced_accuracy"):
        assert width(by_patient, metric) > 2.5 * width(by_image, metric), metric


def test_resample_takes_whole_patients():
    rng = np.random.default_rng(9)
    codes = rng.integers(0, 50, 400)  # patients 0..49 with different numbers of rows, rows interleaved
    sizes = np.bincount(codes, minlength=50)
    resampler = PatientResampler(codes)
    assert resampler.n_patients == len(np.unique(codes))
    for draw in range(20):
        indices = resample_indices(codes, np.random.default_rng(draw))
        taken = np.bincount(codes[indices], minlength=50)
        times_drawn = taken[sizes > 0] / sizes[sizes > 0]
        assert np.all(times_drawn == np.round(times_drawn)), "a patient was taken only in part"
        assert times_drawn.sum() == resampler.n_patients  # as many patient draws as patients
        for patient in np.unique(codes[indices]):  # every row of a drawn patient, each equally often
            rows = np.flatnonzero(codes == patient)
            counts = np.bincount(indices, minlength=len(codes))[rows]
            assert np.all(counts == counts[0]) and counts[0] >= 1
    assert times_drawn.max() > 1  # with replacement: some patient twice (all but certain with 50 draws)


def test_resample_indices_equals_resampler_draw_and_varies():
    codes = np.repeat(np.arange(30), 3)
    first = resample_indices(codes, np.random.default_rng(0))
    assert np.array_equal(first, PatientResampler(codes).draw(np.random.default_rng(0)))
    assert not np.array_equal(first, resample_indices(codes, np.random.default_rng(1)))


def test_missing_patient_ids_are_their_own_patients():
    patients = ["a", None, "b", np.nan, "a", pd.NA, "b", None]
    codes = patient_codes(patients)
    assert codes[0] == codes[4] and codes[2] == codes[6]
    assert len(set(codes[[1, 3, 5, 7]])) == 4 and not set(codes[[1, 3, 5, 7]]) & {codes[0], codes[2]}
    assert len(np.unique(codes)) == 6
    labels = [0, 1, 0, 1, 0, 1, 1, 0]
    scores = np.linspace(0.1, 0.8, 8)
    assert patient_bootstrap(labels, scores, patients, n_resamples=20)["n_patients"] == 6
    float_ids = pd.Series([1.0, np.nan, 1.0, np.nan])
    assert patient_bootstrap([0, 1, 1, 0], [0.1, 0.9, 0.8, 0.2], float_ids, n_resamples=20)["n_patients"] == 3


def test_resample_metrics_match_binary_metrics_on_the_resampled_rows():
    """The fast per-resample AUROC (counts per distinct score) equals auroc() on the materialised rows."""
    labels, scores, patients = clustered(n_patients=40, images=5, seed=10)
    scores = np.round(scores, 2)  # ties
    table = _AurocTable(labels, scores)
    resampler = PatientResampler(patient_codes(patients))
    rng = np.random.default_rng(11)
    for _ in range(20):
        indices = resampler.draw(rng)
        expected = auroc(labels[indices], scores[indices])
        assert np.isnan(table(indices)) if expected is None else table(indices) == pytest.approx(expected)


def test_single_class_resamples_are_skipped_for_auroc():
    # 3 patients: one positive patient -> a resample without it (8/27) has no AUROC
    labels = [1, 0, 0, 0, 0]
    scores = [0.9, 0.2, 0.3, 0.1, 0.4]
    patients = ["pos", "n1", "n1", "n2", "n2"]
    result = patient_bootstrap(labels, scores, patients, n_resamples=200)
    assert result["auroc"] == {"value": 1.0, "ci_low": 1.0, "ci_high": 1.0}
    only_negatives = patient_bootstrap([0, 0, 0], [0.1, 0.6, 0.3], ["a", "b", "c"], n_resamples=50)
    assert only_negatives["auroc"] == {"value": None, "ci_low": None, "ci_high": None}
    assert only_negatives["accuracy_class1"] == {"value": None, "ci_low": None, "ci_high": None}
    assert only_negatives["accuracy"]["value"] == pytest.approx(2 / 3)


# ------------------------------------------------------------------------------------------- inputs
def test_inputs_as_lists_arrays_series_and_tensors_agree():
    labels, scores, patients = clustered(n_patients=20, images=2, seed=12)
    reference = patient_bootstrap(labels, scores, patients, n_resamples=100)
    index = np.arange(len(labels))[::-1]  # a non-default index must not matter (positions count)
    assert patient_bootstrap(list(labels), list(scores), list(patients), n_resamples=100) == reference
    assert (
        patient_bootstrap(
            pd.Series(labels, index=index),
            pd.Series(scores, index=index),
            pd.Series(patients, index=index),
            n_resamples=100,
        )
        == reference
    )
    assert patient_bootstrap(torch.tensor(labels).bool(), torch.tensor(scores), patients, n_resamples=100) == reference


@pytest.mark.parametrize(
    "call",
    [
        lambda: patient_bootstrap([0, 1, 1], [0.1, 0.2], ["a", "b", "c"]),
        lambda: patient_bootstrap([0, 1], [0.1, 0.2], ["a", "b", "c"]),
        lambda: paired_auroc_difference([0, 1], [0.1, 0.2], [0.1], ["a", "b"]),
    ],
)
def test_unequal_lengths_raise(call):
    with pytest.raises(ValueError, match="equal lengths"):
        call()


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="empty"):
        patient_bootstrap([], [], [])
    with pytest.raises(ValueError, match="0/1"):
        patient_bootstrap([0, 2], [0.1, 0.2], ["a", "b"])
    with pytest.raises(ValueError, match="NaN"):
        patient_bootstrap([0, 1], [0.1, np.nan], ["a", "b"])
    with pytest.raises(ValueError, match="n_resamples"):
        patient_bootstrap([0, 1], [0.1, 0.2], ["a", "b"], n_resamples=0)
    with pytest.raises(ValueError, match="level"):
        patient_bootstrap([0, 1], [0.1, 0.2], ["a", "b"], level=95)


# ------------------------------------------------------------------------------------------ determinism
def test_deterministic_for_a_seed_and_different_for_another():
    labels, scores, patients = clustered(seed=13)
    first = patient_bootstrap(labels, scores, patients, n_resamples=200, seed=1)
    assert patient_bootstrap(labels, scores, patients, n_resamples=200, seed=1) == first
    other = patient_bootstrap(labels, scores, patients, n_resamples=200, seed=2)
    assert other["auroc"]["value"] == first["auroc"]["value"]
    assert (other["auroc"]["ci_low"], other["auroc"]["ci_high"]) != (
        first["auroc"]["ci_low"],
        first["auroc"]["ci_high"],
    )
    paired = paired_auroc_difference(
        labels, scores, scores**2 + 0.01 * np.sin(np.arange(len(scores))), patients, n_resamples=200, seed=1
    )
    assert (
        paired_auroc_difference(
            labels, scores, scores**2 + 0.01 * np.sin(np.arange(len(scores))), patients, n_resamples=200, seed=1
        )
        == paired
    )


# ------------------------------------------------------------------------------------ paired difference
def test_identical_predictions_have_zero_difference_and_p_one():
    labels, scores, patients = clustered(seed=14)
    result = paired_auroc_difference(labels, scores, scores.copy(), patients, n_resamples=300)
    assert set(result) == {
        "difference",
        "ci_low",
        "ci_high",
        "p_value",
        "auroc_a",
        "auroc_b",
        "n",
        "n_patients",
        "n_resamples",
    }
    assert result["difference"] == 0.0 and result["ci_low"] == 0.0 and result["ci_high"] == 0.0
    assert result["p_value"] == 1.0
    assert result["auroc_a"] == result["auroc_b"] == pytest.approx(auroc(labels, scores))
    assert result["n"] == len(labels) and result["n_patients"] == 60 and result["n_resamples"] == 300


def test_clearly_better_model_excludes_zero_and_swapping_flips_sign():
    rng = np.random.default_rng(15)
    n = 800
    labels = rng.integers(0, 2, n)
    good = labels + rng.normal(0, 0.6, n)
    poor = labels + rng.normal(0, 2.5, n)
    patients = np.arange(n) // 2
    ab = paired_auroc_difference(labels, good, poor, patients, n_resamples=500, seed=16)
    assert ab["difference"] == pytest.approx(auroc(labels, good) - auroc(labels, poor))
    assert ab["difference"] > 0.1 and ab["ci_low"] > 0 and ab["p_value"] < 0.05
    assert ab["p_value"] == pytest.approx(2 / 501)  # no resample at or below 0: the smallest possible p
    ba = paired_auroc_difference(labels, poor, good, patients, n_resamples=500, seed=16)
    assert ba["difference"] == pytest.approx(-ab["difference"])
    assert ba["ci_low"] == pytest.approx(-ab["ci_high"]) and ba["ci_high"] == pytest.approx(-ab["ci_low"])
    assert ba["p_value"] == ab["p_value"]
    assert (ba["auroc_a"], ba["auroc_b"]) == (ab["auroc_b"], ab["auroc_a"])


def test_paired_uses_the_same_resamples_as_patient_bootstrap():
    """Same seed, same resamples: AUROC(1 - s) = 1 - AUROC(s) on every resample, so the difference
    AUROC(s) - AUROC(1 - s) = 2 AUROC(s) - 1 and its interval is the AUROC interval mapped."""
    labels, scores, patients = clustered(seed=17)
    a = patient_bootstrap(labels, scores, patients, n_resamples=300, seed=3)
    ab = paired_auroc_difference(labels, scores, 1 - scores, patients, n_resamples=300, seed=3)
    assert ab["ci_low"] == pytest.approx(2 * a["auroc"]["ci_low"] - 1)
    assert ab["ci_high"] == pytest.approx(2 * a["auroc"]["ci_high"] - 1)


def test_auroc_table_matches_torchmetrics_with_ties():
    rng = np.random.default_rng(18)
    labels = rng.integers(0, 2, 5000)
    scores = rng.integers(0, 20, 5000) / 20 + 0.05 * labels
    expected = binary_auroc(torch.tensor(scores), torch.tensor(labels)).item()
    assert _AurocTable(labels, scores)(np.arange(5000)) == pytest.approx(expected, abs=1e-6)
