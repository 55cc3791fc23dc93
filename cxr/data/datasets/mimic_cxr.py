"""MIMIC-CXR-JPG 2.x (PhysioNet): ``mimic-cxr-2.0.0-{chexpert,negbio,metadata,split}.csv.gz`` and
``files/pXX/pNNNNNNNN/sNNNNNNNN/<dicom_id>.jpg``.

Labels are per study (the report), given to each of its images; 1 / 0 / -1 / blank as in CheXpert, and read the
same way (``options.blank``, No Finding). ``options.labeler``: ``chexpert`` (default) or ``negbio``, the release's two
label files. Studies without a label row (no report labels) are left out. Age and sex are not in MIMIC-CXR-JPG.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from cxr.data.datasets.chexpert import BLANK, NOT_ZEROED_BY_NO_FINDING
from cxr.data.datasets.common import check_label_values, finish, image_paths, read_csv, require_columns
from cxr.data.findings import NO_FINDING, mapping
from cxr.data.labels import LabelFileError

NAME = "mimic_cxr"
PREFIX = "mimic-cxr-2.0.0"
LABELERS = ("chexpert", "negbio")
SPLITS = {"train": "train", "validate": "val", "test": "test"}
IDS = {"subject_id": "int64", "study_id": "int64"}


def release_file(root: Path, kind: str) -> Path:
    """The release's ``mimic-cxr-2.0.0-<kind>.csv.gz`` (or the unpacked ``.csv``) under ``root``."""
    for suffix in (".csv.gz", ".csv"):
        if (path := root / f"{PREFIX}-{kind}{suffix}").is_file():
            return path
    return root / f"{PREFIX}-{kind}.csv.gz"


def read(root: Path, options: Mapping) -> pd.DataFrame:
    """MIMIC-CXR-JPG's label, metadata and split files under ``root``, one row per image (dicom_id)."""
    root = Path(root)
    blank = options.get("blank") or "negative"
    labeler = options.get("labeler") or "chexpert"
    if blank not in BLANK:
        raise LabelFileError(f"data.blank={blank!r}: choose one of {', '.join(BLANK)}")
    if labeler not in LABELERS:
        raise LabelFileError(f"data.labeler={labeler!r}: choose one of {', '.join(LABELERS)}")
    labels_path = Path(options["labels"]) if options.get("labels") else release_file(root, labeler)
    label_map = mapping(NAME)
    labels = read_csv(labels_path, dtype={**IDS, **dict.fromkeys(label_map, "float32")})
    require_columns(labels, (*IDS, *label_map), labels_path)
    check_label_values(labels, label_map, labels_path)
    meta_path = release_file(root, "metadata")
    meta = read_csv(
        meta_path,
        usecols=lambda c: c in ("dicom_id", *IDS, "ViewPosition"),
        dtype={"dicom_id": "string", "ViewPosition": "string", **IDS},
    )
    require_columns(meta, ("dicom_id", *IDS, "ViewPosition"), meta_path)
    split_path = release_file(root, "split")
    split = read_csv(split_path, usecols=["dicom_id", "split"], dtype="string") if split_path.is_file() else None
    if split is not None:
        unknown = ~split["split"].isin(list(SPLITS))
        if unknown.any():
            line = int(np.flatnonzero(unknown.to_numpy())[0]) + 2
            raise LabelFileError(
                f"{split_path}: line {line}: split {split['split'].iloc[line - 2]!r} is not one of {', '.join(SPLITS)}"
            )
        meta = meta.merge(split, on="dicom_id", how="left")
    duplicated = labels.duplicated(list(IDS))
    if duplicated.any():
        line = int(np.flatnonzero(duplicated.to_numpy())[0]) + 2
        raise LabelFileError(f"{labels_path}: line {line}: study listed twice (subject_id, study_id)")
    rows = meta.merge(labels, on=list(IDS), how="inner")
    subject, study = rows["subject_id"].astype(str), rows["study_id"].astype(str)
    frame = pd.DataFrame(
        {
            "image": "files/p" + subject.str[:2] + "/p" + subject + "/s" + study + "/" + rows["dicom_id"] + ".jpg",
            "patient_id": NAME + ":" + subject,
            "study_id": NAME + ":" + study,
            "view_position": rows["ViewPosition"].str.strip().str.upper().replace("", pd.NA),
            "official_split": rows["split"].map(SPLITS) if "split" in rows else pd.NA,
        }
    )
    healthy = (rows[NO_FINDING] == 1).to_numpy()
    for label, finding in label_map.items():
        if not finding:
            continue
        values = rows[label].to_numpy(dtype="float32", na_value=np.nan)
        if blank == "negative":
            values = np.where(np.isnan(values), 0.0, values)
        elif label not in NOT_ZEROED_BY_NO_FINDING:
            values = np.where(healthy & np.isnan(values), 0.0, values)
        frame[finding] = values
    frame["path"] = image_paths(root, frame["image"], (".jpg",))
    return finish(frame, NAME)
