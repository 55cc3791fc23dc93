"""Tests for cxr.data.splits: the thesis' seeded shuffle, patient-disjoint splits, NIH's official lists."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cxr.artifacts import file_digest
from cxr.data.labels import read_labels
from cxr.data.splits import (
    SplitError,
    file_split,
    make_split,
    official_split,
    patient_split,
    resolve_size,
    summarise_split,
    thesis_split,
)
from tests.conftest import NIH_META, NIH_SAMPLE, require_real_data


def make_table(n_patients: int = 120, max_images: int = 5, seed: int = 0, with_patients: bool = True) -> pd.DataFrame:
    """Patients with 1..max_images images each; targets alternate so every split has both classes."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, max_images + 1, size=n_patients)
    patients = np.repeat(np.arange(1, n_patients + 1), counts)
    follow_up = np.concatenate([np.arange(c) for c in counts])
    table = pd.DataFrame(
        {
            "image": [f"{p:08d}_{f:03d}.png" for p, f in zip(patients, follow_up)],
            "patient_id": pd.array(patients, dtype="Int64"),
            "target": np.arange(len(patients)) % 2,
        }
    )
    if not with_patients:
        table["patient_id"] = pd.array([pd.NA] * len(table), dtype="Int64")
    return table


@pytest.fixture
def restore_numpy_rng():
    state = np.random.get_state()
    yield
    np.random.set_state(state)


def thesis_reference(n: int, n_train: int, n_val: int, seed: int = 100) -> np.ndarray:
    """The thesis' code, verbatim."""
    np.random.seed(seed)
    args = np.arange(n)
    np.random.shuffle(args)
    split = np.empty(n, dtype=object)
    split[args[:n_train]] = "train"
    split[args[n_train : n_train + n_val]] = "val"
    split[args[n_train + n_val :]] = "test"
    return split


# --- thesis_split -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n, train, val", [(5606, 3000, 500), (5606, 4606, 500), (200, 120, 30), (7, 5, 1)])
def test_thesis_split_equals_thesis_code(restore_numpy_rng, n, train, val):
    table = pd.DataFrame({"image": [f"{i}.png" for i in range(n)]})
    split = thesis_split(table, train=train, val=val, seed=100)
    assert split.name == "split" and split.index.equals(table.index)
    assert (split.to_numpy() == thesis_reference(n, train, val)).all()


def test_thesis_split_keeps_the_table_index(restore_numpy_rng):
    table = pd.DataFrame({"image": [f"{i}.png" for i in range(50)]}, index=np.arange(50)[::-1] * 10)
    split = thesis_split(table, train=30, val=10)
    assert split.index.equals(table.index)
    assert (split.to_numpy() == thesis_reference(50, 30, 10)).all()


def test_thesis_split_does_not_touch_the_global_rng():
    np.random.seed(7)
    expected = np.random.rand()
    np.random.seed(7)
    thesis_split(make_table(), train=100, val=50)
    assert np.random.rand() == expected


def test_thesis_split_counts_and_fractions():
    table = pd.DataFrame({"image": [f"{i}.png" for i in range(200)]})
    counts = thesis_split(table, train=120, val=30).value_counts()
    assert counts.to_dict() == {"train": 120, "val": 30, "test": 50}
    fractions = thesis_split(table, train=0.6, val=0.15).value_counts()
    assert fractions.to_dict() == {"train": 120, "val": 30, "test": 50}


@pytest.mark.parametrize("n", [963, 5606, 1000])
def test_thesis_split_scaled_sizes(n):
    table = pd.DataFrame({"image": [f"{i}.png" for i in range(n)]})
    counts = thesis_split(table, train=3000, val=500, scale=True, pool=5606).value_counts()
    assert counts["train"] == round(3000 / 5606 * n)
    assert counts["val"] == round(500 / 5606 * n)
    assert counts.sum() == n


def test_thesis_split_seed_stability():
    table = make_table()
    first = thesis_split(table, train=0.6, val=0.2, seed=100)
    assert first.equals(thesis_split(table, train=0.6, val=0.2, seed=100))
    other = thesis_split(table, train=0.6, val=0.2, seed=101)
    assert not first.equals(other)
    assert first.value_counts().equals(other.value_counts())


def test_thesis_sizes_too_large():
    table = pd.DataFrame({"image": [f"{i}.png" for i in range(963)]})
    with pytest.raises(SplitError) as raised:
        thesis_split(table, train=3000, val=500)
    message = str(raised.value)
    assert "train=3000" in message and "val=500" in message and "3500 images" in message
    assert "963 labelled images" in message and "split.scale=true" in message


@pytest.mark.parametrize("value", [1.5, -0.2, 1.0])
def test_fraction_out_of_range(value):
    with pytest.raises(SplitError, match=rf"split\.train={value}: a fraction must lie in \[0, 1\)"):
        thesis_split(make_table(), train=value, val=0.1)


def test_resolve_size_rules():
    assert resolve_size(0.25, 200, "val") == 50
    assert resolve_size(30, 200, "val") == 30
    assert resolve_size(0.0, 200, "val") == 0
    with pytest.raises(SplitError, match="negative"):
        resolve_size(-3, 200, "val")
    with pytest.raises(SplitError, match="count or a fraction"):
        resolve_size("10", 200, "val")
    with pytest.raises(SplitError, match="count or a fraction"):
        resolve_size(True, 200, "val")
    with pytest.raises(SplitError, match="split.pool"):
        resolve_size(3000, 200, "train", scale=True, pool=None)


# --- patient_split ------------------------------------------------------------------------------------------------
def test_patient_split_is_patient_disjoint_and_sized():
    table = make_table(n_patients=300, max_images=5)
    n = len(table)
    split = patient_split(table, train=0.6, val=0.2, seed=3)
    summary = summarise_split(table, split)
    assert summary["patients_in_several_splits"] == 0
    assert split.notna().all() and set(split) == {"train", "val", "test"}
    counts = split.value_counts()
    assert abs(counts["train"] - round(0.6 * n)) <= 5  # at most one patient's images off
    assert abs(counts["val"] - round(0.2 * n)) <= 5
    assert counts.sum() == n
    # every patient's images all in one split
    assert (pd.DataFrame({"p": table["patient_id"], "s": split}).groupby("p")["s"].nunique() == 1).all()


def test_patient_split_is_deterministic_per_seed():
    table = make_table()
    first = patient_split(table, train=0.7, val=0.1, seed=100)
    assert first.equals(patient_split(table, train=0.7, val=0.1, seed=100))
    assert not first.equals(patient_split(table, train=0.7, val=0.1, seed=5))


def test_patient_split_needs_patient_ids():
    table = make_table(with_patients=False)
    with pytest.raises(SplitError, match=r"split=patient needs a patient id.*'Patient ID'"):
        patient_split(table, train=0.6, val=0.2)


def test_patient_split_with_partly_missing_ids():
    table = make_table()
    table.loc[3, "patient_id"] = pd.NA
    with pytest.raises(SplitError, match=r"1 rows have none.*'Patient ID'"):
        patient_split(table, train=0.6, val=0.2)


# --- official_split -----------------------------------------------------------------------------------------------
def write_lists(tmp_path, train_val: list[str], test: list[str]):
    train_val_path, test_path = tmp_path / "train_val_list.txt", tmp_path / "test_list.txt"
    train_val_path.write_text("\n".join(train_val) + "\n")
    test_path.write_text("\n".join(test) + "\n\n")
    return train_val_path, test_path


def test_official_split_tiny(tmp_path):
    table = make_table(n_patients=40, max_images=3, seed=1)
    patients = table["patient_id"]
    test_images = table.loc[patients <= 10, "image"].tolist()
    left_out = table.loc[patients == 40, "image"].tolist()  # in neither list
    train_val_images = table.loc[(patients > 10) & (patients < 40), "image"].tolist()
    train_val_path, test_path = write_lists(tmp_path, train_val_images + ["99999999_000.png"], test_images)
    split = official_split(table, train_val_path, test_path, val=0.2, seed=100)
    assert set(table.loc[split == "test", "image"]) == set(test_images)
    assert split[table["image"].isin(left_out)].isna().all()
    assert set(split.dropna()) == {"train", "val", "test"}
    assert summarise_split(table, split)["patients_in_several_splits"] == 0
    n_train_val = len(train_val_images)
    assert abs((split == "val").sum() - round(0.2 * n_train_val)) <= 3
    assert (split == "train").sum() + (split == "val").sum() == n_train_val


def test_official_split_missing_list(tmp_path):
    table = make_table()
    with pytest.raises(SplitError, match="split list not found"):
        official_split(table, tmp_path / "train_val_list.txt", tmp_path / "test_list.txt")


@pytest.mark.real_data
def test_official_split_real():
    require_real_data(NIH_META)
    table = read_labels(NIH_SAMPLE / "labels.csv")
    split = official_split(table, NIH_META / "train_val_list.txt", NIH_META / "test_list.txt", val=0.1)
    test_list = set((NIH_META / "test_list.txt").read_text().split())
    assert set(table.loc[split == "test", "image"]) == set(table["image"]) & test_list
    summary = summarise_split(table, split)
    assert summary["patients_in_several_splits"] == 0
    assert all(summary[name]["images"] > 0 for name in ("train", "val", "test"))
    assert split.notna().all()  # every sample image is in one of NIH's lists


def thesis_preparation_code(labels_csv, alpha: int, beta: int) -> dict[str, dict[str, int]]:
    """Section 3.2.1 of the thesis, literally (``as_matrix()`` is today's ``to_numpy()``; no images are loaded):
    {"train" | "val" | "test": {image: label}}."""
    metadata = pd.read_csv(labels_csv)
    metadata = metadata.to_numpy()

    paths, labels = [], []
    for i, row in enumerate(metadata):
        im_name = row[0]
        label = row[1]
        if label == "No Finding":
            label = 0
        else:
            label = 1
        paths.append(im_name)
        labels.append(label)

    paths, labels = np.array(paths), np.array(labels)
    args = np.arange(len(paths))
    np.random.seed(100)
    np.random.shuffle(args)
    paths = paths[args]
    labels = labels[args]

    y_train, y_val, y_test = labels[:alpha], labels[alpha:beta], labels[beta:]
    return {
        "train": dict(zip(paths[:alpha], y_train.tolist())),
        "val": dict(zip(paths[alpha:beta], y_val.tolist())),
        "test": dict(zip(paths[beta:], y_test.tolist())),
    }


@pytest.mark.real_data
@pytest.mark.parametrize("program, thesis_train", [("A", 3000), ("C", 4606)])
def test_thesis_split_of_the_real_label_file_equals_the_thesis_code(make_cfg, restore_numpy_rng, program, thesis_train):
    """End to end: the label file through cxr's table, image index and split (the DataModule a run uses) gives
    the images and labels of each split that the thesis' own preparation code gives."""
    from hydra.utils import instantiate

    require_real_data(NIH_SAMPLE)
    # the whole label file, as the thesis split it (the preset's held-out external patients and set removed)
    datamodule = instantiate(
        make_cfg(
            [
                "experiment=thesis_nih_sample",
                f"program={program}",
                "data.exclude=null",
                "data.external.root=null",
                "data.external.labels=null",
            ]
        ).data
    )
    datamodule.setup("fit")
    n = len(pd.read_csv(NIH_SAMPLE / "labels.csv"))
    alpha = round(thesis_train / 5606 * n)  # the thesis' counts scaled to the sample (experiment preset)
    beta = alpha + round(500 / 5606 * n)
    expected = thesis_preparation_code(NIH_SAMPLE / "labels.csv", alpha, beta)
    for name in ("train", "val", "test"):
        rows = datamodule.rows(name)
        assert dict(zip(rows["image"], rows["target"].astype(int))) == expected[name], name
    assert len(datamodule.rows("train")) == alpha == len(expected["train"]) > 0


# --- file_split (evaluate.py: the run's own splits.csv) -----------------------------------------------------------
def test_file_split_reapplies_a_saved_split_and_leaves_unlisted_images_out(tmp_path):
    table = make_table(n_patients=30)
    split = thesis_split(table, train=0.6, val=0.2)
    saved = table.assign(split=split)[["image", "patient_id", "split"]].rename(columns={"patient_id": "patient"})
    saved.to_csv(tmp_path / "splits.csv", index=False)
    assert make_split(table, "file", path=tmp_path / "splits.csv", train=0.9, seed=1).tolist() == split.tolist()
    extra = pd.concat(
        [table, pd.DataFrame({"image": ["unlisted.png"], "patient_id": [999], "target": [1]})], ignore_index=True
    )
    applied = file_split(extra, tmp_path / "splits.csv")
    assert applied.iloc[-1] is None and applied.iloc[:-1].tolist() == split.tolist()


def test_file_split_refuses_images_that_are_gone(tmp_path):
    table = make_table(n_patients=30)
    table.assign(split=thesis_split(table, train=0.6, val=0.2))[["image", "split"]].to_csv(
        tmp_path / "splits.csv", index=False
    )
    with pytest.raises(
        SplitError,
        match=r"splits\.csv: 3 of \d+ images of the saved split are not among the "
        r"labelled images found on disk \(first: ",
    ):
        file_split(table.iloc[3:], tmp_path / "splits.csv")
    with pytest.raises(SplitError, match="saved split not found"):
        file_split(table, tmp_path / "nothing.csv")
    pd.DataFrame({"image": ["a.png"]}).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(SplitError, match="not a splits.csv"):
        file_split(table, tmp_path / "bad.csv")


def test_file_sha256_changes_with_the_bytes(tmp_path):
    (tmp_path / "labels.csv").write_text("Image Index,Finding Labels\na.png,No Finding\n")
    before = file_digest(tmp_path / "labels.csv")
    (tmp_path / "labels.csv").write_text("Image Index,Finding Labels\na.png,Mass\n")
    assert file_digest(tmp_path / "labels.csv") != before and len(before) == 64


# --- make_split ---------------------------------------------------------------------------------------------------
def test_make_split_unknown_method():
    with pytest.raises(SplitError, match=r"unknown split method 'random'; choose one of thesis, patient, official"):
        make_split(make_table(), "random", train=0.6, val=0.2)


@pytest.mark.parametrize("method", ["thesis", "patient"])
def test_make_split_empty_val(method):
    with pytest.raises(SplitError, match=rf"split={method} left the val split empty"):
        make_split(make_table(), method, train=0.6, val=0)


def test_make_split_dispatches():
    table = make_table()
    assert make_split(table, "thesis", train=0.6, val=0.2, seed=4).equals(
        thesis_split(table, train=0.6, val=0.2, seed=4)
    )


def test_make_split_zero_train():
    with pytest.raises(SplitError, match="leaves no training image"):
        make_split(make_table(), "thesis", train=0, val=0.2)


# --- summarise_split ----------------------------------------------------------------------------------------------
def test_summarise_thesis_split_reports_patient_overlap():
    table = make_table(n_patients=100, max_images=5)
    split = thesis_split(table, train=0.6, val=0.2)
    summary = summarise_split(table, split)
    counts = split.value_counts()
    assert summary["method_images"] == len(table)
    for name in ("train", "val", "test"):
        rows = table[split == name]
        assert summary[name]["images"] == counts[name]
        assert summary[name]["patients"] == rows["patient_id"].nunique()
        assert summary[name]["class1_share"] == pytest.approx(rows["target"].mean(), abs=1e-4)
    expected_overlap = int((pd.DataFrame({"p": table["patient_id"], "s": split}).groupby("p")["s"].nunique() > 1).sum())
    assert summary["patients_in_several_splits"] == expected_overlap > 0


def test_summarise_without_patients():
    table = make_table(with_patients=False)
    summary = summarise_split(table, thesis_split(table, train=0.6, val=0.2))
    assert summary["patients_in_several_splits"] is None and summary["train"]["patients"] is None
