"""Every option of every config group builds: composed as the command line composes it and its objects made on the
CPU (Trainer with its strategy, model, callbacks, loggers, DataModule; for sweeps the sweeper and the launcher), so
a key in the wrong place fails here and not on a GPU node. New presets are found by listing conf/."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
from hydra.utils import get_class

from tests.config_builds import build_command, config_groups, top_level_configs

# what a preset leaves for the user to give (a ??? value): the least that lets it build
REQUIRED = {("model", "torchvision"): ["model.net.name=resnet18"]}
# groups that only take effect in a multirun (hydra/launcher, hydra/sweeper) are built as `-m`
MULTIRUN_GROUPS = ("hydra/launcher", "hydra/sweeper")

PRESETS = [(group, option) for group, options in config_groups().items() for option in options]


def assert_job_built(job: dict) -> None:
    """The objects are the ones the config names, with its devices and strategy."""
    cfg, trainer = job["config"], job["trainer"]
    assert isinstance(trainer, L.Trainer) and isinstance(job["model"], L.LightningModule)
    assert isinstance(job["datamodule"], L.LightningDataModule)
    assert type(job["model"]) is get_class(cfg.model._target_)
    strategy = cfg.trainer.get("strategy")
    if isinstance(strategy, dict) or hasattr(strategy, "keys"):
        assert type(trainer.strategy) is get_class(strategy._target_)
    assert trainer.num_devices == cfg.trainer.devices and trainer.num_nodes == cfg.trainer.get("num_nodes", 1)
    callbacks = [name for name, c in (cfg.get("callbacks") or {}).items() if c and "_target_" in c]
    assert len(job["callbacks"]) == len(callbacks)
    assert len(trainer.loggers) == len([c for c in (cfg.get("logger") or {}).values() if c and "_target_" in c])


@pytest.mark.parametrize("group, option", PRESETS, ids=[f"{g}={o}" for g, o in PRESETS])
def test_every_preset_builds(group, option, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # sweep and search directories resolve under the working directory's outputs/
    overrides = [f"{group}={option}", *REQUIRED.get((group, option), [])]
    built = build_command("train", overrides, multirun=group in MULTIRUN_GROUPS, output_dir=tmp_path / "run")
    assert built.jobs
    for job in built.jobs:
        assert_job_built(job)
    if built.sweeper is not None:  # with no extra argument, under the working directory's outputs/, as a run
        assert built.launcher is not None and built.sweep_dir.is_relative_to(tmp_path / "outputs")
        sweeper = built.sweeper
        while getattr(sweeper, "sweeper", None) is not None:
            sweeper = sweeper.sweeper
        storage = str(getattr(sweeper, "storage", None) or "")
        if storage.startswith("sqlite:///"):  # a search's study
            assert Path(storage.removeprefix("sqlite:///")).is_relative_to(tmp_path / "outputs"), storage
    if group == "hydra/launcher" and option.startswith("submitit"):
        assert built.executor is not None
    if built.sbatch is not None:
        devices = built.jobs[0]["config"].trainer.devices
        assert f"#SBATCH --ntasks-per-node={devices}" in built.sbatch


def test_every_preset_is_found():
    groups = config_groups()
    assert {
        "trainer",
        "model",
        "task",
        "experiment",
        "program",
        "data",
        "split",
        "logger",
        "callbacks",
        "debug",
        "evaluation",
        "hparams_search",
        "hydra/launcher",
        "hydra/sweeper",
        "paths",
    } <= set(groups)
    assert "_thesis" not in groups["program"] and "_common" not in groups["data"]
    assert {"ddp", "ddp_cpu", "gpu"} <= set(groups["trainer"])
    assert {"basic", "slurm", "submitit_local"} <= set(groups["hydra/launcher"])


@pytest.mark.parametrize("config_name", top_level_configs())
def test_every_top_level_config_resolves(config_name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    built = build_command(config_name, [], multirun=False, output_dir=tmp_path / "run")
    assert built.jobs[0]["config"].task_name == config_name
    if config_name == "train":
        assert_job_built(built.jobs[0])
