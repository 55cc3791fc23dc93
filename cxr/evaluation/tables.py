"""Calibration and subgroup tables, with small-n marks, for the model card (Markdown lines) and compare.py
(report blocks): one rendering of metrics.json's ``calibration``, ``subgroups`` and ``subgroup_gaps``."""

from __future__ import annotations

from cxr.evaluation.small_n import MARK, mark, note


def _f(value, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def with_ci(entry) -> str:
    """``{"value", "ci_low", "ci_high"}`` as ``v [lo, hi]``."""
    if not isinstance(entry, dict) or entry.get("value") is None:
        return "n/a"
    if entry.get("ci_low") is None:
        return _f(entry["value"])
    return f"{_f(entry['value'])} [{_f(entry['ci_low'])}, {_f(entry['ci_high'])}]"


def _score(block: dict, key: str) -> str:
    return with_ci((block.get("ci") or {}).get(key) or {"value": block.get(key)})


def calibration_rows(block: dict) -> list[list[str]]:
    """Rows (probabilities, ECE, MCE, Brier) of a set's ``calibration``: before and after scaling when scaled."""
    rows = []
    if isinstance(block.get("before_scaling"), dict):
        rows.append(["model's own", *(_score(block["before_scaling"], k) for k in ("ece", "mce", "brier"))])
    label = "temperature-scaled" if block.get("method") == "temperature" else "model's own"
    rows.append([label, *(_score(block, k) for k in ("ece", "mce", "brier"))])
    return [[mark(r[0], block), *r[1:]] for r in rows]


def calibration_lines(name: str, block: dict | None) -> list[str]:
    """The model card's calibration table of one set (nothing for an old run without the scores)."""
    if not isinstance(block, dict) or block.get("mce") is None:
        if isinstance(block, dict) and block.get("ece") is not None:
            return [f"Expected calibration error {_f(block['ece'])}.", ""]
        return []
    temperatures = block.get("temperature") or {}
    lines = [
        f"Calibration on the {name} set ({block.get('n_bins')} bins; 95% patient-bootstrap CIs"
        + (
            "; temperature scaling fitted on validation, T = "
            + ", ".join(f"{k} {_f(v, 3)}" for k, v in temperatures.items())
            if temperatures
            else ""
        )
        + "):",
        "",
        "| probabilities | ECE | MCE | Brier |",
        "|---|---|---|---|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in calibration_rows(block)]
    return lines + [""]


def subgroup_rows(metrics: dict) -> list[list[str]]:
    """column, value, n, patients class 0 / 1, AUROC [CI] (marked when small), balanced accuracy."""
    rows = []
    for column, values in (metrics.get("subgroups") or {}).items():
        for value, m in values.items():
            auroc = with_ci((m.get("ci") or {}).get("auroc") or {"value": m.get("auroc")})
            patients = f"{m['n_patients_class0']} / {m['n_patients_class1']}" if "n_patients_class0" in m else "n/a"
            rows.append([column, value, str(m.get("n")), patients, mark(auroc, m), _f(m.get("balanced_accuracy"))])
    return rows


SUBGROUP_HEADERS = ["column", "value", "images", "patients class 0 / 1", "AUROC [95% CI]", "balanced accuracy"]
GAP_HEADERS = ["column", "largest gap [95% CI]", "between (best - worst)", "worst-group AUROC [95% CI]"]


def gap_rows(metrics: dict) -> list[list[str]]:
    rows = []
    for column, gap in (metrics.get("subgroup_gaps") or {}).items():
        largest, worst = gap["largest_gap"], gap["worst_group"]
        rows.append(
            [
                column,
                mark(with_ci(largest), largest),
                f"{largest['best']} - {largest['worst']}",
                mark(f"{worst['group']}: {with_ci(worst)}", worst),
            ]
        )
    return rows


GAP_NOTE = (
    "Largest gap: AUROC of the best minus the worst subgroup (picked on the point estimates) with a bootstrap CI of "
    "that difference over the same patient resamples; compared among subgroups with at least 10 patients of each "
    f"class when two or more have them, else among all, marked {MARK}."
)


def subgroup_lines(name: str, metrics: dict) -> list[str]:
    """The model card's subgroup section of one set."""
    rows = subgroup_rows(metrics)
    if not rows:
        return []
    table = lambda headers, body: [  # noqa: E731
        "| " + " | ".join(headers) + " |",
        "|" + "---|" * len(headers),
        *("| " + " | ".join(r) + " |" for r in body),
    ]
    lines = [f"### Subgroups of the {name} set (threshold {metrics.get('threshold', 0.5)})", ""]
    lines += table(SUBGROUP_HEADERS, rows) + [""]
    gaps = gap_rows(metrics)
    if gaps:
        lines += table(GAP_HEADERS, gaps) + ["", GAP_NOTE, ""]
    return lines + [note(), ""]


def compare_blocks(runs, set_name: str) -> list[tuple]:
    """compare.py's calibration and subgroup sections (blocks of cxr.evaluation.report): one table of ECE, MCE and
    Brier per run, and per run its subgroup AUROCs with CIs and the largest gap and worst group."""
    calibration = [
        [run.name, *row]
        for run in runs
        for row in calibration_rows(run.metrics[set_name].get("calibration") or {})
        if (run.metrics[set_name].get("calibration") or {}).get("mce") is not None
    ]
    blocks: list[tuple] = []
    if calibration:
        blocks += [
            ("h", 2, f"Calibration ({set_name})"),
            (
                "p",
                "Expected (ECE) and maximum (MCE) calibration error over equal-width bins and the Brier score, with "
                "95% patient-bootstrap CIs; lower is better. With temperature scaling the model's own probabilities "
                "are shown before the scaled ones. " + note(),
            ),
            ("table", ["run", "probabilities", "ECE", "MCE", "Brier"], calibration),
        ]
    subgroups, gaps = [], []
    for run in runs:
        rows = subgroup_rows(run.metrics[set_name])
        subgroups += [("h", 3, run.name), ("table", SUBGROUP_HEADERS, rows)] if rows else []
        gaps += [[run.name, *row] for row in gap_rows(run.metrics[set_name])]
    if subgroups:
        blocks += [("h", 2, f"Subgroup AUROC ({set_name})"), ("p", note()), *subgroups]
    if gaps:
        blocks += [
            ("h", 2, f"Subgroup gaps ({set_name})"),
            ("p", GAP_NOTE),
            ("table", ["run", *GAP_HEADERS], gaps),
        ]
    return blocks


def _cell(value) -> str:
    return "n/a" if value is None else str(value)


def markdown_table(headers: list, rows: list[list]) -> str:
    line = lambda cells: "| " + " | ".join(_cell(c).replace("|", "\\|") for c in cells) + " |"  # noqa: E731
    return "\n".join([line(headers), "|" + "---|" * len(headers), *map(line, rows)])
