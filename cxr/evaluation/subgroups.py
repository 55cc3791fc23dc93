"""Metrics per subgroup (view position, sex, age band, or any column of a side table joined on the image name),
so that shortcut effects show: a model that works only on one source or view is visible here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cxr.evaluation.metrics import binary_metrics

AGE_BANDS = [0, 18, 40, 60, 80, np.inf]
AGE_LABELS = ["<18", "18-39", "40-59", "60-79", "80+"]
SUBGROUP_KEYS = (
    "n",
    "n_class0",
    "n_class1",
    "auroc",
    "accuracy",
    "accuracy_class0",
    "accuracy_class1",
    "balanced_accuracy",
)


def subgroup_columns(rows: pd.DataFrame, side_tables: list[dict] | None = None) -> pd.DataFrame:
    """view_position, sex, age_band and the requested side-table columns, aligned with ``rows``."""
    columns = pd.DataFrame({"view_position": rows["view_position"], "sex": rows["sex"]}, index=rows.index)
    columns["age_band"] = pd.cut(rows["age_years"], AGE_BANDS, right=False, labels=AGE_LABELS).astype("string")
    for side in side_tables or []:
        path, key = Path(side["path"]), side.get("image_column", "image")
        table = pd.read_csv(path, dtype=str, index_col=False)
        wanted = list(side.get("columns") or [c for c in table.columns if c != key])
        missing = [c for c in [key, *wanted] if c not in table.columns]
        if missing:
            raise ValueError(f"subgroup side table {path}: no column(s) {', '.join(missing)}")
        joined = rows[["image"]].merge(
            table[[key, *wanted]].drop_duplicates(key), left_on="image", right_on=key, how="left"
        )
        for column in wanted:
            columns[column] = joined[column].to_numpy()
    return columns


def subgroup_metrics(
    labels, probabilities, groups: pd.DataFrame, threshold: float = 0.5, min_size: int = 1
) -> dict[str, dict[str, dict]]:
    """``{column: {value: metrics}}`` for every column of ``groups``; missing values are left out."""
    labels, probabilities = np.asarray(labels), np.asarray(probabilities)
    result: dict[str, dict[str, dict]] = {}
    for column in groups.columns:
        values = groups[column].astype("string")
        per_value = {}
        for value in sorted(values.dropna().unique()):
            mask = (values == value).fillna(False).to_numpy()
            if mask.sum() >= min_size:
                metrics = binary_metrics(labels[mask], probabilities[mask], threshold)
                per_value[str(value)] = {key: metrics[key] for key in SUBGROUP_KEYS}
        if per_value:
            result[column] = per_value
    return result
