"""hparams_search=optuna_D: cxr's Optuna sweeper (hydra_plugins/cxr_optuna_sweeper) on Optuna 4+: a study in SQLite
under outputs/ that a second call continues, several workers share, and whose hopeless trials are pruned."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import DEMO_OVERRIDES, REPO


def test_search_preset_maximises_validation_auroc_of_program_d(make_cfg):
    from hydra.types import RunMode

    cfg = make_cfg(["hparams_search=optuna_D"])
    sweeper = cfg.hydra.sweeper
    assert cfg.program.name == "D" and sweeper.direction == "maximize" and cfg.hydra.mode == RunMode.MULTIRUN
    assert sweeper._target_ == "hydra_plugins.cxr_optuna_sweeper.optuna_sweeper.OptunaSweeper"
    assert sweeper.pruner._target_ == "optuna.pruners.MedianPruner" and sweeper.monitor == "val/auroc"
    assert {
        "program.training.lr",
        "program.training.batch_size",
        "program.training.augmentation.degrees",
        "program.training.class_weight",
    } <= set(sweeper.params)


def test_the_search_space_reads_hydra_sweep_syntax_as_optuna_distributions():
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    from cxr.jobs.search import search_space

    distributions, fixed = search_space(
        [
            "a=tag(log, interval(1e-5, 3e-3))",
            "b=choice(8, 16, 32)",
            "c=choice(1.0, balanced)",
            "d=range(1, 4)",
            "e=interval(0.0, 0.5)",
            "seed=3",
        ]
    )
    assert distributions["a"] == FloatDistribution(1e-5, 3e-3, log=True)
    assert distributions["b"] == CategoricalDistribution([8, 16, 32])
    assert distributions["c"] == CategoricalDistribution([1.0, "balanced"])
    assert distributions["d"] == IntDistribution(1, 3)  # Hydra's range excludes its stop
    assert distributions["e"] == FloatDistribution(0.0, 0.5)
    assert fixed == {"seed": "3"}


def test_storage_paths_become_urls_every_worker_can_open(tmp_path, monkeypatch):
    from cxr.jobs.search import open_storage, storage_url

    monkeypatch.chdir(tmp_path)
    assert storage_url("outputs/search/s.db") == f"sqlite:///{tmp_path / 'outputs' / 'search' / 's.db'}"
    assert (tmp_path / "outputs" / "search").is_dir()  # SQLite does not create folders
    assert storage_url("postgresql://db/optuna") == "postgresql://db/optuna"
    assert storage_url(":memory:") is None
    journal = storage_url("shared/study.log")  # a journal file: for NFS clusters without a database server
    assert journal == f"journal://{tmp_path / 'shared' / 'study.log'}"
    import optuna

    study = optuna.create_study(study_name="s", storage=open_storage(journal), direction="maximize")
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=2)
    assert len(optuna.load_study(study_name="s", storage=open_storage(journal)).trials) == 2


def test_the_search_objective_is_validation_auroc_not_test():
    from cxr.jobs.train import objective

    metrics = {"validation": {"auroc_best": 0.7, "auroc_last": 0.6}, "test": {"auroc": 0.9}}
    assert objective(metrics) == 0.7
    assert objective({"test": {"auroc": 0.9}}) != objective({"test": {"auroc": 0.9}})  # NaN: no validation AUROC


def test_results_of_a_study_with_one_complete_trial_say_why_there_is_no_importance_plot(tmp_path):
    import optuna

    from cxr.jobs.search import write_results

    study = optuna.create_study(direction="maximize")
    study.optimize(lambda trial: trial.suggest_float("lr", 0, 1), n_trials=1)
    summary = write_results(study, tmp_path)
    assert summary["best_trial"] == 0 and (tmp_path / "history.png").is_file()
    assert not (tmp_path / "importance.png").exists() and "importance.png needs 2" in summary["notes"][0]
    assert "| 0 | COMPLETE |" in (tmp_path / "trials.md").read_text()


def _train(cwd, *args: str) -> subprocess.Popen:
    """``python train.py ...`` as a user types it, in ``cwd`` (no hydra.sweep.dir, no storage given)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, str(REPO / "train.py"), *args],
        cwd=cwd,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _finish(process: subprocess.Popen) -> str:
    out, err = process.communicate(timeout=900)
    assert process.returncode == 0, err[-3000:]
    return err


def _study(cwd, name: str = "cxr_D_demo"):
    import optuna

    return optuna.load_study(study_name=name, storage=f"sqlite:///{cwd / 'outputs' / 'search' / f'{name}.db'}")


@pytest.mark.slow
def test_documented_search_runs_from_a_fresh_directory_and_a_second_call_continues_it(tmp_path, demo_root):
    command = [
        "hparams_search=optuna_D",
        "debug=fdr",
        "hydra.sweeper.n_trials=2",
        "logger=csv",
        "data_check=false",
        *DEMO_OVERRIDES(demo_root),
    ]
    _finish(_train(tmp_path, *command))
    _finish(_train(tmp_path, *command))
    study = _study(tmp_path)
    assert sorted(t.number for t in study.trials) == [0, 1, 2, 3]
    sweeps = sorted((tmp_path / "outputs" / "search" / "cxr_D_demo").iterdir())
    assert len(sweeps) == 2
    for trial in study.trials:
        # trial n's run directory is <sweep dir>/<n>_<run name>
        (run,) = [d for d in sweeps[trial.number // 2].iterdir() if d.name.split("_")[0] == str(trial.number)]
        assert trial.user_attrs["run_dir"] == str(run)
        metrics = json.loads((run / "metrics.json").read_text())
        assert metrics["program"] == "D" and metrics["search"] == {"study": "cxr_D_demo", "trial": trial.number}
        assert trial.value == pytest.approx(metrics["validation"]["auroc_best"])  # validation, not test
        assert (
            f"program.training.lr={trial.params['program.training.lr']}"
            in (run / ".hydra" / "overrides.yaml").read_text()
        )
    latest = sweeps[-1]
    best = study.best_trial
    assert f"best_trial: {best.number}" in (latest / "best.yaml").read_text()
    assert (latest / "trials.csv").read_text().count("COMPLETE") == 4  # every worker's trials, not only this call's
    assert (latest / "history.png").is_file() and (latest / "trials.md").is_file()


@pytest.mark.slow
def test_a_hopeless_trial_is_pruned_and_its_run_directory_says_so(tmp_path, demo_root):
    """lr=1000 makes training diverge at the first step: every output saturates and validation AUROC is exactly
    0.5 (chance). A pruner that stops trials no better than chance must stop it after its first epoch."""
    import optuna

    (tmp_path / "outputs" / "search").mkdir(parents=True)
    study = optuna.create_study(
        study_name="cxr_D_demo",
        direction="maximize",
        storage=f"sqlite:///{tmp_path / 'outputs' / 'search' / 'cxr_D_demo.db'}",
    )
    study.enqueue_trial({"program.training.lr": 1000.0})  # the hopeless trial first
    _finish(
        _train(
            tmp_path,
            "hparams_search=optuna_D",
            "debug=fdr",
            "hydra.sweeper.n_trials=2",
            "logger=csv",
            "data_check=false",
            "program.training.lr=choice(1000.0, 0.001)",
            "hydra.sweeper.pruner._target_=optuna.pruners.ThresholdPruner",
            "~hydra.sweeper.pruner.n_startup_trials",
            "~hydra.sweeper.pruner.n_warmup_steps",
            "+hydra.sweeper.pruner.lower=0.5001",
            *DEMO_OVERRIDES(demo_root),
        )
    )
    trials = _study(tmp_path).trials
    hopeless = trials[0]
    assert hopeless.params["program.training.lr"] == 1000.0
    assert hopeless.state == optuna.trial.TrialState.PRUNED and hopeless.intermediate_values == {1: 0.5}
    metrics = json.loads((tmp_path / hopeless.user_attrs["run_dir"] / "metrics.json").read_text())
    assert metrics["status"] == "pruned" and metrics["search"]["pruned_at_epoch"] == 1
    assert "test" not in metrics  # a pruned trial is not evaluated on the test split
    sweep = next((tmp_path / "outputs" / "search" / "cxr_D_demo").iterdir())
    assert "| 0 | PRUNED |" in (sweep / "trials.md").read_text()


@pytest.mark.slow
def test_two_workers_share_one_study_without_duplicate_trials(tmp_path, demo_root):
    command = [
        "hparams_search=optuna_D",
        "debug=fdr",
        "hydra.sweeper.n_trials=3",
        "logger=csv",
        "data_check=false",
        *DEMO_OVERRIDES(demo_root),
    ]
    workers = [_train(tmp_path, *command), _train(tmp_path, *command)]  # both at once, like two SLURM jobs
    for worker in workers:
        _finish(worker)
    trials = _study(tmp_path).trials
    assert sorted(t.number for t in trials) == list(range(6))
    assert {t.state.name for t in trials} == {"COMPLETE"}
    run_dirs = [t.user_attrs["run_dir"] for t in trials]
    assert len(set(run_dirs)) == 6 and len({os.path.dirname(d) for d in run_dirs}) == 2  # one sweep dir each
