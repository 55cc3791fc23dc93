"""RSNA Pneumonia Detection Challenge, stage 2 (Kaggle; Shih et al., Radiology: AI 2019): 26,684 NIH radiographs
re-read by radiologists for opacities suspicious of pneumonia.

The release: ``stage_2_train_labels.csv`` (one row per box: ``patientId, x, y, width, height, Target``),
``stage_2_detailed_class_info.csv`` (``patientId, class``: Lung Opacity, No Lung Opacity / Not Normal, Normal) and
``stage_2_train_images/<patientId>.dcm``. Each ``patientId`` is one image of one patient. ``Target`` 1 (class Lung
Opacity) marks Pneumonia and Lung Opacity positive, as torchxrayvision does; the two files must agree. The stage 2
test labels were not published: no official split. View, sex and age come from each DICOM header.
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
    label_file,
    positives,
    read_table,
)
from cxr.data.labels import LabelFileError

NAME = "rsna_pneumonia"
LABEL_FILES = ("stage_2_train_labels.csv",)
CLASS_FILE = "stage_2_detailed_class_info.csv"
IMAGES = "stage_2_train_images"
CLASSES = ("Lung Opacity", "No Lung Opacity / Not Normal", "Normal")


def read(root: Path, options: Mapping) -> pd.DataFrame:
    """One row per image of the RSNA Pneumonia release under ``root`` (module docstring)."""
    root = Path(root)
    path = label_file(root, options, LABEL_FILES)
    table = read_table(path, ("patientId", "Target"))
    target = table["Target"].str.strip()
    bad = ~target.isin(("0", "1"))
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise bad_row(path, row, "Target", table["Target"].iloc[row], "0 or 1")
    table["Target"] = target.astype(int)
    per_image = table.groupby("patientId", sort=False)["Target"].agg(["min", "max"])
    if (per_image["min"] != per_image["max"]).any():
        image = per_image.index[(per_image["min"] != per_image["max"]).to_numpy()][0]
        raise LabelFileError(f"{path}: patientId {image!r} has rows with Target 0 and 1")
    lung_opacity = per_image["max"].eq(1)
    classes = root / CLASS_FILE if not (options or {}).get("labels") else Path(options["labels"]).with_name(CLASS_FILE)
    if classes.is_file():
        detail = read_table(classes, ("patientId", "class")).drop_duplicates("patientId").set_index("patientId")
        unknown = ~detail["class"].isin(CLASSES)
        if unknown.any():
            raise LabelFileError(
                f"{classes}: class {detail['class'][unknown.to_numpy()].iloc[0]!r} is not one of {CLASSES}"
            )
        known = detail["class"].reindex(per_image.index)
        if known.isna().any():
            raise LabelFileError(
                f"{classes}: patientId {known.index[known.isna().to_numpy()][0]!r} of {path} is missing"
            )
        disagree = (known == "Lung Opacity") != lung_opacity
        if disagree.any():
            raise LabelFileError(
                f"{classes}: patientId {known.index[disagree.to_numpy()][0]!r}: class and {path.name}'s Target disagree"
            )
    ids = pd.Series(per_image.index, dtype=object)
    images = IMAGES + "/" + ids + ".dcm"
    paths = existing_paths(root, images)
    header = dicom_fields(paths)
    label_sets = pd.Series(
        [frozenset({"Lung Opacity", "Target"}) if p else frozenset() for p in lung_opacity.to_numpy()]
    )
    columns = {
        "image": images,
        "path": paths,
        "patient_id": NAME + ":" + ids,
        "study_id": ids,
        "age_years": header["age_years"],
        "sex": header["sex"],
        "view_position": header["view_position"],
        "official_split": pd.Series(pd.NA, index=ids.index, dtype=object),
    }
    return contract_frame(NAME, columns, positives(label_sets, NAME))
