"""``pip install .`` (not editable) works: the package, its configs (pkg://cxr.conf) and the console scripts run from
another directory, without the checkout on the path."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import DEMO_OVERRIDES, REPO


@pytest.mark.slow
def test_a_non_editable_install_runs_from_another_directory(tmp_path, demo_root):
    source = tmp_path / "source"  # a copy, so that the build leaves nothing in the checkout
    top_level = {".git", "outputs", "data", ".venv", "build", ".pytest_cache", "tests", "multirun"}
    shutil.copytree(
        REPO,
        source,
        ignore=lambda folder, names: [
            name
            for name in names
            if (Path(folder) == REPO and name in top_level) or name == "__pycache__" or name.endswith(".egg-info")
        ],
    )
    site = tmp_path / "site"
    # --no-deps: torch & co. come from the running environment; --no-build-isolation: no download of setuptools
    install = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(site),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    assert (site / "cxr" / "conf" / "program" / "_thesis.yaml").is_file()
    shutil.rmtree(source)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "HYDRA_FULL_ERROR")}
    env["PYTHONPATH"] = str(site)

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(list(args), cwd=elsewhere, env=env, capture_output=True, text=True, timeout=600)

    where = run(sys.executable, "-c", "import cxr; print(cxr.__file__)")
    assert where.returncode == 0 and Path(where.stdout.strip()).is_relative_to(site), where.stderr[-2000:]

    check = run(sys.executable, "-m", "cxr.check", *DEMO_OVERRIDES(demo_root))
    assert check.returncode == 0 and "FAILED" not in check.stdout, check.stdout[-2000:] + check.stderr[-2000:]

    run_dir = elsewhere / "run"
    train = run(str(site / "bin" / "cxr-train"), "debug=fdr", *DEMO_OVERRIDES(demo_root), f"hydra.run.dir={run_dir}")
    assert train.returncode == 0, train.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["test"]["n"] > 0 and (run_dir / "train.log").is_file()

    # the search's sweeper ships as hydra_plugins/cxr_optuna_sweeper in the wheel: Hydra finds it only there
    assert (site / "hydra_plugins" / "cxr_optuna_sweeper" / "optuna_sweeper.py").is_file()
    search = run(
        str(site / "bin" / "cxr-train"),
        "hparams_search=optuna_D",
        "debug=fdr",
        "hydra.sweeper.n_trials=1",
        "logger=csv",
        "data_check=false",
        *DEMO_OVERRIDES(demo_root),
    )
    assert search.returncode == 0, search.stderr[-3000:]
    assert list((elsewhere / "outputs" / "search" / "cxr_D_demo").glob("*/0_*/metrics.json"))  # <time>/<n>_<run name>/

    failing = run(
        str(site / "bin" / "cxr-evaluate"),
        f"ckpt_path={elsewhere / 'none.ckpt'}",
        f"hydra.run.dir={elsewhere / 'eval'}",
    )
    assert failing.returncode == 1 and failing.stderr.strip().splitlines()[-1].startswith("error: checkpoint not found")
    compare = run(
        str(site / "bin" / "cxr-compare"), str(run_dir), "--out", str(elsewhere / "report"), "--n-resamples", "10"
    )
    assert compare.returncode == 0 and (elsewhere / "report" / "report.md").is_file(), compare.stderr[-2000:]
