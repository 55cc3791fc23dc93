"""Read every NIH ChestX-ray14 label-file layout into one normalised table.

Layouts handled (see ``../shared/data/nih-meta/formats``): ``Data_Entry_2017.csv`` as first released (bracketed
header names holding commas, trailing comma on each line), its 2020 revision, Kaggle's ``sample_labels.csv``
(ages written ``060Y``) and the thesis' two-column ``image,label`` file.

The normalised table has one row per image and these columns (a column the layout lacks stays empty):
``image, finding_labels, patient_id, age_years, sex, view_position, target`` and one 0/1 column per finding.
``target`` is the thesis' binary label: 0 for ``No Finding``, 1 for anything else.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from cxr.errors import UserError

NO_FINDING = "No Finding"
FINDINGS = (
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Effusion",
    "Emphysema",
    "Fibrosis",
    "Hernia",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pleural_Thickening",
    "Pneumonia",
    "Pneumothorax",
)
TABLE_COLUMNS = ("image", "finding_labels", "patient_id", "age_years", "sex", "view_position", "target")

# normalised header name (lower case, letters and digits only) -> table column
_ALIASES = {
    "imageindex": "image",
    "image": "image",
    "imagename": "image",
    "filename": "image",
    "path": "image",
    "findinglabels": "finding_labels",
    "findinglabel": "finding_labels",
    "label": "finding_labels",
    "labels": "finding_labels",
    "finding": "finding_labels",
    "findings": "finding_labels",
    "patientid": "patient_id",
    "patientage": "age_years",
    "age": "age_years",
    "patientgender": "sex",
    "patientsex": "sex",
    "gender": "sex",
    "sex": "sex",
    "viewposition": "view_position",
    "view": "view_position",
}
_AGE_UNITS = {"Y": 1.0, "M": 1.0 / 12.0, "W": 7.0 / 365.25, "D": 1.0 / 365.25}
_AGE_RE = re.compile(r"^(\d+(?:\.\d+)?)\s*([YMWDymwd]?)$")


class LabelFileError(UserError, ValueError):
    """A label file that cannot be used as it is; the message names the file, row or column."""


def _normalise_header(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", str(name).lower())


def _parse_ages(values: pd.Series, path: Path, lines: np.ndarray) -> pd.Series:
    """Ages in years from ``57``, ``060Y``, ``018M``, ``004W`` or ``030D``; empty stays empty."""
    text = values.str.strip()
    parts = text.str.extract(_AGE_RE)
    bad = parts[0].isna() & (text != "")
    if bad.any():
        first = int(np.flatnonzero(bad.to_numpy())[0])
        raise LabelFileError(
            f"{path}: line {lines[first]}: cannot read age {values.iloc[first]!r} (expected e.g. 57, 060Y, 018M, 030D)"
        )
    units = parts[1].fillna("").str.upper().replace("", "Y").map(_AGE_UNITS)
    return (parts[0].astype("float64") * units).astype("float64")


def read_labels(path: str | Path) -> pd.DataFrame:
    """Read a label file in any known NIH layout and return the normalised table."""
    path = Path(path)
    if not path.is_file():
        raise LabelFileError(f"label file not found: {path}")
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False, index_col=False, skipinitialspace=True)
    except (pd.errors.ParserError, UnicodeDecodeError, EOFError, OSError) as error:
        raise LabelFileError(f"{path}: not a readable CSV label file ({error})") from error
    if len(raw.columns) and str(raw.columns[0]).strip().lower().endswith((".png", ".jpg", ".jpeg")):
        # no header row (a bare "image,label" list): the first line is data
        raw = pd.read_csv(path, dtype=str, keep_default_na=False, index_col=False, header=None, skipinitialspace=True)
        raw.columns = ["image", "finding_labels", *map(str, raw.columns[2:])]

    columns: dict[str, str] = {}
    for original in raw.columns:
        target = _ALIASES.get(_normalise_header(original))
        if target and target not in columns:
            columns[target] = original
    # The thesis' file is two positional columns: image name, finding text (unless a header names another column).
    if len(raw.columns) == 2 and set(columns) < {"image", "finding_labels"}:
        columns = {"image": raw.columns[0], "finding_labels": raw.columns[1]}
    for required in ("image", "finding_labels"):
        if required not in columns:
            wanted = "'Image Index'" if required == "image" else "'Finding Labels'"
            raise LabelFileError(
                f"{path}: missing required column {wanted} (found columns: {', '.join(map(str, raw.columns))})"
            )

    lines = np.arange(len(raw)) + 2  # 1-based file line numbers, after the header
    table = pd.DataFrame({"image": raw[columns["image"]].str.strip()})
    _check_image_names(table["image"], path, lines)

    findings = raw[columns["finding_labels"]].str.strip()
    table["finding_labels"] = findings
    multi_hot = _multi_hot(findings, path, lines)

    table["patient_id"] = _patient_ids(raw, columns.get("patient_id"), path, lines)
    if "age_years" in columns:
        table["age_years"] = _parse_ages(raw[columns["age_years"]], path, lines)
    else:
        table["age_years"] = np.nan
    for key in ("sex", "view_position"):
        values = raw[columns[key]].str.strip().str.upper() if key in columns else pd.Series(pd.NA, index=raw.index)
        table[key] = values.replace("", pd.NA).astype("string")
    table["target"] = (findings != NO_FINDING).astype("int64")
    return pd.concat([table, multi_hot], axis=1)


def _check_image_names(images: pd.Series, path: Path, lines: np.ndarray) -> None:
    empty = images == ""
    if empty.any():
        raise LabelFileError(f"{path}: line {lines[empty.to_numpy()][0]}: empty image name")
    unsafe = images.str.contains(r"[/\\]", regex=True) | images.str.startswith("..")
    if unsafe.any():
        first = int(np.flatnonzero(unsafe.to_numpy())[0])
        raise LabelFileError(
            f"{path}: line {lines[first]}: image name {images.iloc[first]!r} has a path component; "
            "label files must hold plain file names (images are looked up under data.root)"
        )
    duplicated = images.duplicated(keep=False)
    if duplicated.any():
        names = images[duplicated]
        first = names.iloc[0]
        at = lines[(images == first).to_numpy()]
        raise LabelFileError(
            f"{path}: image {first!r} is listed {len(at)} times (lines {', '.join(map(str, at))}); "
            f"{names.nunique()} duplicated image name(s) in all"
        )


def _multi_hot(findings: pd.Series, path: Path, lines: np.ndarray) -> pd.DataFrame:
    if (findings == "").any():
        line = lines[(findings == "").to_numpy()][0]
        raise LabelFileError(f"{path}: line {line}: empty finding label (use 'No Finding' for a normal image)")
    # ~800 distinct label strings in 112,120 rows: one-hot the distinct strings, then expand
    codes, distinct = pd.factorize(findings)
    per_string = pd.Series(distinct).str.get_dummies(sep="|")
    per_string.columns = [c.strip() for c in per_string.columns]
    per_string = per_string.T.groupby(level=0).max().T  # merge names that differed only by spaces
    dummies = pd.DataFrame(per_string.to_numpy()[codes], columns=per_string.columns, index=findings.index)
    unknown = sorted(set(dummies.columns) - set(FINDINGS) - {NO_FINDING})
    if unknown:
        bad = unknown[0]
        line = lines[dummies[bad].to_numpy().astype(bool)][0]
        raise LabelFileError(
            f"{path}: line {line}: unknown finding {bad!r} "
            f"({len(unknown)} unknown name(s): {', '.join(map(repr, unknown[:5]))}); "
            f"known findings: {', '.join(FINDINGS)} and '{NO_FINDING}'"
        )
    if NO_FINDING in dummies.columns:
        mixed = (dummies[NO_FINDING] == 1) & (dummies.drop(columns=NO_FINDING).sum(axis=1) > 0)
        if mixed.any():
            raise LabelFileError(f"{path}: line {lines[mixed.to_numpy()][0]}: '{NO_FINDING}' combined with a finding")
    return dummies.reindex(columns=list(FINDINGS), fill_value=0).astype("int8")


def _patient_ids(raw: pd.DataFrame, column: str | None, path: Path, lines: np.ndarray) -> pd.Series:
    if column is None:
        return pd.Series(pd.NA, index=raw.index, dtype="Int64")
    values = pd.to_numeric(raw[column].str.strip().replace("", np.nan), errors="coerce")
    bad = values.isna() & (raw[column].str.strip() != "")
    if bad.any():
        first = int(np.flatnonzero(bad.to_numpy())[0])
        raise LabelFileError(f"{path}: line {lines[first]}: patient id {raw[column].iloc[first]!r} is not a number")
    return values.astype("Int64")
