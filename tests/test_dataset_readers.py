"""The PadChest, VinDr-CXR, RSNA Pneumonia and Open-i readers on the real label files (torchxrayvision's wheel),
against the published counts and torchxrayvision's own label maps, with tiny synthetic images in each layout."""

from __future__ import annotations

import csv
import gzip
import tarfile
import zipfile
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxr.data.datasets import openi, padchest, rsna_pneumonia, vindr_cxr
from cxr.data.datasets.common import COLUMNS
from cxr.data.datasets.release import harmonised_map, map_rows
from cxr.data.findings import HARMONISED, PATHOLOGIES
from cxr.data.images import load_image
from cxr.data.labels import LabelFileError
from tests.conftest import import_or_skip
from tests.reader_fixtures import dicom, png8, png16, xrv_data

PADCHEST_CSV = "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz"


def check_contract(frame: pd.DataFrame, name: str) -> None:
    assert list(frame.columns) == list(COLUMNS)
    assert set(HARMONISED) <= set(frame.columns) and {"dataset", "finding_labels", "target"} <= set(frame.columns)
    assert (frame["dataset"] == name).all() and frame["patient_id"].str.startswith(name + ":").all()
    values = frame[list(HARMONISED)].to_numpy()
    assert np.isin(values[~np.isnan(values)], (0.0, 1.0)).all()
    labelled = ~frame[list(HARMONISED)].isna().all(axis=1)
    assert frame.loc[labelled, "target"].eq(frame.loc[labelled, list(PATHOLOGIES)].eq(1).any(axis=1)).all()


def xrv_terms(vocabulary: set[str], name: str, synonyms: dict[str, list[str]]) -> set[str]:
    """The source labels torchxrayvision's substring rule counts for pathology ``name``."""
    needles = [name.lower(), *(s.lower() for s in synonyms.get(name, []))]
    return {label for label in vocabulary if any(n in label.lower() for n in needles)}


def lists(text: str, labels: set[str]) -> bool:
    """Whether a PadChest label list (text) holds one of ``labels`` (items may carry spaces: ' pleural effusion')."""
    return any(f"'{x}'" in text.replace("' ", "'").replace(" '", "'") for x in labels)


def explained(dataset: str, labels: set[str]) -> None:
    """Every source label where cxr and torchxrayvision differ has a row with a note in the harmonised table."""
    notes = {row["source_label"]: row["note"] for row in map_rows(dataset)}
    unexplained = sorted(label for label in labels if not notes.get(label))
    assert not unexplained, f"{dataset}: differences from torchxrayvision without a note: {unexplained}"


# ---------------------------------------------------------------- the table


def test_harmonised_rows_are_valid_sorted_and_noted():
    with resources.files("cxr.data").joinpath("harmonised_findings.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["dataset", "source_label", "finding", "note"]
    datasets = [row["dataset"] for row in rows]
    assert datasets == sorted(datasets)  # append-only and sorted: the helpers' merge is a concatenation
    mine = [row for row in rows if row["dataset"] in ("openi", "padchest", "rsna_pneumonia", "vindr_cxr")]
    assert {row["dataset"] for row in mine} == {"openi", "padchest", "rsna_pneumonia", "vindr_cxr"}
    for row in mine:
        assert row["finding"] in HARMONISED or (not row["finding"] and row["note"].startswith("not mapped"))
        assert row["note"], row
    keys = [(r["dataset"], r["source_label"], r["finding"]) for r in rows]
    assert len(keys) == len(set(keys))


def test_datasets_page_table_matches_the_csv():
    from cxr.data.datasets.release import mapping_markdown

    page = (Path(__file__).resolve().parents[1] / "docs" / "datasets.md").read_text()
    start = page.index("-->\n", page.index("<!-- mapping table")) + 4
    table = page[start : page.index("<!-- end of mapping table -->")]
    assert table == mapping_markdown(), "regenerate docs/datasets.md's table with mapping_markdown()"


# ---------------------------------------------------------------- PadChest


@pytest.fixture(scope="module")
def padchest_real():
    return padchest.read(Path("/nonexistent"), {"labels": str(xrv_data() / PADCHEST_CSV)})


def test_padchest_real_counts(padchest_real):
    frame = padchest_real
    check_contract(frame, "padchest")
    # Bustos et al. 2020: 67,625 patients, 109,931 studies; the released CSV lists 160,861 images
    assert len(frame) == 160_861
    assert frame["patient_id"].nunique() == 67_625 and frame["study_id"].nunique() == 109_931
    assert frame["target"].isna().sum() == 103  # the rows whose label list is blank ('nan'): unlabelled
    raw = pd.read_csv(xrv_data() / PADCHEST_CSV, usecols=["Projection", "Labels"], dtype=str)
    assert (frame["view_position"] == "PA").sum() == (raw["Projection"] == "PA").sum()
    assert (frame["view_position"] == "AP SUPINE").sum() == (raw["Projection"] == "AP_horizontal").sum()
    assert (frame["view_position"] == "LATERAL").sum() == (raw["Projection"] == "L").sum()
    listed = raw["Labels"].fillna("")
    assert frame["Cardiomegaly"].sum() == listed.str.contains(r"'\s*cardiomegaly\s*'").sum()  # ' cardiomegaly' too
    normal = listed.str.fullmatch(r"\['normal'\]")
    assert (frame.loc[normal.to_numpy(), "finding_labels"] == "No Finding").all()
    for finding in ("Lung Opacity", "Lung Lesion", "Enlarged Cardiomediastinum", "Pleural Other"):
        assert frame[finding].isna().all()  # PadChest's map does not label these: missing, not negative


def test_padchest_against_torchxrayvision(tmp_path, padchest_real):
    """Each image on which torchxrayvision's PC_Dataset and cxr disagree lists a label that the table notes."""
    xrv = import_or_skip("torchxrayvision")
    subset = pd.read_csv(xrv_data() / PADCHEST_CSV, nrows=4000, index_col=0, low_memory=False)
    subset.to_csv(tmp_path / "subset.csv")
    (tmp_path / "images").mkdir()
    views = ["PA", "AP", "L", "AP Supine", "COSTAL"]
    theirs = xrv.datasets.PC_Dataset(str(tmp_path / "images"), str(tmp_path / "subset.csv"), views=views,
                                     unique_patients=False)  # fmt: skip
    ours = padchest_real.set_index(padchest_real["image"].str.split("/").str[1])
    synonyms = {"Infiltration": ["infiltrates", "interstitial pattern", "ground glass pattern",
                                 "reticular interstitial pattern", "reticulonodular interstitial pattern",
                                 "alveolar pattern", "consolidation", "air bronchogram"],
                "Pleural_Thickening": ["pleural thickening"], "Consolidation": ["air bronchogram"],
                "Support Devices": ["device", "pacemaker"]}  # fmt: skip
    vocabulary = {s for labels in padchest.parse_labels(subset["Labels"].astype(str), Path("x"))[0] for s in labels}
    ids = theirs.csv["ImageID"].to_numpy()
    shared = [p for p in theirs.pathologies if p in HARMONISED]
    assert len(shared) >= 15
    for finding in shared:
        xrv_labels = xrv_terms(vocabulary, finding, synonyms)
        cxr_labels = {label for label, target in harmonised_map("padchest").items() if target == finding}
        column = theirs.labels[:, theirs.pathologies.index(finding)]
        their_rule = theirs.csv["Labels"].map(lambda t, s=xrv_labels: lists(t, s)).to_numpy()
        assert (column == their_rule).all(), finding  # the rule reproduced here is torchxrayvision's
        differ = (ours.loc[ids, finding].to_numpy() == 1) != (column == 1)
        explained("padchest", (xrv_labels ^ cxr_labels) & vocabulary)
        for text in theirs.csv["Labels"].to_numpy()[differ]:
            assert lists(text, xrv_labels ^ cxr_labels), (finding, text)


def test_padchest_release_layout_16bit_pngs(tmp_path):
    rows = pd.read_csv(xrv_data() / PADCHEST_CSV, nrows=30, index_col=0, dtype=str, keep_default_na=False)
    with gzip.open(tmp_path / PADCHEST_CSV, "wt", newline="") as handle:
        rows.to_csv(handle)
    for i, row in enumerate(rows.itertuples()):
        png16(tmp_path / row.ImageDir / row.ImageID, seed=i)
    frame = padchest.read(tmp_path, {})
    check_contract(frame, "padchest")
    assert len(frame) == 30 and frame["path"].notna().all()
    assert frame["patient_id"].tolist() == ("padchest:" + rows["PatientID"]).tolist()
    assert load_image(frame["path"][0], channels=1, size=16).shape[:2] == (16, 16)


def test_padchest_bad_label_list_names_the_line(tmp_path):
    rows = pd.read_csv(xrv_data() / PADCHEST_CSV, nrows=5, index_col=0, dtype=str, keep_default_na=False)
    rows.loc[rows.index[3], "Labels"] = "normal"
    rows.to_csv(tmp_path / "labels.csv")
    with pytest.raises(LabelFileError, match=r"line 5, column 'Labels'"):
        padchest.read(tmp_path, {"labels": str(tmp_path / "labels.csv")})


# ---------------------------------------------------------------- VinDr-CXR


@pytest.fixture(scope="module")
def vindr_boxes():
    return pd.read_csv(xrv_data() / "vinbigdata-train.csv.gz")


def test_vindr_competition_file_counts_and_xrv(tmp_path, vindr_boxes):
    xrv = import_or_skip("torchxrayvision")
    path = xrv_data() / "vinbigdata-train.csv.gz"
    frame = vindr_cxr.read(tmp_path, {"labels": str(path)})
    check_contract(frame, "vindr_cxr")
    # Nguyen et al. 2022: 15,000 training images, each read by 3 of 17 radiologists; 10,606 "No finding"
    assert len(frame) == 15_000 and vindr_boxes["rad_id"].nunique() == 17
    assert vindr_boxes.groupby("image_id")["rad_id"].nunique().eq(3).all()
    assert (frame["finding_labels"] == "No Finding").sum() >= 10_606
    assert (frame["official_split"] == "train").all() and (frame["view_position"] == "PA").all()
    assert frame["Pneumonia"].isna().all() and frame["Edema"].isna().all()  # not in the competition's 14 labels
    majority = vindr_cxr.read(tmp_path, {"labels": str(path), "raters": "majority"})
    assert (majority["Cardiomegaly"] <= frame["Cardiomegaly"]).all()
    assert majority["Cardiomegaly"].sum() < frame["Cardiomegaly"].sum()
    theirs = xrv.datasets.VinDr_Dataset(str(tmp_path), str(path))
    ours = frame.set_index(frame["image"].str.removeprefix("train/").str.removesuffix(".dicom"))
    ours = ours.loc[theirs.csv["image_id"]]
    pairs = {p: p for p in theirs.pathologies if p in HARMONISED}
    pairs |= {"Nodule/Mass": "Lung Lesion", "Pulmonary Fibrosis": "Fibrosis"}
    assert len(pairs) == 10
    for their_name, finding in pairs.items():
        assert (theirs.labels[:, theirs.pathologies.index(their_name)] == ours[finding].to_numpy()).all(), finding


def test_vindr_physionet_layout_dicom(tmp_path, vindr_boxes):
    """image_labels_{train,test}.csv in the release's wide layout, made from the real reads of a few images."""
    marks = pd.crosstab([vindr_boxes["image_id"], vindr_boxes["rad_id"]], vindr_boxes["class_name"]).clip(upper=1)
    marks = marks.reindex(columns=[*vindr_cxr.LOCAL, "COPD", "Lung tumor", "Pneumonia", "Tuberculosis",
                                   "Other diseases", "No finding"], fill_value=0)  # fmt: skip
    marks.index.names = ["image_id", "rad_ID"]
    images = marks.index.get_level_values(0).unique()
    train = marks.loc[images[:10]].reset_index()
    test = marks.loc[images[10:16]].groupby(level=0).max().reset_index()
    (tmp_path / "annotations").mkdir()
    train.to_csv(tmp_path / "annotations" / "image_labels_train.csv", index=False)
    test.to_csv(tmp_path / "annotations" / "image_labels_test.csv", index=False)
    for i, image in enumerate(images[:16]):
        dicom(tmp_path / ("train" if i < 10 else "test") / f"{image}.dicom", view="PA" if i % 2 else "", seed=i)
    frame = vindr_cxr.read(tmp_path, {})
    check_contract(frame, "vindr_cxr")
    assert frame["official_split"].value_counts().to_dict() == {"train": 10, "test": 6}
    assert frame["path"].notna().all() and (frame["view_position"] == "PA").all()
    assert (frame["age_years"] == 61).all() and (frame["sex"] == "F").all()
    assert frame["Pneumonia"].notna().all()  # a global label: labelled in the PhysioNet layout
    from cxr.data.dicom import read_dicom

    assert read_dicom(frame["path"][0]).pixels.shape == (24, 24)
    bad = train.copy()
    bad.loc[4, "Cardiomegaly"] = 2
    bad.to_csv(tmp_path / "annotations" / "image_labels_train.csv", index=False)
    with pytest.raises(LabelFileError, match=r"line 6, column 'Cardiomegaly'"):
        vindr_cxr.read(tmp_path, {})


# ---------------------------------------------------------------- RSNA Pneumonia


@pytest.fixture(scope="module")
def rsna_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("rsna")
    zipfile.ZipFile(xrv_data() / "kaggle_stage_2_train_labels.csv.zip").extractall(root)
    return root


def test_rsna_real_counts_and_xrv(tmp_path, rsna_root):
    xrv = import_or_skip("torchxrayvision")
    frame = rsna_pneumonia.read(rsna_root, {})
    check_contract(frame, "rsna_pneumonia")
    # Shih et al. 2019 / the challenge: 26,684 training images (one per patientId), 30,227 label rows
    assert len(frame) == frame["patient_id"].nunique() == 26_684
    assert len(pd.read_csv(rsna_root / "stage_2_train_labels.csv")) == 30_227
    assert (frame["Pneumonia"] == frame["Lung Opacity"]).all() and frame["Pneumonia"].sum() == 6_012
    theirs = xrv.datasets.RSNA_Pneumonia_Dataset(str(tmp_path), views=["PA", "AP"])
    ours = frame.set_index(frame["study_id"]).loc[theirs.csv["patientId"]]
    for finding in ("Pneumonia", "Lung Opacity"):
        assert (theirs.labels[:, theirs.pathologies.index(finding)] == ours[finding].to_numpy()).all()


def test_rsna_release_layout_dicom_headers(tmp_path, rsna_root):
    labels = pd.read_csv(rsna_root / "stage_2_train_labels.csv", dtype=str, keep_default_na=False)
    ids = labels["patientId"].drop_duplicates().iloc[:24]
    labels = labels[labels["patientId"].isin(ids)]
    labels.to_csv(tmp_path / "stage_2_train_labels.csv", index=False)
    classes = labels[["patientId"]].assign(**{"class": np.where(labels["Target"] == "1", "Lung Opacity", "Normal")})
    classes.to_csv(tmp_path / "stage_2_detailed_class_info.csv", index=False)
    headers = pd.read_csv(xrv_data() / "kaggle_stage_2_train_images_dicom_headers.csv.gz", index_col="PatientID")
    for i, image in enumerate(ids):
        head = headers.loc[image]
        dicom(tmp_path / "stage_2_train_images" / f"{image}.dcm", head.ViewPosition, head.PatientSex,
              f"{int(head.PatientAge):03d}Y", seed=i)  # fmt: skip
    frame = rsna_pneumonia.read(tmp_path, {})
    check_contract(frame, "rsna_pneumonia")
    assert len(frame) == 24 and frame["path"].notna().all()
    expected = headers.loc[frame["study_id"]]
    assert frame["view_position"].tolist() == expected["ViewPosition"].tolist()
    assert frame["sex"].tolist() == expected["PatientSex"].tolist()
    classes.loc[classes.index[0], "class"] = "Normal" if labels["Target"].iloc[0] == "1" else "Lung Opacity"
    classes.to_csv(tmp_path / "stage_2_detailed_class_info.csv", index=False)
    with pytest.raises(LabelFileError, match="disagree"):
        rsna_pneumonia.read(tmp_path, {})


# ---------------------------------------------------------------- Open-i


@pytest.fixture(scope="module")
def openi_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("openi")
    with tarfile.open(xrv_data() / "NLMCXR_reports.tgz") as archive:
        archive.extractall(root, filter="data")
    return root


def test_openi_real_reports_and_xrv(openi_root):
    xrv = import_or_skip("torchxrayvision")
    metadata = str(xrv_data() / "nlmcxr_dicom_metadata.csv.gz")
    frame = openi.read(openi_root, {"metadata": metadata})
    check_contract(frame, "openi")
    # Demner-Fushman et al. 2016 (and torchxrayvision): 3,955 reports, 7,470 images
    assert len(list((openi_root / "ecgen-radiology").glob("*.xml"))) == 3_955 and len(frame) == 7_470
    assert frame["view_position"].isin(["PA", "AP", "LL", "LATERAL"]).sum() > 4_000
    theirs = xrv.datasets.Openi_Dataset(str(openi_root), views=["PA"], unique_patients=False)
    ours = frame.set_index(frame["image"].str.removesuffix(".png")).loc[theirs.csv["imageid"]]
    unmapped = {row["note"] for row in map_rows("openi") if not row["finding"]}
    for finding in (p for p in theirs.pathologies if p in HARMONISED):
        column = theirs.labels[:, theirs.pathologies.index(finding)] == 1
        if ours[finding].isna().all():
            assert any(finding in note for note in unmapped), finding
            continue
        positive = ours[finding].to_numpy() == 1
        # the manual major terms and the automatic terms name the same finding: xrv's positives are far more
        # frequent among cxr's positives than among all images
        assert column[positive].mean() > 2 * column.mean(), finding


def test_openi_release_layout_pngs_and_no_indexing(tmp_path, openi_root):
    reports = sorted((openi_root / "ecgen-radiology").glob("*.xml"))[:30]
    (tmp_path / "ecgen-radiology").mkdir()
    for report in reports:
        (tmp_path / "ecgen-radiology" / report.name).write_bytes(report.read_bytes())
    text = (tmp_path / "ecgen-radiology" / reports[0].name).read_text()
    (tmp_path / "ecgen-radiology" / reports[0].name).write_text(
        text.replace("<MeSH>", "<MeSH><major>No Indexing</major>", 1)
    )
    frame = openi.read(tmp_path, {})
    for i, image in enumerate(frame["image"]):
        png8(tmp_path / image, seed=i)
    frame = openi.read(tmp_path, {})
    check_contract(frame, "openi")
    assert frame["path"].notna().all() and frame["view_position"].isna().all()  # no DICOM headers given
    unindexed = {f"CXR{p.stem}" for p in (tmp_path / "ecgen-radiology").glob("*.xml") if "No Indexing" in p.read_text()}
    assert frame["study_id"].iloc[0] in unindexed
    assert frame["target"].isna().tolist() == frame["study_id"].isin(unindexed).tolist()
    (tmp_path / "ecgen-radiology" / reports[1].name).write_text("<eCitation><uId")
    with pytest.raises(LabelFileError, match=reports[1].name):
        openi.read(tmp_path, {})


@pytest.mark.parametrize("name", ["padchest", "vindr_cxr", "rsna_pneumonia", "openi"])
def test_data_configs_compose_and_name_their_reader(name, tmp_path):
    from cxr.data.datasets import READERS
    from tests.conftest import compose_config

    cfg = compose_config("train", [f"data={name}", f"data.root={tmp_path}"], tmp_path)
    assert cfg.data.name == name and name in READERS and list(cfg.data.views) == ["PA", "AP"]
    assert cfg.data.root == str(tmp_path) and "options" in cfg.data
