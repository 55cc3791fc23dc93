"""CheXpert v1.0 and v1.0-small (Stanford): ``train.csv`` / ``valid.csv`` and ``{train,valid}/patientN/studyN/viewN_*.jpg``.

Labels are 1 positive, 0 negative, -1 uncertain, blank not mentioned in the report. ``options.blank``: ``negative``
(default: a finding the report does not mention is absent, as the radiologist-labelled valid.csv reads) or
``missing`` (NaN, as torchxrayvision keeps it). "No Finding" = 1 makes every blank finding but Support Devices
negative (the labeler sets No Finding when no pathology is positive or uncertain; devices are not a pathology).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from cxr.data.datasets.common import check_label_values, finish, image_paths, read_csv, require_columns
from cxr.data.findings import NO_FINDING, mapping
from cxr.data.labels import LabelFileError

NAME = "chexpert"
LABEL_FILES = ("train.csv", "valid.csv")
META = ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA")
SEX = {"Male": "M", "Female": "F"}
BLANK = ("negative", "missing")
NOT_ZEROED_BY_NO_FINDING = ("Support Devices",)


def official_split_of(path: Path) -> str | None:
    """The split a CheXpert label file holds, from its name (train.csv, valid.csv; None for another name)."""
    name = path.name.lower()
    return "val" if "valid" in name else "test" if "test" in name else "train" if "train" in name else None


def read_file(path: Path, blank: str = "negative") -> pd.DataFrame:
    """One CheXpert label file -> harmonised columns (image relative to the release folder, -1 kept)."""
    labels = mapping(NAME)
    dtypes = {label: "float32" for label in labels} | {c: "string" for c in META if c != "Age"} | {"Age": "float64"}
    raw = read_csv(path, usecols=lambda c: c in dtypes, dtype=dtypes)
    require_columns(raw, (*META, *labels), path)
    check_label_values(raw, labels, path)
    image = raw["Path"].str.replace(r"^CheXpert-v1\.0[^/]*/", "", regex=True)
    patient = image.str.extract(r"(?:^|/)(patient\d+)/", expand=False)
    if patient.isna().any():
        line = int(np.flatnonzero(patient.isna().to_numpy())[0]) + 2
        raise LabelFileError(
            f"{path}: line {line}: column 'Path' has no patientNNNNN folder: {raw['Path'].iloc[line - 2]!r}"
        )
    study = image.str.extract(r"(patient\d+/study\d+)/", expand=False)
    frontal = raw["Frontal/Lateral"].str.strip().str.lower() == "frontal"
    view = raw["AP/PA"].str.strip().str.upper().where(frontal, "LATERAL")
    frame = pd.DataFrame(
        {
            "image": image,
            "patient_id": NAME + ":" + patient,
            "study_id": NAME + ":" + study,
            "age_years": raw["Age"].where(raw["Age"] > 0),  # 0 marks an unknown age (torchxrayvision reads it so too)
            "sex": raw["Sex"].map(SEX),
            "view_position": view,
            "official_split": official_split_of(path),
        }
    )
    healthy = (raw[NO_FINDING] == 1).to_numpy()
    for label, finding in labels.items():
        if not finding:
            continue
        values = raw[label].to_numpy(dtype="float32", na_value=np.nan)
        if blank == "negative":
            values = np.where(np.isnan(values), 0.0, values)
        elif label not in NOT_ZEROED_BY_NO_FINDING:
            values = np.where(healthy & np.isnan(values), 0.0, values)
        frame[finding] = values
    return frame


def read(root: Path, options: Mapping) -> pd.DataFrame:
    """CheXpert's train.csv and valid.csv under ``root`` (or ``options['labels']``), one row per image."""
    root = Path(root)
    blank = options.get("blank") or "negative"
    if blank not in BLANK:
        raise LabelFileError(f"data.blank={blank!r}: choose one of {', '.join(BLANK)}")
    if options.get("labels"):
        files = [Path(options["labels"])]
    else:
        files = [root / name for name in LABEL_FILES if (root / name).is_file()]
        if not files:
            raise LabelFileError(f"no CheXpert label file under {root} (expected {' and '.join(LABEL_FILES)})")
    frame = pd.concat([read_file(path, blank) for path in files], ignore_index=True)
    frame["path"] = image_paths(root, frame["image"], (".jpg", ".jpeg", ".png"))
    return finish(frame, NAME)
