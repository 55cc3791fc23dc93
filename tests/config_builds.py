"""Build what a command line's config describes, on the CPU and without training or submitting: the Trainer with its
strategy, model, callbacks, loggers, DataModule, and for a sweep Hydra's sweeper and launcher (a submitit launcher
down to its executor and, for SLURM, its sbatch script). Used by the preset test and by the documented-commands
test for ``<!-- ci: compose -->`` blocks, so a misplaced key fails where it would fail on a GPU or a cluster."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock

import torch
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.plugins import Plugins
from hydra.types import HydraContext, RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from tests.conftest import CONFIG_DIR

TRAINING_CONFIGS = ("train",)  # the configs whose jobs build a Trainer, a model and a DataModule


@dataclass
class Built:
    """What one command line's config built: per job, the objects by name; for a sweep, the sweeper and launcher."""

    jobs: list[dict] = field(default_factory=list)
    sweeper: object = None
    launcher: object = None
    executor: object = None
    sweep_dir: Path | None = None
    sbatch: str | None = None


class _Submitted(Exception):
    """Raised instead of submitting: the launcher has built its executor."""

    def __init__(self, executor):
        super().__init__("not submitted")
        self.executor = executor


def _on_cpu(cfg: DictConfig) -> None:
    """Where there is no GPU, a GPU preset runs on CPU devices; every other key (strategy, devices, nodes) is kept,
    so a misplaced key still fails. ImageNet weights that are not cached would need the network: random init."""
    with open_dict(cfg):
        trainer = cfg.get("trainer")
        if (
            trainer is not None
            and trainer.get("accelerator") in ("gpu", "cuda", "auto")
            and not torch.cuda.is_available()
        ):
            trainer.accelerator = "cpu"
        model = cfg.get("model")
        if model is not None and model.get("weights") == "imagenet":
            from cxr.models.backbones import imagenet_cache_file

            if not imagenet_cache_file(model.net.name).is_file():
                model.weights = "none"


def _build_job(cfg: DictConfig, config_name: str) -> dict:
    """Every object of one job's config, built as ``cxr.jobs.train.train`` builds them."""
    HydraConfig.instance().set_config(cfg)
    job = copy.deepcopy(cfg)
    with open_dict(job):
        del job["hydra"]
    OmegaConf.to_container(job, resolve=True)  # every interpolation of the job resolves
    if config_name not in TRAINING_CONFIGS:
        return {"config": job}
    from cxr.jobs.train import build_trainer

    _on_cpu(job)
    trainer, callbacks = build_trainer(job)
    return {
        "config": job,
        "trainer": trainer,
        "callbacks": callbacks,
        "model": instantiate(job.model),
        "datamodule": instantiate(job.data),
    }


def _build_executor(built: Built, cfg: DictConfig, job_overrides: list[str]) -> None:
    """A submitit launcher as far as it goes without a cluster: its executor with every parameter applied
    (unknown ones fail in submitit) and, for SLURM, the sbatch script it would submit."""
    import submitit
    from submitit.slurm.slurm import SlurmExecutor

    def stop(executor, *args, **kwargs):
        raise _Submitted(executor)

    # no srun here: SlurmExecutor's "are we on a cluster" check passes, nothing is submitted
    with (
        mock.patch.object(submitit.AutoExecutor, "map_array", stop),
        mock.patch.object(SlurmExecutor, "affinity", classmethod(lambda cls: 1)),
    ):
        try:
            built.launcher.launch([job_overrides], initial_job_idx=0)
        except _Submitted as submitted:
            built.executor = submitted.executor
    assert built.executor is not None, "the launcher did not build a submitit executor"
    inner = getattr(built.executor, "_executor", None)
    if type(inner).__name__ == "SlurmExecutor":
        built.sbatch = inner._make_submission_file_text("python -u -m submitit.core._submit", "uid")


def build_command(config_name: str, overrides: list[str], multirun: bool, output_dir: Path) -> Built:
    """Compose ``config_name`` with a command line's overrides as Hydra does for ``[-m] overrides`` (from the
    current working directory) and build everything it describes; each job writes under ``output_dir``."""
    GlobalHydra.instance().clear()
    built = Built()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            loader = GlobalHydra.instance().config_loader()
            if not multirun:
                cfg = loader.load_configuration(config_name, overrides, run_mode=RunMode.RUN)
                multirun = cfg.hydra.mode == RunMode.MULTIRUN  # hparams_search sets it
            if not multirun:
                with open_dict(cfg):
                    cfg.hydra.runtime.output_dir = str(output_dir)
                    cfg.hydra.job.num = 0
                built.jobs.append(_build_job(cfg, config_name))
                return built
            _build_sweep(built, loader, config_name, overrides, output_dir)
    finally:
        HydraConfig.instance().cfg = None
        GlobalHydra.instance().clear()
    return built


def _build_sweep(built: Built, loader, config_name: str, overrides: list[str], output_dir: Path) -> None:
    """As ``Hydra.multirun``: the sweep's config, Hydra's callbacks, the sweeper (which makes the launcher), then
    every job of the sweep's grid (for a search: the base job) composed as the launcher composes it."""
    from hydra._internal.callbacks import Callbacks
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    master = loader.load_configuration(config_name, overrides, run_mode=RunMode.MULTIRUN)
    callbacks = Callbacks(master)
    callbacks.on_multirun_start(config=master, config_name=config_name)
    built.sweeper = Plugins.instance().instantiate_sweeper(
        config=master,
        hydra_context=HydraContext(config_loader=loader, callbacks=callbacks),
        task_function=lambda cfg: None,
    )
    sweeper = built.sweeper
    while getattr(sweeper, "sweeper", None) is not None:  # a plugin's class around its implementation (Optuna's)
        sweeper = sweeper.sweeper
    built.launcher = sweeper.launcher
    built.sweep_dir = Path(str(master.hydra.sweep.dir))
    parser = OverridesParser.create()
    search_space = getattr(sweeper, "params", None) or {}
    parser.parse_overrides([f"{key}={value}" for key, value in search_space.items()])  # the search space parses
    task_overrides = OmegaConf.to_container(master.hydra.overrides.task, resolve=False)
    jobs = BasicSweeper.split_arguments(parser.parse_overrides(task_overrides), max_batch_size=None)[0]
    if type(built.launcher).__module__.startswith("hydra_plugins.hydra_submitit_launcher"):
        _build_executor(built, master, list(jobs[0]))
    for number, job_overrides in enumerate(jobs):
        cfg = loader.load_sweep_config(master, list(job_overrides))
        with open_dict(cfg):
            cfg.hydra.job.num = number
            cfg.hydra.runtime.output_dir = str(output_dir / str(number))
        built.jobs.append(_build_job(cfg, config_name))


def config_groups() -> dict[str, list[str]]:
    """Every config group of conf/ and its options (files starting with ``_`` are internal), found by listing
    the directory; for ``hydra/launcher`` and ``hydra/sweeper`` also the options Hydra's plugins add."""
    groups: dict[str, set[str]] = {}
    for path in CONFIG_DIR.rglob("*.yaml"):
        group = path.parent.relative_to(CONFIG_DIR).as_posix()
        if group != "." and not path.name.startswith("_"):
            groups.setdefault(group, set()).add(path.stem)
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        for group in ("hydra/launcher", "hydra/sweeper"):
            groups.setdefault(group, set()).update(loader.get_group_options(group))
    GlobalHydra.instance().clear()
    return {group: sorted(options) for group, options in sorted(groups.items())}


def top_level_configs() -> list[str]:
    return sorted(path.stem for path in CONFIG_DIR.glob("*.yaml"))
