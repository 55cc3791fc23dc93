"""Cross-dataset evaluation: how much AUROC a model loses on each external dataset against its internal test split,
per finding the two share, with a patient-bootstrap CI of the drop (the sets hold different patients, so each is
resampled on its own and the drop is taken draw by draw)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cxr.evaluation.bootstrap import PatientResampler, _AurocTable, _interval, patient_codes
from cxr.evaluation.metrics import auroc

PREFIX = "external_"


def _auroc_draws(labels, probabilities, patients, n_resamples: int, rng) -> tuple[float | None, np.ndarray]:
    """(AUROC, AUROC of each patient resample) on the labelled rows (a NaN label is not scored)."""
    labels, probabilities = np.asarray(labels, dtype=np.float64), np.asarray(probabilities, dtype=np.float64)
    rows = ~np.isnan(labels)
    labels, probabilities = labels[rows].astype(np.int64), probabilities[rows]
    patients = np.asarray(patients, dtype=object)[rows]
    if not 0 < labels.sum() < len(labels):
        return None, np.full(n_resamples, np.nan)
    table, resampler = _AurocTable(labels, probabilities), PatientResampler(patient_codes(patients))
    return auroc(labels, probabilities), np.array([table(resampler.draw(rng)) for _ in range(n_resamples)])


def auroc_drop(
    internal: pd.DataFrame,
    external: pd.DataFrame,
    findings: list[str] | None,
    n_resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict:
    """Per finding scored in both prediction tables (``label_<f>``/``probability_<f>``; binary: ``label``/
    ``probability`` as ``finding``): internal and external AUROC and ``drop`` = internal - external with its CI
    (positive: the model does worse on the external set)."""
    columns = (
        [(f"label_{f}", f"probability_{f}", f) for f in findings] if findings else [("label", "probability", "finding")]
    )
    rng = np.random.default_rng(seed)
    result = {}
    for label, probability, finding in columns:
        inside, inside_draws = _auroc_draws(
            internal[label], internal[probability], internal["patient"], n_resamples, rng
        )
        outside, outside_draws = _auroc_draws(
            external[label], external[probability], external["patient"], n_resamples, rng
        )
        if inside is None or outside is None:
            continue  # not labelled with both classes in one of the sets: no shared finding to compare
        low, high = _interval(inside_draws - outside_draws, level)
        result[finding] = {
            "internal": inside,
            "external": outside,
            "drop": inside - outside,
            "ci_low": low,
            "ci_high": high,
        }
    return result


def add_drops(results: dict, output_dir: str | Path, findings: list[str] | None, bootstrap: dict) -> None:
    """``results[external_<name>]["drop_from_test"]``: the AUROC drop from the internal test split per shared finding
    (read from the predictions_<set>.csv files evaluate_sets wrote)."""
    output_dir = Path(output_dir)
    names = [name for name in results if name.startswith(PREFIX)]
    if "test" not in results or not names:
        return
    internal = pd.read_csv(output_dir / "predictions_test.csv")
    for name in names:
        external = pd.read_csv(output_dir / f"predictions_{name}.csv")
        results[name]["drop_from_test"] = {
            "findings": auroc_drop(internal, external, findings, **bootstrap),
            "note": "internal test AUROC minus external AUROC; CI from independent patient resamples of the two sets",
        }


def _value(entry: dict | None) -> str:
    if not entry or entry.get("value") is None:
        return "n/a"
    if entry.get("ci_low") is None:
        return f"{entry['value']:.3f}"
    return f"{entry['value']:.3f} [{entry['ci_low']:.3f}, {entry['ci_high']:.3f}]"


def tested_on(metrics: dict) -> list[str]:
    """The model card's "Where the model was tested": one row per evaluation set (internal test, per-source test
    splits, external datasets) with its size, AUROC and the findings it was scored on."""
    names = [n for n in metrics if n == "test" or n.startswith(("test_", PREFIX)) or n == "external"]
    names = [n for n in names if isinstance(metrics.get(n), dict) and "n" in metrics[n]]
    if not names:
        return []
    lines = [
        "## Where the model was tested",
        "",
        "| set | images | patients | AUROC [95% CI] | findings scored | mean AUROC drop from test [95% CI] |",
        "|---|---|---|---|---|---|",
    ]
    for name in names:
        m = metrics[name]
        findings = m.get("findings") or {}
        scored = [f for f, v in findings.items() if (v.get("auroc") or {}).get("value") is not None]
        auroc_text = _value(m.get("mean_auroc")) if findings else _value({"value": m.get("auroc"), **m["ci"]["auroc"]})
        drops = (m.get("drop_from_test") or {}).get("findings") or {}
        drop = ""
        if drops:
            values = [d["drop"] for d in drops.values()]
            drop = f"{np.mean(values):+.3f} over {len(values)} shared finding(s)"
            low, high = [d["ci_low"] for d in drops.values()], [d["ci_high"] for d in drops.values()]
            if len(values) == 1 and low[0] is not None:
                drop += f" [{low[0]:+.3f}, {high[0]:+.3f}]"
        shown = ", ".join(scored) if findings else "any finding (binary)"
        lines.append(f"| {name} | {m.get('n')} | {m.get('n_patients')} | {auroc_text} | {shown} | {drop} |")
    return lines + ["", "Per-finding drops with their CIs: metrics.json, `drop_from_test` of each external set.", ""]


def evaluation_sets(metrics: dict) -> list[str]:
    """The sets a run was scored on, internal test first: test, test_<source>, external_<name>, external."""
    names = [n for n in metrics if n == "test" or n.startswith(("test_", PREFIX)) or n == "external"]
    return [n for n in names if isinstance(metrics.get(n), dict) and "n" in metrics[n]]


def datasets_table(runs: list[tuple[str, dict]]) -> tuple[list[str], list[list]] | None:
    """compare.py's "Datasets side by side": one row per run, one column per evaluation set (mean AUROC over the
    findings scored there, or the binary AUROC, with its CI); None when no run has a set beyond its test split."""
    sets = list(dict.fromkeys(n for _, metrics in runs for n in evaluation_sets(metrics)))
    if sets in ([], ["test"]):
        return None
    rows = []
    for name, metrics in runs:
        row = [name]
        for s in sets:
            m = metrics.get(s)
            if not isinstance(m, dict) or "n" not in m:
                row.append("")
            elif m.get("findings"):
                row.append(f"{_value(m.get('mean_auroc'))} ({m['mean_auroc'].get('n_findings')} findings, n={m['n']})")
            else:
                row.append(f"{_value({'value': m.get('auroc'), **(m.get('ci') or {}).get('auroc', {})})} (n={m['n']})")
        rows.append(row)
    return ["run", *sets], rows
