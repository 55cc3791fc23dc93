"""Clean failure through the real entry points (subprocesses): a user error ends with one line ``error: ...`` on
stderr (the only error line there), a non-zero exit status and no traceback; HYDRA_FULL_ERROR=1 shows the
traceback."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path, PurePosixPath

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
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=environment, capture_output=True, text=True, timeout=300
    )


def assert_one_error_line(
    result: subprocess.CompletedProcess, *fragments: str, status: int = 1, prefix: str = "error: "
) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == status, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "HYDRA_FULL_ERROR" not in result.stderr, result.stderr[-3000:]
    # the last line, and the only one that says error (Lightning may log "Seed set to ..." before it)
    assert lines and lines[-1].startswith(prefix), result.stderr[-3000:]
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
    result = run(
        ["train.py", *nih(broken_data), "data_check=false", "data.missing=drop", f"hydra.run.dir={tmp_path / 'b'}"],
        tmp_path,
    )
    assert_one_error_line(result, "unknown finding 'No Findings'")


def test_train_split_and_config_errors(tmp_path, demo_root):
    result = run(
        [
            "train.py",
            *DEMO_OVERRIDES(demo_root),
            "data.split.scale=false",
            "data_check=false",
            f"hydra.run.dir={tmp_path / 'a'}",
        ],
        tmp_path,
    )
    assert_one_error_line(result, "split sizes train=3000 + val=500")
    result = run(["train.py", "data.bogus=1"], tmp_path)  # nothing near it: no guess (program=E: see below)
    line = assert_one_error_line(result, "data.bogus=1: unknown key 'data.bogus' (no config key or group", status=2)
    assert "did you mean" not in line
    result = run(
        ["train.py", *DEMO_OVERRIDES(demo_root), "evaluation.checkpoint=middle", f"hydra.run.dir={tmp_path / 'b'}"],
        tmp_path,
    )
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
    torch.save(
        {
            "hyper_parameters": {
                "net": {"_target_": "builtins.open", "_args_": [str(victim), "w"]},
                "optimizer": {"_target_": "torch.optim.Adam"},
            },
            "state_dict": {},
            "epoch": 0,
        },
        tmp_path / "crafted.ckpt",
    )
    result = run(["evaluate.py", f"ckpt_path={tmp_path / 'crafted.ckpt'}", f"hydra.run.dir={tmp_path / 'c'}"], tmp_path)
    assert_one_error_line(result, "crafted.ckpt: refused: hyper_parameters.net._target_='builtins.open'")
    assert not victim.exists()
    torch.save(
        {
            "hyper_parameters": {"net": {"_target_": "cxr.models.thesis_cnn.ThesisCNN"}},
            "state_dict": {},
            "cxr": {"overrides": ["data._target_=builtins.open"]},
        },
        tmp_path / "replayed.ckpt",
    )
    result = run(
        ["evaluate.py", f"ckpt_path={tmp_path / 'replayed.ckpt'}", f"hydra.run.dir={tmp_path / 'd'}"], tmp_path
    )
    assert_one_error_line(result, "replayed.ckpt: training override: data._target_: a key that names code")


def test_unknown_key_group_or_option_names_the_nearest_valid_one(tmp_path):
    """Hydra's "To append to your config use +progam=C" is the wrong fix for a typo; internal configs (_thesis,
    _common) are never offered."""
    line = assert_one_error_line(
        run(["train.py", "progam=C"], tmp_path), "progam=C", "did you mean `program`?", status=2
    )
    assert "+progam" not in line
    assert_one_error_line(run(["train.py", "data.batchsize=3"], tmp_path), "did you mean `data.batch_size`?", status=2)
    line = assert_one_error_line(
        run(["train.py", "program=E"], tmp_path), "program has no option 'E'", "(options: A, B, C, D)", status=2
    )
    assert "_thesis" not in line and "did you mean" not in line
    line = assert_one_error_line(run(["train.py", "data=nhi"], tmp_path), "did you mean `data=nih`?", status=2)
    assert "_common" not in line


def test_each_missing_key_is_named_alone_and_the_failed_run_says_why(tmp_path, demo_root):
    """As a user runs it (no hydra.run.dir): the run that fails its data check keeps its directory, marked failed
    in run.json, and compare.py names it and the reason instead of skipping it silently."""
    result = run(["train.py", "data=nih", f"data.root={demo_root}"], tmp_path)
    line = assert_one_error_line(result, "data.labels is not set")
    assert "data.root" not in line.split("(all problems")[0]
    [run_dir] = (tmp_path / "outputs" / "train" / "runs").iterdir()
    provenance = json.loads((run_dir / "run.json").read_text())
    assert provenance["status"] == "failed" and provenance["failure"]["reason"] == line.removeprefix("error: ")
    assert (run_dir / "data_check.txt").read_text().splitlines()[-1].startswith("FAILED")
    result = run(["compare.py", "outputs"], tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert [line for line in result.stderr.splitlines() if line.strip()] == [
        f"compare.py: error: outputs: holds no finished run (no directory with both metrics.json and config.yaml); "
        f"skipped 1: {run_dir.name}: failed: {provenance['failure']['reason']}"
    ]
    result = run(["train.py", "data=nih", f"data.labels={demo_root / 'Data_Entry_demo.csv'}"], tmp_path)
    line = assert_one_error_line(result, "data.root is not set")
    assert "data.labels" not in line.split("(all problems")[0]


def test_not_a_checkpoint_and_the_refusal_of_foreign_pickles(tmp_path):
    (tmp_path / "notes.txt").write_text("best model: epoch 7\n")
    line = assert_one_error_line(
        run(["evaluate.py", "ckpt_path=notes.txt"], tmp_path), "notes.txt: not a checkpoint (a text file"
    )
    assert "refusing" not in line and "unpickle" not in line
    torch.save({"hyper_parameters": {"net": PurePosixPath("x")}, "state_dict": {}}, tmp_path / "foreign.ckpt")
    assert_one_error_line(
        run(["evaluate.py", "ckpt_path=foreign.ckpt"], tmp_path),
        "foreign.ckpt: cannot be loaded weights-only (Unsupported global: GLOBAL pathlib.",
        "PurePosixPath",
        "refusing to unpickle arbitrary objects",
    )


def test_predict_takes_a_list_only_as_at_list_and_names_each_missing_key(tmp_path):
    (tmp_path / "list.txt").write_text("a.png\n")
    assert_one_error_line(
        run(["predict.py", "ckpt_path=model.ckpt", "inputs=list.txt"], tmp_path),
        "inputs=list.txt: not an image (PNG, JPEG or DICOM)",
        "give inputs=@list.txt",
        status=2,
        prefix="predict.py: error: ",
    )
    line = assert_one_error_line(
        run(["predict.py", "inputs=@list.txt"], tmp_path),
        "ckpt_path is required but not set",
        status=2,
        prefix="predict.py: error: ",
    )
    assert "inputs" not in line


def test_compare_errors(tmp_path):
    result = run(["compare.py", str(tmp_path / "nothing")], tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert [line for line in result.stderr.splitlines() if line.strip()] == [
        f"compare.py: error: {tmp_path / 'nothing'}: no such file or directory"
    ]


def test_hydra_full_error_shows_the_traceback(tmp_path, broken_data):
    result = run(
        ["train.py", *nih(broken_data, "nothing.csv"), "data_check=false", f"hydra.run.dir={tmp_path / 'run'}"],
        tmp_path,
        HYDRA_FULL_ERROR="1",
    )
    assert result.returncode != 0 and "Traceback" in result.stderr and "LabelFileError" in result.stderr
