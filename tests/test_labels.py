"""Tests for cxr.data.labels: every NIH label-file layout into one normalised table, and clear errors."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from cxr.data.labels import FINDINGS, NO_FINDING, TABLE_COLUMNS, LabelFileError, read_labels
from tests.conftest import NIH_META, require_real_data

FORMATS = NIH_META / "formats"
V2020 = NIH_META / "Data_Entry_2017_v2020.csv.gz"

# --- tiny hand-written copies of each layout (run without ../shared) -------------------------------------------
BOX_2017 = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],\n"
    "00000001_000.png,Cardiomegaly,0,1,57,M,PA,2682,2749,0.143,0.143,\n"
    "00000001_001.png,Cardiomegaly|Emphysema,1,1,58,M,PA,2894,2729,0.143,0.143,\n"
    "00000002_000.png,No Finding,0,2,80,F,AP,2500,2048,0.171,0.171,\n"
)
REVISION_2020 = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]\n"
    "00000001_000.png,Cardiomegaly,0,1,57,M,PA,2682,2749,0.143,0.143\n"
    "00000001_001.png,Cardiomegaly|Emphysema,1,1,58,M,PA,2894,2729,0.143,0.143\n"
    "00000002_000.png,No Finding,0,2,80,F,AP,2500,2048,0.171,0.171\n"
)
KAGGLE = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImageWidth,OriginalImageHeight,OriginalImagePixelSpacing_x,OriginalImagePixelSpacing_y\n"
    "00000001_000.png,Cardiomegaly,0,1,057Y,M,PA,2682,2749,0.143,0.143\n"
    "00000001_001.png,Cardiomegaly|Emphysema,1,1,058Y,M,PA,2894,2729,0.143,0.143\n"
    "00000002_000.png,No Finding,0,2,080Y,F,AP,2500,2048,0.171,0.171\n"
)
THESIS = (
    "Image Index,Finding Labels\n"
    "00000001_000.png,Cardiomegaly\n"
    "00000001_001.png,Cardiomegaly|Emphysema\n"
    "00000002_000.png,No Finding\n"
)
SYNTHETIC_LAYOUTS = {"box_2017": BOX_2017, "revision_2020": REVISION_2020, "kaggle": KAGGLE, "thesis": THESIS}
HAS_METADATA = {"box_2017": True, "revision_2020": True, "kaggle": True, "thesis": False}


def write(tmp_path, text: str, name: str = "labels.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def check_normalised(table: pd.DataFrame, has_metadata: bool) -> None:
    """Documented columns, in order, with their dtypes; missing columns are empty; target/multi-hot consistent."""
    assert list(table.columns) == list(TABLE_COLUMNS) + list(FINDINGS)
    assert pd.api.types.is_string_dtype(table["image"]) and pd.api.types.is_string_dtype(table["finding_labels"])
    assert table["patient_id"].dtype == "Int64"
    assert table["age_years"].dtype == np.float64
    assert table["sex"].dtype == "string" and table["view_position"].dtype == "string"
    assert table["target"].dtype == np.int64
    assert all(table[name].dtype == np.int8 for name in FINDINGS)
    assert table["image"].is_unique and table["image"].notna().all()
    metadata = ["patient_id", "age_years", "sex", "view_position"]
    if has_metadata:
        assert table[metadata].notna().all().all()
        assert set(table["sex"]) <= {"M", "F"}
    else:
        assert table[metadata].isna().all().all()
    no_finding = table["finding_labels"] == NO_FINDING
    assert (table["target"] == (~no_finding).astype(int)).all()
    assert set(table["target"]) <= {0, 1}
    multi_hot = table[list(FINDINGS)]
    assert set(np.unique(multi_hot.to_numpy())) <= {0, 1}
    # a No Finding row has no finding; any other row has at least one
    assert (multi_hot[no_finding].sum(axis=1) == 0).all()
    assert (multi_hot[~no_finding].sum(axis=1) >= 1).all()
    counts = table["finding_labels"].str.split("|").map(lambda names: len(names) if names != [NO_FINDING] else 0)
    assert (multi_hot.sum(axis=1).to_numpy() == counts.to_numpy()).all()


@pytest.mark.parametrize("layout", list(SYNTHETIC_LAYOUTS))
def test_synthetic_layouts_normalise_to_the_same_table(tmp_path, layout):
    table = read_labels(write(tmp_path, SYNTHETIC_LAYOUTS[layout]))
    check_normalised(table, HAS_METADATA[layout])
    assert list(table["image"]) == ["00000001_000.png", "00000001_001.png", "00000002_000.png"]
    assert list(table["target"]) == [1, 1, 0]
    assert table.loc[1, ["Cardiomegaly", "Emphysema"]].tolist() == [1, 1]
    assert table.loc[1, [f for f in FINDINGS if f not in ("Cardiomegaly", "Emphysema")]].sum() == 0
    assert table.loc[0, "Cardiomegaly"] == 1 and table.loc[0, list(FINDINGS)].sum() == 1
    if HAS_METADATA[layout]:
        assert table["patient_id"].tolist() == [1, 1, 2]
        assert table["age_years"].tolist() == [57.0, 58.0, 80.0]
        assert table["sex"].tolist() == ["M", "M", "F"]
        assert table["view_position"].tolist() == ["PA", "PA", "AP"]


def test_synthetic_layouts_agree(tmp_path):
    tables = {name: read_labels(write(tmp_path, text, f"{name}.csv")) for name, text in SYNTHETIC_LAYOUTS.items()}
    reference = tables["revision_2020"]
    for name in ("box_2017", "kaggle"):
        pd.testing.assert_frame_equal(tables[name], reference)
    shared = ["image", "finding_labels", "target", *FINDINGS]
    pd.testing.assert_frame_equal(tables["thesis"][shared], reference[shared])


@pytest.mark.parametrize(
    "age, years",
    [("060Y", 60.0), ("57", 57.0), ("018M", 1.5), ("030D", 30 / 365.25), ("004W", 28 / 365.25), ("", np.nan)],
)
def test_age_units(tmp_path, age, years):
    path = write(tmp_path, f"Image Index,Finding Labels,Patient ID,Patient Age\na.png,Hernia,7,{age}\n")
    value = read_labels(path)["age_years"].iloc[0]
    if np.isnan(years):
        assert np.isnan(value)
    else:
        assert value == pytest.approx(years)


def test_extra_spaces_and_unknown_columns_are_tolerated(tmp_path):
    path = write(tmp_path, "Image Index, Finding Labels, Patient ID, Notes\n a.png , Mass|Nodule , 12 , x\n")
    table = read_labels(path)
    assert table["image"].tolist() == ["a.png"]
    assert table.loc[0, ["Mass", "Nodule"]].tolist() == [1, 1] and table.loc[0, "patient_id"] == 12


# --- the real files in ../shared ----------------------------------------------------------------------------------
@pytest.mark.real_data
@pytest.mark.parametrize(
    "name, has_metadata, rows",
    [
        ("nih_box_2017_head.csv", True, 12),
        ("kaggle_sample_labels_head.csv", True, 20),
        ("thesis_two_column_labels.csv", False, 3),
    ],
)
def test_real_format_heads(name, has_metadata, rows):
    require_real_data(FORMATS)
    table = read_labels(FORMATS / name)
    assert len(table) == rows
    check_normalised(table, has_metadata)


@pytest.mark.real_data
def test_real_kaggle_ages_and_multi_hot():
    require_real_data(FORMATS)
    table = read_labels(FORMATS / "kaggle_sample_labels_head.csv").set_index("image")
    row = table.loc["00000013_005.png"]
    assert row["age_years"] == 60.0 and row["patient_id"] == 13 and row["target"] == 1
    expected = {"Emphysema", "Infiltration", "Pleural_Thickening", "Pneumothorax"}
    assert {f for f in FINDINGS if row[f] == 1} == expected
    assert table.loc["00000017_001.png", "target"] == 0


@pytest.mark.real_data
def test_real_thesis_two_column_file():
    require_real_data(FORMATS)
    table = read_labels(FORMATS / "thesis_two_column_labels.csv")
    assert table["image"].tolist() == ["00000001_000.png", "00000002_000.png", "00000003_000.png"]
    assert table["target"].tolist() == [1, 0, 1]
    assert table.loc[2, "Hernia"] == 1


@pytest.fixture(scope="module")
def revision_2020():
    require_real_data(V2020)
    return read_labels(V2020)


@pytest.mark.real_data
def test_real_2020_revision(revision_2020):
    table = revision_2020
    assert len(table) == 112_120
    check_normalised(table, has_metadata=True)
    assert (table["finding_labels"] == NO_FINDING).sum() == (table["target"] == 0).sum()
    names = table["finding_labels"].str.split("|")
    for finding in ("Hernia", "Pneumonia", "Infiltration", "Pleural_Thickening", "Cardiomegaly"):
        assert table[finding].sum() == names.map(lambda labels, f=finding: f in labels).sum()
    assert table["Hernia"].sum() == 227  # NIH's published count
    assert table["patient_id"].nunique() == 30_805


@pytest.mark.real_data
def test_real_box_2017_head_matches_2020_revision(revision_2020):
    """The first-release layout (trailing commas, bracketed headers) yields the same rows as the 2020 file."""
    require_real_data(FORMATS)
    head = read_labels(FORMATS / "nih_box_2017_head.csv")
    same = revision_2020.set_index("image").loc[head["image"]].reset_index()
    pd.testing.assert_frame_equal(head, same, check_dtype=False)


# --- bad input ----------------------------------------------------------------------------------------------------
def test_missing_finding_labels_column(tmp_path):
    path = write(tmp_path, "Image Index,Patient ID,Patient Age\na.png,1,57\n")
    with pytest.raises(LabelFileError, match=re.escape(str(path)) + r".*missing required column 'Finding Labels'"):
        read_labels(path)


def test_missing_finding_labels_column_in_two_column_file(tmp_path):
    """Two named columns, one of them a known non-label column: not the thesis' positional image,label file."""
    path = write(tmp_path, "Image Index,Patient ID\na.png,1\n")
    with pytest.raises(LabelFileError, match=re.escape(str(path)) + r".*missing required column 'Finding Labels'"):
        read_labels(path)


def test_missing_image_column(tmp_path):
    path = write(tmp_path, "Finding Labels,Patient ID,Patient Age\nHernia,1,57\n")
    with pytest.raises(LabelFileError, match=re.escape(str(path)) + r".*missing required column 'Image Index'"):
        read_labels(path)


def test_unknown_finding(tmp_path):
    path = write(tmp_path, "Image Index,Finding Labels\na.png,No Finding\nb.png,Cardiomegaly|Pneumonitis\n")
    with pytest.raises(LabelFileError, match=re.escape(str(path)) + r": line 3: unknown finding 'Pneumonitis'"):
        read_labels(path)


def test_duplicated_image(tmp_path):
    path = write(tmp_path, "Image Index,Finding Labels\na.png,Mass\nb.png,Mass\na.png,Edema\n")
    with pytest.raises(LabelFileError, match=r"image 'a\.png' is listed 2 times \(lines 2, 4\)"):
        read_labels(path)


@pytest.mark.parametrize("name", ["../x.png", "/abs/x.png", "sub\\x.png"])
def test_image_name_with_path_component(tmp_path, name):
    path = write(tmp_path, f"Image Index,Finding Labels\nok.png,Mass\n{name},Mass\n")
    with pytest.raises(LabelFileError, match=rf"line 3: image name {re.escape(repr(name))} has a path component"):
        read_labels(path)


def test_empty_finding_label(tmp_path):
    path = write(tmp_path, "Image Index,Finding Labels,Patient ID\na.png,Mass,1\nb.png,,2\n")
    with pytest.raises(LabelFileError, match=r"line 3: empty finding label"):
        read_labels(path)


@pytest.mark.parametrize("age", ["sixty", "60X", "-5"])
def test_unparseable_age(tmp_path, age):
    path = write(tmp_path, f"Image Index,Finding Labels,Patient ID,Patient Age\na.png,Mass,1,{age}\n")
    with pytest.raises(LabelFileError, match=rf"line 2: cannot read age '{re.escape(age)}'"):
        read_labels(path)


def test_non_numeric_patient_id(tmp_path):
    path = write(tmp_path, "Image Index,Finding Labels,Patient ID\na.png,Mass,1\nb.png,Mass,P12\n")
    with pytest.raises(LabelFileError, match=r"line 3: patient id 'P12' is not a number"):
        read_labels(path)


def test_file_not_found(tmp_path):
    path = tmp_path / "nowhere.csv"
    with pytest.raises(LabelFileError, match=r"label file not found: " + re.escape(str(path))):
        read_labels(path)


def test_no_finding_combined_with_a_finding(tmp_path):
    path = write(tmp_path, "Image Index,Finding Labels\na.png,Mass\nb.png,No Finding|Hernia\n")
    with pytest.raises(LabelFileError, match=r"line 3: 'No Finding' combined with a finding"):
        read_labels(path)
