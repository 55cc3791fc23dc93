"""What the PadChest, VinDr-CXR, RSNA Pneumonia and Open-i readers share: the harmonised map of a dataset (from
``cxr/data/harmonised_findings.csv``), checked label-file reading, DICOM header fields and the contract's frame."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from cxr.data.datasets.common import finish
from cxr.data.findings import labelled_findings, mapping, mapping_table
from cxr.data.labels import LabelFileError

FRAME_COLUMNS = ("image", "path", "patient_id", "study_id", "age_years", "sex", "view_position", "official_split")
_DICOM_AGE = re.compile(r"^(\d{1,3})([YMWD]?)$")
_AGE_UNITS = {"Y": 1.0, "M": 1 / 12, "W": 7 / 365.25, "D": 1 / 365.25, "": 1.0}


def map_rows(dataset: str) -> list[dict[str, str]]:
    """The rows of the harmonised table for ``dataset`` (``finding`` empty: a source label deliberately left out)."""
    return [dict(row) for row in mapping_table() if row["dataset"] == dataset]


def harmonised_map(dataset: str) -> dict[str, str]:
    """Source label -> the harmonised finding it marks positive (labels left out of the map are absent)."""
    return {label: finding for label, finding in mapping(dataset).items() if finding}


def label_file(root: Path, options: Mapping, names: tuple[str, ...]) -> Path:
    """``options['labels']`` when given, else the first of ``names`` (the release's own file) found under ``root``."""
    override = options.get("labels") if options else None
    if override:
        path = Path(override)
        if not path.is_file():
            raise LabelFileError(f"label file not found: {path}")
        return path
    for name in names:
        if (Path(root) / name).is_file():
            return Path(root) / name
    raise LabelFileError(f"label file not found under {root}: expected {' or '.join(names)} (or set data.labels)")


def read_table(path: Path, columns: tuple[str, ...], optional: tuple[str, ...] = ()) -> pd.DataFrame:
    """The ``columns`` (all required) and ``optional`` columns of CSV ``path`` as strings ('' for blank)."""
    wanted = set(columns) | set(optional)
    try:
        table = pd.read_csv(
            path, usecols=lambda name: name in wanted, dtype=str, keep_default_na=False, index_col=False
        )
    except (pd.errors.ParserError, UnicodeDecodeError, EOFError, OSError, ValueError) as error:
        raise LabelFileError(f"{path}: not a readable CSV label file ({error})") from error
    missing = [name for name in columns if name not in table.columns]
    if missing:
        raise LabelFileError(f"{path}: missing required column(s) {', '.join(map(repr, missing))}")
    for name in optional:
        if name not in table.columns:
            table[name] = ""
    return table


def bad_row(path: Path, row: int, column: str, value: object, expected: str) -> LabelFileError:
    """The error for data row ``row`` (0-based; line ``row + 2`` of the file, after its header)."""
    return LabelFileError(f"{path}: line {row + 2}, column {column!r}: {value!r} is not {expected}")


def existing_paths(root: Path, images: pd.Series) -> pd.Series:
    """The absolute path of each image present under ``root``, else None (common code reports missing images).
    Each folder is listed once (a stat per image costs seconds on PadChest's 160,861)."""
    prefix = str(Path(root).absolute()) + os.sep
    present: set[str] = set()
    for folder in {os.path.dirname(name) for name in images}:
        try:
            with os.scandir(prefix + folder) as entries:
                present.update(os.path.join(folder, e.name) for e in entries if e.is_file())
        except OSError:  # an absent folder: its images are missing
            continue
    return pd.Series([prefix + n if n in present else None for n in images], index=images.index, dtype=object)


def dicom_age(value: object) -> float:
    """Years from a DICOM Age String (``061Y``, ``018M``); NaN when blank or unreadable."""
    match = _DICOM_AGE.match(str(value or "").strip().upper())
    return float(match[1]) * _AGE_UNITS[match[2]] if match else np.nan


def dicom_fields(paths: pd.Series) -> pd.DataFrame:
    """View position, sex and age read from the header of each DICOM file present (no pixels, no identity);
    NA where the file is absent or its header unreadable (the image reader then reports the file)."""
    rows = [_header(path) if path else {} for path in paths]
    frame = pd.DataFrame(rows, index=paths.index, columns=["view_position", "sex", "age_years"])
    frame["age_years"] = frame["age_years"].astype("float64")
    return frame


def _header(path: str) -> dict:
    import pydicom

    from cxr.data.dicom import quiet_pydicom

    try:
        with quiet_pydicom():
            header = pydicom.dcmread(
                path, stop_before_pixels=True, specific_tags=["ViewPosition", "PatientSex", "PatientAge"]
            )
    except Exception:  # a malformed header: the image reader names the file and the reason
        return {}
    view = str(header.get("ViewPosition", "") or "").strip().upper()
    sex = str(header.get("PatientSex", "") or "").strip().upper()
    return {
        "view_position": view or pd.NA,
        "sex": sex if sex in ("M", "F") else pd.NA,
        "age_years": dicom_age(header.get("PatientAge", "")),
    }


def contract_frame(dataset: str, columns: Mapping[str, object], findings: pd.DataFrame) -> pd.DataFrame:
    """The reader's result: ``columns`` (FRAME_COLUMNS) and ``findings`` (one float column per finding the dataset
    labels) completed by the common code (missing findings NaN, ``finding_labels``, ``target``)."""
    table = pd.DataFrame({name: columns[name] for name in FRAME_COLUMNS}, index=findings.index)
    return finish(pd.concat([table, findings], axis=1), dataset)


def positives(label_sets: pd.Series, dataset: str, labelled: pd.Series | None = None) -> pd.DataFrame:
    """Harmonised 1.0/0.0 columns from each row's set of source labels (a source label absent: negative, the
    convention of report-derived and radiologist-ticked lists); rows where ``labelled`` is False stay NaN."""
    mapping = harmonised_map(dataset)
    pairs = label_sets.map(list).explode().dropna()  # (row, source label), one per mention
    frame = pd.DataFrame(0.0, index=label_sets.index, columns=list(labelled_findings(dataset)))
    for finding in frame.columns:
        sources = [label for label, target in mapping.items() if target == finding]
        frame.loc[pairs.index[pairs.isin(sources).to_numpy()].unique(), finding] = 1.0
    if labelled is not None:
        frame.loc[~labelled.to_numpy()] = np.nan
    return frame


def mapping_markdown(datasets: tuple[str, ...] | None = None) -> str:
    """The harmonised table as the Markdown table of docs/datasets.md (tests check that the page matches)."""
    lines = ["| dataset | source label | harmonised finding | note |", "|---|---|---|---|"]
    for row in mapping_table():
        if datasets is None or row["dataset"] in datasets:
            cells = (row["dataset"], row["source_label"], row["finding"] or "(not mapped)", row["note"])
            lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines) + "\n"
