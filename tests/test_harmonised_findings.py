"""The harmonised label space and the CheXpert / MIMIC-CXR readers, against the real label files and against
torchxrayvision's maps and labels."""

from __future__ import annotations

import csv
import gzip

import numpy as np
import pandas as pd
import pytest

from cxr.data.datasets import READERS
from cxr.data.datasets.common import COLUMNS
from cxr.data.findings import HARMONISED, NIH_FINDINGS, labelled_findings, mapping, mapping_table
from cxr.data.labels import FINDINGS, LabelFileError
from tests.conftest import import_or_skip
from tests.dataset_fixtures import chexpert_release, mimic_release, xrv_data

xrv = import_or_skip("torchxrayvision")


def test_harmonised_names_start_with_nih_and_table_is_sorted_and_known():
    assert NIH_FINDINGS == FINDINGS and HARMONISED[:14] == FINDINGS and len(set(HARMONISED)) == len(HARMONISED)
    rows = mapping_table()
    assert [r["dataset"] for r in rows] == sorted(r["dataset"] for r in rows)  # append-only merge of helpers' rows
    assert {r["finding"] for r in rows} - {""} <= set(HARMONISED)
    assert len({(r["dataset"], r["source_label"]) for r in rows}) == len(rows)


def test_chexpert_map_matches_torchxrayvision():
    """xrv's CheX_Dataset pathologies (after its own renames) are exactly our CheXpert findings."""
    dataset = xrv.datasets.CheX_Dataset(imgpath="/nonexistent", csvpath=str(xrv_data("chexpert_train.csv.gz")))
    assert set(dataset.pathologies) == set(labelled_findings("chexpert"))
    assert mapping("chexpert")["Pleural Effusion"] == "Effusion"


def test_nih_map_matches_torchxrayvision(tmp_path):
    dataset = xrv.datasets.NIH_Dataset(imgpath=str(tmp_path))
    assert set(dataset.pathologies) == set(labelled_findings("nih")) == set(NIH_FINDINGS)


def test_mimic_map_matches_torchxrayvision(tmp_path):
    root = mimic_release(tmp_path, patients=6)
    dataset = xrv.datasets.MIMIC_Dataset(
        imgpath=str(root / "files"),
        csvpath=str(root / "mimic-cxr-2.0.0-chexpert.csv.gz"),
        metacsvpath=str(root / "mimic-cxr-2.0.0-metadata.csv.gz"),
        views=["*"],
        unique_patients=False,
    )
    assert set(dataset.pathologies) == set(labelled_findings("mimic_cxr"))


@pytest.fixture(scope="module")
def chexpert_train():
    return READERS["chexpert"](xrv_data("nonexistent"), {"labels": str(xrv_data("chexpert_train.csv.gz"))})


def test_chexpert_train_csv_counts_as_published(chexpert_train):
    """CheXpert: 224,316 images of 65,240 patients in all; valid 234 images of 200 patients, test 668 of 500
    (Irvin et al. 2019; CheXlocalize), so train.csv holds 223,414 images of 64,540 patients."""
    frame = chexpert_train
    assert list(frame.columns) == list(COLUMNS)
    assert len(frame) == 224_316 - 234 - 668 and frame["patient_id"].nunique() == 65_240 - 200 - 500
    assert frame["patient_id"].str.startswith("chexpert:patient").all()
    assert (frame["official_split"] == "train").all() and frame["path"].isna().all()
    assert frame["image"].str.startswith("train/patient").all()
    assert set(frame["sex"].dropna()) == {"M", "F"} and frame["age_years"].min() > 0
    assert set(frame["view_position"]) == {"AP", "PA", "LATERAL", "LL", "RL"}


def test_chexpert_labels_match_torchxrayvision(chexpert_train):
    """With blanks missing, our labels are torchxrayvision's (its -1 -> NaN; No Finding zeroes all but devices)."""
    ours = READERS["chexpert"](
        xrv_data("nonexistent"), {"labels": str(xrv_data("chexpert_train.csv.gz")), "blank": "missing"}
    )
    theirs = xrv.datasets.CheX_Dataset(
        imgpath="/nonexistent", csvpath=str(xrv_data("chexpert_train.csv.gz")), views=["*"], unique_patients=False
    )
    for i, finding in enumerate(theirs.pathologies):
        mine = ours[finding].to_numpy().copy()
        mine[mine == -1] = np.nan
        np.testing.assert_array_equal(mine, theirs.labels[:, i], err_msg=finding)
    # blank=negative (the default) only turns blanks into 0: positives and uncertain counts are unchanged
    for finding in theirs.pathologies:
        assert (chexpert_train[finding] == 1).sum() == (ours[finding] == 1).sum()
        assert (chexpert_train[finding] == -1).sum() == (ours[finding] == -1).sum()
        assert chexpert_train[finding].notna().all()
    for finding in set(HARMONISED) - set(theirs.pathologies):
        assert chexpert_train[finding].isna().all()  # not labelled by CheXpert: missing, never negative


def test_chexpert_release_layout_reads_images_and_official_split(tmp_path):
    root = chexpert_release(tmp_path)
    frame = READERS["chexpert"](root, {})
    assert frame["path"].notna().all() and set(frame["official_split"]) == {"train", "val"}
    assert frame.loc[frame["official_split"] == "val", "image"].str.startswith("valid/").all()
    assert not set(frame.query("official_split == 'val'")["patient_id"]) & set(
        frame.query("official_split == 'train'")["patient_id"]
    )
    assert (frame["target"] == frame[[f for f in HARMONISED if f != "Support Devices"]].eq(1).any(axis=1)).all()


def test_chexpert_bad_value_names_file_line_and_column(tmp_path):
    root = chexpert_release(tmp_path, patients=3, valid_patients=1)
    rows = list(csv.reader(open(root / "train.csv")))
    rows[2][rows[0].index("Edema")] = "2.0"
    with open(root / "train.csv", "w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    with pytest.raises(LabelFileError, match=r"train\.csv: line 3: column 'Edema' holds 2\.0"):
        READERS["chexpert"](root, {})


def test_mimic_release_reads_studies_views_and_split(tmp_path):
    root = mimic_release(tmp_path)
    frame = READERS["mimic_cxr"](root, {})
    meta = pd.read_csv(root / "mimic-cxr-2.0.0-metadata.csv.gz")
    labels = pd.read_csv(root / "mimic-cxr-2.0.0-chexpert.csv.gz")
    assert len(frame) == len(meta) and frame["path"].notna().all()
    assert frame["patient_id"].nunique() == labels["subject_id"].nunique()
    assert set(frame["official_split"]) == {"train", "val", "test"}
    assert set(frame["view_position"]) == {"PA", "AP", "LATERAL"}
    # a study's labels reach each of its images; Pleural Effusion -> Effusion; No Finding zeroes blanks
    first = labels.iloc[1]
    images = frame[frame["study_id"] == f"mimic_cxr:{int(first['study_id'])}"]
    expected = 0.0 if np.isnan(first["Pleural Effusion"]) else first["Pleural Effusion"]
    assert len(images) >= 1 and (images["Effusion"] == expected).all()
    healthy = frame["study_id"].isin("mimic_cxr:" + labels.loc[labels["No Finding"] == 1, "study_id"].astype(str))
    assert (frame.loc[healthy, "finding_labels"] == "No Finding").all() and (frame.loc[healthy, "target"] == 0).all()
    assert frame[["Mass", "Nodule", "Infiltration"]].isna().all().all()


def test_mimic_negbio_and_bad_split(tmp_path):
    root = mimic_release(tmp_path, patients=4)
    assert len(READERS["mimic_cxr"](root, {"labeler": "negbio"})) == len(READERS["mimic_cxr"](root, {}))
    split = pd.read_csv(root / "mimic-cxr-2.0.0-split.csv.gz")
    split.loc[1, "split"] = "holdout"
    with gzip.open(root / "mimic-cxr-2.0.0-split.csv.gz", "wt") as handle:
        split.to_csv(handle, index=False)
    with pytest.raises(LabelFileError, match=r"split\.csv\.gz: line 3: split 'holdout'"):
        READERS["mimic_cxr"](root, {})
