"""Missing patient ids must not switch patient-level checks off: a label file with some blank ``Patient ID`` cells
is refused (count and first rows), unless ``data.missing_patient_id=image`` makes each such image its own patient
(recorded in metrics.json ``leakage``). A file without any patient id (the thesis' two-column layout) has none to
check and says so in the data check."""

from __future__ import annotations

import hashlib

import pandas as pd

from cxr.data.labels import LabelFileError
from cxr.errors import ConfigError

POLICIES = ("refuse", "image")
FIRST = 5


class MissingPatientIdError(LabelFileError):
    """Some images of a label file have no patient id; the message gives the count, first rows and the fix."""


def image_patient_id(image: str) -> int:
    """A patient id of its own for an image without one: negative (NIH ids are positive), the same for the same
    image name in every label file."""
    return -(int.from_bytes(hashlib.sha256(str(image).encode()).digest()[:7], "big") + 1)


def apply_policy(table: pd.DataFrame, labels, policy: str = "refuse") -> pd.DataFrame:
    """``table`` (read_labels' rows, in file order) with its missing patient ids refused or made per image."""
    if policy not in POLICIES:
        raise ConfigError(f"data.missing_patient_id={policy!r}: choose refuse or image")
    missing = table["patient_id"].isna().to_numpy()
    if not missing.any() or missing.all():
        return table
    if policy == "refuse":
        rows = table.index[missing][:FIRST]
        first = ", ".join(f"line {i + 2} ({table.at[i, 'image']})" for i in rows)
        raise MissingPatientIdError(
            f"{labels}: {int(missing.sum())} of {len(table)} images have no patient id (first: {first}); patient-level "
            "splits and leakage checks need one for every image: fill them in, or set data.missing_patient_id=image "
            "(each such image is its own patient, recorded in metrics.json)"
        )
    table = table.copy()
    table.loc[missing, "patient_id"] = table.loc[missing, "image"].map(image_patient_id).astype("Int64")
    return table


def count_per_image(table: pd.DataFrame) -> int:
    """How many images carry a per-image patient id (``data.missing_patient_id=image``)."""
    return int((table["patient_id"].fillna(0) < 0).sum())
