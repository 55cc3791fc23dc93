"""k-fold cross-validation splits (``cv.folds=K``): whole patients per fold, folds stratified by the label
(scikit-learn's StratifiedGroupKFold); fold k is the test split, a patient-disjoint validation split is carved
from the other folds, the rest trains."""

from __future__ import annotations

import numpy as np
import pandas as pd

from cxr.data.splits import SplitError, _assign_patients, _require_patients, resolve_size


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
