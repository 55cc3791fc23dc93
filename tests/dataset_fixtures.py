"""Tiny releases in each dataset's published layout, built from the real label files shipped in the
torchxrayvision wheel (CheXpert) or in the exact published column layout (MIMIC-CXR-JPG, whose label files are not
public), with 32-pixel synthetic images written where the release puts them."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image


def xrv_data(name: str) -> Path:
    """A label file shipped in torchxrayvision's wheel (its data/ folder)."""
    import torchxrayvision

    return Path(os.path.dirname(torchxrayvision.__file__)) / "data" / name


def write_jpeg(path: Path, seed: int, size: int = 32) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.RandomState(seed).randint(0, 256, (size, size), dtype=np.uint8)
    Image.fromarray(pixels, "L").save(path, quality=90)


CHEXPERT_FINDINGS = (
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Effusion",
    "Pneumothorax",
    "Lung Opacity",
    "Support Devices",
)


def chexpert_release(folder: Path, patients: int = 16, valid_patients: int = 6, seed: int = 0) -> Path:
    """``CheXpert-v1.0-small/`` with train.csv (rows of ``patients`` real patients, frontal and lateral) and
    valid.csv (real rows of ``valid_patients`` other patients, renamed into valid/), and a JPEG for every row."""
    raw = pd.read_csv(xrv_data("chexpert_train.csv.gz"), dtype=str, keep_default_na=False)
    patient = raw["Path"].str.extract(r"(patient\d+)", expand=False)
    # patients whose images hold both classes of the common findings, in file order (reproducible, no RNG)
    chosen = list(dict.fromkeys(patient[: 40 * (patients + valid_patients)]))
    rng = np.random.RandomState(seed)
    rng.shuffle(chosen)
    train_ids, valid_ids = chosen[:patients], chosen[patients : patients + valid_patients]
    root = Path(folder) / "CheXpert-v1.0-small"
    train = raw[patient.isin(train_ids)]
    valid = raw[patient.isin(valid_ids)].copy()
    renames = {old: f"patient{64541 + i:05d}" for i, old in enumerate(valid_ids)}
    valid["Path"] = [
        p.replace("/train/", "/valid/").replace(pid, renames[pid])
        for p, pid in zip(valid["Path"], patient[valid.index])
    ]
    root.mkdir(parents=True, exist_ok=True)
    train.to_csv(root / "train.csv", index=False)
    valid.to_csv(root / "valid.csv", index=False)
    for i, path in enumerate(pd.concat([train["Path"], valid["Path"]])):
        write_jpeg(Path(folder) / path, seed=i)
    return root


MIMIC_LABELS = (
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Enlarged Cardiomediastinum",
    "Fracture",
    "Lung Lesion",
    "Lung Opacity",
    "No Finding",
    "Pleural Effusion",
    "Pleural Other",
    "Pneumonia",
    "Pneumothorax",
    "Support Devices",
)
MIMIC_METADATA = (
    "dicom_id",
    "subject_id",
    "study_id",
    "PerformedProcedureStepDescription",
    "ViewPosition",
    "Rows",
    "Columns",
    "StudyDate",
    "StudyTime",
    "ProcedureCodeSequence_CodeMeaning",
    "ViewCodeSequence_CodeMeaning",
    "PatientOrientationCodeSequence_CodeMeaning",
)


def mimic_release(folder: Path, patients: int = 18, seed: int = 0) -> Path:
    """``mimic-cxr-jpg/2.0.0/`` with the four csv.gz files in the published column layout (labels per study:
    1/0/-1/blank, No Finding rows with blank findings; PA, AP and LATERAL images; train/validate/test by patient)
    and a JPEG for every image under files/pXX/pNNNNNNNN/sNNNNNNNN/."""
    rng = np.random.RandomState(seed)
    root = Path(folder) / "mimic-cxr-jpg" / "2.0.0"
    labels, meta, split = [], [], []
    for p in range(patients):
        subject = 10000032 + 1013 * p
        which = "test" if p % 6 == 0 else "validate" if p % 6 == 1 else "train"
        for s in range(1 + p % 2):
            study = 50000000 + 100 * p + s
            row = {"subject_id": subject, "study_id": study}
            if (p + s) % 4 == 0:
                row["No Finding"] = 1.0
            else:
                for label in MIMIC_LABELS:
                    if label != "No Finding":
                        row[label] = rng.choice([1.0, 0.0, -1.0, np.nan], p=[0.35, 0.25, 0.1, 0.3])
            labels.append(row)
            for i, view in enumerate(["PA" if p % 3 else "AP", "LATERAL"][: 1 + (p + s) % 2]):
                dicom = f"{subject:08x}-{study:08x}-{i:04d}-abcd1234-{p:04d}{s}{i}"
                meta.append(
                    {
                        "dicom_id": dicom,
                        "subject_id": subject,
                        "study_id": study,
                        "PerformedProcedureStepDescription": "CHEST (PA AND LAT)",
                        "ViewPosition": view,
                        "Rows": 3056,
                        "Columns": 2544,
                        "StudyDate": 21800506,
                        "StudyTime": 213014.531,
                        "ProcedureCodeSequence_CodeMeaning": "CHEST (PA AND LAT)",
                        "ViewCodeSequence_CodeMeaning": "postero-anterior" if view == "PA" else "lateral",
                        "PatientOrientationCodeSequence_CodeMeaning": "Erect",
                    }
                )
                split.append({"dicom_id": dicom, "study_id": study, "subject_id": subject, "split": which})
                s_id, p_id = str(study), str(subject)
                write_jpeg(root / "files" / f"p{p_id[:2]}" / f"p{p_id}" / f"s{s_id}" / f"{dicom}.jpg", seed=len(meta))
    root.mkdir(parents=True, exist_ok=True)
    label_frame = pd.DataFrame(labels, columns=["subject_id", "study_id", *MIMIC_LABELS])
    for name in ("chexpert", "negbio"):
        with gzip.open(root / f"mimic-cxr-2.0.0-{name}.csv.gz", "wt") as handle:
            label_frame.to_csv(handle, index=False)
    with gzip.open(root / "mimic-cxr-2.0.0-metadata.csv.gz", "wt") as handle:
        pd.DataFrame(meta, columns=list(MIMIC_METADATA)).to_csv(handle, index=False)
    with gzip.open(root / "mimic-cxr-2.0.0-split.csv.gz", "wt") as handle:
        pd.DataFrame(split).to_csv(handle, index=False)
    return root
