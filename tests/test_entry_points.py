"""Clean failure through the real entry points (subprocesses): a user error ends with one line ``error: ...`` on
stderr (the only error line there), a non-zero exit status and no traceback; HYDRA_FULL_ERROR=1 shows the
traceback."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import DEMO_OVERRIDES, REPO

pytestmark = pytest.mark.slow  # each case starts Python with torch and Lightning (~5 s)


def run(args: list[str], cwd: Path, **env) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONPATH": str(REPO), **env}
    if "HYDRA_FULL_ERROR" not in env:
        environment.pop("HYDRA_FULL_ERROR", None)
    if args[0].endswith(".py"):
        args = [str(REPO / args[0]), *args[1:]]
    return subprocess.run([sys.executable, *args], cwd=cwd, env=environment, capture_output=True, text=True,
                          timeout=300)


def assert_one_error_line(result: subprocess.CompletedProcess, *fragments: str, status: int = 1) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == status, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "HYDRA_FULL_ERROR" not in result.stderr, result.stderr[-3000:]
    # the last line, and the only one that says error (Lightning may log "Seed set to ..." before it)
    assert lines and lines[-1].startswith("error: "), result.stderr[-3000:]
    assert sum("error" in line.lower() for line in lines) == 1, result.stderr[-3000:]
    for fragment in fragments:
        assert fragment in lines[-1], lines[-1]
    return lines[-1]


@pytest.fixture
def broken_data(tmp_path, demo_root) -> Path:
    root = tmp_path / "data"
    shutil.copytree(demo_root, root)
    return root


def nih(root: Path, labels: str = "Data_Entry_demo.csv") -> list[str]:
    return ["data=nih", f"data.root={root}", f"data.labels={root / labels}", "data.split.scale=true"]


def test_train_label_file_missing(tmp_path, broken_data):
    result = run(["train.py", *nih(broken_data, "nothing.csv"), f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert_one_error_line(result, "label file not found", "nothing.csv")


def test_train_image_missing_and_bad_label_without_the_data_check(tmp_path, broken_data):
    victim = sorted(broken_data.glob("images_001/images/*.png"))[0]
    victim.unlink()
    result = run(["train.py", *nih(broken_data), "data_check=false", f"hydra.run.dir={tmp_path / 'a'}"], tmp_path)
    assert_one_error_line(result, "are not under", victim.name, "data.missing=drop")
    labels = broken_data / "Data_Entry_demo.csv"
    labels.write_text(labels.read_text().replace("No Finding", "No Findings", 1))
    result = run(["train.py", *nih(broken_data), "data_check=false", "data.missing=drop",
                  f"hydra.run.dir={tmp_path / 'b'}"], tmp_path)
    assert_one_error_line(result, "unknown finding 'No Findings'")


def test_train_split_and_config_errors(tmp_path, demo_root):
    result = run(["train.py", *DEMO_OVERRIDES(demo_root), "data.split.scale=false", "data_check=false",
                  f"hydra.run.dir={tmp_path / 'a'}"], tmp_path)
    assert_one_error_line(result, "split sizes train=3000 + val=500")
    result = run(["train.py", "data.bogus=1"], tmp_path)
    assert_one_error_line(result, "data.bogus", status=2)
    result = run(["train.py", "program=Z"], tmp_path)
    assert_one_error_line(result, "program/Z", "Available options", status=2)
    result = run(["train.py", *DEMO_OVERRIDES(demo_root), "evaluation.checkpoint=middle",
                  f"hydra.run.dir={tmp_path / 'b'}"], tmp_path)
    assert_one_error_line(result, "evaluation.checkpoint='middle'")
    result = run(["train.py", f"resume={tmp_path}"], tmp_path)
    assert_one_error_line(result, "not a run directory of train.py")


def test_train_data_check_failure(tmp_path, broken_data):
    victim = sorted(broken_data.glob("images_001/images/*.png"))[0]
    victim.write_bytes(victim.read_bytes()[:100])
    result = run(["train.py", *nih(broken_data), f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert_one_error_line(result, "truncated", victim.name)
    result = run(["-m", "cxr.check", *nih(broken_data)], tmp_path)
    assert_one_error_line(result, "truncated", victim.name)
    assert "FAILED" in result.stdout  # the full report stays on stdout


def test_evaluate_checkpoint_errors(tmp_path):
    result = run(["evaluate.py", f"ckpt_path={tmp_path / 'none.ckpt'}", f"hydra.run.dir={tmp_path / 'a'}"], tmp_path)
    assert_one_error_line(result, "checkpoint not found", "none.ckpt")
    result = run(["evaluate.py", f"hydra.run.dir={tmp_path / 'b'}"], tmp_path)
    assert_one_error_line(result, "ckpt_path")
    victim = tmp_path / "created_by_the_checkpoint"
    torch.save({"hyper_parameters": {"net": {"_target_": "builtins.open", "_args_": [str(victim), "w"]},
                                     "optimizer": {"_target_": "torch.optim.Adam"}},
                "state_dict": {}, "epoch": 0}, tmp_path / "crafted.ckpt")
    result = run(["evaluate.py", f"ckpt_path={tmp_path / 'crafted.ckpt'}", f"hydra.run.dir={tmp_path / 'c'}"],
                 tmp_path)
    assert_one_error_line(result, "crafted.ckpt: refused: hyper_parameters.net._target_='builtins.open'")
    assert not victim.exists()
    torch.save({"hyper_parameters": {"net": {"_target_": "cxr.models.thesis_cnn.ThesisCNN"}}, "state_dict": {},
                "cxr": {"overrides": ["data._target_=builtins.open"]}}, tmp_path / "replayed.ckpt")
    result = run(["evaluate.py", f"ckpt_path={tmp_path / 'replayed.ckpt'}", f"hydra.run.dir={tmp_path / 'd'}"],
                 tmp_path)
    assert_one_error_line(result, "replayed.ckpt: training override: data._target_: a key that names code")


def test_compare_errors(tmp_path):
    result = run(["compare.py", str(tmp_path / "nothing")], tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert [line for line in result.stderr.splitlines() if line.strip()] == [
        f"compare.py: error: {tmp_path / 'nothing'}: no such file or directory"]


def test_hydra_full_error_shows_the_traceback(tmp_path, broken_data):
    result = run(["train.py", *nih(broken_data, "nothing.csv"), "data_check=false",
                  f"hydra.run.dir={tmp_path / 'run'}"], tmp_path, HYDRA_FULL_ERROR="1")
    assert result.returncode != 0 and "Traceback" in result.stderr and "LabelFileError" in result.stderr
