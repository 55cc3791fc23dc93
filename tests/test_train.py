"""End-to-end: train.py's job in-process with fast_dev_run, a multirun in a subprocess, evaluate.py round trip."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from cxr.jobs.evaluate import evaluate
from cxr.jobs.train import train
from cxr.run_dir import RunDirectoryError, failure_recorded, prepare_run_directory
from tests.conftest import DEMO_OVERRIDES, REPO

EVAL_SET_KEYS = {
    "n",
    "n_class0",
    "n_class1",
    "threshold",
    "accuracy",
    "accuracy_class0",
    "accuracy_class1",
    "balanced_accuracy",
    "auroc",
    "confusion_matrix",
}


def check_run_directory(output_dir: Path, sets=("test",)) -> dict:
    metrics = json.loads((output_dir / "metrics.json").read_text())
    for key in ("program", "params", "checkpoint", "epochs_trained"):
        assert key in metrics
    for name in sets:
        assert EVAL_SET_KEYS <= metrics[name].keys()
        (tn, fp), (fn, tp) = metrics[name]["confusion_matrix"]
        assert tn + fp + fn + tp == metrics[name]["n"] == metrics[name]["n_class0"] + metrics[name]["n_class1"]
        predictions = pd.read_csv(output_dir / f"predictions_{name}.csv")
        assert list(predictions.columns) == ["image", "patient", "label", "probability"]
        assert len(predictions) == metrics[name]["n"] and predictions["probability"].between(0, 1).all()
        for suffix in ("", "_normalized"):
            assert (output_dir / f"confusion_matrix_{name}{suffix}.png").stat().st_size > 0
    splits = pd.read_csv(output_dir / "splits.csv")
    assert list(splits.columns) == ["image", "patient", "split"]
    assert (output_dir / "config.yaml").is_file() and (output_dir / "run.json").is_file()
    return metrics


@pytest.mark.parametrize("program, channels, params", [("A", 3, 6_811_969), ("B", 1, 6_811_393), ("C", 3, 6_811_969)])
def test_fast_dev_run_of_each_program(make_cfg, program, channels, params):
    cfg = make_cfg([f"program={program}", "debug=fdr"])
    metrics = train(cfg)
    output_dir = Path(cfg.paths.output_dir)
    saved = check_run_directory(output_dir)
    assert saved["program"] == program and saved["params"] == params and saved["checkpoint"] is None
    assert metrics["test"]["n"] == saved["split"]["test"]["images"] > 0
    assert (output_dir / "training_curves.png").is_file()


def test_a_finished_run_directory_is_never_reused(make_cfg):
    cfg = make_cfg(["debug=fdr"])
    train(cfg)
    before = (Path(cfg.paths.output_dir) / "metrics.json").read_bytes()
    with pytest.raises(RunDirectoryError, match="already holds a finished run"):
        train(cfg)
    assert (Path(cfg.paths.output_dir) / "metrics.json").read_bytes() == before


def test_a_failed_run_is_marked_in_run_json_until_a_resume(make_cfg):
    """failure_recorded (train.py and evaluate.py's jobs run inside it) marks the run's own directory, never a
    finished run nor another run's directory, and a resume moves the mark into its resumes entry."""
    cfg = make_cfg(["debug=fdr"])
    output_dir = prepare_run_directory(cfg)
    with pytest.raises(ValueError), failure_recorded(cfg, lambda error: f"one line: {error}"):
        raise ValueError("data.root is not set")
    provenance = json.loads((output_dir / "run.json").read_text())
    assert provenance["status"] == "failed" and provenance["failure"]["reason"] == "one line: data.root is not set"
    prepare_run_directory(cfg, resuming=True)
    provenance = json.loads((output_dir / "run.json").read_text())
    assert "status" not in provenance and "failure" not in provenance
    assert provenance["resumes"][0]["after_failure"]["reason"] == "one line: data.root is not set"
    (output_dir / "checkpoints").mkdir()
    (output_dir / "checkpoints" / "last.ckpt").write_bytes(b"")
    with pytest.raises(RunDirectoryError), failure_recorded(cfg):  # hydra.run.dir=<an unfinished run>
        prepare_run_directory(cfg)
    assert "status" not in json.loads((output_dir / "run.json").read_text())


@pytest.mark.slow
def test_training_checkpoints_and_evaluate_round_trip(make_cfg, tmp_path):
    """Two real epochs: best and last checkpoints, history, then evaluate.py's job reproduces the test metrics."""
    cfg = make_cfg(["program=B", "trainer.max_epochs=2", "callbacks.early_stopping=null"])
    metrics = train(cfg)
    output_dir = Path(cfg.paths.output_dir)
    check_run_directory(output_dir)
    # program B evaluates the weights at the end of fit (as the thesis), and says so
    assert metrics["epochs_trained"] == 2 and metrics["checkpoint"] == os.path.join("checkpoints", "last.ckpt")
    assert metrics["checkpoint_epoch"] == 2 and metrics["checkpoint_choice"].startswith("last")
    assert list((output_dir / "checkpoints").glob("best-epoch*.ckpt"))
    history = pd.read_csv(output_dir / "history.csv")
    assert list(history["epoch"]) == [1, 2] and history[["train/acc", "val/auroc"]].notna().all().all()
    assert list((output_dir / "tensorboard").glob("events.out.tfevents.*"))

    eval_cfg = make_cfg([f"ckpt_path={output_dir / metrics['checkpoint']}"], config_name="evaluate")
    evaluated = evaluate(eval_cfg)
    assert evaluated["preprocessing"]["channels"] == 1 and evaluated["program"] == "B"
    assert evaluated["test"]["confusion_matrix"] == metrics["test"]["confusion_matrix"]
    assert evaluated["test"]["auroc"] == pytest.approx(metrics["test"]["auroc"], abs=1e-6)
    check_run_directory(Path(eval_cfg.paths.output_dir))


def run_script(args: list[str], cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_multirun_over_programs_in_a_subprocess(tmp_path, demo_root):
    sweep_dir = tmp_path / "multirun"
    result = run_script(
        [
            "train.py",
            "-m",
            "program=A,B,C",
            "debug=fdr",
            *DEMO_OVERRIDES(demo_root),
            f"hydra.sweep.dir={sweep_dir}",
        ]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    runs = {d.name: json.loads((d / "metrics.json").read_text()) for d in sweep_dir.iterdir() if d.is_dir()}
    assert {name: m["program"] for name, m in runs.items()} == {"0_A": "A", "1_B": "B", "2_C": "C"}  # job_name


@pytest.mark.slow
def test_evaluate_script_inherits_the_training_overrides(tmp_path, demo_root):
    """evaluate.py with only ckpt_path finds the program, data and split the checkpoint was trained with."""
    data = DEMO_OVERRIDES(demo_root)
    train_dir, eval_dir = tmp_path / "train", tmp_path / "eval"
    result = run_script(
        [
            "train.py",
            "program=C",
            "split=patient",
            "trainer.max_epochs=1",
            "logger=csv",
            *data,
            f"hydra.run.dir={train_dir}",
        ]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    trained = json.loads((train_dir / "metrics.json").read_text())
    result = run_script(
        ["evaluate.py", f"ckpt_path={train_dir / 'checkpoints' / 'last.ckpt'}", f"hydra.run.dir={eval_dir}"]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    evaluated = json.loads((eval_dir / "metrics.json").read_text())
    assert evaluated["split"] == trained["split"]
    assert pd.read_csv(eval_dir / "splits.csv").equals(pd.read_csv(train_dir / "splits.csv"))


def test_training_fails_fast_on_a_broken_image_and_check_only_stops(make_cfg, tmp_path, demo_root):
    import shutil

    from cxr.jobs.train import DataCheckError

    root = tmp_path / "broken"
    shutil.copytree(demo_root, root)
    victim = sorted(root.glob("images_001/images/*.png"))[0]
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    overrides = ["data=nih", f"data.root={root}", f"data.labels={root}/Data_Entry_demo.csv", "data.split.scale=true"]
    cfg = make_cfg([*overrides, "debug=fdr"])
    with pytest.raises(DataCheckError, match=rf"ERROR truncated.*{victim.name}"):
        train(cfg)
    assert "ERROR" in (Path(cfg.paths.output_dir) / "data_check.txt").read_text()
    assert not (Path(cfg.paths.output_dir) / "checkpoints").exists()

    victim.unlink()
    cfg = make_cfg([*overrides, "data.missing=drop", "check_only=true"])
    assert train(cfg) == {"data_check": "ok"}
    assert "WARNING missing images" in (Path(cfg.paths.output_dir) / "data_check.txt").read_text()


@pytest.mark.slow
def test_program_d_evaluates_its_best_checkpoint_and_records_which(make_cfg):
    overrides = ["program=D", "trainer.max_epochs=2", "callbacks.early_stopping=null", "~logger"]
    cfg = make_cfg([*overrides, "program.training.selection.min_epochs=1"])  # D: 5 (tests/test_variance.py)
    assert cfg.evaluation.checkpoint == "best" and make_cfg(["program=C"]).evaluation.checkpoint == "last"
    metrics = train(cfg)
    best = Path(metrics["checkpoint"]).name
    assert best.startswith("best-epoch") and metrics["checkpoint_choice"] == "best by val/auroc_ema"
    assert metrics["checkpoint_epoch"] == int(best.removeprefix("best-epoch").removesuffix(".ckpt"))  # from 1
    history = pd.read_csv(Path(cfg.paths.output_dir) / "history.csv")
    assert history.loc[history["val/auroc_ema"].idxmax(), "epoch"] == metrics["checkpoint_epoch"]
    metrics = train(make_cfg(overrides))  # 2 epochs, none of them eligible from epoch 5: the last, and says so
    assert metrics["checkpoint_epoch"] == 2 and Path(metrics["checkpoint"]).name == "last.ckpt"
    assert metrics["checkpoint_choice"] == "last (end of fit, training ended before selection's min_epochs=5)"


def test_a_bad_checkpoint_choice_is_refused_before_anything_runs(make_cfg):
    from cxr.errors import ConfigError

    cfg = make_cfg(["evaluation.checkpoint=middle", "debug=fdr"])
    with pytest.raises(ConfigError, match="evaluation.checkpoint='middle'"):
        train(cfg)
    assert not (Path(cfg.paths.output_dir) / "config.yaml").exists()
    with pytest.raises(ConfigError, match="evaluation.checkpoint=best needs callbacks.model_checkpoint"):
        train(make_cfg(["evaluation.checkpoint=best", "callbacks.model_checkpoint=null"]))


@pytest.mark.slow
def test_evaluate_scores_the_runs_own_test_split_and_refuses_a_changed_label_file(make_cfg, tmp_path, demo_root):
    import shutil

    from cxr.data.splits import SplitError
    from cxr.errors import ConfigError

    root = tmp_path / "data"
    shutil.copytree(demo_root, root)
    data = ["data=nih", f"data.root={root}", f"data.labels={root}/Data_Entry_demo.csv", "data.split.scale=true"]
    cfg = make_cfg([*data, "program=B", "trainer.max_epochs=1", "~logger", "data_check=false"])
    trained = train(cfg)
    run = Path(cfg.paths.output_dir)
    ckpt = run / "checkpoints" / "last.ckpt"

    # another split seed in the config does not move the test images: the run's splits.csv is read
    evaluated = evaluate(make_cfg([*data, f"ckpt_path={ckpt}", "data.split.seed=7"], config_name="evaluate"))
    assert evaluated["split"] == trained["split"] and evaluated["split_from"] == str(run / "splits.csv")
    assert evaluated["test"]["confusion_matrix"] == trained["test"]["confusion_matrix"]
    assert evaluated["checkpoint_epoch"] == trained["checkpoint_epoch"] == 1
    assert evaluated["training_overlap"] is None  # the run's own split: nothing to check
    # split_from=config splits anew, which here puts the run's training images into the new test set: refused ...
    from cxr.data.leakage import LeakageError

    anew = [*data, f"ckpt_path={ckpt}", "data.split.seed=7", "split_from=config"]
    with pytest.raises(LeakageError, match=r"split_from=config puts \d+ images and \d+ patients .* into the test set"):
        evaluate(make_cfg(anew, config_name="evaluate"))
    # ... unless allowed, and then recorded, counted against the run's splits.csv
    allowed_cfg = make_cfg([*anew, "allow_training_overlap=true"], config_name="evaluate")
    allowed = evaluate(allowed_cfg)
    assert allowed["split_from"] == "config" and allowed["split"]["test"] != trained["split"]["test"]
    trained_images = set(pd.read_csv(run / "splits.csv").query("split != 'test'")["image"])
    overlap = allowed["training_overlap"]
    assert overlap["allowed"] and overlap["checked_against"] == str(run / "splits.csv")
    predicted = pd.read_csv(Path(allowed_cfg.paths.output_dir) / "predictions_test.csv")
    assert overlap["test"]["images"] == predicted["image"].isin(trained_images).sum() > 0

    # a changed label file is refused
    labels = root / "Data_Entry_demo.csv"
    original = labels.read_text()
    labels.write_text(original.replace("No Finding", "Mass", 1))
    with pytest.raises(ConfigError, match=rf"data\.labels={labels} changed since last\.ckpt was trained"):
        evaluate(make_cfg([*data, f"ckpt_path={ckpt}"], config_name="evaluate"))
    labels.write_text(original)
    # test images that are gone are refused, also when missing images are otherwise dropped
    test_images = pd.read_csv(run / "splits.csv").query("split == 'test'")["image"]
    next(root.rglob(test_images.iloc[0])).unlink()
    with pytest.raises(SplitError, match=rf"{run / 'splits.csv'}: 1 of \d+ images of the saved split are not "):
        evaluate(make_cfg([*data, f"ckpt_path={ckpt}", "data.missing=drop"], config_name="evaluate"))
    # a checkpoint outside a run directory has no split to reuse
    shutil.copy(ckpt, tmp_path / "loose.ckpt")
    with pytest.raises(ConfigError, match="split_from=config"):
        evaluate(make_cfg([*data, f"ckpt_path={tmp_path / 'loose.ckpt'}"], config_name="evaluate"))


@pytest.mark.slow
def test_last_checkpoint_is_the_end_of_fit_even_when_the_best_is_older(make_cfg):
    """Lightning >= 2.6 writes save_last's file only in epochs that save a top-k checkpoint; last.ckpt must still be
    the end of fit (what evaluation.checkpoint=last scores and resume= continues from)."""
    import torch

    cfg = make_cfg(
        [
            "program=B",
            "trainer.max_epochs=3",
            "+trainer.limit_train_batches=2",
            "+trainer.limit_val_batches=1",
            "callbacks.early_stopping=null",
            "~logger",
            "callbacks.model_checkpoint.monitor=epoch",
            "callbacks.model_checkpoint.mode=min",
        ]
    )  # best: epoch 1
    metrics = train(cfg)
    checkpoints = Path(cfg.paths.output_dir) / "checkpoints"
    assert sorted(p.name for p in checkpoints.glob("*.ckpt")) == ["best-epoch001.ckpt", "last.ckpt"]
    last = torch.load(checkpoints / "last.ckpt", map_location="cpu", weights_only=True)
    assert (last["epoch"], last["global_step"]) == (2, 6)
    assert metrics["checkpoint"] == os.path.join("checkpoints", "last.ckpt") and metrics["checkpoint_epoch"] == 3


def test_run_names_say_what_differs(make_cfg):
    from cxr.run_dir import MAX_NAME_LENGTH, run_name, safe_name

    assert run_name(make_cfg([])) == "A"  # the defaults: program A, thesis network, binary task
    assert run_name(make_cfg(["program=D", "seed=2"])) == "D-seed2"
    assert run_name(make_cfg(["model=densenet121", "task=multilabel", "program=C"])) == "C-densenet121-multilabel"
    assert run_name(make_cfg(["experiment=chexnet", "model.weights=none"])) == "chexnet-densenet121-multilabel"
    assert run_name(make_cfg(["run_name=lr sweep/1"])) == "lr_sweep_1"  # one directory, Hydra-safe
    long = [safe_name("D-" + "x" * 100 + tail) for tail in ("a", "b")]
    assert long[0] != long[1] and all(len(n) <= MAX_NAME_LENGTH and "/" not in n for n in long)
    # evaluate.py, predict.py, export.py: the name of the run whose checkpoint they read
    evaluation = make_cfg(
        ["ckpt_path=/runs/2026-12-06_10-11-12-123456_D-seed2/checkpoints/best-epoch002.ckpt"], config_name="evaluate"
    )
    assert run_name(evaluation) == "D-seed2"


@pytest.mark.slow
def test_checkpoints_count_epochs_from_one_and_keep_what_is_asked(make_cfg):
    """Two epochs with callbacks.checkpoint.keep=all: epoch001.ckpt and epoch002.ckpt (as history.csv counts) beside
    last.ckpt; the run's name in run.json, metrics.json and TensorBoard's hparams; the directory's size in run.json."""
    from cxr.errors import ConfigError
    from cxr.run_dir import directory_size

    short = [
        "program=B",
        "seed=2",
        "trainer.max_epochs=2",
        "+trainer.limit_train_batches=2",
        "+trainer.limit_val_batches=2",
        "callbacks.early_stopping=null",
        "data_check=false",
    ]
    cfg = make_cfg([*short, "callbacks.checkpoint.keep=all"])
    metrics = train(cfg)
    run = Path(cfg.paths.output_dir)
    assert sorted(p.name for p in (run / "checkpoints").glob("*.ckpt")) == [
        "epoch001.ckpt",
        "epoch002.ckpt",
        "last.ckpt",
    ]
    assert list(pd.read_csv(run / "history.csv")["epoch"]) == [1, 2] and metrics["checkpoint_epoch"] == 2
    provenance = json.loads((run / "run.json").read_text())
    assert provenance["run_name"] == metrics["run_name"] == "B-seed2"
    assert 0 < provenance["directory_size_bytes"] <= directory_size(run)
    assert any(b"B-seed2" in events.read_bytes() for events in (run / "tensorboard").glob("events.out.tfevents.*"))

    for keep, message in (("none", "keeps none"), ("some", "choose best, none, all")):
        with pytest.raises(ConfigError, match=message):  # program D scores its best checkpoint
            train(make_cfg([*short, "program=D", f"callbacks.checkpoint.keep={keep}"]))
