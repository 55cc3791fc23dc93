"""Variation over repeats: training runs identical but for the seed (or the cross-validation fold) summarised by
their mean, sample SD and a Student-t interval over the repeats, and configurations compared on those means
(paired by seed or fold where both have the same ones). One run says little on small data: compare.py shows this
beside the per-run bootstrap CIs, which only cover the test sample, not the training randomness."""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Callable
from dataclasses import replace

from scipy import stats

from cxr.evaluation.multiple_testing import holm

METRICS = ("auroc", "balanced_accuracy", "accuracy_class0", "accuracy_class1")
LEVEL = 0.95


def t_interval(values: list[float], level: float = LEVEL, bounds: tuple[float, float] | None = None) -> dict:
    """Mean, sample SD and the two-sided Student-t interval of the mean (n - 1 degrees of freedom): the values are
    treated as independent draws of the training randomness (seeds) or of the data (folds); None below n = 2.
    ``bounds``: the metric's range, which the interval is clipped to (AUROC and accuracies: 0 and 1)."""
    n = len(values)
    mean = float(sum(values) / n) if n else None
    if n < 2:
        return {"n": n, "mean": mean, "sd": None, "ci_low": None, "ci_high": None, "level": level}
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = float(stats.t.ppf((1 + level) / 2, n - 1)) * sd / math.sqrt(n)
    low, high = mean - half, mean + half
    if bounds is not None:
        low, high = max(low, bounds[0]), min(high, bounds[1])
    return {"n": n, "mean": mean, "sd": sd, "ci_low": low, "ci_high": high, "level": level}


def repeat_of(run) -> tuple[str, int | None]:
    """What varies between repeats of a run: ("fold", k) for a cross-validation fold, else ("seed", seed)."""
    split = (run.config.get("data") or {}).get("split") or {}
    if split.get("method") == "kfold":
        return "fold", split.get("fold")
    return "seed", run.seed


def _without_repeat(run):
    """The run with its seed and fold left out of the config, so repeats share a config key."""
    config = {k: v for k, v in run.config.items() if k != "seed"}
    data = dict(config.get("data") or {})
    if isinstance(data.get("split"), dict):
        data["split"] = {k: v for k, v in data["split"].items() if k != "fold"}
    return replace(run, config={**config, "data": data}, _predictions=run._predictions)


def _label(names: list[str]) -> str:
    """The runs' common name without its seed/fold part: D-seed1, D-seed2 -> D."""
    stripped = {re.sub(r"(^|-)(seed|fold)-?\d+(?=-|$)", "", n).strip("-") for n in names}
    return stripped.pop() if len(stripped) == 1 and "" not in stripped else names[0]


def repeat_groups(runs: list, name: str, config_key: Callable) -> list[dict]:
    """Training runs whose configs differ only in seed or fold (two or more): the values per repeat and, per
    metric, ``t_interval`` of them."""
    groups: dict[tuple, list] = {}
    for run in (r for r in runs if r.kind == "train" and r.metrics.get(name)):
        over, _ = repeat_of(run)
        groups.setdefault((over, config_key(_without_repeat(run))), []).append(run)
    result = []
    for (over, _), members in groups.items():
        if len(members) < 2:
            continue
        row = {
            "label": _label([r.name for r in members]),
            "program": members[0].program,
            "over": over,
            "runs": [r.name for r in members],
            "repeats": [repeat_of(r)[1] for r in members],
            "seeds": [r.seed for r in members],
            "n_runs": len(members),
            "test_images": [frozenset(f["image"]) if (f := r.predictions(name)) is not None else None for r in members],
            "values": {},
        }
        for key in METRICS:
            pairs = [(repeat_of(r)[1], v) for r in members if (v := r.metrics[name].get(key)) is not None]
            row["values"][key] = dict(pairs)
            row[key] = t_interval([v for _, v in pairs], bounds=(0.0, 1.0))
        result.append(row)
    return result


def compare_groups(groups: list[dict], metric: str = "auroc", level: float = LEVEL) -> list[dict]:
    """Each two groups repeated over the same kind (seeds or folds): difference of their means. Paired (mean of the
    per-repeat differences, t-interval, paired t-test) when both have the same repeats and, per repeat, the same
    test images; otherwise Welch's t-interval and test."""
    results = []
    for a, b in itertools.combinations(groups, 2):
        if a["over"] != b["over"]:
            continue
        va, vb = a["values"][metric], b["values"][metric]
        same_images = {r: i for r, i in zip(a["repeats"], a["test_images"])} == {
            r: i for r, i in zip(b["repeats"], b["test_images"])
        }
        paired = set(va) == set(vb) and len(va) >= 2 and same_images
        row = {"group_a": a["label"], "group_b": b["label"], "metric": metric, "over": a["over"], "paired": paired}
        if paired:
            keys = sorted(va)
            differences = [va[k] - vb[k] for k in keys]
            interval = t_interval(differences, level)
            if interval["sd"]:
                p = stats.ttest_rel([va[k] for k in keys], [vb[k] for k in keys]).pvalue
            else:  # the same difference in every repeat: none (p = 1) or one without spread (p = 0)
                p = 1.0 if interval["mean"] == 0 else 0.0
            row.update(difference=interval["mean"], ci_low=interval["ci_low"], ci_high=interval["ci_high"], n=len(keys))
        else:
            xa, xb = list(va.values()), list(vb.values())
            if len(xa) < 2 or len(xb) < 2:
                continue
            welch = stats.ttest_ind(xa, xb, equal_var=False)
            ci = welch.confidence_interval(level) if hasattr(welch, "confidence_interval") else None
            difference = sum(xa) / len(xa) - sum(xb) / len(xb)
            p = welch.pvalue
            row.update(
                difference=difference,
                ci_low=None if ci is None else float(ci.low),
                ci_high=None if ci is None else float(ci.high),
                n=f"{len(xa)} / {len(xb)}",
            )
        row["p_value"] = None if p is None or math.isnan(p) else float(p)
        results.append(row)
    for row, adjusted in zip(results, holm([r["p_value"] for r in results])):
        row["p_holm"] = adjusted  # the family: every comparison of this table
    return results


def _num(value, percent: bool = False) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}" if percent else f"{value:.3f}"


def mean_sd_ci(stat: dict, percent: bool = False) -> str:
    """'0.612 ± 0.031 [0.574, 0.650]' (with ``percent``: in %)."""
    if stat["mean"] is None:
        return "n/a"
    text = f"{_num(stat['mean'], percent)} ± {_num(stat['sd'], percent)}"
    if stat["ci_low"] is not None:
        text += f" [{_num(stat['ci_low'], percent)}, {_num(stat['ci_high'], percent)}]"
    return text + ("%" if percent else "")


def summary_blocks(runs: list, name: str, config_key: Callable, level: float = LEVEL) -> tuple[list[tuple], list]:
    """compare.py's "Seeds and folds" section (report blocks) and the groups it shows."""
    groups = repeat_groups(runs, name, config_key)
    rows = [
        [
            g["label"],
            g["program"],
            g["over"],
            g["n_runs"],
            ", ".join(map(str, g["repeats"])),
            ", ".join(_num(g["values"]["auroc"].get(r)) for r in g["repeats"]),
            mean_sd_ci(g["auroc"]),
            *(mean_sd_ci(g[k], True) for k in METRICS[1:]),
        ]
        for g in groups
    ]
    blocks: list[tuple] = [
        ("h", 2, "Seed and fold summary (runs identical except the seed or the cross-validation fold)"),
        (
            "p",
            f"mean ± sample SD [{100 * level:.0f}% Student-t interval over the repeats, n - 1 degrees of freedom, "
            "clipped to [0, 1]] of "
            "each run's metric on this set. This spread is the training randomness (seeds) or the data (folds), "
            "which the per-run bootstrap CIs above do not include. With few repeats the interval is wide: 5 seeds "
            "give t = 2.78."
            if rows
            else "No two training runs share a config apart from the seed or the fold.",
        ),
        (
            "table",
            [
                "configuration",
                "program",
                "over",
                "n runs",
                "repeats",
                "AUROC per repeat",
                "AUROC",
                "balanced accuracy",
                "accuracy class 0",
                "accuracy class 1",
            ],
            rows,
        ),
    ]
    comparisons = compare_groups(groups, "auroc", level)
    if comparisons:
        blocks += [
            ("h", 2, "Configurations compared on their mean AUROC over repeats"),
            (
                "p",
                f"difference = mean AUROC A - mean AUROC B [{100 * level:.0f}% CI]. Paired: both have the same seeds "
                "(or folds on the same images); the mean of the per-repeat differences with its t-interval and a "
                "paired t-test. Unpaired: Welch's t-interval and test. p (Holm): the p-values of this table adjusted together "
                "by Holm's step-down method.",
            ),
            (
                "table",
                ["A", "B", "over", "paired", "n", "difference [CI]", "p", "p (Holm)"],
                [
                    [
                        c["group_a"],
                        c["group_b"],
                        c["over"],
                        "yes" if c["paired"] else "no",
                        c["n"],
                        f"{_num(c['difference'])} [{_num(c['ci_low'])}, {_num(c['ci_high'])}]",
                        _num(c["p_value"]),
                        _num(c["p_holm"]),
                    ]
                    for c in comparisons
                ],
            ),
        ]
    for g in groups:
        g.pop("test_images")  # sets of images: for the pairing only
    return blocks, groups


def seed_table(groups: list[dict]) -> str:
    """The groups as the short Markdown table compare.py prints."""
    lines = ["| configuration | over | n | AUROC mean ± SD [95% t-interval] |", "|---|---|---|---|"]
    lines += [f"| {g['label']} | {g['over']} | {g['n_runs']} | {mean_sd_ci(g['auroc'])} |" for g in groups]
    return "\n".join(lines)
