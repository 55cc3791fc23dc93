"""Train/val/test splits: the thesis' seeded image shuffle, patient-disjoint, and NIH's official lists.

Sizes are image counts (``3000``) or fractions of the labelled images (``0.5``); the test split takes the rest.
With ``scale=True``, counts are read as shares of ``pool`` (the thesis' 5,606-image sample) and scaled to the
data at hand, so program C's 4606/500/500 becomes 82%/9%/9% of a smaller sample.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from cxr.errors import UserError

log = logging.getLogger(__name__)
SPLITS = ("train", "val", "test")


class SplitError(UserError, ValueError):
    """Split settings that cannot be met by the data; the message names the setting."""


def resolve_size(value, n: int, name: str, scale: bool = False, pool: int | None = None) -> int:
    """Turn a count or a fraction into an image count out of ``n``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SplitError(f"split.{name} must be a count or a fraction, got {value!r}")
    if isinstance(value, float):
        if not 0 <= value < 1:
            raise SplitError(f"split.{name}={value}: a fraction must lie in [0, 1); write a count as an integer")
        return int(round(value * n))
    count = int(value)
    if count < 0:
        raise SplitError(f"split.{name}={value} is negative")
    if scale:
        if not pool:
            raise SplitError("split.scale=true needs split.pool, the sample size the counts refer to")
        return int(round(count / pool * n))
    return count


def _sizes(n: int, train, val, scale: bool, pool: int | None) -> tuple[int, int]:
    n_train = resolve_size(train, n, "train", scale, pool)
    n_val = resolve_size(val, n, "val", scale, pool)
    if n_train + n_val > n:
        raise SplitError(
            f"split sizes train={train} + val={val} ({n_train + n_val} images) exceed the {n} labelled images; "
            "give fractions (split.train=0.6 split.val=0.1) or scale the thesis sizes with split.scale=true"
        )
    if n_train == 0:
        raise SplitError(f"split.train={train} leaves no training image out of {n}")
    return n_train, n_val


def thesis_split(
    table: pd.DataFrame, train, val, seed: int = 100, scale: bool = False, pool: int | None = None
) -> pd.Series:
    """The thesis' split: ``np.random.seed(seed); np.random.shuffle(rows)``, then contiguous train/val/test.

    Patients are ignored, as in the thesis, so one patient's images can land in several splits.
    """
    n = len(table)
    n_train, n_val = _sizes(n, train, val, scale, pool)
    order = np.arange(n)
    np.random.RandomState(seed).shuffle(order)  # same stream as np.random.seed(seed) + np.random.shuffle
    split = np.empty(n, dtype=object)
    split[order[:n_train]] = "train"
    split[order[n_train : n_train + n_val]] = "val"
    split[order[n_train + n_val :]] = "test"
    return pd.Series(split, index=table.index, name="split")


def _require_patients(table: pd.DataFrame, method: str) -> pd.Series:
    patients = table["patient_id"]
    if patients.isna().any():
        raise SplitError(
            f"split={method} needs a patient id for every image, but {int(patients.isna().sum())} rows have none "
            "(the label file lacks 'Patient ID'); use split=thesis or a label file with patient ids"
        )
    return patients


def _assign_patients(patients: pd.Series, n_train: int, n_val: int, seed: int) -> pd.Series:
    """Shuffle patients, then fill train, then val, with whole patients up to the image counts."""
    images_per_patient = patients.value_counts(sort=False).sort_index()
    order = images_per_patient.index.to_numpy().copy()
    np.random.RandomState(seed).shuffle(order)
    cumulative = images_per_patient.loc[order].cumsum().to_numpy()
    # a patient goes to train while the running count stays within n_train (rounding to the nearest patient)
    starts = cumulative - images_per_patient.loc[order].to_numpy()
    midpoints = (starts + cumulative) / 2
    assignment = np.where(midpoints < n_train, "train", np.where(midpoints < n_train + n_val, "val", "test"))
    by_patient = pd.Series(assignment, index=order)
    return patients.map(by_patient).rename("split")


def patient_split(
    table: pd.DataFrame, train, val, seed: int = 100, scale: bool = False, pool: int | None = None
) -> pd.Series:
    """Patient-disjoint train/val/test with about the requested image counts."""
    patients = _require_patients(table, "patient")
    n_train, n_val = _sizes(len(table), train, val, scale, pool)
    return _assign_patients(patients, n_train, n_val, seed)


def read_image_list(path: str | Path) -> set[str]:
    path = Path(path)
    if not path.is_file():
        raise SplitError(f"split list not found: {path} (NIH ships train_val_list.txt and test_list.txt)")
    return {line.strip() for line in path.read_text().splitlines() if line.strip()}


def official_split(table: pd.DataFrame, train_val_list, test_list, val=0.1, seed: int = 100) -> pd.Series:
    """NIH's patient-disjoint ``test_list.txt`` as test; a patient-disjoint val carved from ``train_val_list.txt``.

    Images in neither list are left out (split value ``None``). ``val`` is a count or a fraction of train_val.
    """
    patients = _require_patients(table, "official")
    in_test = table["image"].isin(read_image_list(test_list))
    in_train_val = table["image"].isin(read_image_list(train_val_list)) & ~in_test
    split = pd.Series(None, index=table.index, dtype=object, name="split")
    split[in_test] = "test"
    n_train_val = int(in_train_val.sum())
    if n_train_val:
        n_val = resolve_size(val, n_train_val, "val")
        if n_val >= n_train_val:
            raise SplitError(f"split.val={val} takes all {n_train_val} train_val images")
        split[in_train_val] = _assign_patients(patients[in_train_val], n_train_val - n_val, n_val, seed).map(
            {"train": "train", "val": "val", "test": "val"}
        )
    left_out = int(split.isna().sum())
    if left_out:
        log.info("official split: %d labelled images are in neither list and are left out", left_out)
    return split


def published_split(table: pd.DataFrame, val=0.1, test=0.2, seed: int = 100, **_) -> pd.Series:
    """A registered dataset's own split (its ``official_split`` column), per source (``dataset``) of the table.

    The published test set is test; where a dataset publishes a validation set but no test set (CheXpert's
    radiologist-labelled valid.csv) that set is the test set; a patient-disjoint validation set (``val``: count or
    fraction) is carved from the published training set when none is left. A source without any published split is
    split by patient (``test`` and ``val`` fractions). Rows outside the published lists are left out (None)."""
    _require_patients(table, "official")
    split = pd.Series(None, index=table.index, dtype=object, name="split")
    for source, rows in table.groupby("dataset", sort=False) if "dataset" in table else [("data", table)]:
        published = rows["official_split"].astype(object).where(rows["official_split"].notna(), None)
        names = set(published.dropna())
        if not names:
            log.info("%s publishes no split: patient-disjoint test %s, val %s", source, test, val)
            n_test = resolve_size(test, len(rows), "test")
            n_val = resolve_size(val, len(rows), "val")
            split[rows.index] = _assign_patients(rows["patient_id"], len(rows) - n_test - n_val, n_val, seed).map(
                {"train": "train", "val": "val", "test": "test"}
            )
            continue
        if "test" not in names:
            published = published.replace({"val": "test"})
        split[rows.index] = published
        if "val" not in set(published.dropna()):
            train = published == "train"
            n_train = int(train.sum())
            n_val = resolve_size(val, n_train, "val")
            if n_train and n_val >= n_train:
                raise SplitError(f"split.val={val} takes all {n_train} published training images of {source}")
            if n_train:
                carved = _assign_patients(rows.loc[train, "patient_id"], n_train - n_val, n_val, seed)
                split[carved.index] = carved.map({"train": "train", "val": "val", "test": "val"})
    return split


def file_split(table: pd.DataFrame, path) -> pd.Series:
    """The split saved by a run (its ``splits.csv``: image, patient, split), applied to ``table``.

    Every image the file assigns must be in ``table`` (labelled and on disk); labelled images the file does not
    list are left out (split ``None``)."""
    path = Path(path)
    if not path.is_file():
        raise SplitError(f"saved split not found: {path}")
    saved = pd.read_csv(path, dtype=str, keep_default_na=False)
    if not {"image", "split"} <= set(saved.columns):
        raise SplitError(f"{path}: not a splits.csv (needs the columns image and split, found {list(saved.columns)})")
    saved = saved[saved["split"] != ""]
    unknown = sorted(set(saved["split"]) - set(SPLITS))
    if unknown:
        raise SplitError(f"{path}: unknown split name {unknown[0]!r} (expected {', '.join(SPLITS)})")
    absent = ~saved["image"].isin(table["image"])
    if absent.any():
        first = ", ".join(saved.loc[absent, "image"].head(5))
        raise SplitError(
            f"{path}: {int(absent.sum())} of {len(saved)} images of the saved split are not among the "
            f"labelled images found on disk (first: {first})"
        )
    split = table["image"].map(saved.set_index("image")["split"])
    return split.astype(object).where(split.notna(), None).rename("split")


# ------------------------------------------------------------------ cross-validation folds (cv.folds=K)
def kfold_split(table: pd.DataFrame, folds: int, fold: int, val=0.1, seed: int = 100) -> pd.Series:
    """Fold ``fold`` (1..``folds``) of a patient-grouped, label-stratified k-fold partition as the test split;
    ``val`` (a count or a fraction of the other folds' images) of whole patients as validation, the rest train.
    The same ``seed`` gives every fold of one partition (the folds' test splits cover each image once)."""
    from sklearn.model_selection import StratifiedGroupKFold  # well kept; stratifying whole groups by hand is not

    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise SplitError(f"cv.folds={folds!r}: give the number of folds, 2 or more")
    if isinstance(fold, bool) or not isinstance(fold, int) or not 1 <= fold <= folds:
        raise SplitError(f"data.split.fold={fold!r}: a fold between 1 and {folds}")
    patients = _require_patients(table, "kfold")
    if patients.nunique() < folds:
        raise SplitError(f"cv.folds={folds}: only {patients.nunique()} patients, fewer than the folds")
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    labels = table["target"].to_numpy()
    _, test_rows = list(splitter.split(np.zeros(len(table)), labels, patients.astype(str).to_numpy()))[fold - 1]
    in_test = np.zeros(len(table), dtype=bool)
    in_test[test_rows] = True
    split = pd.Series("test", index=table.index, dtype=object, name="split")
    rest = ~in_test
    n_rest = int(rest.sum())
    n_val = resolve_size(val, n_rest, "val")
    if not 0 < n_val < n_rest:
        raise SplitError(f"cv.val={val}: {n_val} of the {n_rest} images outside the test fold; choose a smaller share")
    split[rest] = _assign_patients(patients[rest], n_rest - n_val, n_val, seed).map(
        {"train": "train", "val": "val", "test": "val"}
    )
    return split


def make_split(table: pd.DataFrame, method: str, **settings) -> pd.Series:
    """Dispatch on ``method`` (thesis, patient, official, file) and check that no split is empty."""
    methods = {"thesis": thesis_split, "patient": patient_split, "official": official_split, "file": file_split}
    methods["kfold"] = kfold_split  # cv.folds=K (cxr/jobs/cv.py): fold k of a patient-grouped stratified k-fold
    if method not in methods:
        raise SplitError(f"unknown split method {method!r}; choose one of {', '.join(methods)}")
    if method == "official" and "official_split" in table:  # a registered dataset (cxr.data.datasets)
        return _checked(published_split(table, **settings), method, len(table))
    if method == "official":  # its sizes are read against train_val_list.txt; thesis count scaling does not apply
        settings = {key: value for key, value in settings.items() if key not in ("scale", "pool", "test")}
    if method == "file":  # a saved split (evaluate.py: the run's splits.csv); sizes and seed do not apply
        settings = {"path": settings.get("path")}
    if method == "kfold":
        settings = {key: settings[key] for key in ("folds", "fold", "val", "seed") if key in settings}
    return _checked(methods[method](table, **settings), method, len(table))


def _checked(split: pd.Series, method: str, n: int) -> pd.Series:
    counts = split.value_counts()
    for name in ("train", "val"):
        if counts.get(name, 0) == 0:
            raise SplitError(f"split={method} left the {name} split empty ({n} labelled images)")
    return split


def summarise_split(table: pd.DataFrame, split: pd.Series) -> dict:
    """Images, patients and class-1 share per split, and the number of patients found in more than one split."""
    summary: dict = {"method_images": int(split.notna().sum())}
    has_patients = not table["patient_id"].isna().any()
    for name in SPLITS:
        rows = table[split == name]
        summary[name] = {
            "images": int(len(rows)),
            "patients": int(rows["patient_id"].nunique()) if has_patients else None,
            "class1_share": round(float(rows["target"].mean()), 4) if len(rows) else None,
        }
    if has_patients:
        splits_per_patient = pd.DataFrame({"p": table["patient_id"], "s": split}).dropna().groupby("p")["s"].nunique()
        summary["patients_in_several_splits"] = int((splits_per_patient > 1).sum())
    else:
        summary["patients_in_several_splits"] = None
    return summary
