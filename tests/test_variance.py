"""Variance a reader must see: seed and fold summaries with t-intervals, configurations compared on their means,
k-fold cross-validation on the demo data, and checkpoint selection on a smoothed validation curve."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score

from cxr.data.splits import SplitError, kfold_split, make_split
from cxr.evaluation.report import compare
from cxr.evaluation.seeds import t_interval
from cxr.jobs.cv import cross_validate
from cxr.jobs.train import train
from tests.test_report import LABELS, parse_table, perfect, write_run


def test_t_interval_is_the_student_t_interval_of_the_mean():
    values = [0.61, 0.55, 0.67, 0.58, 0.64]
    result = t_interval(values)
    low, high = stats.t.interval(0.95, 4, loc=np.mean(values), scale=stats.sem(values))
    assert result["mean"] == pytest.approx(np.mean(values)) and result["sd"] == pytest.approx(np.std(values, ddof=1))
    assert (result["ci_low"], result["ci_high"]) == (pytest.approx(low), pytest.approx(high))
    assert t_interval([0.7])["ci_low"] is None  # one run: no spread


def noisy(seed: int, swaps: int) -> np.ndarray:
    """perfect() with ``swaps`` class-0 images raised above some class-1 images: AUROC below 1."""
    probabilities = perfect().copy()
    rng = np.random.default_rng(seed)
    probabilities[rng.choice(np.flatnonzero(LABELS == 0), swaps, replace=False)] = 0.95
    return probabilities


def test_compare_gives_seed_means_with_t_intervals_and_compares_configurations_paired_by_seed(tmp_path):
    sweep = tmp_path / "multirun"
    scores = {("C", s): noisy(s, 4 + 3 * s) for s in (1, 2, 3)} | {("D", s): noisy(10 + s, s * s) for s in (1, 2, 3)}
    for n, ((program, seed), probabilities) in enumerate(scores.items()):
        write_run(sweep / str(n), program, seed, probabilities)
    auroc = {key: roc_auc_score(LABELS, p) for key, p in scores.items()}
    report = compare([sweep], out=tmp_path / "report", n_resamples=20)
    groups = {g["program"]: g for g in report.seed_groups}
    assert set(groups) == {"C", "D"} and groups["D"]["over"] == "seed" and groups["D"]["repeats"] == [1, 2, 3]
    expected = t_interval([auroc["D", s] for s in (1, 2, 3)], bounds=(0, 1))
    assert groups["D"]["auroc"] == pytest.approx(expected)
    markdown = (report.directory / "report.md").read_text()
    row = next(r for r in parse_table(markdown, "configuration") if r["program"] == "D")
    assert (
        row["AUROC"]
        == f"{expected['mean']:.3f} ± {expected['sd']:.3f} [{expected['ci_low']:.3f}, {expected['ci_high']:.3f}]"
    )
    comparison = parse_table(markdown, "A")[0]
    differences = [auroc["C", s] - auroc["D", s] for s in (1, 2, 3)]
    paired = t_interval(differences)
    assert (comparison["A"], comparison["B"]) == (groups["C"]["label"], groups["D"]["label"])
    assert (comparison["paired"], comparison["n"]) == ("yes", "3")
    assert comparison["difference [CI]"] == f"{paired['mean']:.3f} [{paired['ci_low']:.3f}, {paired['ci_high']:.3f}]"
    p = stats.ttest_rel([auroc["C", s] for s in (1, 2, 3)], [auroc["D", s] for s in (1, 2, 3)]).pvalue
    assert comparison["p"] == comparison["p (Holm)"] == f"{p:.3f}"  # one comparison: Holm changes nothing


def test_unmatched_seeds_are_compared_unpaired_with_welch(tmp_path):
    sweep = tmp_path / "multirun"
    for n, (program, seed) in enumerate([("C", 1), ("C", 2), ("D", 3), ("D", 4), ("D", 5)]):
        write_run(sweep / str(n), program, seed, noisy(seed, 2 * seed))
    report = compare([sweep], out=tmp_path / "report", n_resamples=20)
    row = parse_table((report.directory / "report.md").read_text(), "A")[0]
    assert row["paired"] == "no" and row["n"] == "2 / 3"


def table(n_patients: int = 60, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 5, n_patients)
    patients = np.repeat(np.arange(n_patients), sizes)
    target = np.repeat(rng.integers(0, 2, n_patients), sizes)
    return pd.DataFrame({"image": [f"{i}.png" for i in range(len(patients))], "patient_id": patients, "target": target})


def test_kfold_splits_partition_whole_patients_stratified_by_label():
    data = table()
    splits = [
        make_split(data, "kfold", folds=5, fold=k, val=0.1, seed=100, train=3000, scale=True) for k in range(1, 6)
    ]
    tested = pd.concat([data.loc[s == "test", "image"] for s in splits])
    assert sorted(tested) == sorted(data["image"])  # every image is tested exactly once
    for split in splits:
        in_sets = data.assign(split=split).groupby("patient_id")["split"].nunique()
        assert (in_sets == 1).all()  # a patient's images stay in one set
        assert (split == "val").sum() == pytest.approx(0.1 * (split != "test").sum(), abs=4)
        share = data.loc[split == "test", "target"].mean()
        assert abs(share - data["target"].mean()) < 0.15  # stratified: each fold near the overall share
    with pytest.raises(SplitError, match="fold=6"):
        kfold_split(data, folds=5, fold=6)


def test_cross_validation_on_the_demo_data_writes_folds_a_summary_and_compares(make_cfg, tmp_path, capsys):
    cfg = make_cfg(["cv.folds=3", "debug=fdr"])
    summary = cross_validate(cfg)
    parent = Path(cfg.paths.output_dir)
    saved = json.loads((parent / "cv_summary.json").read_text())
    assert saved["folds"] == 3 and [r["fold"] for r in saved["per_fold"]] == [1, 2, 3]
    assert saved["summary"]["auroc"] == pytest.approx(t_interval([r["auroc"] for r in summary["per_fold"]]))
    assert "mean ± SD" in capsys.readouterr().out
    tests = [pd.read_csv(parent / f"fold{k}" / "splits.csv").query("split == 'test'") for k in (1, 2, 3)]
    assert sum(map(len, tests)) == len(pd.read_csv(parent / "fold1" / "splits.csv"))  # folds tile the data
    assert not set(tests[0]["patient"]) & set(tests[1]["patient"])
    assert cross_validate(cfg)["per_fold"] == summary["per_fold"]  # again: finished folds are read, not retrained
    report = compare([parent], out=tmp_path / "report", n_resamples=20)
    assert not report.skipped  # the parent is a cross-validation, not a broken run
    (group,) = report.seed_groups
    assert group["over"] == "fold" and group["repeats"] == [1, 2, 3] and group["n_runs"] == 3


def test_selection_on_the_smoothed_curve_from_min_epochs(make_cfg):
    cfg = make_cfg(["program=D", "trainer.max_epochs=3", "program.training.selection.min_epochs=2", "logger=csv"])
    metrics = train(cfg)
    history = pd.read_csv(Path(cfg.paths.output_dir) / "history.csv")
    ema, expected = None, []
    for value in history["val/auroc"]:
        ema = value if ema is None else 0.4 * value + 0.6 * ema
        expected.append(ema)
    assert history["val/auroc_ema"].tolist() == pytest.approx(expected)
    eligible = history[history["epoch"] >= 2]
    assert metrics["checkpoint_epoch"] == int(eligible.loc[eligible["val/auroc_ema"].idxmax(), "epoch"])
    assert metrics["checkpoint_choice"] == "best by val/auroc_ema from epoch 2 on"
