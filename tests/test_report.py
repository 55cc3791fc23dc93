"""compare.py and cxr.evaluation.report: hand-made run directories with known numbers, then two real runs."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from cxr.evaluation import report as report_module
from cxr.evaluation.bootstrap import patient_bootstrap
from cxr.evaluation.metrics import binary_metrics
from cxr.evaluation.report import ReportError, compare, config_key, find_runs
from tests.conftest import REPO

# 60 test images of 30 patients (2 each); every third image has a finding: 20 class 1, 40 class 0 (majority 66.7%)
IMAGES = [f"{p:08d}_{i:03d}.png" for p in range(30) for i in range(2)]
PATIENTS = [p for p in range(30) for _ in range(2)]
LABELS = np.array([1 if k % 3 == 0 else 0 for k in range(60)])
MULTIRUN = "2026-01-01_00-00-00"
A1, A2, B1, EVAL = f"{MULTIRUN}/0", f"{MULTIRUN}/1", f"{MULTIRUN}/2", "evaluate_A"


def perfect() -> np.ndarray:
    return np.where(LABELS == 1, 0.9, 0.1)


def perfect_ranking_8_false_positives() -> np.ndarray:
    """AUROC 1, class 1 all right, 8 of the 40 class-0 images above 0.5: accuracy class 0 = 80%."""
    probabilities = perfect()
    probabilities[np.flatnonzero(LABELS == 0)[:8]] = 0.6
    return probabilities


def collapsed_random() -> np.ndarray:
    """Random scores below 0.5: every image predicted class 0 (accuracy = majority rate), AUROC about 0.5."""
    return np.random.default_rng(7).uniform(0.0, 0.49, size=len(LABELS))


def write_run(directory: Path, program: str, seed: int, probabilities, task: str = "train", channels: int = 3):
    directory.mkdir(parents=True)
    config = {
        "task_name": task,
        "seed": seed,
        "ckpt_path": "/somewhere/best.ckpt" if task == "evaluate" else None,
        "paths": {"output_dir": str(directory)},
        "program": {"name": program, "preprocessing": {"channels": channels, "pixel_divisor": 255}},
        "data": {"name": "demo", "split": {"method": "thesis", "seed": 100}, "batch_size": 10},
        "trainer": {"max_epochs": 5, "default_root_dir": str(directory)},
        "callbacks": {"model_checkpoint": {"dirpath": str(directory / "checkpoints")}},
    }
    OmegaConf.save(OmegaConf.create(config), directory / "config.yaml")
    test = binary_metrics(LABELS, probabilities)
    test["ci"] = patient_bootstrap(LABELS, probabilities, PATIENTS, n_resamples=50)
    test["operating_point"] = {"chosen_on": "youden on val", **binary_metrics(LABELS, probabilities, 0.3)}
    test["calibration"] = {"ece": 0.1, "n_bins": 10}
    half = np.arange(len(LABELS)) < 30
    test["subgroups"] = {
        "sex": {sex: binary_metrics(LABELS[mask], probabilities[mask]) for sex, mask in (("F", half), ("M", ~half))}
    }
    metrics = {
        "program": program,
        "data": "demo",
        "params": 6_811_969,
        "checkpoint": "checkpoints/best.ckpt",
        "epochs_trained": 5,
        "split": {
            "train": {"images": 3000, "patients": 1200, "class1_share": 0.46},
            "test": {"images": 60, "patients": 30, "class1_share": 0.33},
        },
        "test": test,
    }
    if task == "evaluate":
        metrics["preprocessing"] = {"channels": channels, "pixel_divisor": 255}
    (directory / "metrics.json").write_text(json.dumps(metrics))
    pd.DataFrame({"image": IMAGES, "patient": PATIENTS, "label": LABELS, "probability": probabilities}).to_csv(
        directory / "predictions_test.csv", index=False
    )
    (directory / "roc_pr_test.png").write_bytes(b"\x89PNG\r\n\x1a\n")  # referenced, never copied


@pytest.fixture
def fake_runs(tmp_path) -> Path:
    """A multirun (A seed 1 perfect, A seed 2 with 8 false positives, B seed 1 collapsed) and an evaluation of A1."""
    root = tmp_path / "runs"
    write_run(root / "multirun" / MULTIRUN / "0", "A", 1, perfect())
    write_run(root / "multirun" / MULTIRUN / "1", "A", 2, perfect_ranking_8_false_positives())
    write_run(root / "multirun" / MULTIRUN / "2", "B", 1, collapsed_random(), channels=1)
    write_run(root / "evaluate_A", "A", 12345, perfect(), task="evaluate")
    (root / "not_a_run").mkdir()
    (root / "not_a_run" / "metrics.json").write_text("{}")  # no config.yaml: ignored
    return root


def parse_table(markdown: str, first_header: str) -> list[dict]:
    """The rows of the first Markdown table whose header starts with ``| first_header |``, as dicts."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    split = lambda line: [cell.strip() for cell in line.strip().strip("|").split(" | ")]  # noqa: E731
    headers, rows = split(lines[start]), []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append(dict(zip(headers, split(line))))
    return rows


def pair(report, a: str, b: str) -> dict:
    return next(p for p in report.pairs if {p["run_a"], p["run_b"]} == {a, b})


def test_finds_runs_recursively_with_short_names_and_kinds(fake_runs):
    runs = {run.name: run for run in find_runs([fake_runs])}
    assert set(runs) == {A1, A2, B1, EVAL}
    assert runs[EVAL].kind == "evaluate" and runs[EVAL].seed is None and runs[A1].kind == "train"
    assert config_key(runs[A1]) == config_key(runs[A2]) != config_key(runs[B1])  # paths and seed left out
    assert [r.name for r in find_runs([fake_runs / "evaluate_A", fake_runs])][0] == EVAL  # each run once
    assert len(find_runs([fake_runs / "evaluate_A", fake_runs])) == 4


def test_runs_table_has_the_thesis_table_3_columns_and_the_majority_rate(fake_runs, tmp_path):
    report = compare([fake_runs], out=tmp_path / "report", n_resamples=200)
    rows = {row["run"]: row for row in parse_table((report.directory / "report.md").read_text(), "run")}
    assert rows == {row["run"]: row for row in parse_table(report.table, "run")}  # printed == written
    assert set(rows) == {A1, A2, B1, EVAL}
    for column in ("channels", "size train set", "accuracy class 0", "accuracy class 1"):  # thesis Table 3
        assert column in rows[A1]
    a1, a2, b1, ev = rows[A1], rows[A2], rows[B1], rows[EVAL]
    assert (a1["program"], a1["seed"], a1["channels"], a1["size train set"], a1["test n"]) == (
        "A",
        "1",
        "3",
        "3000",
        "60",
    )
    assert (a1["accuracy"], a1["accuracy class 0"], a1["accuracy class 1"]) == ("100.0%", "100.0%", "100.0%")
    assert (a2["accuracy class 0"], a2["accuracy class 1"], a2["accuracy"]) == ("80.0%", "100.0%", "86.7%")
    assert a1["AUROC [95% CI]"] == "1.000 [1.000, 1.000]" and a2["balanced accuracy [95% CI]"].startswith("90.0% [")
    assert (b1["program"], b1["channels"], b1["accuracy"], b1["majority class"]) == ("B", "1", "66.7%", "66.7%")
    assert (b1["accuracy class 0"], b1["accuracy class 1"]) == ("100.0%", "0.0%")
    assert (ev["kind"], ev["seed"], a1["kind"]) == ("evaluate", "-", "train")
    assert a2["operating point: class 0 / class 1 (threshold)"] == "80.0% / 100.0% (0.300)"
    markdown = (report.directory / "report.md").read_text()
    assert "How to read this report" in markdown and "AUROC 0.5 is chance" in markdown
    assert f"One class only at threshold 0.5 (a class accuracy of 0%): {B1}" in markdown


def test_paired_differences_find_the_better_model_and_zero_for_identical_predictions(fake_runs, tmp_path):
    report = compare([fake_runs], out=tmp_path / "report", n_resamples=200)
    assert len(report.pairs) == 6 and report.pairs_left_out == 0  # 4 runs on the same 60 images
    a_vs_b = pair(report, A1, B1)
    assert (a_vs_b["run_a"], a_vs_b["run_b"]) == (A1, B1) and a_vs_b["auroc_a"] == 1.0
    assert a_vs_b["difference"] == pytest.approx(1.0 - a_vs_b["auroc_b"]) and a_vs_b["ci_low"] > 0
    assert (a_vs_b["n"], a_vs_b["n_patients"], a_vs_b["n_resamples"]) == (60, 30, 200)
    for other in (A2, EVAL):  # the same ranking: AUROC 1 on every resample
        same = pair(report, A1, other)
        assert (same["difference"], same["ci_low"], same["ci_high"]) == (0.0, 0.0, 0.0)
    rows = parse_table((report.directory / "report.md").read_text(), "run A")
    row = next(r for r in rows if (r["run A"], r["run B"]) == (A1, B1))
    assert row["difference [95% CI]"].startswith(f"{a_vs_b['difference']:.3f} [")
    assert row["images / patients"] == "60 / 30"
    assert any(r["difference [95% CI]"] == "0.000 [0.000, 0.000]" and EVAL in (r["run A"], r["run B"]) for r in rows)


def test_pairs_are_bounded_and_seed_matched_programs_come_first(fake_runs, tmp_path, monkeypatch):
    monkeypatch.setattr(report_module, "MAX_PAIRS", 2)
    report = compare([fake_runs], out=tmp_path / "report", n_resamples=20)
    assert len(report.pairs) == 2 and report.pairs_left_out == 4
    assert (report.pairs[0]["run_a"], report.pairs[0]["run_b"]) == (A1, B1)
    assert "4 further pairs were left out" in (report.directory / "report.md").read_text()


def test_seed_summary_gives_mean_and_sd_of_runs_that_differ_only_in_seed(fake_runs, tmp_path):
    report = compare([fake_runs], out=tmp_path / "report", n_resamples=20)
    assert len(report.seed_groups) == 1  # B has one seed; the evaluation is no training run
    group = report.seed_groups[0]
    assert group["runs"] == [A1, A2] and group["seeds"] == [1, 2] and group["n_runs"] == 2
    assert (group["auroc"]["mean"], group["auroc"]["sd"]) == (1.0, 0.0)
    assert group["accuracy_class0"]["mean"] == pytest.approx(0.9)
    assert group["accuracy_class0"]["sd"] == pytest.approx(statistics.stdev([1.0, 0.8]))  # 0.1414
    assert group["balanced_accuracy"]["mean"] == pytest.approx(0.95)
    assert group["balanced_accuracy"]["sd"] == pytest.approx(statistics.stdev([1.0, 0.9]))  # 0.0707
    row = parse_table((report.directory / "report.md").read_text(), "configuration")[0]
    assert (row["n runs"], row["repeats"], row["AUROC"]) == ("2", "1, 2", "1.000 ± 0.000 [1.000, 1.000]")
    assert row["accuracy class 0"].startswith("90.0 ± 14.1 [")  # t-interval, 1 degree of freedom: clipped to [0, 1]


def test_subgroups_figures_and_a_self_contained_html(fake_runs, tmp_path):
    report = compare([fake_runs], out=tmp_path / "report", n_resamples=20)
    markdown = (report.directory / "report.md").read_text()
    assert "## Subgroup AUROC (test)" in markdown and "| sex | F | 30 |" in markdown
    assert "![ROC curves of all runs on the test set](roc_test.png)" in markdown
    assert (report.directory / "roc_test.png").stat().st_size > 1000
    reference = os.path.relpath(fake_runs / "multirun" / MULTIRUN / "0" / "roc_pr_test.png", report.directory)
    assert f"[roc_pr_test](<{reference}>)" in markdown and not (report.directory / "roc_pr_test.png").exists()
    page = (report.directory / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "data:image/png;base64," in page
    assert 'src="http' not in page and "<script" not in page and "<link" not in page
    assert "<table>" in page and "How to read this report" in page


def test_a_report_is_never_overwritten(fake_runs, tmp_path):
    compare([fake_runs], out=tmp_path / "report", n_resamples=20)
    before = (tmp_path / "report" / "report.md").read_bytes()
    with pytest.raises(ReportError, match="already holds a report"):
        compare([fake_runs], out=tmp_path / "report", n_resamples=20)
    assert (tmp_path / "report" / "report.md").read_bytes() == before
    with pytest.raises(ReportError, match="holds no finished run"):
        compare([tmp_path / "report"], out=tmp_path / "other")
    with pytest.raises(ReportError, match="evaluated on the set 'external'"):
        compare([fake_runs], out=tmp_path / "other", set_name="external")
    assert not (tmp_path / "other").exists()


def test_compare_lists_the_directories_it_skipped_and_why(fake_runs, tmp_path, capsys):
    from cxr.cli import compare_main

    failed = fake_runs / "multirun" / MULTIRUN / "3"  # a sweep job that failed its data check (train.py marks it)
    (failed / ".hydra").mkdir(parents=True)
    (failed / "run.json").write_text(json.dumps({"status": "failed", "failure": {"reason": "data.root is not set"}}))
    killed = fake_runs / "multirun" / MULTIRUN / "4"
    (killed / "checkpoints").mkdir(parents=True)
    (killed / ".hydra").mkdir()
    (killed / "checkpoints" / "last.ckpt").write_bytes(b"")
    predicted = fake_runs / "predict_run"
    (predicted / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create({"task_name": "predict"}), predicted / ".hydra" / "config.yaml")
    assert compare_main([str(fake_runs), "--out", str(tmp_path / "report"), "--n-resamples", "20"]) == 0
    printed = capsys.readouterr().out
    written = (tmp_path / "report" / "report.md").read_text()
    assert "skipped 3 directories without a finished run:" in printed and "## Skipped directories" in written
    for directory, reason in (
        (failed, "failed: data.root is not set"),
        (killed, f"unfinished: no metrics.json (killed or still running?); resume: python train.py resume={killed}"),
        (predicted, "a predict run, not a training or evaluation run"),
    ):
        assert f"  {directory}: {reason}" in printed.splitlines()
        assert f"| {os.path.relpath(directory, tmp_path / 'report')} | {reason} |" in written
    assert "Comparison of 4 runs" in written  # the skipped directories are not runs


def run_compare(*args) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "compare.py", *map(str, args)], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )


def test_compare_script(fake_runs, tmp_path):
    result = run_compare(
        fake_runs / "multirun", fake_runs / "evaluate_A", "--out", tmp_path / "report", "--n-resamples", 50, "--seed", 3
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("| run | kind | program |") and f"| {B1} |" in result.stdout
    assert (tmp_path / "report" / "report.html").is_file() and "50 patient resamples (seed 3)" in (
        tmp_path / "report" / "report.md"
    ).read_text()

    missing = run_compare(tmp_path / "nowhere", "--out", tmp_path / "report2")
    assert missing.returncode == 2 and missing.stdout == ""
    assert missing.stderr.strip() == f"compare.py: error: {tmp_path / 'nowhere'}: no such file or directory"
    empty = run_compare(tmp_path / "report", "--out", tmp_path / "report2")
    assert empty.returncode == 2 and "holds no finished run" in empty.stderr
    assert len(empty.stderr.strip().splitlines()) == 1
    again = run_compare(fake_runs, "--out", tmp_path / "report", "--n-resamples", 20)
    assert again.returncode == 2 and "already holds a report" in again.stderr


@pytest.mark.slow
def test_report_on_two_real_runs(make_cfg, tmp_path):
    """Programs A and B trained for one epoch on the demo data score the same test images: one paired comparison."""
    from cxr.jobs.train import train

    run_dirs = []
    for program in ("A", "B"):
        cfg = make_cfg(
            [
                f"program={program}",
                "trainer.max_epochs=1",
                "callbacks.early_stopping=null",
                "evaluation.bootstrap.n_resamples=50",
            ]
        )
        train(cfg)
        run_dirs.append(Path(cfg.paths.output_dir))
    report = compare(run_dirs, out=tmp_path / "report", n_resamples=200)
    names = [run.name for run in report.runs]
    assert names == ["A", "B"] and {run.program for run in report.runs} == {"A", "B"}  # their run names
    assert len(report.pairs) == 1 and {report.pairs[0]["run_a"], report.pairs[0]["run_b"]} == set(names)
    n_test = report.runs[0].metrics["test"]["n"]
    assert report.pairs[0]["n"] == n_test == report.runs[1].metrics["test"]["n"]
    markdown = (report.directory / "report.md").read_text()
    rows = parse_table(markdown, "run A")
    assert len(rows) == 1 and rows[0]["images / patients"].startswith(f"{n_test} / ")
    table = {row["run"]: row for row in parse_table(markdown, "run")}
    assert table[names[0]]["channels"] == "3" and table[names[1]]["channels"] == "1"
    assert (report.directory / "report.html").is_file() and (report.directory / "roc_test.png").is_file()


@pytest.mark.slow
def test_a_sweep_of_programs_is_compared_under_their_names(tmp_path, demo_root):
    """python train.py -m program=C,D: each job's directory, run.json, metrics.json and model card carry its name
    (the swept value), and compare.py's table (and so its ROC legend, drawn from the same names) shows C and D."""
    from tests.conftest import DEMO_OVERRIDES

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    trained = subprocess.run(
        [
            sys.executable,
            str(REPO / "train.py"),
            "-m",
            "program=C,D",
            "debug=fdr",
            *DEMO_OVERRIDES(demo_root),
        ],
        cwd=tmp_path,  # as the docs write it: the default sweep directory under the working directory's outputs/
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert trained.returncode == 0, trained.stderr[-3000:]
    (sweep_dir,) = (tmp_path / "outputs" / "train" / "multiruns").iterdir()
    assert sorted(d.name for d in sweep_dir.iterdir() if d.is_dir()) == ["0_C", "1_D"]
    for run, name in ((sweep_dir / "0_C", "C"), (sweep_dir / "1_D", "D")):
        assert json.loads((run / "run.json").read_text())["run_name"] == name
        assert json.loads((run / "metrics.json").read_text())["run_name"] == name
        assert OmegaConf.load(run / "config.yaml").run_name == name
        assert (run / "model_card.md").read_text().startswith(f"# Model card: {name} (program {name} on demo")

    result = run_compare(sweep_dir, "--out", tmp_path / "report", "--n-resamples", 20)
    assert result.returncode == 0, result.stderr[-3000:]
    table = {row["run"]: row for row in parse_table((tmp_path / "report" / "report.md").read_text(), "run")}
    assert {name: row["program"] for name, row in table.items()} == {"C": "C", "D": "D"}
    assert "| C | train | C |" in result.stdout and "| D | train | D |" in result.stdout
