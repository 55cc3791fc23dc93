"""Per-finding evaluation of a multi-label model: AUROC and average precision per finding with patient-bootstrap
CIs, mean AUROC over findings with its CI, per-finding thresholds chosen on validation, the "any finding" score
that answers the thesis' binary question, the table beside published results, and the ROC grid figure.

The any-finding score of an image is, by ``task.any_finding``, ``max`` (its largest finding probability; the
default: it needs no independence assumption) or ``noisy_or`` (``1 - prod(1 - p)``, the probability of at least
one finding if the findings were independent given the image).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from cxr.evaluation.bootstrap import (
    PatientResampler,
    _AurocTable,
    _check_options,
    _interval,
    bootstrap_p_value,
    patient_codes,
)
from cxr.evaluation.curves import average_precision, roc_curve
from cxr.evaluation.metrics import auroc, binary_metrics
from cxr.evaluation.thresholds import choose_threshold

ANY_FINDING_RULES = ("max", "noisy_or")
# evaluation.min_positive_patients_for_mean: the findings a mean AUROC averages, in the point estimate and in every
# resample alike (one estimand); a finding with fewer positive patients in the set has its own AUROC and CI only
MIN_POSITIVE_PATIENTS_FOR_MEAN = 5
# Published test AUROCs, as tabulated in Rajpurkar et al. 2017 (CheXNet, arXiv:1711.05225, Table 1). Their
# splits differ from NIH's official one (Wang et al.: a random 70/10/20 image split of ChestX-ray8; CheXNet: a
# random patient-disjoint 70/10/20 split): read them as orientation, not as a paired comparison.
WANG_2017 = {
    "Atelectasis": 0.716,
    "Cardiomegaly": 0.807,
    "Effusion": 0.784,
    "Infiltration": 0.609,
    "Mass": 0.706,
    "Nodule": 0.671,
    "Pneumonia": 0.633,
    "Pneumothorax": 0.806,
    "Consolidation": 0.708,
    "Edema": 0.835,
    "Emphysema": 0.815,
    "Fibrosis": 0.769,
    "Pleural_Thickening": 0.708,
    "Hernia": 0.767,
}
CHEXNET_2017 = {
    "Atelectasis": 0.8094,
    "Cardiomegaly": 0.9248,
    "Effusion": 0.8638,
    "Infiltration": 0.7345,
    "Mass": 0.8676,
    "Nodule": 0.7802,
    "Pneumonia": 0.7680,
    "Pneumothorax": 0.8887,
    "Consolidation": 0.7901,
    "Edema": 0.8878,
    "Emphysema": 0.9371,
    "Fibrosis": 0.8047,
    "Pleural_Thickening": 0.8062,
    "Hernia": 0.9164,
}
PUBLISHED_NOTE = (
    "Published values: test AUROC of Wang et al. 2017 and CheXNet (Rajpurkar et al. 2017), as in "
    "CheXNet's Table 1. Their test sets differ from NIH's official split (random splits of the full "
    "release), so they are orientation, not a paired comparison."
)


def any_finding_score(probabilities: np.ndarray, rule: str = "max") -> np.ndarray:
    """The binary "any finding" score of each row of an (N, K) probability array."""
    probabilities = np.asarray(probabilities, dtype=np.float64).reshape(len(probabilities), -1)
    if rule == "max":
        return probabilities.max(axis=1)
    if rule == "noisy_or":
        return 1.0 - np.prod(1.0 - probabilities, axis=1)
    raise ValueError(f"task.any_finding={rule!r}: choose one of {', '.join(ANY_FINDING_RULES)}")


class _AveragePrecisionTable:
    """Average precision of a subset of rows from counts per distinct score, as ``curves.average_precision``
    (step-wise, tied scores as one step), with no sort per resample."""

    def __init__(self, labels: np.ndarray, probabilities: np.ndarray):
        _, levels = np.unique(-probabilities, return_inverse=True)  # level 0 = highest score
        self.n_levels = int(levels.max()) + 1
        self.cells = levels.reshape(-1) * 2 + labels

    def __call__(self, indices: np.ndarray) -> float:
        counts = np.bincount(self.cells[indices], minlength=2 * self.n_levels).reshape(self.n_levels, 2)
        positives = counts[:, 1]
        n_pos = int(positives.sum())
        if n_pos == 0 or n_pos == len(indices):
            return np.nan
        tp, predicted = np.cumsum(positives), np.cumsum(counts.sum(axis=1))
        with np.errstate(divide="ignore", invalid="ignore"):
            precision = np.where(predicted > 0, tp / np.maximum(predicted, 1), 1.0)
        return float((positives * precision).sum() / n_pos)


def _matrices(labels, probabilities) -> tuple[np.ndarray, np.ndarray]:
    """(labels, probabilities) as float (N, K) arrays; a NaN label is a finding not labelled for that image (masked:
    each finding is scored on its labelled images only, cxr.data.findings)."""
    labels = np.asarray(labels, dtype=np.float64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if labels.ndim != 2 or labels.shape != probabilities.shape:
        raise ValueError(
            f"labels and probabilities must be (N, K) arrays of one shape, got {labels.shape} and {probabilities.shape}"
        )
    if np.isnan(probabilities).any():
        raise ValueError("probabilities contain NaN")
    if not (np.isin(labels, (0, 1)) | np.isnan(labels)).all():
        raise ValueError("labels must be 0/1 (or NaN: not labelled)")
    return labels, probabilities


class _Labelled:
    """Finding ``j``'s labelled rows: its 0/1 labels, and the map from a resample's row indices to them."""

    def __init__(self, labels: np.ndarray, j: int):
        self.rows = np.flatnonzero(~np.isnan(labels[:, j]))
        self.labels = labels[self.rows, j].astype(np.int64)
        self.position = np.full(len(labels), -1, dtype=np.int64)
        self.position[self.rows] = np.arange(len(self.rows))
        self.all = len(self.rows) == len(labels)

    def defined(self) -> bool:
        return 0 < self.labels.sum() < len(self.labels)

    def of(self, indices: np.ndarray) -> np.ndarray:
        if self.all:
            return indices
        mapped = self.position[indices]
        return mapped[mapped >= 0]


def _ci(value, resampled: np.ndarray, level: float) -> dict:
    low, high = _interval(resampled, level)
    return {"value": None if value is None else float(value), "ci_low": low, "ci_high": high}


def _mean_findings(labels: np.ndarray, codes: np.ndarray, defined: list[int], minimum: int) -> list[int]:
    """The columns a mean AUROC averages: both classes in the set and at least ``minimum`` positive patients."""
    return [j for j in defined if np.unique(codes[labels[:, j] == 1]).size >= minimum]


def _resampled_mean(resampled: np.ndarray, columns: list[int]) -> tuple[np.ndarray, int]:
    """The mean over the same ``columns`` in every resample, and how many resamples were dropped.

    A resample in which one of them lost a class has no value of that estimand and is dropped (NaN) rather than
    averaged over fewer findings (which mixed estimands: a 13-finding mean in the tail of a 14-finding CI).
    Resampling by patient within class is no option here: a patient is positive for one finding and negative for
    another. With >= k positive patients a finding loses them all in about exp(-k) of the resamples (0.7% at k = 5),
    so dropping them barely conditions the interval; the count is reported."""
    if not columns:
        return np.full(len(resampled), np.nan), 0
    means = resampled[:, columns].mean(axis=1)  # NaN where any of them is undefined
    return means, int(np.isnan(means).sum())


def multilabel_bootstrap(
    labels,
    probabilities,
    patients,
    findings: list[str],
    n_resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    min_positive_patients: int = MIN_POSITIVE_PATIENTS_FOR_MEAN,
) -> dict:
    """Per finding ``{"auroc", "average_precision"}`` (each ``{"value", "ci_low", "ci_high"}``) and ``mean_auroc``
    over the findings with at least ``min_positive_patients`` positive patients in the set (the same findings in
    the point estimate and every resample: _resampled_mean), from one set of patient resamples (all images of a
    drawn patient together); ``n_resamples``, ``n_patients``."""
    _check_options(n_resamples, level)
    labels, probabilities = _matrices(labels, probabilities)
    codes = patient_codes(patients)
    resampler = PatientResampler(codes)
    rng = np.random.default_rng(seed)
    k = labels.shape[1]
    masks = [_Labelled(labels, j) for j in range(k)]
    defined = [j for j in range(k) if masks[j].defined()]
    aurocs = [_AurocTable(masks[j].labels, probabilities[masks[j].rows, j]) for j in defined]
    precisions = [_AveragePrecisionTable(masks[j].labels, probabilities[masks[j].rows, j]) for j in defined]
    resampled_auroc = np.full((n_resamples, len(defined)), np.nan)
    resampled_ap = np.full((n_resamples, len(defined)), np.nan)
    for b in range(n_resamples):
        indices = resampler.draw(rng)
        resampled_auroc[b] = [table(masks[j].of(indices)) for table, j in zip(aurocs, defined)]
        resampled_ap[b] = [table(masks[j].of(indices)) for table, j in zip(precisions, defined)]
    result: dict = {"findings": {}}
    point = {}
    for j, finding in enumerate(findings):
        y, p = masks[j].labels, probabilities[masks[j].rows, j]
        entry = {
            "n_positive": int(y.sum()),
            "n_positive_patients": int(np.unique(codes[masks[j].rows][y == 1]).size),
            "n_negative": int(len(y) - y.sum()),
            "n_missing": len(labels) - len(y),
        }
        if j in defined:
            i = defined.index(j)
            point[finding] = auroc(y, p)
            entry["auroc"] = _ci(point[finding], resampled_auroc[:, i], level)
            entry["average_precision"] = _ci(average_precision(y, p), resampled_ap[:, i], level)
        else:
            entry["auroc"] = entry["average_precision"] = {"value": None, "ci_low": None, "ci_high": None}
        result["findings"][finding] = entry
    included = _mean_findings(labels, codes, defined, min_positive_patients)
    means, dropped = _resampled_mean(resampled_auroc, [defined.index(j) for j in included])
    result["mean_auroc"] = {
        **_ci(np.mean([point[findings[j]] for j in included]) if included else None, means, level),
        "n_findings": len(included),
        "findings": [findings[j] for j in included],
        "min_positive_patients": int(min_positive_patients),
        "left_out": [findings[j] for j in range(k) if j not in included],
        "n_resamples_dropped": dropped,
    }
    result["n_resamples"], result["n_patients"] = int(n_resamples), resampler.n_patients
    return result


def paired_multilabel_difference(
    labels,
    probabilities_a,
    probabilities_b,
    patients,
    findings: list[str],
    n_resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    min_positive_patients: int = MIN_POSITIVE_PATIENTS_FOR_MEAN,
) -> dict:
    """Mean AUROC (over the findings of multilabel_bootstrap's rule, the same in every resample) and AUROC per
    finding, run A minus run B on the same images and patient resamples:
    ``{"mean_auroc": {...}, "findings": {finding: {...}}}``, each ``{"difference", "ci_low", "ci_high", "p_value",
    "auroc_a", "auroc_b"}`` (p: two-sided bootstrap p-value of no difference, as paired_auroc_difference)."""
    _check_options(n_resamples, level)
    labels, probabilities_a = _matrices(labels, probabilities_a)
    _, probabilities_b = _matrices(labels, probabilities_b)
    codes = patient_codes(patients)
    resampler = PatientResampler(codes)
    rng = np.random.default_rng(seed)
    masks = [_Labelled(labels, j) for j in range(labels.shape[1])]
    defined = [j for j in range(labels.shape[1]) if masks[j].defined()]
    tables = [
        (
            _AurocTable(masks[j].labels, probabilities_a[masks[j].rows, j]),
            _AurocTable(masks[j].labels, probabilities_b[masks[j].rows, j]),
        )
        for j in defined
    ]
    a = np.full((n_resamples, len(defined)), np.nan)
    b = np.full((n_resamples, len(defined)), np.nan)
    for r in range(n_resamples):
        indices = resampler.draw(rng)
        a[r] = [ta(masks[j].of(indices)) for (ta, _), j in zip(tables, defined)]
        b[r] = [tb(masks[j].of(indices)) for (_, tb), j in zip(tables, defined)]

    def summary(point_a, point_b, differences):
        low, high = _interval(differences, level)
        return {
            "difference": None if point_a is None or point_b is None else float(point_a - point_b),
            "ci_low": low,
            "ci_high": high,
            "p_value": bootstrap_p_value(differences),
            "auroc_a": point_a,
            "auroc_b": point_b,
        }

    result = {
        "findings": {},
        "n": int(len(labels)),
        "n_patients": resampler.n_patients,
        "n_resamples": int(n_resamples),
    }
    points_a, points_b = [], []
    for i, j in enumerate(defined):
        y, rows = masks[j].labels, masks[j].rows
        pa, pb = auroc(y, probabilities_a[rows, j]), auroc(y, probabilities_b[rows, j])
        points_a.append(pa)
        points_b.append(pb)
        result["findings"][findings[j]] = summary(pa, pb, a[:, i] - b[:, i])
    included = _mean_findings(labels, codes, defined, min_positive_patients)
    columns = [defined.index(j) for j in included]
    means_a, dropped = _resampled_mean(a, columns)
    means_b, _ = _resampled_mean(b, columns)  # a and b lose a class in the same resamples (same labels)
    result["mean_auroc"] = {
        **summary(
            float(np.mean([points_a[i] for i in columns])) if columns else None,
            float(np.mean([points_b[i] for i in columns])) if columns else None,
            means_a - means_b,
        ),
        "findings": [findings[j] for j in included],
        "min_positive_patients": int(min_positive_patients),
        "n_resamples_dropped": dropped,
    }
    return result


def finding_thresholds(
    labels, probabilities, findings: list[str], method: str = "youden", target_sensitivity: float | None = None
) -> dict[str, float | None]:
    """A threshold per finding, chosen on (validation) labels and probabilities; None for a finding with one class."""
    labels, probabilities = _matrices(labels, probabilities)
    thresholds = {}
    for j, finding in enumerate(findings):
        rows = ~np.isnan(labels[:, j])
        try:
            thresholds[finding] = float(
                choose_threshold(labels[rows, j].astype(np.int64), probabilities[rows, j], method, target_sensitivity)
            )
        except ValueError:
            thresholds[finding] = None
    return thresholds


def at_threshold(labels, probabilities, threshold: float | None) -> dict:
    """Sensitivity, specificity and PPV when a probability strictly above ``threshold`` means the finding."""
    if threshold is None:
        return {"threshold": None, "sensitivity": None, "specificity": None, "ppv": None}
    labels, probabilities = np.asarray(labels, dtype=np.float64), np.asarray(probabilities, dtype=np.float64)
    rows = ~np.isnan(labels)  # a finding not labelled for an image is not scored
    labels, probabilities = labels[rows].astype(np.int64), probabilities[rows]
    metrics = binary_metrics(labels, probabilities, threshold)  # the project's one decision rule
    return {
        "threshold": float(threshold),
        "sensitivity": metrics["accuracy_class1"],
        "specificity": metrics["accuracy_class0"],
        "ppv": metrics["ppv"],
    }


def findings_table(per_finding: dict, mean_auroc: dict | None = None) -> pd.DataFrame:
    """One row per finding (and a mean row): positives, AUROC and AP with CIs, the validation-chosen threshold
    with sensitivity/specificity, and the published AUROCs of Wang 2017 and CheXNet."""

    def with_ci(entry):
        if not entry or entry.get("value") is None:
            return "n/a"
        if entry.get("ci_low") is None:
            return f"{entry['value']:.3f}"
        return f"{entry['value']:.3f} [{entry['ci_low']:.3f}, {entry['ci_high']:.3f}]"

    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    rows = []
    for finding, m in per_finding.items():
        op = m.get("operating_point") or {}
        patients = m.get("n_positive_patients")
        rows.append(
            {
                "finding": finding,
                "positives (images / patients)": f"{m.get('n_positive')} / {'n/a' if patients is None else patients}",
                "AUROC [95% CI]": with_ci(m.get("auroc")),
                "AP [95% CI]": with_ci(m.get("average_precision")),
                "threshold (val)": fmt(op.get("threshold"))
                + (" (fixed: few val positives)" if str(op.get("chosen_on", "")).startswith("fixed (") else ""),
                "sensitivity": fmt(op.get("sensitivity")),
                "specificity": fmt(op.get("specificity")),
                "Wang 2017": fmt(WANG_2017.get(finding)),
                "CheXNet 2017": fmt(CHEXNET_2017.get(finding)),
            }
        )
    if mean_auroc is not None:
        shown = [f for f in mean_auroc.get("findings", []) if f in WANG_2017]
        rows.append(
            {
                "finding": f"mean over the {mean_auroc.get('n_findings')} findings with >= "
                f"{mean_auroc.get('min_positive_patients')} positive patients",
                "positives (images / patients)": "",
                "AUROC [95% CI]": with_ci(mean_auroc),
                "AP [95% CI]": "",
                "threshold (val)": "",
                "sensitivity": "",
                "specificity": "",
                "Wang 2017": fmt(np.mean([WANG_2017[f] for f in shown]) if shown else None),
                "CheXNet 2017": fmt(np.mean([CHEXNET_2017[f] for f in shown]) if shown else None),
            }
        )
    return pd.DataFrame(rows)


def roc_grid_figure(labels, probabilities, findings: list[str], thresholds: dict | None = None, title: str = ""):
    """One ROC panel per finding (AUROC in the title, the validation-chosen threshold marked)."""
    from cxr.evaluation.figures import _new_figure

    labels, probabilities = _matrices(labels, probabilities)
    columns = min(4, len(findings))
    rows = int(np.ceil(len(findings) / columns))
    figure = _new_figure((3.2 * columns, 3.0 * rows + 0.4))
    for j, finding in enumerate(findings):
        labelled = _Labelled(labels, j)  # the images this finding is labelled for
        y, p = labelled.labels, probabilities[labelled.rows, j]
        ax = figure.add_subplot(rows, columns, j + 1)
        ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1)
        curve = roc_curve(y, p) if len(y) else None
        if curve is None:
            ax.set_title(f"{finding}\n(one class: AUROC n/a)", fontsize="small")
        else:
            ax.plot(curve[0], curve[1], linewidth=2)
            ax.set_title(f"{finding}\nAUROC {auroc(y, p):.3f} (n+ = {int(y.sum())})", fontsize="small")
            threshold = (thresholds or {}).get(finding)
            if threshold is not None:
                point = at_threshold(y, p, threshold)
                if point["sensitivity"] is not None and point["specificity"] is not None:
                    ax.plot(
                        [1 - point["specificity"]], [point["sensitivity"]], "o", color="C3", label=f"t={threshold:.3g}"
                    )
                    ax.legend(loc="lower right", fontsize="x-small")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.tick_params(labelsize="x-small")
        if j % columns == 0:
            ax.set_ylabel("sensitivity", fontsize="small")
        if j >= len(findings) - columns:
            ax.set_xlabel("1 - specificity", fontsize="small")
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    return figure
