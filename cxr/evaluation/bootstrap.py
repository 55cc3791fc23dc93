"""Patient-level bootstrap confidence intervals of binary classification metrics.

The resampling unit is the patient: a resample draws as many patient ids as there are patients, with
replacement, and takes every image of each drawn patient (a patient drawn twice contributes its images
twice). NIH ChestX-ray14 has many images per patient whose labels and scores are strongly correlated, so
resampling single images would treat them as independent and understate the width of the interval.

An image without a patient id (NaN, None, pd.NA) is its own patient.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from cxr.evaluation.metrics import auroc, binary_metrics, predicted_class

CI_METRICS = ("auroc", "accuracy", "accuracy_class0", "accuracy_class1", "balanced_accuracy", "f1", "ppv", "npv")


# ---------------------------------------------------------------------------------------------- inputs
def _as_array(values, name: str) -> np.ndarray:
    if isinstance(values, (pd.Series, pd.Index)):
        values = values.to_numpy()
    elif hasattr(values, "detach"):  # a torch tensor
        values = values.detach().cpu().numpy()
    array = np.asarray(values)
    if array.ndim == 2 and 1 in array.shape:  # a column or row vector
        array = array.reshape(-1)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
    return array


def _check_inputs(labels, patients, **probabilities) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Labels as int 0/1, patients as given, each probability array as float64; equal lengths, no NaN."""
    label_array = _as_array(labels, "labels")
    patient_array = _as_array(patients, "patients")
    arrays = {name: _as_array(values, name) for name, values in probabilities.items()}
    lengths = {
        "labels": len(label_array),
        "patients": len(patient_array),
        **{name: len(array) for name, array in arrays.items()},
    }
    if len(set(lengths.values())) != 1:
        raise ValueError("inputs must have equal lengths, got " + ", ".join(f"{k}={v}" for k, v in lengths.items()))
    if len(label_array) == 0:
        raise ValueError("cannot bootstrap an empty set (no labels)")
    if label_array.dtype == bool:
        label_array = label_array.astype(np.int64)
    try:
        numeric = label_array.astype(np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(f"labels must be 0/1, got dtype {label_array.dtype}") from error
    if not np.isin(numeric, (0.0, 1.0)).all():
        raise ValueError(f"labels must be 0/1, got values {np.unique(numeric[~np.isin(numeric, (0.0, 1.0))])[:5]}")
    floats = {}
    for name, array in arrays.items():
        array = array.astype(np.float64)
        if np.isnan(array).any():
            raise ValueError(f"{name} contains NaN")
        floats[name] = array
    return numeric.astype(np.int64), patient_array, floats


def patient_codes(patients) -> np.ndarray:
    """Integer code 0..P-1 per row; rows with a missing id (NaN/None/pd.NA) each get a code of their own."""
    codes, uniques = pd.factorize(pd.Series(_as_array(patients, "patients"), dtype=object), use_na_sentinel=True)
    codes = codes.astype(np.int64)
    missing = codes < 0
    codes[missing] = len(uniques) + np.arange(int(missing.sum()))
    return codes


def _check_options(n_resamples: int, level: float) -> None:
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, (int, np.integer)) or n_resamples < 1:
        raise ValueError(f"n_resamples must be a positive integer, got {n_resamples!r}")
    if not 0.0 < float(level) < 1.0:
        raise ValueError(f"level must lie strictly between 0 and 1, got {level!r}")


# ----------------------------------------------------------------------------------------- resampling
class PatientResampler:
    """Row indices of whole patients, laid out once (CSR-like: rows sorted by patient, start and size per
    patient) so that a resample is built with a few vectorised numpy calls, without a loop over patients."""

    def __init__(self, codes):
        codes = np.asarray(codes, dtype=np.int64)
        if codes.ndim != 1 or codes.size == 0:
            raise ValueError("patient codes must be a non-empty one-dimensional array")
        if codes.min() < 0:
            raise ValueError("patient codes must be non-negative")
        _, codes = np.unique(codes, return_inverse=True)  # dense 0..P-1 whatever codes were passed
        self.codes = codes.reshape(-1)
        self.order = np.argsort(self.codes, kind="stable")  # rows grouped by patient
        self.sizes = np.bincount(self.codes)
        self.starts = np.concatenate(([0], np.cumsum(self.sizes)[:-1]))
        self.n_patients = int(self.sizes.size)

    def draw(self, rng: np.random.Generator) -> np.ndarray:
        """Row indices of one resample: n_patients patients drawn with replacement, all rows of each."""
        drawn = rng.integers(0, self.n_patients, size=self.n_patients)
        lengths = self.sizes[drawn]
        total = int(lengths.sum())
        output_starts = np.cumsum(lengths) - lengths
        # position in ``order`` = start of the drawn patient + offset within it
        positions = np.repeat(self.starts[drawn] - output_starts, lengths) + np.arange(total)
        return self.order[positions]


def resample_indices(patient_codes, rng: np.random.Generator) -> np.ndarray:
    """One patient-level resample of row indices (see PatientResampler; build one for repeated draws)."""
    return PatientResampler(patient_codes).draw(rng)


# -------------------------------------------------------------------------------------------- metrics
class _AurocTable:
    """AUROC of a subset of rows from counts per distinct score (ties count one half), no sorting per call."""

    def __init__(self, labels: np.ndarray, probabilities: np.ndarray):
        _, levels = np.unique(probabilities, return_inverse=True)
        self.n_levels = int(levels.max()) + 1
        self.cells = levels.reshape(-1) * 2 + labels  # (level, label) as one code

    def __call__(self, indices: np.ndarray) -> float:
        counts = np.bincount(self.cells[indices], minlength=2 * self.n_levels).reshape(self.n_levels, 2)
        negatives, positives = counts[:, 0], counts[:, 1]
        n_neg, n_pos = int(negatives.sum()), int(positives.sum())
        if n_neg == 0 or n_pos == 0:
            return np.nan
        negatives_below = np.cumsum(negatives) - negatives
        twice_u = 2 * int(positives @ negatives_below) + int(positives @ negatives)
        return twice_u / (2 * n_pos * n_neg)


def _threshold_metrics(tn: np.ndarray, fp: np.ndarray, fn: np.ndarray, tp: np.ndarray) -> dict[str, np.ndarray]:
    """The thresholded metrics of CI_METRICS from confusion counts (arrays), NaN where undefined."""

    def ratio(numerator, denominator):
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(denominator > 0, numerator / np.maximum(denominator, 1), np.nan)

    class0, class1 = ratio(tn, tn + fp), ratio(tp, tp + fn)
    return {
        "accuracy": ratio(tn + tp, tn + fp + fn + tp),
        "accuracy_class0": class0,
        "accuracy_class1": class1,
        "balanced_accuracy": (class0 + class1) / 2,
        "f1": ratio(2 * tp, 2 * tp + fp + fn),
        "ppv": ratio(tp, tp + fp),
        "npv": ratio(tn, tn + fn),
    }


def _interval(values: np.ndarray, level: float) -> tuple[float | None, float | None]:
    values = values[~np.isnan(values)]
    if values.size == 0:
        return None, None
    alpha = (1.0 - level) / 2
    low, high = np.quantile(values, [alpha, 1.0 - alpha])
    return float(low), float(high)


def _float_or_none(value) -> float | None:
    return None if value is None or (isinstance(value, float) and np.isnan(value)) else float(value)


# ------------------------------------------------------------------------------------------- bootstrap
def patient_bootstrap(
    labels, probabilities, patients, threshold: float = 0.5, n_resamples: int = 1000, seed: int = 0, level: float = 0.95
) -> dict[str, dict]:
    """{metric: {"value": point estimate on all data, "ci_low": ..., "ci_high": ...}} for every metric of
    CI_METRICS, plus "n_resamples" and "n_patients" keys at top level (ints).

    Percentile intervals over the resamples where a metric is defined (a resample with a single class has
    no AUROC and is skipped for it); None where a metric is never defined. Deterministic for a seed."""
    _check_options(n_resamples, level)
    labels, patients, arrays = _check_inputs(labels, patients, probabilities=probabilities)
    probabilities = arrays["probabilities"]
    resampler = PatientResampler(patient_codes(patients))
    rng = np.random.default_rng(seed)

    auroc_of = _AurocTable(labels, probabilities)
    cell = labels * 2 + predicted_class(probabilities, threshold)  # 0 tn, 1 fp, 2 fn, 3 tp
    counts = np.empty((n_resamples, 4), dtype=np.int64)
    aurocs = np.empty(n_resamples)
    for b in range(n_resamples):
        indices = resampler.draw(rng)
        counts[b] = np.bincount(cell[indices], minlength=4)
        aurocs[b] = auroc_of(indices)
    resampled = {"auroc": aurocs, **_threshold_metrics(*counts.T)}

    point = binary_metrics(labels, probabilities, threshold)
    result: dict = {}
    for metric in CI_METRICS:
        low, high = _interval(resampled[metric], level)
        result[metric] = {"value": _float_or_none(point[metric]), "ci_low": low, "ci_high": high}
    result["n_resamples"] = int(n_resamples)
    result["n_patients"] = resampler.n_patients
    return result


def bootstrap_p_value(differences: np.ndarray) -> float | None:
    """Two-sided bootstrap p of "no difference" from resampled differences (NaN ones left out), with the +1
    correction: 2 x the smaller share of resamples on either side of 0; None without any."""
    defined = differences[~np.isnan(differences)]
    if not defined.size:
        return None
    below = (int((defined <= 0).sum()) + 1) / (defined.size + 1)
    above = (int((defined >= 0).sum()) + 1) / (defined.size + 1)
    return float(min(1.0, 2 * min(below, above)))


def paired_auroc_difference(
    labels, probabilities_a, probabilities_b, patients, n_resamples: int = 1000, seed: int = 0, level: float = 0.95
) -> dict:
    """AUROC(a) - AUROC(b) on the same images: {"difference", "ci_low", "ci_high", "p_value", "auroc_a",
    "auroc_b", "n", "n_patients", "n_resamples"}.

    Both models are scored on the same patient-level resamples. p_value is the two-sided bootstrap p of
    difference == 0: min(1, 2 * min((#(d <= 0) + 1) / (B + 1), (#(d >= 0) + 1) / (B + 1))) over the B
    resamples with both classes. Values are None when AUROC is undefined (a single class)."""
    _check_options(n_resamples, level)
    labels, patients, arrays = _check_inputs(
        labels, patients, probabilities_a=probabilities_a, probabilities_b=probabilities_b
    )
    resampler = PatientResampler(patient_codes(patients))
    rng = np.random.default_rng(seed)
    auroc_a_of = _AurocTable(labels, arrays["probabilities_a"])
    auroc_b_of = _AurocTable(labels, arrays["probabilities_b"])
    differences = np.empty(n_resamples)
    for b in range(n_resamples):
        indices = resampler.draw(rng)
        differences[b] = auroc_a_of(indices) - auroc_b_of(indices)  # NaN when the resample has one class

    auroc_a = auroc(labels, arrays["probabilities_a"])
    auroc_b = auroc(labels, arrays["probabilities_b"])
    low, high = _interval(differences, level)
    p_value = bootstrap_p_value(differences)
    return {
        "difference": None if auroc_a is None or auroc_b is None else float(auroc_a - auroc_b),
        "ci_low": low,
        "ci_high": high,
        "p_value": p_value,
        "auroc_a": auroc_a,
        "auroc_b": auroc_b,
        "n": int(len(labels)),
        "n_patients": resampler.n_patients,
        "n_resamples": int(n_resamples),
    }
