"""hparams_search=optuna_D: an Optuna study in SQLite that maximises validation AUROC and that a second call
continues."""
from __future__ import annotations

import json

import pytest

from tests.conftest import DEMO_OVERRIDES
from tests.test_train import run_script


def test_search_preset_maximises_validation_auroc_of_program_d(make_cfg, tmp_path):
    from hydra.types import RunMode

    from cxr.search import sqlite_storage

    cfg = make_cfg(["hparams_search=optuna_D"])
    sweeper = cfg.hydra.sweeper
    assert cfg.program.name == "D" and sweeper.direction == "maximize" and cfg.hydra.mode == RunMode.MULTIRUN
    assert sweeper._target_.endswith("OptunaSweeper") and sweeper.storage._target_ == "cxr.search.sqlite_storage"
    assert {"program.training.lr", "program.training.batch_size", "program.training.augmentation.degrees",
            "program.training.class_weight"} <= set(sweeper.params)
    url = sqlite_storage(tmp_path / "new" / "folder" / "study.db")
    assert url == f"sqlite:///{tmp_path / 'new' / 'folder' / 'study.db'}" and (tmp_path / "new" / "folder").is_dir()


def test_the_search_objective_is_validation_auroc_not_test():
    from cxr.jobs.train import objective

    metrics = {"validation": {"auroc_best": 0.7, "auroc_last": 0.6}, "test": {"auroc": 0.9}}
    assert objective(metrics) == 0.7
    assert objective({"test": {"auroc": 0.9}}) != objective({"test": {"auroc": 0.9}})  # NaN: no validation AUROC


@pytest.mark.slow
def test_optuna_search_of_three_trials_is_continued_by_a_second_call(tmp_path, demo_root):
    import optuna

    storage = tmp_path / "studies" / "study.db"
    common = ["train.py", "hparams_search=optuna_D", "debug=fdr", "logger=csv", "data_check=false",
              "hydra.sweeper.n_trials=3", f"hydra.sweeper.storage.path={storage}", "hydra.sweeper.study_name=test",
              *DEMO_OVERRIDES(demo_root)]
    counts = []
    for call in ("first", "second"):
        result = run_script([*common, f"hydra.sweep.dir={tmp_path / call}"])
        assert result.returncode == 0, result.stderr[-3000:]
        study = optuna.load_study(study_name="test", storage=f"sqlite:///{storage}")
        counts.append(len(study.trials))
    assert counts == [3, 6]
    trials = sorted(study.trials, key=lambda t: t.number)
    runs = [tmp_path / call / str(n) for call in ("first", "second") for n in range(3)]
    for trial, run in zip(trials, runs):
        metrics = json.loads((run / "metrics.json").read_text())
        assert metrics["program"] == "D"
        assert trial.value == pytest.approx(metrics["validation"]["auroc_best"])  # validation, not test
        overrides = (run / ".hydra" / "overrides.yaml").read_text()
        assert f"program.training.lr={trial.params['program.training.lr']}" in overrides
    assert (tmp_path / "second" / "optimization_results.yaml").is_file()
