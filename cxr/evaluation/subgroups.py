"""Metrics per subgroup (view position, sex, age band, dataset, or any column of a side table joined on the image
name), so that shortcut effects show: a model that works only on one source or view is visible here. Each subgroup's
AUROC has a patient-bootstrap CI; per column, the largest gap between subgroups (a bootstrap of the difference) and
the worst-group AUROC."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cxr.evaluation.bootstrap import PatientResampler, _AurocTable, _interval, patient_codes
from cxr.evaluation.metrics import binary_metrics
from cxr.evaluation.small_n import patient_counts

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


def age_band_labels(edges: list[float]) -> list[str]:
    """``[0, 18, 40]`` -> ``["<18", "18-39", "40+"]``: bands [a, b) in whole years, the last one open."""
    edges = [float(e) for e in edges]
    if len(edges) < 2 or edges != sorted(set(edges)):
        raise ValueError(f"evaluation.subgroups.age_bands={edges}: give two or more increasing ages in years")
    inner = [f"{edges[i]:g}-{edges[i + 1] - 1:g}" for i in range(1, len(edges) - 1)]
    return [f"<{edges[1]:g}", *inner, f"{edges[-1]:g}+"]


def subgroup_columns(
    rows: pd.DataFrame, side_tables: list[dict] | None = None, age_bands: list[float] | None = None
) -> pd.DataFrame:
    """view_position, sex, age_band (``age_bands``: band edges in years, the first the lowest age), dataset (when the
    rows name one) and the requested side-table columns, aligned with ``rows``."""
    columns = pd.DataFrame({"view_position": rows["view_position"], "sex": rows["sex"]}, index=rows.index)
    edges = list(age_bands) if age_bands else AGE_BANDS[:-1]
    columns["age_band"] = pd.cut(
        rows["age_years"], [*edges, np.inf], right=False, labels=age_band_labels(edges)
    ).astype("string")
    if "dataset" in rows.columns and rows["dataset"].notna().any():
        columns["dataset"] = rows["dataset"]
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
    labels,
    probabilities,
    groups: pd.DataFrame,
    threshold: float = 0.5,
    min_size: int = 1,
    patients=None,
    bootstrap: dict | None = None,
) -> dict[str, dict[str, dict]]:
    """``{column: {value: metrics}}`` for every column of ``groups``; missing values are left out. With
    ``patients``: the group's AUROC CI (``ci.auroc``, patient bootstrap), its patients per class and ``small_n``."""
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
                if patients is not None:
                    group_patients = np.asarray(patients, dtype=object)[mask]
                    low, high = _auroc_interval(labels[mask], probabilities[mask], group_patients, bootstrap)
                    per_value[str(value)]["ci"] = {"auroc": {"value": metrics["auroc"], "ci_low": low, "ci_high": high}}
                    per_value[str(value)].update(patient_counts(labels[mask], group_patients))
        if per_value:
            result[column] = per_value
    return result


def _bootstrap_settings(bootstrap: dict | None) -> dict:
    return {"n_resamples": 1000, "seed": 0, "level": 0.95, **(bootstrap or {})}


def _auroc_interval(labels, probabilities, patients, bootstrap: dict | None) -> tuple[float | None, float | None]:
    """Percentile CI of AUROC over patient resamples (the resamples with both classes)."""
    settings = _bootstrap_settings(bootstrap)
    resampler, auroc_of = PatientResampler(patient_codes(patients)), _AurocTable(labels.astype(np.int64), probabilities)
    rng = np.random.default_rng(settings["seed"])
    values = np.array([auroc_of(resampler.draw(rng)) for _ in range(settings["n_resamples"])])
    return _interval(values, settings["level"])


def subgroup_gaps(labels, probabilities, patients, groups: pd.DataFrame, subgroups: dict, bootstrap=None) -> dict:
    """Per column of ``subgroups`` with two or more AUROCs: ``largest_gap`` (best minus worst group's AUROC, the
    pair picked on the point estimates, its CI from the same patient resamples of both groups) and
    ``worst_group`` (its AUROC and CI). Groups with >= 10 patients of each class are compared when two or more
    have that; otherwise all, and the result is flagged ``small_n``."""
    settings = _bootstrap_settings(bootstrap)
    labels, probabilities = np.asarray(labels).astype(np.int64), np.asarray(probabilities, dtype=np.float64)
    patients = np.asarray(patients, dtype=object)
    result = {}
    for column, per_value in subgroups.items():
        scored = {v: m for v, m in per_value.items() if m.get("auroc") is not None}
        large = {v: m for v, m in scored.items() if not m.get("small_n", True)}
        compared = large if len(large) >= 2 else scored
        if len(compared) < 2:
            continue
        best = max(compared, key=lambda v: compared[v]["auroc"])
        worst = min(compared, key=lambda v: compared[v]["auroc"])
        values = groups[column].astype("string").fillna("\0missing").to_numpy()
        rows = np.flatnonzero((values == best) | (values == worst))
        in_best = values[rows] == best
        resampler = PatientResampler(patient_codes(patients[rows]))
        auroc_of = _AurocTable(labels[rows], probabilities[rows])
        rng = np.random.default_rng(settings["seed"])
        differences = np.empty(settings["n_resamples"])
        for b in range(settings["n_resamples"]):
            drawn = resampler.draw(rng)
            differences[b] = auroc_of(drawn[in_best[drawn]]) - auroc_of(drawn[~in_best[drawn]])
        low, high = _interval(differences, settings["level"])
        small = len(large) < 2
        result[column] = {
            "largest_gap": {
                "value": float(compared[best]["auroc"] - compared[worst]["auroc"]),
                "ci_low": low,
                "ci_high": high,
                "best": best,
                "worst": worst,
                "small_n": small,
            },
            "worst_group": {"group": worst, **(compared[worst].get("ci") or {}).get("auroc", {}), "small_n": small},
            "groups_compared": sorted(compared),
        }
    return result
