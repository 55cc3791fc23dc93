"""VinDr-CXR 1.0.0 (PhysioNet; Nguyen et al., Scientific Data 2022): 18,000 PA radiographs in DICOM.

The release: ``train/<image_id>.dicom`` (15,000), ``test/<image_id>.dicom`` (3,000) and ``annotations/``:
``image_labels_train.csv`` (one row per image and radiologist: ``image_id, rad_ID`` and a 0/1 column for each of
the 22 local and 6 global labels) and ``image_labels_test.csv`` (one row per image, the consensus of five).

Radiologists: each training image was read independently by three of 17 radiologists. Their reads are combined
as ``raters`` says: ``any`` (default) marks a label positive when at least one of them marked it, the convention of
the paper's training-set counts and of torchxrayvision's VinDr_Dataset (10,606 of the 15,000 images are "No finding"
for all three); ``majority`` needs two of three. The test set's consensus is used as it is.

A box-level file (``annotations/annotations_{train,test}.csv`` or the Kaggle competition's ``train.csv``, one row per
box: ``image_id, class_name, rad_id``) may be given as ``labels`` instead; it holds only the local labels (the
competition's 14, or all 22 without ``class_id``), so global findings (Pneumonia) are then missing (NaN).

No patient ids are published (each image is its own patient); the official split is the release's train/test.
View: the DICOM header's *View Position* where the file has one, else PA (the release is PA only, per its page).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from cxr.data.datasets.release import (
    bad_row,
    contract_frame,
    dicom_fields,
    existing_paths,
    harmonised_map,
    labelled_findings,
    positives,
    read_table,
)
from cxr.data.labels import LabelFileError

NAME = "vindr_cxr"
SPLITS = {"train": "annotations/image_labels_train.csv", "test": "annotations/image_labels_test.csv"}
NO_FINDING = "No finding"
# the competition's 14 local labels (its train.csv has class_id); the PhysioNet box files hold all 22
KAGGLE_LOCAL = (
    "Aortic enlargement", "Atelectasis", "Calcification", "Cardiomegaly", "Consolidation", "ILD", "Infiltration",
    "Lung Opacity", "Nodule/Mass", "Other lesion", "Pleural effusion", "Pleural thickening", "Pneumothorax",
    "Pulmonary fibrosis",
)  # fmt: skip
LOCAL = (
    *KAGGLE_LOCAL, "Clavicle fracture", "Edema", "Emphysema", "Enlarged PA", "Lung cavity", "Lung cyst",
    "Mediastinal shift", "Rib fracture",
)  # fmt: skip
RATERS = ("any", "majority")


def _combine(reads: pd.DataFrame, raters: str) -> pd.DataFrame:
    """One row per image from one row per (image, radiologist) of 0/1 columns."""
    grouped = reads.groupby("image_id", sort=False)
    if raters == "any":
        return grouped.max()
    return (grouped.sum() * 2 > grouped.count()).astype("int64")


def _image_level(path: Path, raters: str) -> pd.DataFrame:
    header = pd.read_csv(path, nrows=0).columns
    labels = [name for name in header if name not in ("image_id", "rad_ID", "rad_id")]
    table = read_table(path, ("image_id",), tuple(labels))
    values = table[labels].apply(lambda column: pd.to_numeric(column.str.strip(), errors="coerce"))
    bad = ~values.isin((0, 1))
    if bad.to_numpy().any():
        row, col = (int(i[0]) for i in np.nonzero(bad.to_numpy()))
        raise bad_row(path, row, labels[col], table[labels[col]].iloc[row], "0 or 1")
    values.insert(0, "image_id", table["image_id"].str.strip())
    return _combine(values, raters)


def _box_level(path: Path, raters: str) -> tuple[pd.DataFrame, tuple[str, ...]]:
    header = set(pd.read_csv(path, nrows=0).columns)
    rater = "rad_id" if "rad_id" in header else "rad_ID"
    table = read_table(path, ("image_id", "class_name", rater))
    local = KAGGLE_LOCAL if "class_id" in header else LOCAL
    unknown = ~table["class_name"].isin((*LOCAL, NO_FINDING))
    if unknown.any():
        row = int(np.flatnonzero(unknown.to_numpy())[0])
        raise bad_row(path, row, "class_name", table["class_name"].iloc[row], "a VinDr-CXR local label")
    marks = pd.crosstab([table["image_id"], table[rater]], table["class_name"]).clip(upper=1)
    marks = marks.reindex(columns=[*local, NO_FINDING], fill_value=0).reset_index(level=1, drop=True)
    return _combine(marks.reset_index(), raters), local


def read(root: Path, options: Mapping) -> pd.DataFrame:
    """One row per image of the VinDr-CXR release under ``root`` (module docstring)."""
    root = Path(root)
    options = options or {}
    raters = options.get("raters") or "any"
    if raters not in RATERS:
        raise LabelFileError(f"vindr_cxr raters={raters!r}: choose any or majority")
    parts, findings = [], labelled_findings(NAME)
    if options.get("labels"):
        path = Path(options["labels"])
        if not path.is_file():
            raise LabelFileError(f"label file not found: {path}")
        split = "test" if "test" in path.name else "train"
        if "class_name" in pd.read_csv(path, nrows=0).columns:
            labels, local = _box_level(path, raters)
            findings = tuple(f for f in findings if all(s in local for s, t in harmonised_map(NAME).items() if t == f))
        else:
            labels = _image_level(path, raters)
        parts.append((split, labels))
    else:
        for split, name in SPLITS.items():
            if (root / name).is_file():
                parts.append((split, _image_level(root / name, raters)))
        if not parts:
            raise LabelFileError(f"label files not found under {root}: expected {' and '.join(SPLITS.values())}")
    frames = []
    for split, labels in parts:
        labels = labels.reset_index()
        labels["official_split"] = split
        frames.append(labels)
    table = pd.concat(frames, ignore_index=True).fillna(0)
    images = table["official_split"] + "/" + table["image_id"] + ".dicom"
    paths = existing_paths(root, images)
    header = dicom_fields(paths)
    sources = [c for c in table.columns if c not in ("image_id", "official_split")]
    marked = table[sources].to_numpy() == 1
    label_sets = pd.Series([frozenset(np.asarray(sources)[row]) for row in marked], index=table.index)
    columns = {
        "image": images,
        "path": paths,
        "patient_id": NAME + ":" + table["image_id"],
        "study_id": table["image_id"],
        "age_years": header["age_years"],
        "sex": header["sex"],
        "view_position": header["view_position"].fillna("PA"),
        "official_split": table["official_split"],
    }
    found = positives(label_sets, NAME)
    return contract_frame(NAME, columns, found[list(findings)])
