"""Reproducibility and crash recovery with real subprocesses: same seed -> identical outputs; a run killed with
SIGKILL mid-training and resumed with ``train.py resume=<run dir>`` ends exactly like an uninterrupted one, for a
thesis program (B) and for program D (augmentation, class weights, LR schedule, input grids drawn at fit start)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import DEMO_OVERRIDES, REPO
from tests.test_train import run_script

pytestmark = pytest.mark.slow
EPOCHS = 5


def settings(demo_root: Path, run_dir: Path, program: str = "B") -> list[str]:
    return [
        "train.py",
        *DEMO_OVERRIDES(demo_root),
        f"program={program}",
        f"trainer.max_epochs={EPOCHS}",
        "callbacks.early_stopping=null",
        "trainer.deterministic=true",
        f"hydra.run.dir={run_dir}",
    ]


def final_weights(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]


@pytest.fixture(scope="module")
def reference_runs(tmp_path_factory, demo_root):
    """Two uninterrupted runs of the same config and seed."""
    runs = []
    for name in ("first", "second"):
        run_dir = tmp_path_factory.mktemp("reference") / name
        result = run_script(settings(demo_root, run_dir))
        assert result.returncode == 0, result.stderr[-3000:]
        runs.append(run_dir)
    return runs


def test_same_seed_gives_bit_identical_outputs(reference_runs):
    first, second = reference_runs
    for name in ("metrics.json", "splits.csv", "predictions_test.csv", "history.csv"):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    provenance = json.loads((first / "run.json").read_text())
    assert provenance["command"].startswith("train.py") and "program=B" in provenance["command"]
    assert {"git_commit", "git_dirty", "packages", "python"} <= provenance.keys()
    assert provenance["packages"]["torch"] and "resumes" not in provenance


@pytest.fixture(scope="module")
def reference_run_d(tmp_path_factory, demo_root):
    """One uninterrupted run of program D."""
    run_dir = tmp_path_factory.mktemp("reference") / "D"
    result = run_script(settings(demo_root, run_dir, "D"))
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


@pytest.mark.parametrize("program", ["B", "D"])
def test_killed_run_resumes_to_the_same_result(program, request, tmp_path, demo_root):
    reference = (
        request.getfixturevalue("reference_runs")[0] if program == "B" else request.getfixturevalue("reference_run_d")
    )
    run_dir = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(
        [sys.executable, *settings(demo_root, run_dir, program)],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    last = run_dir / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 600
    while not last.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process.poll() is None, "the run ended before it could be killed"
    time.sleep(0.3)  # into the next epoch
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    assert not (run_dir / "metrics.json").exists()
    epoch_at_kill = torch.load(last, map_location="cpu", weights_only=True)["epoch"]
    assert epoch_at_kill < EPOCHS - 1

    fresh = run_script(settings(demo_root, run_dir, program))  # a new run may not reuse the directory
    assert fresh.returncode != 0 and "resume=" in fresh.stderr
    first_config, first_start = (run_dir / "config.yaml").read_bytes(), json.loads((run_dir / "run.json").read_text())

    resumed = run_script(["train.py", f"resume={run_dir}"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "not repeated on resume" in resumed.stdout + resumed.stderr  # the first start's data check passed
    provenance = json.loads((run_dir / "run.json").read_text())  # the first start is kept, the resume appended
    at_end = ("resumes", "directory_size_bytes", "directory_size_mb")  # the size is recorded when the run ends
    assert {k: v for k, v in provenance.items() if k not in at_end} == first_start
    assert len(provenance["resumes"]) == 1 and provenance["resumes"][0]["command"].endswith("ckpt_path=last")
    assert (run_dir / "config.yaml").read_bytes() == first_config
    assert "ckpt_path: last" in (run_dir / provenance["resumes"][0]["config"]).read_text()
    for name in ("metrics.json", "predictions_test.csv", "history.csv", "splits.csv"):
        assert (run_dir / name).read_bytes() == (reference / name).read_bytes(), name
    expected, actual = final_weights(reference), final_weights(run_dir)
    assert expected.keys() == actual.keys()
    assert all(torch.equal(expected[key], actual[key]) for key in expected)
    events = lambda run: len(list((run / "tensorboard").rglob("events.out.tfevents.*")))  # noqa: E731
    assert events(run_dir) > events(reference)  # the killed run's log is kept and continued in the same folder


def test_sigterm_saves_a_checkpoint_and_resumes(tmp_path, demo_root):
    run_dir = tmp_path / "terminated"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(
        [sys.executable, *settings(demo_root, run_dir)],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    last = run_dir / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 600
    while not last.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode != 0
    assert (run_dir / "checkpoints" / "interrupted.ckpt").is_file(), stderr[-2000:]
    assert not (run_dir / "metrics.json").exists()
    resumed = run_script(["train.py", f"resume={run_dir}"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (run_dir / "metrics.json").is_file()
