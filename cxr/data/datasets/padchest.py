"""PadChest (BIMCV; Bustos et al., Medical Image Analysis 2020): 160,861 labelled rows of 67,625 patients.

The release: ``PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz`` and the image folders ``0`` ... ``54``
(the unpacked ``N.zip`` archives) of 16-bit PNGs, so that an image is ``<ImageDir>/<ImageID>``. Labels are the
``Labels`` column's list of the 174 findings and 19 diagnoses extracted from each Spanish report (27% by physicians,
the rest by the authors' NLP model: ``MethodLabel``); a finding not listed is negative; the 103 rows whose list is
blank (``nan``) are unlabelled (every finding NaN). Views come from PadChest's own ``Projection`` column (reviewed by
the authors, unlike ``ViewPosition_DICOM``, blank on 69,085 rows): PA, AP, ``AP_horizontal`` (supine, in bed:
``AP SUPINE``), L (``LATERAL``), COSTAL; EXCLUDE and UNK are NA. No official split.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from cxr.data.datasets.release import bad_row, contract_frame, existing_paths, label_file, positives, read_table

NAME = "padchest"
LABEL_FILES = (
    "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz",
    "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv",
)
COLUMNS = ("ImageID", "ImageDir", "StudyID", "PatientID", "Projection", "Labels")
OPTIONAL = ("PatientBirth", "PatientSex_DICOM", "StudyDate_DICOM", "MethodLabel")
PROJECTIONS = {"PA": "PA", "AP": "AP", "AP_horizontal": "AP SUPINE", "L": "LATERAL", "COSTAL": "COSTAL"}
_ITEM = re.compile(r"'([^']*)'")


def parse_labels(values: pd.Series, path: Path) -> tuple[pd.Series, pd.Series]:
    """Each row's set of source labels from its written list (``['normal']``, ``['', 'granuloma']``) and whether the
    row is labelled at all (``nan`` or blank: not). The list is read as text, never evaluated."""
    text = values.str.strip()
    labelled = ~text.isin(("", "nan"))
    shaped = text.str.startswith("[") & text.str.endswith("]")
    bad = labelled & ~shaped
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise bad_row(path, row, "Labels", values.iloc[row], "a list of labels such as ['normal']")
    sets = text.map(lambda s: frozenset(item.strip() for item in _ITEM.findall(s)) - {""})
    return sets, labelled


def read(root: Path, options: Mapping) -> pd.DataFrame:
    """One row per labelled image of the PadChest release under ``root`` (module docstring)."""
    root = Path(root)
    path = label_file(root, options, LABEL_FILES)
    table = read_table(path, COLUMNS, OPTIONAL)
    dirs = table["ImageDir"].str.strip()
    bad = ~dirs.str.fullmatch(r"\d+")
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise bad_row(path, row, "ImageDir", table["ImageDir"].iloc[row], "an image folder number (0 to 54)")
    images = dirs + "/" + table["ImageID"].str.strip()
    label_sets, labelled = parse_labels(table["Labels"], path)
    birth = pd.to_numeric(table["PatientBirth"], errors="coerce")
    year = pd.to_numeric(table["StudyDate_DICOM"].str[:4], errors="coerce")
    sex = table["PatientSex_DICOM"].str.strip().str.upper()
    columns = {
        "image": images,
        "path": existing_paths(root, images),
        "patient_id": NAME + ":" + table["PatientID"].str.strip(),
        "study_id": table["StudyID"].str.strip(),
        "age_years": year - birth,
        "sex": sex.where(sex.isin(("M", "F"))),
        "view_position": table["Projection"].str.strip().map(PROJECTIONS),
        "official_split": pd.Series(pd.NA, index=table.index, dtype=object),
    }
    return contract_frame(NAME, columns, positives(label_sets, NAME, labelled))
