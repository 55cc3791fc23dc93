"""What every dataset reader shares: the harmonised frame's columns, image paths found under the root in one walk,
and ``finding_labels`` / ``target`` derived from the finding columns (the contract in docs/data.md)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from cxr.data.findings import HARMONISED, NO_FINDING, PATHOLOGIES
from cxr.data.input_limits import walk_once
from cxr.data.labels import LabelFileError

META_COLUMNS = (
    "image",
    "path",
    "patient_id",
    "study_id",
    "age_years",
    "sex",
    "view_position",
    "official_split",
    "dataset",
)
COLUMNS = META_COLUMNS + HARMONISED + ("finding_labels", "target")


def files_under(root: str | Path, suffixes: Iterable[str]) -> dict[str, str]:
    """Relative posix path -> absolute path of each file under ``root`` ending in one of ``suffixes`` (one walk)."""
    root = Path(root)
    suffixes = tuple(s.lower() for s in suffixes)
    found: dict[str, str] = {}
    if not root.is_dir():
        return found
    for folder, _, files in walk_once(root):
        relative = os.path.relpath(folder, root)
        prefix = "" if relative == "." else relative.replace(os.sep, "/") + "/"
        for name in files:
            if name.lower().endswith(suffixes):
                found[prefix + name] = os.path.join(folder, name)
    return found


def image_paths(root: str | Path, images: pd.Series, suffixes: Iterable[str]) -> pd.Series:
    """Each relative ``image``'s absolute path under ``root``, or None when the file is not there."""
    found = files_under(root, suffixes)
    return images.map(found).astype(object).where(lambda s: s.notna(), None)


def read_csv(path: str | Path, **kwargs) -> pd.DataFrame:
    """``pandas.read_csv`` whose failures name the file (LabelFileError)."""
    path = Path(path)
    if not path.is_file():
        raise LabelFileError(f"label file not found: {path}")
    try:
        return pd.read_csv(path, **kwargs)
    except ValueError as error:  # a missing usecols column, a bad dtype, a parser error
        raise LabelFileError(f"{path}: not a readable label file of this dataset ({error})") from error
    except (UnicodeDecodeError, EOFError, OSError) as error:
        raise LabelFileError(f"{path}: not a readable CSV label file ({error})") from error


def require_columns(frame: pd.DataFrame, columns: Iterable[str], path: str | Path) -> None:
    """Raise LabelFileError naming the file and the first column it lacks."""
    absent = [c for c in columns if c not in frame.columns]
    if absent:
        raise LabelFileError(
            f"{path}: missing column {absent[0]!r} ({len(absent)} missing; found: {', '.join(map(str, frame.columns))})"
        )


def check_label_values(frame: pd.DataFrame, columns: Iterable[str], path: str | Path, allowed=(1.0, 0.0, -1.0)):
    """Raise LabelFileError naming the file, line and column of the first value outside ``allowed`` (or blank)."""
    for column in columns:
        values = frame[column]
        bad = values.notna() & ~values.isin(allowed)
        if bad.any():
            first = int(np.flatnonzero(bad.to_numpy())[0])
            raise LabelFileError(
                f"{path}: line {first + 2}: column {column!r} holds {float(values.iloc[first])} "
                f"(expected {', '.join(map(str, allowed))} or blank)"
            )


def finish(frame: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """Complete a reader's frame: every contract column (absent findings NaN, missing metadata NA), then
    ``finding_labels`` ("|"-joined positives or "No Finding") and ``target`` (1 any positive pathology, 0 none, NaN
    when no finding is labelled; Support Devices alone is not a finding for the binary No Finding / finding task)."""
    frame = frame.copy()
    frame["dataset"] = dataset
    for column in META_COLUMNS:
        if column not in frame.columns:
            frame[column] = np.nan if column == "age_years" else pd.NA
    for finding in HARMONISED:
        frame[finding] = frame[finding].astype("float32") if finding in frame.columns else np.float32("nan")
    values = frame[list(HARMONISED)].to_numpy()
    positive = values == 1.0
    patterns, codes = np.unique(positive, axis=0, return_inverse=True)  # a few hundred distinct label sets
    names = np.array(HARMONISED, dtype=object)
    text = np.array([("|".join(names[row]) if row.any() else NO_FINDING) for row in patterns], dtype=object)
    frame["finding_labels"] = text[codes.reshape(-1)]
    pathology = positive[:, [HARMONISED.index(f) for f in PATHOLOGIES]].any(axis=1)
    target = np.where(pathology, 1.0, np.where(np.isnan(values).all(axis=1), np.nan, 0.0))
    frame["target"] = target
    for column in ("patient_id", "study_id", "sex", "view_position", "official_split"):
        frame[column] = frame[column].astype("string")
    frame["age_years"] = pd.to_numeric(frame["age_years"], errors="coerce").astype("float64")
    return frame[list(COLUMNS)].reset_index(drop=True)
