"""Leakage between a checkpoint's training and a new evaluation split: ``evaluate.py split_from=config`` splits the
labels anew, which can put the run's own training or validation images (or their patients) into the new test set.
The run's ``splits.csv`` says what the checkpoint learnt from; any overlap is refused unless allowed."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from cxr.data.leakage import LeakageError

TRAINED_SPLITS = ("train", "val")  # what the checkpoint learnt from or was chosen on


def read_trained_split(splits_csv: str | Path) -> pd.DataFrame:
    """The train and val rows (image, patient) of a run's ``splits.csv``; one clear error if it is malformed."""
    try:
        table = pd.read_csv(splits_csv, dtype=str)
    except (OSError, ValueError) as error:
        raise LeakageError(f"{splits_csv}: cannot be read as the run's split ({error})") from None
    missing = [c for c in ("image", "patient", "split") if c not in table.columns]
    if missing:
        raise LeakageError(f"{splits_csv}: column(s) {', '.join(missing)} missing (expected image, patient, split)")
    return table[table["split"].isin(TRAINED_SPLITS)]


def training_overlap(splits_csv: str | Path, sets: dict[str, pd.DataFrame], allowed: bool = False) -> dict:
    """For each set to be scored (rows with ``image`` and ``patient_id``): its images and patients that the
    checkpoint's run trained or validated on. Raises LeakageError on any overlap unless ``allowed``; returns the
    record for metrics.json (``training_overlap``)."""
    trained = read_trained_split(splits_csv)
    images, patients = set(trained["image"]), set(trained["patient"].dropna())
    record: dict = {"checked_against": str(splits_csv), "allowed": bool(allowed)}
    for name, rows in sets.items():
        if rows is None or rows.empty:
            continue
        shared_images = rows["image"].astype(str).isin(images)
        shared_patients = rows["patient_id"].dropna().astype(str)
        shared_patients = sorted(set(shared_patients[shared_patients.isin(patients)]))
        record[name] = {
            "images": int(shared_images.sum()),
            "patients": len(shared_patients),
            "first_images": rows.loc[shared_images, "image"].astype(str).head(3).tolist(),
        }
        if (record[name]["images"] or record[name]["patients"]) and not allowed:
            raise LeakageError(
                f"split_from=config puts {record[name]['images']} images and {record[name]['patients']} patients "
                f"the checkpoint was trained or validated on ({splits_csv}) into the {name} set "
                f"(first: {', '.join(record[name]['first_images']) or 'by patient only'}); score the run's own "
                "split (split_from=run), or allow_training_overlap=true to score it anyway (recorded in metrics.json)"
            )
    return record
