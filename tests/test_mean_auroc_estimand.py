"""The multi-label mean AUROC is one estimand: the same findings (those with enough positive patients) in the point
estimate and in every patient resample, for the CI and for compare.py's paired mean difference; its CI covers."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import norm

from cxr.evaluation.multilabel import multilabel_bootstrap, paired_multilabel_difference

FINDINGS = ["Atelectasis", "Effusion", "Mass", "Hernia"]
SEPARATIONS = (1.2, 0.8, 1.6)  # the common findings' class separations (score units)
PATIENT_SD, IMAGE_SD = 0.6, 0.8  # patient effect shared by a patient's images, and per-image noise


def clustered_set(rng: np.random.Generator, n_patients: int = 60):
    """Patients with 1-3 images; three common findings (30%) and one (Hernia) with a single positive patient and no
    signal (its sample AUROC lies anywhere in [0, 1]: what it would do to a mean that included it).
    Labels are per patient, scores = separation x label + patient effect + image noise, so every finding's
    population AUROC is Phi(d / sqrt(2 (patient_sd^2 + image_sd^2)))."""
    sizes = rng.integers(1, 4, n_patients)
    patients = np.repeat(np.arange(n_patients), sizes)
    patient_labels = (rng.random((n_patients, 4)) < 0.3).astype(int)
    patient_labels[:, 3] = 0
    patient_labels[rng.integers(n_patients), 3] = 1
    labels = patient_labels[patients]
    effect = rng.normal(0, PATIENT_SD, (n_patients, 4))[patients]
    scores = labels * np.array([*SEPARATIONS, 0.0]) + effect + rng.normal(0, IMAGE_SD, labels.shape)
    return labels, 1 / (1 + np.exp(-scores)), patients


def true_mean_auroc() -> float:
    return float(np.mean([norm.cdf(d / np.sqrt(2 * (PATIENT_SD**2 + IMAGE_SD**2))) for d in SEPARATIONS]))


def test_a_finding_with_too_few_positive_patients_is_left_out_of_the_point_estimate_and_every_resample():
    labels, probabilities, patients = clustered_set(np.random.default_rng(0))
    result = multilabel_bootstrap(labels, probabilities, patients, FINDINGS, n_resamples=300)
    mean = result["mean_auroc"]
    assert mean["findings"] == FINDINGS[:3] and mean["left_out"] == ["Hernia"] and mean["min_positive_patients"] == 5
    assert result["findings"]["Hernia"]["n_positive_patients"] == 1 and result["findings"]["Hernia"]["auroc"]["value"]
    assert mean["value"] == pytest.approx(np.mean([result["findings"][f]["auroc"]["value"] for f in FINDINGS[:3]]))
    assert mean["n_resamples_dropped"] == 0  # ~18 positive patients each: none loses them all in 300 resamples
    # counted with k = 1, the one-patient finding is in the mean, and the ~37% of resamples without its patient
    # (1 - 1/60)^60 are dropped, not averaged over the three others
    everything = multilabel_bootstrap(
        labels, probabilities, patients, FINDINGS, n_resamples=300, min_positive_patients=1
    )
    assert everything["mean_auroc"]["findings"] == FINDINGS
    assert 0.25 < everything["mean_auroc"]["n_resamples_dropped"] / 300 < 0.5
    # the paired mean difference averages the same findings as the mean
    other = np.clip(probabilities + np.random.default_rng(1).normal(0, 0.2, probabilities.shape), 0, 1)
    paired = paired_multilabel_difference(labels, probabilities, other, patients, FINDINGS, n_resamples=300)
    assert paired["mean_auroc"]["findings"] == FINDINGS[:3] and paired["mean_auroc"]["n_resamples_dropped"] == 0
    assert paired["mean_auroc"]["difference"] == pytest.approx(
        np.mean([paired["findings"][f]["difference"] for f in FINDINGS[:3]])
    )


def test_the_mean_auroc_ci_covers_the_true_mean_at_about_the_nominal_rate():
    """150 simulated test sets of 60 patients (fixed seed), 200 patient resamples each: the 95% percentile interval
    of the mean over the common findings contains the population value in about 95% of them (binomial SE 1.8%),
    and the point estimate is centred on it (a mean that included the one-patient finding sat 0.07 below)."""
    rng, truth, covered, points = np.random.default_rng(2024), true_mean_auroc(), [], []
    for s in range(150):
        labels, probabilities, patients = clustered_set(rng)
        mean = multilabel_bootstrap(labels, probabilities, patients, FINDINGS, n_resamples=200, seed=s)["mean_auroc"]
        covered.append(mean["ci_low"] <= truth <= mean["ci_high"])
        points.append(mean["value"])
    assert 0.88 <= np.mean(covered) <= 0.99, np.mean(covered)
    assert abs(np.mean(points) - truth) < 0.02, (np.mean(points), truth)  # SE of this mean: about 0.003
