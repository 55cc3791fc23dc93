"""Leakage between sets, checked before training: the test split against train/val (by patient) and the external
set against train/val (by image name and by patient id). Refused unless ``data.allow_overlap.<kind>`` allows it;
recorded in metrics.json (``leakage``) either way.

Image names are unique within one label file (``read_labels`` refuses duplicates), so train, val and test can
share patients but never an image.
"""

from __future__ import annotations

import pandas as pd

from cxr.errors import ConfigError, UserError

FIRST = 5
KINDS = {  # kind -> what it means, in the words of the refusal message
    "test_patients": "test patients also have images in train/val",
    "external_images": "external images are also in train/val",
    "external_patients": "external patients also have images in train/val",
}

DEFAULT_ALLOW = {"test_patients": "auto", "external_images": False, "external_patients": False}  # as conf/data


class LeakageError(UserError, ValueError):
    """Sets overlap in a way that is refused; the message names the counts, first offenders and the override."""


def find_overlaps(table: pd.DataFrame, split: pd.Series, external: pd.DataFrame | None = None) -> dict:
    """``{kind: {"count", "of", "first"}}`` for every kind that can be measured (patient kinds need patient ids)."""
    training = table[split.isin(["train", "val"]).to_numpy()]
    test = table[(split == "test").to_numpy()]
    has_patients = not table["patient_id"].isna().any()
    overlaps = {}
    if has_patients:
        patients = pd.Series(test["patient_id"].unique())
        hit = patients[patients.isin(training["patient_id"])]
        overlaps["test_patients"] = _entry(hit.sort_values(), len(patients))
    if external is not None and len(external):
        overlaps["external_images"] = _entry(
            external["image"][external["image"].isin(training["image"])], len(external)
        )
        if has_patients and not external["patient_id"].isna().any():
            patients = pd.Series(external["patient_id"].unique())
            overlaps["external_patients"] = _entry(
                patients[patients.isin(training["patient_id"])].sort_values(), len(patients)
            )
    return overlaps


def _entry(hits: pd.Series, of: int) -> dict:
    return {"count": int(len(hits)), "of": int(of), "first": [_plain(v) for v in hits.head(FIRST)]}


def _plain(value):
    return int(value) if hasattr(value, "__int__") and not isinstance(value, str) else str(value)


def allowed(kind: str, allow: dict, method: str | None) -> bool:
    """``data.allow_overlap.<kind>``; ``auto`` (test_patients' default) allows it only under split=thesis, and for
    a run's saved split (``file``: evaluate.py replays the split that was judged when the run trained)."""
    value = (allow or {}).get(kind, DEFAULT_ALLOW[kind])
    if value == "auto":
        return method in ("thesis", "file")
    if not isinstance(value, bool):
        raise ConfigError(
            f"data.allow_overlap.{kind}={value!r}: choose true, false" + (" or auto" if kind == "test_patients" else "")
        )
    return value


def judge(overlaps: dict, allow: dict, method: str | None) -> tuple[dict, str | None]:
    """The record for metrics.json (each kind with ``allowed``) and the refusal line (None when nothing is refused)."""
    record, refused = {}, []
    for kind, entry in overlaps.items():
        ok = allowed(kind, allow, method)
        record[kind] = {**entry, "allowed": ok}
        if entry["count"] and not ok:
            refused.append(
                f"{entry['count']} of {entry['of']} {KINDS[kind]} (first: {', '.join(map(str, entry['first']))})"
            )
    if not refused:
        return record, None
    refused_kinds = [k for k, e in record.items() if e["count"] and not e["allowed"]]
    fixes = [f"data.allow_overlap.{kind}=true" for kind in refused_kinds]
    hint = (
        "hold the external set out of training with data.exclude=external_patients, or allow it with "
        if any(k.startswith("external") for k in refused_kinds)
        else "allow it with "
    )
    return record, f"leakage between sets (split={method}): {'; '.join(refused)}; {hint}{' '.join(fixes)}"


def check(
    table: pd.DataFrame, split: pd.Series, external: pd.DataFrame | None, allow: dict, method: str | None
) -> dict:
    """Raise LeakageError on a refused overlap, else return the record for metrics.json."""
    record, refusal = judge(find_overlaps(table, split, external), allow, method)
    if refusal:
        raise LeakageError(refusal)
    return record
