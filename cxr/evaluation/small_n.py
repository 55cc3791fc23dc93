"""Small n said plainly: a figure computed on fewer than ``MIN_PATIENTS`` positive or negative patients is flagged
in metrics.json (``small_n``) and marked ``(n<10)`` wherever a table shows it (report, model card, compare.py).

Patients, not images, are what a bootstrap resamples: 22 positive images of 2 patients are 2 observations.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

MIN_PATIENTS = 10
MARK = f"(n<{MIN_PATIENTS})"


def class_patients(labels, patients) -> tuple[int, int]:
    """Distinct patients with a negative image and with a positive image (a patient may count in both); an image
    without a patient id is its own patient."""
    labels = np.asarray(labels).reshape(-1).astype(bool)
    ids = pd.Series(np.asarray(patients, dtype=object).reshape(-1))
    missing = ids.isna().to_numpy()
    ids = ids.astype(str).to_numpy().astype(object)
    ids[missing] = [f"\0row{i}" for i in np.flatnonzero(missing)]
    return int(len(set(ids[~labels]))), int(len(set(ids[labels])))


def is_small(n_class0_patients: int | None, n_class1_patients: int | None) -> bool:
    """True when either class has fewer than MIN_PATIENTS patients (or is unknown)."""
    return any(n is None or n < MIN_PATIENTS for n in (n_class0_patients, n_class1_patients))


def patient_counts(labels, patients) -> dict:
    """``{"n_patients_class0", "n_patients_class1", "small_n"}`` for a figure computed on these rows."""
    n0, n1 = class_patients(labels, patients)
    return {"n_patients_class0": n0, "n_patients_class1": n1, "small_n": is_small(n0, n1)}


def mark(text: str, entry) -> str:
    """``text`` with `` (n<10)`` appended when ``entry`` (a metrics dict, or a bool) is flagged small."""
    small = entry.get("small_n") if isinstance(entry, dict) else bool(entry)
    return f"{text} {MARK}" if small else text


def note() -> str:
    """The sentence a table with marks carries."""
    return (
        f"{MARK}: computed on fewer than {MIN_PATIENTS} patients of one class (positive or negative); "
        "read it as anecdote, not estimate."
    )
