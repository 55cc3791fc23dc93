"""scripts/gpu_check.sh and the GPU sections of the benchmark skip cleanly on a machine without a CUDA GPU (CI):
exit status 0, a line that says why, no error."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from tests.conftest import REPO

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible: the checks would run for real")


def test_gpu_check_script_skips_without_a_gpu(tmp_path):
    result = subprocess.run(
        ["bash", str(REPO / "scripts" / "gpu_check.sh"), str(tmp_path / "gpu.json")],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "gpu_check: skipped: no CUDA GPU visible" in result.stdout
    assert not (tmp_path / "gpu.json").exists()


def test_gpu_sections_of_the_bench_are_skipped_rows(tmp_path):
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, "-m", "cxr.bench", "--tiny", "--only", "gpu,gpu_ddp,gpu_serve", "--out", str(out)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    document = json.loads(out.read_text())
    assert document["errors"] == {}
    rows = {row["measure"]: row for row in document["rows"]}
    assert set(rows) == {
        "GPU train step (thesis net, DenseNet-121)",
        "DDP on the GPUs present vs 1 GPU (train, total)",
        "serve /predict on a GPU",
    }
    for row in rows.values():
        assert row["fast"] is None and row["note"].startswith("skipped: no CUDA GPU visible")
