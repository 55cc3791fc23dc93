"""Compare run directories (metrics.json + config.yaml) in a Markdown and a self-contained HTML report: one row
per run, paired AUROC differences of runs scored on the same images (patient bootstrap), mean, sd and t-interval
over runs that differ only in ``seed`` or fold (cxr/evaluation/seeds.py), subgroup AUROC and an ROC overlay. Entry point: ``compare.py``."""

from __future__ import annotations

import base64
import html
import itertools
import json
import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from cxr.artifacts import write_text
from cxr.evaluation.bootstrap import paired_auroc_difference
from cxr.evaluation.figures import roc_overlay_figure, save_figure
from cxr.evaluation.localisation import report_blocks as localisation_blocks
from cxr.evaluation.multiple_testing import holm
from cxr.evaluation.run_dirs import ReportError, Run, find_runs, get_dotted  # noqa: F401 - also this module's API
from cxr.evaluation.seeds import summary_blocks
from cxr.evaluation.small_n import mark
from cxr.evaluation.tables import compare_blocks, markdown_table

MAX_PAIRS = 30
NOT_COMPARED = (
    "seed",
    "paths",
    "hydra",
    "ckpt_path",
    "task_name",
    "run_name",
)  # besides *output_dir* keys and the run's path
HOW_TO_READ = (
    "How to read this report. AUROC 0.5 is chance, 1.0 is perfect ranking. Intervals are 95% confidence intervals "
    "from a bootstrap that resamples patients (all images of a drawn patient together), not images. A paired "
    "difference compares two runs on the very same images: when its interval contains 0, the data cannot tell the "
    "two runs apart. Accuracy alone misleads when the classes are imbalanced: predicting the majority class for "
    "every image reaches the majority-class rate shown beside it, so read the per-class accuracies (class 0 = no "
    "finding = specificity, class 1 = finding = sensitivity), at 0.5 and at the validation-chosen operating point; "
    "a probability above the threshold is class 1 (exactly 0.5 is class 0). A figure marked (n<10) was computed on "
    "fewer than 10 patients of one class: read it as anecdote."
)


@dataclass
class Report:
    directory: Path
    table: str  # the Markdown table of runs, as printed by compare.py
    runs: list[Run]
    pairs: list[dict]  # paired_auroc_difference results with "run_a", "run_b" (or "error")
    pairs_left_out: int
    seed_groups: list[dict]  # runs differing only in seed or fold: cxr.evaluation.seeds.repeat_groups
    skipped: dict[Path, str] = field(default_factory=dict)  # directories that are not finished runs, and why


def _strip(value, run_dirs: set[str]):
    if isinstance(value, dict):
        return {str(k): _strip(v, run_dirs) for k, v in value.items() if "output_dir" not in str(k)}
    if isinstance(value, list):
        return [_strip(v, run_dirs) for v in value]
    for run_dir in run_dirs if isinstance(value, str) else ():
        value = value.replace(run_dir, "<run>")
    return value


def config_key(run: Run) -> str:
    """The resolved config without NOT_COMPARED keys, *output_dir* keys and the run's own path in any value."""
    run_dirs = {str(run.path), str(get_dotted(run.config, "paths.output_dir") or run.path)}
    config = {k: v for k, v in run.config.items() if k not in NOT_COMPARED}
    return json.dumps(_strip(config, run_dirs), sort_keys=True, default=str)


def _num(value, percent: bool = False, unit: str = "%") -> str:
    """0.123 as '0.123', or with ``percent`` as '12.3%'; None as 'n/a'."""
    return "n/a" if value is None else f"{100 * value:.1f}{unit}" if percent else f"{value:.3f}"


def _with_ci(metrics: dict, key: str, percent: bool = False) -> str:
    ci, text = get_dotted(metrics, f"ci.{key}") or {}, _num(metrics.get(key), percent)
    low, high = (_num(ci.get(k), percent, "") for k in ("ci_low", "ci_high"))
    return text if ci.get("ci_low") is None else f"{text} [{low}, {high}]"


def _text(value) -> str:
    return "n/a" if value is None else str(value)


def runs_table(runs: list[Run], name: str) -> tuple[list[str], list[list]]:
    """One row per run: settings, the thesis' Table 3 columns, AUROC and balanced accuracy with CIs."""
    headers = [
        "run",
        "kind",
        "program",
        "seed",
        "data",
        "split",
        "epochs",
        "channels",
        "size train set",
        f"{name} n",
        "accuracy",
        "majority class",
        "accuracy class 0",
        "accuracy class 1",
        "AUROC [95% CI]",
        "balanced accuracy [95% CI]",
        "operating point: class 0 / class 1 (threshold)",
    ]
    rows = []
    for run in runs:
        m, op = run.metrics[name], run.metrics[name].get("operating_point") or {}
        pc = lambda metrics, key: _num(metrics.get(key), True)  # noqa: E731
        n, n0, n1 = m.get("n"), m.get("n_class0"), m.get("n_class1")
        rows.append(
            [
                run.name,
                run.kind,
                run.program,
                "-" if run.seed is None else run.seed,
                run.metrics.get("data") or get_dotted(run.config, "data.name"),
                get_dotted(run.config, "data.split.method"),
                run.metrics.get("epochs_trained"),
                get_dotted(run.metrics, "preprocessing.channels")
                or get_dotted(run.config, "program.preprocessing.channels"),
                get_dotted(run.metrics, "split.train.images"),
                n,
                pc(m, "accuracy"),
                _num(max(n0, n1) / n if n and None not in (n0, n1) else None, True),
                pc(m, "accuracy_class0"),
                pc(m, "accuracy_class1"),
                mark(_with_ci(m, "auroc"), m),
                _with_ci(m, "balanced_accuracy", True),
                f"{pc(op, 'accuracy_class0')} / {pc(op, 'accuracy_class1')} ({_num(op.get('threshold'))})"
                if op
                else None,
            ]
        )
    return headers, rows


def candidate_pairs(runs: list[Run], name: str) -> tuple[list[tuple[Run, Run]], int]:
    """Runs on the same image set in pairs (seed-matched programs, then configs first): MAX_PAIRS, and the rest."""
    groups: dict[tuple, list[Run]] = {}
    for run in runs:
        frame = run.predictions(name)
        if frame is not None and not frame["image"].duplicated().any():
            groups.setdefault(tuple(sorted(frame["image"])), []).append(run)
    ranked = []
    for a, b in itertools.chain.from_iterable(itertools.combinations(g, 2) for g in groups.values()):
        same_seed = a.seed is not None and a.seed == b.seed
        ranked.append(
            (
                0
                if same_seed and a.program != b.program
                else 1
                if same_seed and config_key(a) != config_key(b)
                else 2
                if a.program != b.program
                else 3,
                a,
                b,
            )
        )
    ranked.sort(key=lambda item: item[0])  # stable: run order within a rank
    return [(a, b) for _, a, b in ranked[:MAX_PAIRS]], max(0, len(ranked) - MAX_PAIRS)


def paired_comparison(a: Run, b: Run, name: str, n_resamples: int = 1000, seed: int = 0) -> dict:
    """paired_auroc_difference of ``a`` minus ``b`` on their predictions aligned by image (patients from ``a``)."""
    joined = a.predictions(name).merge(
        b.predictions(name)[["image", "label", "probability"]], on="image", suffixes=("_a", "_b")
    )
    if not (joined["label_a"] == joined["label_b"]).all():
        return {"run_a": a.name, "run_b": b.name, "error": "the labels differ"}
    return {
        "run_a": a.name,
        "run_b": b.name,
        **paired_auroc_difference(
            joined["label_a"],
            joined["probability_a"],
            joined["probability_b"],
            joined["patient"],
            n_resamples=n_resamples,
            seed=seed,
        ),
    }


def run_findings(run: Run, name: str) -> list[str]:
    """The findings a multi-label run was scored on (empty for a binary run)."""
    return list((run.metrics.get(name) or {}).get("findings") or {})


def multilabel_blocks(runs: list[Run], name: str, n_resamples: int = 1000, seed: int = 0) -> list[tuple]:
    """Multi-label runs: mean AUROC and AUROC per finding with CIs, and paired differences (mean and per finding)
    of multi-label runs scored on the same images."""
    from cxr.evaluation.multilabel import paired_multilabel_difference

    multi = [r for r in runs if run_findings(r, name)]
    if not multi:
        return []
    findings = [
        f
        for f in run_findings(multi[0], name)
        if any(get_dotted(r.metrics[name], f"findings.{f}.auroc.value") is not None for r in multi)
    ]
    rows = [
        [
            r.name,
            r.metrics[name].get("any_finding"),
            _with_ci(
                {
                    "auroc": get_dotted(r.metrics[name], "mean_auroc.value"),
                    "ci": {"auroc": r.metrics[name].get("mean_auroc") or {}},
                },
                "auroc",
            ),
            *(
                _with_ci(
                    {
                        "auroc": get_dotted(r.metrics[name], f"findings.{f}.auroc.value"),
                        "ci": {"auroc": get_dotted(r.metrics[name], f"findings.{f}.auroc") or {}},
                    },
                    "auroc",
                )
                for f in findings
            ),
        ]
        for r in multi
    ]
    blocks: list[tuple] = [
        ("h", 2, "Multi-label runs: AUROC per finding"),
        (
            "p",
            "Mean AUROC over the findings with both classes in the set, and AUROC per finding, with 95% patient-"
            "bootstrap CIs. In the tables above, a multi-label run is scored by its 'any finding' score (the rule "
            "in the second column: max = largest finding probability, noisy_or = 1 - prod(1 - p)), like a binary "
            "model, so it is paired with binary runs (e.g. program D) on the same images.",
        ),
        ("table", ["run", "any finding", "mean AUROC [95% CI]", *findings], rows),
    ]
    pairs, _ = candidate_pairs(multi, name)
    rows = []
    for a, b in pairs:
        joined = a.predictions(name).merge(b.predictions(name), on="image", suffixes=("_a", "_b"))
        common = [f for f in run_findings(a, name) if f in run_findings(b, name)]
        columns = [f"label_{f}" for f in common]
        if (
            not common
            or not (
                joined[[c + "_a" for c in columns]].to_numpy() == joined[[c + "_b" for c in columns]].to_numpy()
            ).all()
        ):
            continue
        result = paired_multilabel_difference(
            joined[[c + "_a" for c in columns]].to_numpy(),
            joined[[f"probability_{f}_a" for f in common]].to_numpy(),
            joined[[f"probability_{f}_b" for f in common]].to_numpy(),
            joined["patient_a"],
            common,
            n_resamples=n_resamples,
            seed=seed,
        )
        mean = result["mean_auroc"]  # one estimand: the same findings in the point estimate and every resample
        mean_label = (
            f"mean AUROC ({len(mean['findings'])} findings with >= {mean['min_positive_patients']} positive patients)"
        )
        for label, r in [(mean_label, mean), *result["findings"].items()]:
            rows.append(
                [
                    a.name,
                    b.name,
                    label,
                    _num(r["auroc_a"]),
                    _num(r["auroc_b"]),
                    f"{_num(r['difference'])} [{_num(r['ci_low'])}, {_num(r['ci_high'])}]",
                    r["p_value"],
                ]
            )
    rows = [[*row[:-1], _num(row[-1]), _num(adjusted)] for row, adjusted in zip(rows, holm([r[-1] for r in rows]))]
    if rows:
        blocks += [
            ("h", 2, "Paired multi-label differences (same images)"),
            (
                "p",
                f"AUROC A - AUROC B, mean over findings and per finding, {n_resamples} patient resamples "
                f"(seed {seed}) shared by both runs; p: two-sided bootstrap p-value of no difference; p (Holm): "
                f"adjusted for the {len(rows)} comparisons of this table (Holm's step-down, family-wise error).",
            ),
            (
                "table",
                ["run A", "run B", "finding", "AUROC A", "AUROC B", "difference [95% CI]", "p", "p (Holm)"],
                rows,
            ),
        ]
    return blocks


def compare(paths, out=None, set_name: str = "test", n_resamples: int = 1000, seed: int = 0) -> Report:
    """Write report.md, report.html and ROC overlays into ``out`` (default outputs/compare/<time> in the cwd)."""
    out = (
        Path(out)
        if out is not None
        else Path.cwd() / "outputs" / "compare" / datetime.now().strftime("%Y-%m-%d_%H-%M-%S-%f")
    )
    if (out / "report.md").exists():
        raise ReportError(f"{out} already holds a report (report.md): choose another --out")
    skipped: dict[Path, str] = {}
    runs = find_runs(paths, skipped)
    scored = [r for r in runs if r.metrics.get(set_name)]
    if not scored:
        raise ReportError(f"none of the {len(runs)} runs was evaluated on the set {set_name!r}")
    headers, rows = runs_table(scored, set_name)
    blocks: list[tuple] = [
        ("h", 1, f"Comparison of {len(runs)} runs on the {set_name} set"),
        ("p", HOW_TO_READ),
        ("h", 2, "Runs"),
        ("table", headers, rows),
        (
            "p",
            "channels, size train set (images), accuracy class 0 and accuracy class 1 "
            "are the columns of the thesis' Table 3.",
        ),
    ]
    if collapsed := [r.name for r in scored if 0 in (r.metrics[set_name].get(f"accuracy_class{c}") for c in (0, 1))]:
        blocks.append(("p", "One class only at threshold 0.5 (a class accuracy of 0%): " + ", ".join(collapsed)))
    if len(scored) < len(runs):
        blocks.append(("p", "Not evaluated on this set: " + ", ".join(r.name for r in runs if r not in scored)))
    if skipped:
        blocks += [
            ("h", 2, "Skipped directories"),
            ("p", "Directories that hold no finished run (no metrics.json), and why (paths relative to this report):"),
            ("table", ["directory", "reason"], [[os.path.relpath(d, out), why] for d, why in skipped.items()]),
        ]
    pairs, left_out = candidate_pairs(scored, set_name)
    results = [paired_comparison(a, b, set_name, n_resamples, seed) for a, b in pairs]
    for r, adjusted in zip(results, holm([r.get("p_value") for r in results])):
        r["p_holm"] = adjusted  # over all pairs of this table (the family a reader scans)
    rows = [
        [
            r["run_a"],
            r["run_b"],
            *(
                ["n/a", "n/a", r["error"], "n/a", "n/a", "n/a"]
                if "error" in r
                else [
                    _num(r["auroc_a"]),
                    _num(r["auroc_b"]),
                    f"{_num(r['difference'])} [{_num(r['ci_low'])}, {_num(r['ci_high'])}]",
                    _num(r["p_value"]),
                    _num(r["p_holm"]),
                    f"{r['n']} / {r['n_patients']}",
                ]
            ),
        ]
        for r in results
    ]
    blocks += [
        ("h", 2, "Paired AUROC differences (same images)"),
        (
            "p",
            (
                f"difference = AUROC A - AUROC B on the same images, {n_resamples} patient resamples (seed {seed}); p: "
                "two-sided bootstrap p-value of no difference; p (Holm): the same p adjusted for the "
                f"{len(rows)} comparisons of this table by Holm's step-down method (family-wise error rate), the one "
                "to read when several pairs are scanned."
            )
            if rows
            else "No two runs scored the same set of images.",
        ),
        (
            "table",
            ["run A", "run B", "AUROC A", "AUROC B", "difference [95% CI]", "p", "p (Holm)", "images / patients"],
            rows,
        ),
    ]
    if left_out:
        blocks.append(
            (
                "p",
                f"{left_out} further pairs were left out (at most {MAX_PAIRS}: seed-matched runs of "
                "different programs come first, then seed-matched runs of different configs).",
            )
        )
    blocks += multilabel_blocks(scored, set_name, n_resamples, seed)
    seed_summary, groups = summary_blocks(scored, set_name, config_key)  # cxr/evaluation/seeds.py
    blocks += seed_summary
    blocks += compare_blocks(scored, set_name)  # calibration, subgroup AUROC with CIs, gaps
    blocks += localisation_blocks(scored, set_name)

    from cxr.evaluation.external import datasets_table  # internal test, per-source and external sets, per run

    if side_by_side := datasets_table([(r.name, r.metrics) for r in runs]):
        blocks += [("h", 2, "Datasets side by side (AUROC [95% CI])"), ("table", *side_by_side)]
    blocks.append(("h", 2, "Figures"))
    out.mkdir(parents=True, exist_ok=True)
    for name in ("test", "external"):  # one ROC overlay per evaluated set
        curves = {r.name: (f["label"], f["probability"]) for r in runs if (f := r.predictions(name)) is not None}
        if curves:
            figure = save_figure(roc_overlay_figure(curves, title=f"ROC curves: {name}"), out / f"roc_{name}.png")
            blocks.append(("img", figure.name, figure.read_bytes(), f"ROC curves of all runs on the {name} set"))
    items = [
        (
            run.name,
            [("directory", os.path.relpath(run.path, out))]
            + [(f.stem, os.path.relpath(f, out)) for f in sorted(run.path.glob("*.png"))],
        )
        for run in runs
    ]
    blocks += [("p", "Each run's own figures (not copied; paths relative to this report):"), ("list", items)]
    blocks = [b for b in blocks if b[0] != "table" or b[2]]  # no empty tables
    write_text(out / "report.html", to_html(blocks, f"Comparison of {len(runs)} runs on the {set_name} set"))
    write_text(out / "report.md", to_markdown(blocks))  # last: its presence marks a finished report
    return Report(out, markdown_table(*runs_table(scored, set_name)), runs, results, left_out, groups, skipped)


def to_markdown(blocks: list[tuple]) -> str:
    render = {
        "h": lambda level, text: "#" * level + " " + text,
        "p": lambda text: text,
        "table": markdown_table,
        "img": lambda file, _png, alt: f"![{alt}]({file})",
        "list": lambda items: "\n".join(
            f"- {text}: " + ", ".join(f"[{label}](<{href}>)" for label, href in links) for text, links in items
        ),
    }
    return "\n\n".join(render[kind](*body) for kind, *body in blocks) + "\n"


_CSS = (
    "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid "
    "#bbb;padding:.2em .5em;text-align:left}th{background:#eee}img{max-width:40em}p{max-width:60em}"
)


def to_html(blocks: list[tuple], title: str) -> str:
    """Self-contained HTML: inline CSS, figures as base64 PNG, no scripts; run figures as relative links."""
    e = lambda value: html.escape(str(value))  # noqa: E731
    cells = lambda tag, row: "<tr>" + "".join(f"<{tag}>{e(_text(c))}</{tag}>" for c in row) + "</tr>"  # noqa: E731
    render = {
        "h": lambda level, text: f"<h{level}>{e(text)}</h{level}>",
        "p": lambda text: f"<p>{e(text)}</p>",
        "table": lambda headers, rows: (
            f"<table><thead>{cells('th', headers)}</thead><tbody>"
            + "".join(cells("td", r) for r in rows)
            + "</tbody></table>"
        ),
        "img": lambda file, png, alt: (
            f'<figure><img alt="{e(alt)}" src="data:image/png;base64,'
            + base64.b64encode(png).decode()
            + f'"><figcaption>{e(alt)}</figcaption>'
            + "</figure>"
        ),
        "list": lambda items: (
            "<ul>"
            + "".join(
                f"<li>{e(text)}: " + ", ".join(f'<a href="{e(href)}">{e(label)}</a>' for label, href in links) + "</li>"
                for text, links in items
            )
            + "</ul>"
        ),
    }
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{e(title)}</title>'
        f"<style>{_CSS}</style></head><body>\n"
        + "\n".join(render[k](*body) for k, *body in blocks)
        + "\n</body></html>\n"
    )
