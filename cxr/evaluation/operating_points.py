"""The validation side of every operating point, so that a run directory can be audited: ``predictions_val.csv``
(what the thresholds were chosen on), per-finding thresholds that need enough positive patients in validation,
and positives counted by patient as well as by image (22 images of one finding may come from 2 patients)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cxr.artifacts import write_csv
from cxr.evaluation.metrics import auroc

VALIDATION_PREDICTIONS = "predictions_val.csv"
# evaluation.operating_point.min_positive_patients: a per-finding threshold chosen on fewer positive patients in
# validation is noise; such a finding keeps the fixed threshold (evaluation.threshold) and is listed in metrics.json
MIN_POSITIVE_PATIENTS = 5


def positive_counts(labels, patients) -> dict[str, int]:
    """Positive images, and the distinct patients they come from (an image without a patient id is its own)."""
    labels = np.asarray(labels).astype(bool).reshape(-1)
    patients = pd.Series(np.asarray(patients, dtype=object)).reset_index(drop=True)[labels]
    return {"images": int(labels.sum()), "patients": int(patients.nunique() + patients.isna().sum())}


def write_validation_predictions(output_dir: str | Path, validation: pd.DataFrame | None) -> None:
    """``predictions_val.csv`` (the test predictions' columns) when thresholds were chosen on validation."""
    if validation is not None:
        write_csv(Path(output_dir) / VALIDATION_PREDICTIONS, validation)


def validation_summary(output_dir: str | Path) -> dict | None:
    """The scored weights on the validation split, from ``predictions_val.csv``: n, patients and AUROC of the
    binary (any-finding) score; what evaluate.py returns to a sweep instead of a test figure. None without it."""
    path = Path(output_dir) / VALIDATION_PREDICTIONS
    if not path.is_file():
        return None
    frame = pd.read_csv(path)
    return {
        "predictions": VALIDATION_PREDICTIONS,
        "n": int(len(frame)),
        "n_patients": int(frame["patient"].nunique()),
        "auroc": auroc(frame["label"].to_numpy(), frame["probability"].to_numpy()),
    }


def audited_finding_thresholds(
    findings: list[str], validation: pd.DataFrame, settings: dict
) -> tuple[dict[str, float | None], dict[str, str], dict]:
    """Per-finding thresholds chosen on ``validation`` by ``operating_point.method`` where the finding has at least
    ``operating_point.min_positive_patients`` positive patients there, else the fixed ``threshold``; returns the
    thresholds, what each was chosen by, and the audit recorded in metrics.json (``finding_thresholds``)."""
    from cxr.evaluation.multilabel import finding_thresholds

    point = settings["operating_point"]
    minimum = int(point.get("min_positive_patients", MIN_POSITIVE_PATIENTS))
    fallback = float(settings["threshold"])
    method = point["method"]
    chosen = finding_thresholds(
        validation[[f"label_{f}" for f in findings]].to_numpy(),
        validation[[f"probability_{f}" for f in findings]].to_numpy(),
        findings,
        method,
        point.get("target_sensitivity"),
    )
    thresholds, chosen_on, positives, fell_back = {}, {}, {}, []
    for finding in findings:
        positives[finding] = positive_counts(validation[f"label_{finding}"], validation["patient"])
        if positives[finding]["patients"] < minimum or chosen[finding] is None:
            thresholds[finding], chosen_on[finding] = fallback, f"fixed (fewer than {minimum} positive patients in val)"
            fell_back.append(finding)
        else:
            thresholds[finding], chosen_on[finding] = chosen[finding], f"{method} on val"
    audit = {
        "method": method,
        "chosen_on": VALIDATION_PREDICTIONS,
        "min_positive_patients": minimum,
        "fallback_threshold": fallback,
        "fell_back": fell_back,
        "positives_val": positives,
    }
    return thresholds, chosen_on, audit
