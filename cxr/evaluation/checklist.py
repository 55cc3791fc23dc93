"""The model card's reporting checklist: the items of CLAIM (2024 update) and TRIPOD+AI that a training run can fill
from its config and metrics.json, and the ones only its author can, listed to complete.

CLAIM: Tejani AS, Klontzas ME, Gatti AA, et al. Checklist for Artificial Intelligence in Medical Imaging (CLAIM):
2024 Update. Radiol Artif Intell 2024;6(4):e240300. TRIPOD+AI: Collins GS, Moons KGM, Dhiman P, et al. BMJ
2024;385:e078378. metrics.json is read defensively: keys other evaluations add (calibration, subgroup gaps) fill
their rows when present and leave "not computed" otherwise.
"""

from __future__ import annotations

NOT_COMPUTED = "not computed"
WANG_2017 = (
    "Wang X, Peng Y, Lu L, Lu Z, Bagheri M, Summers RM. ChestX-ray8: Hospital-scale chest X-ray database and "
    "benchmarks on weakly-supervised classification and localization of common thorax diseases. CVPR 2017:2097-2106"
)
OAKDEN_RAYNER_2020 = (
    "Oakden-Rayner L. Exploring large-scale public medical image datasets. Acad Radiol 2020;27(1):106-112"
)
AUTHOR_ITEMS = (
    ("Intended use, clinical role and target population", "CLAIM: Introduction; TRIPOD+AI: Introduction"),
    ("Ethics approval, consent or waiver; de-identification", "CLAIM: Methods (data); TRIPOD+AI: Methods (ethics)"),
    ("Sample size justification", "CLAIM: Methods (data); TRIPOD+AI: Methods (sample size)"),
    ("Comparison with clinicians or current practice", "CLAIM: Methods (evaluation)"),
    ("Reference standard quality on this data (reader study, inter-rater agreement)", "CLAIM: Methods (ground truth)"),
    ("Failure analysis: review of misclassified images (predictions_<set>.csv lists them)", "CLAIM: Results"),
    ("Prospective or multi-site validation; external data from another institution", "TRIPOD+AI: Methods (data)"),
    ("Funding, conflicts of interest, protocol/registration", "CLAIM: Other; TRIPOD+AI: Other"),
    ("Code and model availability; patient and public involvement", "TRIPOD+AI: Open science"),
)


def _get(tree, *keys):
    for key in keys:
        tree = tree.get(key) if isinstance(tree, dict) else None
    return tree


def _value(entry, digits: int = 3) -> str | None:
    """A number, or ``{"value", "ci_low", "ci_high"}``, as text (None when absent)."""
    if isinstance(entry, (int, float)) and not isinstance(entry, bool):
        return f"{entry:.{digits}f}"
    if isinstance(entry, dict) and isinstance(entry.get("value"), (int, float)):
        low, high = entry.get("ci_low"), entry.get("ci_high")
        ci = f" [{low:.{digits}f}, {high:.{digits}f}]" if isinstance(low, float) and isinstance(high, float) else ""
        return f"{entry['value']:.{digits}f}{ci}"
    return None


def _data_source(data: dict) -> str:
    name = str(data.get("name") or "")
    if name == "demo":
        return "synthetic demo data (drawn shapes, not X-rays): nothing clinical can be reported"
    if name.startswith("nih"):
        return (
            f"NIH ChestX-ray14 (NIH Clinical Center, Bethesda: {WANG_2017}; acquisition years: to confirm from "
            f"the paper's Section 3); images "
            f"`{data.get('root')}`, labels `{data.get('labels')}`"
        )
    return f"`{name}`: images `{data.get('root')}`, labels `{data.get('labels')}` (dates: to complete)"


def _reference_standard(data: dict, metrics: dict) -> str:
    if str(data.get("name") or "").startswith("nih"):
        text = (
            "labels mined from the radiology reports by NLP, not read from the images: Wang et al. estimate the text "
            "mining's precision above 90% (CVPR 2017, as cited above); a visual review found some labels far less "
            "accurate "
            f"({OAKDEN_RAYNER_2020})"
        )
    elif data.get("name") == "demo":
        text = "the generator's own labels (exact by construction)"
    else:
        text = "to complete (who labelled, how, with what agreement)"
    expert = _get(metrics, "test", "expert_labels") or {}
    if expert.get("n"):
        text += f"; also scored against radiologists' labels (Google 2019) on {expert['n']} test images"
    return text


def _split(data: dict, metrics: dict) -> str:
    split = metrics.get("split") or {}
    method = _get(data, "split", "method")
    parts = [
        f"{name} {entry.get('images')} images / {entry.get('patients')} patients"
        for name, entry in split.items()
        if isinstance(entry, dict) and "images" in entry
    ]
    shared = split.get("patients_in_several_splits")
    overlap = (
        "no patient in more than one split"
        if shared == 0
        else f"{shared} patients in more than one split (not patient-disjoint)"
        if shared
        else "patient overlap not recorded"
    )
    return f"`{method}`: {', '.join(parts) or 'counts not recorded'}; {overlap}"


def _eligibility(data: dict, metrics: dict) -> str:
    leakage = metrics.get("leakage") or {}
    parts = [f"every labelled image found under `{data.get('root')}` (missing images: `{data.get('missing')}`)"]
    if leakage.get("exclude"):
        parts.append(f"excluded `{leakage['exclude']}`: {leakage.get('excluded_images')} images")
    if str(data.get("name") or "").startswith("nih"):
        parts.append("frontal views (PA/AP) of the NIH release; age, sex and view in the label file")
    return "; ".join(parts) + "; inclusion criteria of the source to complete"


def _performance(metrics: dict) -> str:
    parts = []
    for name in ("test", "external"):
        entry = metrics.get(name)
        if not isinstance(entry, dict):
            continue
        auroc = _value({"value": entry.get("auroc"), **(_get(entry, "ci", "auroc") or {})})
        text = f"{name}: AUROC {auroc or 'n/a'} (n = {entry.get('n')}, {entry.get('n_patients')} patients)"
        if (mean := _value(entry.get("mean_auroc"))) is not None:
            text += f", mean AUROC over findings {mean}"
        op = entry.get("operating_point") or {}
        if op.get("threshold") is not None:
            sensitivity = _value({"value": op.get("accuracy_class1"), **(_get(op, "ci", "accuracy_class1") or {})})
            specificity = _value({"value": op.get("accuracy_class0"), **(_get(op, "ci", "accuracy_class0") or {})})
            text += (
                f"; at the operating point ({op.get('chosen_on')}) sensitivity {sensitivity}, specificity {specificity}"
            )
        parts.append(text)
    return "; ".join(parts) + " (95% patient-bootstrap CIs)" if parts else NOT_COMPUTED


def _calibration(metrics: dict) -> str:
    parts = []
    for name in ("test", "external"):
        calibration = _get(metrics, name, "calibration")
        if not isinstance(calibration, dict):
            continue
        shown = [
            f"{key.upper() if key in ('ece', 'mce') else key} {text}"
            for key in ("ece", "mce", "brier")
            if (text := _value(calibration.get(key))) is not None
        ]
        temperature = calibration.get("temperature")
        if isinstance(temperature, dict):  # one temperature per output (cxr.evaluation.calibration)
            shown.append("temperature " + ", ".join(f"{k} {_value(v, 2) or v}" for k, v in temperature.items()))
        elif temperature is not None:
            shown.append(f"temperature {_value(temperature, 2) or temperature}")
        if shown:
            parts.append(f"{name}: " + ", ".join(shown))
    return "; ".join(parts) or NOT_COMPUTED


def _subgroups(metrics: dict) -> str:
    parts = []
    for name in ("test", "external"):
        groups = _get(metrics, name, "subgroups")
        if not isinstance(groups, dict) or not groups:
            continue
        columns = [c for c, v in groups.items() if isinstance(v, dict)]
        text = f"{name}: AUROC by {', '.join(columns)} (metrics.json, tables above)"
        gaps = _get(metrics, name, "subgroup_gaps")  # cxr.evaluation.subgroups.subgroup_gaps, per column
        for column, gap in gaps.items() if isinstance(gaps, dict) else ():
            largest = gap.get("largest_gap") if isinstance(gap, dict) else None
            if (shown := _value(largest)) is not None:
                small = " (n<10)" if largest.get("small_n") else ""
                text += f"; largest {column} gap {shown}{small} (worst: {largest.get('worst')})"
        parts.append(text)
    return "; ".join(parts) or NOT_COMPUTED


def _failure_analysis(metrics: dict) -> str:
    parts = []
    for name in ("test", "external"):
        localisation = _get(metrics, name, "localisation")
        overall = _get(localisation, "all")
        if isinstance(overall, dict):
            parts.append(
                f"{name}: Grad-CAM pointing game {_value(overall.get('pointing_game'), 2)} over "
                f"{overall.get('n_boxes')} radiologist boxes (chance {_value(overall.get('chance'), 2)})"
            )
    text = "; ".join(parts) if parts else "heat-map localisation not computed (no boxed images)"
    return text + "; per-image predictions in predictions_<set>.csv for the author's review"


def _plain(node) -> dict:
    """A config node as plain values (interpolations it cannot resolve left as written)."""
    from omegaconf import DictConfig, OmegaConf

    if not isinstance(node, DictConfig):
        return dict(node or {})
    try:
        return OmegaConf.to_container(node, resolve=True)
    except Exception:  # an interpolation outside this node (a partial config)
        return OmegaConf.to_container(node, resolve=False)


def checklist_rows(cfg, metrics: dict) -> list[list[str]]:
    """[item, where in CLAIM 2024 / TRIPOD+AI, what this run says] for the items a run can fill."""
    data = _plain(cfg.get("data")) if cfg is not None else {}
    validation = metrics.get("validation") or {}
    return [
        ["Data source and dates", "CLAIM: Methods (data); TRIPOD+AI: Methods (data)", _data_source(data)],
        ["Eligibility", "CLAIM: Methods (data); TRIPOD+AI: Methods (participants)", _eligibility(data, metrics)],
        ["Split (by patient)", "CLAIM: Methods (data partitions); TRIPOD+AI: Methods", _split(data, metrics)],
        [
            "Reference standard",
            "CLAIM: Methods (ground truth); TRIPOD+AI: Methods (outcome)",
            _reference_standard(data, metrics),
        ],
        [
            "Model selection",
            "CLAIM: Methods (training); TRIPOD+AI: Methods (analysis)",
            f"checkpoint `{metrics.get('checkpoint')}` ({metrics.get('checkpoint_choice') or 'choice not recorded'}); "
            f"validation AUROC best {_value(validation.get('auroc_best')) or 'n/a'}, last "
            f"{_value(validation.get('auroc_last')) or 'n/a'}; threshold chosen on validation",
        ],
        ["Performance with CIs", "CLAIM: Results; TRIPOD+AI: Results (performance)", _performance(metrics)],
        ["Calibration", "CLAIM: Methods (evaluation); TRIPOD+AI: Results (performance)", _calibration(metrics)],
        ["Subgroups (fairness)", "CLAIM: Results; TRIPOD+AI: Methods (fairness)", _subgroups(metrics)],
        ["Failure analysis, explainability", "CLAIM: Results / Discussion", _failure_analysis(metrics)],
    ]


def checklist_lines(cfg, metrics: dict) -> list[str]:
    """The model card's "Reporting checklist" section."""
    from cxr.evaluation.tables import markdown_table

    return [
        "## Reporting checklist (CLAIM 2024 / TRIPOD+AI)",
        "",
        "Filled from this run; check each against the paper. CLAIM: Tejani et al., Radiol Artif Intell "
        "2024;6(4):e240300. TRIPOD+AI: Collins et al., BMJ 2024;385:e078378.",
        "",
        markdown_table(["item", "checklist section", "this run"], checklist_rows(cfg, metrics)),
        "",
        "For the author to complete (a run cannot know them):",
        "",
        *[f"- [ ] {item} ({where})" for item, where in AUTHOR_ITEMS],
        "",
    ]
