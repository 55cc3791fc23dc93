"""k-fold cross-validation (``python train.py cv.folds=K``): one complete training run per fold in the run's
directory (``fold1/`` ... ``foldK/``: compare.py and evaluate.py read each), then ``cv_summary.json`` and a printed
table with each fold's test metrics and their mean, SD and Student-t interval over the folds."""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

from omegaconf import DictConfig, open_dict

from cxr.artifacts import write_json
from cxr.errors import ConfigError
from cxr.evaluation.seeds import LEVEL, METRICS, mean_sd_ci, t_interval
from cxr.jobs.train import train
from cxr.run_dir import run_name

log = logging.getLogger(__name__)


def fold_config(cfg: DictConfig, fold: int, parent: Path, name: str) -> DictConfig:
    """``cfg`` for fold ``fold``: its own run directory under ``parent`` and run name, and the k-fold split."""
    folded = copy.deepcopy(cfg)
    with open_dict(folded):
        folded.paths.output_dir = str(parent / f"fold{fold}")
        folded.run_name = f"{name}-fold{fold}"
        folded.data.split = {
            "method": "kfold",
            "folds": int(cfg.cv.folds),
            "fold": fold,
            "val": cfg.cv.val,
            "seed": cfg.data.split.get("seed", 100),  # the partition's seed: every fold of one run shares it
        }
    return folded


def cross_validate(cfg: DictConfig) -> dict:
    """Train fold 1..K in turn (a fold that already holds metrics.json is read, not trained again), then write and
    print the summary; returns it with ``validation.auroc_best`` as the mean over folds (what a search maximises)."""
    folds = cfg.cv.folds
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise ConfigError(f"cv.folds={folds!r}: give the number of folds, 2 or more (null: no cross-validation)")
    if cfg.get("ckpt_path") not in (None, "last"):
        raise ConfigError("cv.folds: a checkpoint cannot start every fold; resume a cross-validation with resume=")
    parent = Path(cfg.paths.output_dir)
    name = run_name(cfg)
    results = []
    for fold in range(1, folds + 1):
        folded = fold_config(cfg, fold, parent, name)
        done = parent / f"fold{fold}" / "metrics.json"
        if done.is_file():
            log.info("cross-validation: fold %d of %d already finished (%s)", fold, folds, done)
            results.append(json.loads(done.read_text()))
            continue
        with open_dict(folded):  # resume=: only the fold that was running has a last.ckpt
            has_last = (parent / f"fold{fold}" / "checkpoints" / "last.ckpt").is_file()
            folded.ckpt_path = "last" if cfg.get("ckpt_path") == "last" and has_last else None
        log.info("cross-validation: fold %d of %d -> %s", fold, folds, folded.paths.output_dir)
        results.append(train(folded))
    summary = summarise_folds(results, name, folds, cfg.cv.val, folded.data.split.seed)
    write_json(parent / "cv_summary.json", summary)
    print(fold_table(summary))
    log.info("cross-validation summary: %s", parent / "cv_summary.json")
    return summary


def summarise_folds(results: list[dict], name: str, folds: int, val, seed: int, set_name: str = "test") -> dict:
    """Per fold: test metrics, images, the scored epoch and the best validation AUROC; per metric: mean, SD and
    the t-interval over the folds."""
    rows = [
        {
            "fold": fold,
            "run_name": metrics.get("run_name"),
            "n": (metrics.get(set_name) or {}).get("n"),
            "checkpoint_epoch": metrics.get("checkpoint_epoch"),
            "val_auroc_best": (metrics.get("validation") or {}).get("auroc_best"),
            **{key: (metrics.get(set_name) or {}).get(key) for key in METRICS},
        }
        for fold, metrics in enumerate(results, start=1)
    ]
    return {
        "run_name": name,
        "folds": folds,
        "split": {"method": "kfold", "grouped_by": "patient", "stratified_by": "target", "val": val, "seed": seed},
        "set": set_name,
        "interval": f"{100 * LEVEL:.0f}% Student-t interval of the mean over folds (n - 1 degrees of freedom, clipped "
        "to [0, 1])",
        "per_fold": rows,
        "summary": {key: t_interval([r[key] for r in rows if r[key] is not None], bounds=(0, 1)) for key in METRICS},
        "validation": {
            "auroc_best": t_interval([r["val_auroc_best"] for r in rows if r["val_auroc_best"] is not None])["mean"]
        },
    }


def fold_table(summary: dict) -> str:
    """The summary as a Markdown table: one row per fold, then mean ± SD [t-interval]."""

    def num(value, percent=False):
        return "n/a" if value is None else f"{100 * value:.1f}%" if percent else f"{value:.3f}"

    lines = [
        f"cross-validation of {summary['run_name']}: {summary['folds']} folds (patient-grouped, stratified by label), "
        f"{summary['set']} set",
        "| fold | images | epoch scored | AUROC | balanced accuracy | accuracy class 0 | accuracy class 1 |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in summary["per_fold"]:
        cells = [r["fold"], r["n"], r["checkpoint_epoch"], num(r["auroc"])]
        cells += [num(r[key], True) for key in METRICS[1:]]
        lines.append("| " + " | ".join("n/a" if c is None else str(c) for c in cells) + " |")
    stats = summary["summary"]
    lines.append(
        f"| mean ± SD [{100 * LEVEL:.0f}% t-interval] | | | "
        + " | ".join([mean_sd_ci(stats["auroc"]), *(mean_sd_ci(stats[k], True) for k in METRICS[1:])])
        + " |"
    )
    return "\n".join(lines)
