"""Quiet logs, visible progress: a bar only on a terminal, plain progress lines in the log otherwise, and known
library noise filtered in one place (cxr.cli.quiet_library_noise)."""

from __future__ import annotations

import logging
import os
import pty
import subprocess
import sys
import warnings

import pytest
from hydra.utils import instantiate

from cxr.callbacks import ProgressLog, progress_bar_enabled
from cxr.cli import quiet_library_noise
from tests.conftest import DEMO_OVERRIDES, REPO

FILTERED = ("💡 Tip", "LeafSpec", "smaller than the logging interval")  # what quiet_library_noise drops


@pytest.fixture
def terminal():
    """A real pseudo-terminal (isatty() is true), as a file object."""
    primary, secondary = pty.openpty()
    stream = os.fdopen(secondary, "w")
    yield stream
    stream.close()
    os.close(primary)


def test_progress_bar_only_on_a_terminal(make_cfg, terminal, tmp_path):
    """trainer.enable_progress_bar: null (the default) draws a bar on a terminal, none on a file or pipe; true/false
    win over the terminal."""
    cfg = make_cfg()
    assert cfg.trainer.enable_progress_bar is None
    with open(tmp_path / "stdout.txt", "w") as file:
        assert progress_bar_enabled(None, terminal) and not progress_bar_enabled(None, file)
        assert progress_bar_enabled(True, file) and not progress_bar_enabled(False, terminal)
        bars = [
            instantiate(
                cfg.trainer, logger=False, enable_progress_bar=progress_bar_enabled(None, stream)
            ).progress_bar_callback
            for stream in (terminal, file)
        ]
    assert bars[0] is not None and bars[1] is None
    with pytest.raises(ValueError, match="every_n_steps=-1"):
        ProgressLog(every_n_steps=-1)


def test_known_library_noise_is_filtered_and_other_warnings_are_logged(caplog):
    with warnings.catch_warnings():
        quiet_library_noise()
        try:
            with caplog.at_level(logging.INFO):
                warnings.warn(
                    "`isinstance(treespec, LeafSpec)` is deprecated, use `isinstance(treespec, TreeSpec) "
                    "and treespec.is_leaf()` instead.",
                    FutureWarning,
                )
                warnings.warn(
                    "The number of training batches (6) is smaller than the logging interval "
                    "Trainer(log_every_n_steps=10).",
                    UserWarning,
                )
                logging.getLogger("lightning.pytorch.utilities.rank_zero").info("💡 Tip: For seamless cloud ...")
                warnings.warn("a warning a user should read", UserWarning)
        finally:
            logging.captureWarnings(False)
    assert "a warning a user should read" in caplog.text  # to the log (console and file), not to stderr alone
    assert not any(noise in caplog.text for noise in FILTERED), caplog.text


@pytest.mark.slow  # a two-epoch training run in a subprocess (about 40 s on 2 cores)
def test_training_without_a_terminal_logs_progress_lines_and_no_noise(demo_root, tmp_path):
    """python train.py with stdout and stderr on pipes (a batch job): train.log gets a line every N steps and one per
    epoch, no carriage-return redraws, none of the filtered library messages."""
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "train.py"),
            *DEMO_OVERRIDES(demo_root),
            "debug=limit",
            "trainer.max_epochs=2",
            "trainer.limit_train_batches=2",
            "trainer.limit_val_batches=1.0",
            "callbacks.progress_log.every_n_steps=1",
            "logger=csv",
            "evaluation.bootstrap.n_resamples=20",
        ],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    (log_file,) = tmp_path.glob("outputs/train/runs/*/train.log")
    log = log_file.read_text(encoding="utf-8")
    lines = log.splitlines()
    steps = [line for line in lines if "[cxr.callbacks]" in line and " step " in line]
    epochs = [line for line in lines if "[cxr.callbacks]" in line and " done: " in line]
    assert [line.split(" - ")[1].split(" (")[0] for line in steps] == [
        "epoch 1/2 step 1/4",
        "epoch 1/2 step 2/4",
        "epoch 2/2 step 3/4",
        "epoch 2/2 step 4/4",
    ]
    assert len(epochs) == 2 and all(
        "train loss" in line and "val AUROC" in line and "elapsed" in line for line in epochs
    )
    assert "epoch 2/2 done: 2 steps (4 in all)" in epochs[1]
    assert "\r" not in log and "\r" not in result.stdout and "\r" not in result.stderr
    for text in (log, result.stdout, result.stderr):
        assert not any(noise in text for noise in FILTERED), text
    assert "it/s" not in result.stdout + result.stderr  # no progress bar drawn into the pipes either
    assert "INFO: GPU available" not in result.stderr  # Lightning's lines once (the log), not again on stderr
