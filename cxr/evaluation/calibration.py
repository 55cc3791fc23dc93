"""Calibration of predicted probabilities: ECE, MCE and Brier score with patient-bootstrap CIs, and temperature
scaling fitted on the validation split (``evaluation.calibration=temperature``).

Temperature scaling (Guo et al. 2017) divides each output's logit by one number T > 0 chosen to minimise the
validation log-loss. It is monotone, so AUROC and the ranking do not change; the probabilities (and so decisions at
a fixed threshold, ECE, MCE, Brier) do. The temperatures are written to metrics.json (``calibration``), which
``predict.py`` reads beside the operating point and ``export.py`` builds into the exported graph.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cxr.evaluation.bootstrap import PatientResampler, _interval, patient_codes
from cxr.evaluation.small_n import patient_counts

log = logging.getLogger(__name__)
METHODS = ("none", "temperature")
SCORES = ("ece", "mce", "brier")
EPS = 1e-7  # as the logit of cxr's ten-crop: keeps p = 0 or 1 (float32 saturation) finite


# ------------------------------------------------------------------------------------------------ the scores
def _bin_boundaries(n_bins: int) -> np.ndarray:
    # torchmetrics' own boundaries (float64), so the resampled bins are exactly those of the point estimate
    return torch.linspace(0, 1, n_bins + 1, dtype=torch.float64).numpy()


def calibration_scores(labels, probabilities, n_bins: int = 10) -> dict[str, float]:
    """ECE (l1) and MCE (max) over ``n_bins`` equal-width bins (torchmetrics ``binary_calibration_error``) and the
    Brier score (mean squared error of the probability against the 0/1 label)."""
    from torchmetrics.functional import mean_squared_error
    from torchmetrics.functional.classification import binary_calibration_error

    p = torch.tensor(np.asarray(probabilities, dtype=np.float64))
    y = torch.tensor(np.asarray(labels).astype(np.int64))
    return {
        "ece": float(binary_calibration_error(p, y, n_bins=n_bins, norm="l1")),
        "mce": float(binary_calibration_error(p, y, n_bins=n_bins, norm="max")),
        "brier": float(mean_squared_error(p, y.to(p.dtype))),
    }


def weighted_scores(labels: np.ndarray, probabilities: np.ndarray, weights: np.ndarray, n_bins: int) -> np.ndarray:
    """(ece, mce, brier) of the rows taken ``weights`` times each: the same bins and sums as torchmetrics, from
    counts. A resample is 1000 of these; torchmetrics per resample measured 2 ms against ~0.05 ms here."""
    bins = np.searchsorted(_bin_boundaries(n_bins), probabilities, side="right") - 1  # torch.bucketize(right=True)
    count = np.bincount(bins, weights=weights, minlength=n_bins + 1)
    confidence = np.bincount(bins, weights=weights * probabilities, minlength=n_bins + 1)
    observed = np.bincount(bins, weights=weights * labels, minlength=n_bins + 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        gap = np.abs(np.nan_to_num(observed / count) - np.nan_to_num(confidence / count))
    total = count.sum()
    brier = float(weights @ (probabilities - labels) ** 2) / total
    return np.array([float(gap @ (count / total)), float(gap.max()), brier])


def calibration_with_ci(labels, probabilities, patients, n_bins: int = 10, bootstrap: dict | None = None) -> dict:
    """``{"ece", "mce", "brier", "n_bins", "ci": {score: {"value", "ci_low", "ci_high"}}}`` with 95% (``level``)
    percentile intervals over patient resamples, and the patient counts with the ``small_n`` flag."""
    bootstrap = {"n_resamples": 1000, "seed": 0, "level": 0.95, **(bootstrap or {})}
    labels = np.asarray(labels).reshape(-1).astype(np.float64)
    probabilities = np.asarray(probabilities, dtype=np.float64).reshape(-1)
    point = calibration_scores(labels, probabilities, n_bins)
    resampler = PatientResampler(patient_codes(patients))
    rng = np.random.default_rng(bootstrap["seed"])
    resampled = np.empty((bootstrap["n_resamples"], len(SCORES)))
    for b in range(bootstrap["n_resamples"]):
        weights = np.bincount(resampler.draw(rng), minlength=len(labels)).astype(np.float64)
        resampled[b] = weighted_scores(labels, probabilities, weights, n_bins)
    ci = {}
    for j, score in enumerate(SCORES):
        low, high = _interval(resampled[:, j], bootstrap["level"])
        ci[score] = {"value": point[score], "ci_low": low, "ci_high": high}
    return {**point, "n_bins": int(n_bins), "ci": ci, **patient_counts(labels, patients)}


# ------------------------------------------------------------------------------------- temperature scaling
def logit(probabilities) -> np.ndarray:
    p = np.clip(np.asarray(probabilities, dtype=np.float64), EPS, 1 - EPS)
    return np.log(p) - np.log1p(-p)


def apply_temperature(probabilities, temperature: float) -> np.ndarray:
    """sigmoid(logit(p) / T): what the exported graph computes as sigmoid(logits / T)."""
    return 1.0 / (1.0 + np.exp(-logit(probabilities) / float(temperature)))


def fit_temperature(labels, probabilities) -> float:
    """T > 0 minimising the log-loss of sigmoid(logit(p) / T) on these rows. One bounded scalar search over log T
    (scipy's minimize_scalar: deterministic, no learning rate to tune, unlike an LBFGS loop in torch)."""
    from scipy.optimize import minimize_scalar

    y, z = np.asarray(labels).reshape(-1).astype(np.float64), logit(probabilities).reshape(-1)
    if not (y.any() and (1 - y).any()):
        raise ValueError("temperature scaling needs both classes in the validation split")

    def log_loss(log_t: float) -> float:
        scaled = z / np.exp(log_t)
        return float(np.mean(np.logaddexp(0.0, scaled) - y * scaled))  # -log-likelihood, stable for any logit

    bounds = (np.log(0.01), np.log(100.0))
    temperature = float(np.exp(minimize_scalar(log_loss, bounds=bounds, method="bounded").x))
    if not 0.0101 < temperature < 99.0:
        log.warning(
            "temperature %.3g at the end of its search range [0.01, 100]: the validation probabilities "
            "are all on one side or perfectly separated; scaling cannot fix that",
            temperature,
        )
    return temperature


@dataclass
class TemperatureScaling:
    """One temperature per model output (``finding`` for a binary model), fitted on the validation split."""

    temperatures: dict[str, float]

    def apply(self, frame, findings: list[str] | None, any_finding: str = "max"):
        """The predictions frame with calibrated probabilities (a multi-label model's "any finding" score is
        recomputed from its calibrated findings)."""
        frame = frame.copy()
        if not findings:
            frame["probability"] = apply_temperature(frame["probability"], self.temperatures["finding"])
            return frame
        from cxr.evaluation.multilabel import any_finding_score

        for finding in findings:
            column = f"probability_{finding}"
            frame[column] = apply_temperature(frame[column], self.temperatures[finding])
        frame["probability"] = any_finding_score(frame[[f"probability_{f}" for f in findings]].to_numpy(), any_finding)
        return frame


def fit_scaling(validation, findings: list[str] | None, method: str) -> TemperatureScaling | None:
    """``evaluation.calibration``: None for ``none``; temperatures fitted on ``validation`` for ``temperature``
    (a finding without both classes there keeps T = 1, logged)."""
    if method not in METHODS:
        raise ValueError(f"evaluation.calibration={method!r}: choose none or temperature")
    if method == "none":
        return None
    if validation is None or not len(validation):
        log.warning("evaluation.calibration=temperature: no validation predictions, probabilities left as they are")
        return None
    outputs = {f: f"_{f}" for f in findings} if findings else {"finding": ""}
    temperatures = {}
    for name, suffix in outputs.items():
        try:
            temperatures[name] = fit_temperature(validation[f"label{suffix}"], validation[f"probability{suffix}"])
        except ValueError as error:
            log.warning("temperature of %s not fitted (%s): T = 1", name, error)
            temperatures[name] = 1.0
    log.info("temperature scaling fitted on val: %s", ", ".join(f"{k} T={v:.3f}" for k, v in temperatures.items()))
    return TemperatureScaling(temperatures)


def set_calibration(raw, calibrated, scaling: TemperatureScaling | None, settings: dict) -> dict:
    """A set's ``calibration`` block: the scores of the probabilities the run reports (calibrated when scaled),
    and with scaling also ``before_scaling`` (the model's own probabilities)."""
    n_bins, bootstrap = settings.get("calibration_bins", 10), settings.get("bootstrap")

    def scores(frame) -> dict:
        frame = frame[frame["label"].notna()]  # no binary label: every finding unlabelled or ignored (data.uncertain)
        return calibration_with_ci(frame["label"], frame["probability"], frame["patient"], n_bins, bootstrap)

    block = {"method": "temperature" if scaling else "none", **scores(calibrated)}
    if scaling is not None:
        block["temperature"] = dict(scaling.temperatures)
        block["before_scaling"] = scores(raw)
    return block


def run_calibration(raw_val, calibrated_val, scaling: TemperatureScaling | None, settings: dict) -> dict:
    """metrics.json's top-level ``calibration``: the method, the temperatures (what predict.py and export.py
    apply) and the validation split's scores before and after (after is optimistic: T was fitted there)."""
    result: dict = {"method": "temperature" if scaling else "none", "fitted_on": "val" if scaling else None}
    if scaling is not None:
        result["temperature"] = dict(scaling.temperatures)
    if raw_val is not None and len(raw_val):
        result["val"] = set_calibration(raw_val, calibrated_val, scaling, settings)
    return result


# ------------------------------------------------------------------------------------- reading a run's choice
def read_temperatures(ckpt_path: str | Path, run_dir: Path, names: list[str]) -> tuple[list[float], str]:
    """The temperature per output from the run's metrics.json when it scaled the checkpoint it scored, else 1.0
    each (no scaling) and why."""
    ones = [1.0] * len(names)
    try:
        metrics = json.loads((run_dir / "metrics.json").read_text()) or {}
    except (OSError, ValueError):
        return ones, "none (no readable metrics.json)"
    evaluated = metrics.get("checkpoint")
    if evaluated and (run_dir / evaluated).resolve() != Path(ckpt_path).resolve():
        return ones, f"none (the run calibrated {evaluated}, not {Path(ckpt_path).name})"
    temperatures = (metrics.get("calibration") or {}).get("temperature") or {}
    if not isinstance(temperatures, dict) or not temperatures:
        return ones, "none"
    if len(names) == 1 and len(temperatures) == 1:
        values = [float(next(iter(temperatures.values())))]
    else:
        values = [float(temperatures.get(name, 1.0)) for name in names]
    if not all(np.isfinite(v) and v > 0 for v in values):
        return ones, f"none (invalid temperatures in {run_dir / 'metrics.json'})"
    return values, "temperature scaling fitted on val"
