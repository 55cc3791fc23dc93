"""A thin Hydra sweeper on Optuna's ask/tell API: one trial at a time per process, so several processes (or SLURM
jobs) sharing one study storage each take the next trial and none waits for a batch.

Why our own and not hydra-optuna-sweeper: its last stable release (1.3) needs optuna<3 (SQLAlchemy<2), and its 1.4
pre-releases need Hydra 1.4, a pre-release the rest of the project does not use. Hydra scans this module at every
start, so it imports nothing heavy at the top (and no ``from __future__ import annotations``: the scanner runs it
before it is in sys.modules, where dataclasses look string annotations up).
"""

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.plugins.sweeper import Sweeper

log = logging.getLogger(__name__)


@dataclass
class OptunaSweeperConf:
    """``hydra/sweeper=cxr_optuna``: the study, how trials are chosen and pruned, and the search space."""

    _target_: str = "hydra_plugins.cxr_optuna_sweeper.optuna_sweeper.OptunaSweeper"
    direction: str = "maximize"
    study_name: str = "cxr"
    # a path (SQLite; *.log: Optuna's journal file, for NFS clusters) or an Optuna RDB URL; null:
    # <paths.log_dir>/search/<study_name>.db; :memory: in this process only (no pruning, nothing kept)
    storage: str | None = None
    n_trials: int = 20  # trials this process runs (the study keeps every worker's)
    sampler: Any = field(default_factory=lambda: {"_target_": "optuna.samplers.TPESampler"})
    pruner: Any = field(default_factory=lambda: {"_target_": "optuna.pruners.MedianPruner"})
    monitor: str = "val/auroc"  # reported to the pruner after every validation epoch
    params: dict[str, str] = field(default_factory=dict)  # key: choice(...) | interval(...) | tag(log, interval(...))
    trial: int | None = None  # set by the sweeper in each trial's job: the trial number it runs


ConfigStore.instance().store(group="hydra/sweeper", name="cxr_optuna", node=OptunaSweeperConf, provider="cxr")


class OptunaSweeper(Sweeper):
    """Ask Optuna for a trial, run it as one Hydra job through the configured launcher, tell Optuna its validation
    figure (or PRUNED / FAIL), repeat ``n_trials`` times; then write the results into the sweep directory."""

    def __init__(
        self,
        direction: str,
        study_name: str,
        storage: str | None,
        n_trials: int,
        sampler: Any,
        pruner: Any,
        monitor: str,
        params: dict[str, str] | None,
        trial: int | None = None,
    ) -> None:
        self.direction, self.study_name, self.storage = direction, study_name, storage
        self.n_trials, self.sampler, self.pruner, self.monitor = n_trials, sampler, pruner, monitor
        self.params = dict(params or {})

    def setup(self, *, hydra_context, task_function, config) -> None:
        from hydra.core.plugins import Plugins

        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function
        )

    def sweep(self, arguments: list[str]) -> Any:
        import optuna
        from hydra.core.hydra_config import HydraConfig
        from hydra.core.utils import JobStatus

        from cxr.jobs import search

        # paths.* may read ${hydra:runtime.cwd}: resolvable before the first job only once HydraConfig is set
        HydraConfig.instance().set_config(self.config)
        distributions, fixed = search.search_space([f"{k}={v}" for k, v in self.params.items()] + list(arguments))
        url = search.storage_url(self.storage or search.default_storage(self.config))
        storage = search.open_storage(url) if url else optuna.storages.InMemoryStorage()
        study = optuna.create_study(
            study_name=self.study_name,
            storage=storage,
            direction=self.direction,
            sampler=search.build_optuna_object(self.sampler, "sampler"),
            pruner=search.build_optuna_object(self.pruner, "pruner"),
            load_if_exists=True,
        )
        study_id = storage.get_study_id_from_name(study.study_name)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        log.info(
            "study %s in %s: %d trials so far; %d more, searching %s",
            study.study_name,
            url or "memory",
            len(study.trials),
            self.n_trials,
            ", ".join(distributions) or "nothing",
        )
        passed = [f"hydra.sweeper.storage={search.quote(url)}"] if url else []
        failures = []
        for _ in range(self.n_trials):
            trial = study.ask()
            params = search.suggest(trial, distributions)
            overrides = [f"{k}={v}" for k, v in {**params, **fixed}.items()]
            overrides += [*passed, f"hydra.sweeper.trial={trial.number}"] if url else []
            log.info("trial %d: %s", trial.number, " ".join(f"{k}={v}" for k, v in params.items()))
            # the job number is the trial number: trial n's run directory is <sweep dir>/<n>_<run name>
            (ret,) = self.launcher.launch([overrides], initial_job_idx=trial.number)
            run_dir = str(ret.hydra_cfg.hydra.runtime.output_dir) if ret.hydra_cfg is not None else None
            if run_dir:
                trial.set_user_attr(search.RUN_DIR_ATTR, run_dir)
            frozen = storage.get_trial(storage.get_trial_id_from_study_id_trial_number(study_id, trial.number))
            if ret.status == JobStatus.FAILED:
                failures.append(ret._return_value)
                log.error(
                    "trial %d failed: %s: %s (%s)",
                    trial.number,
                    type(ret._return_value).__name__,
                    ret._return_value,
                    run_dir,
                )
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
            elif search.PRUNED_ATTR in frozen.user_attrs:
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            else:
                value = float(ret.return_value)
                if math.isfinite(value):
                    study.tell(trial, value)
                    log.info("trial %d: %s %.4f", trial.number, self.monitor, value)
                else:
                    log.warning("trial %d has no %s (%s): recorded as failed", trial.number, self.monitor, value)
                    study.tell(trial, state=optuna.trial.TrialState.FAIL)
        summary = search.write_results(study, sweep_dir)
        if "best_trial" in summary:
            log.info(
                "best trial %d: %s %.4f, %s (run directory %s)",
                summary["best_trial"],
                self.monitor,
                summary["best_value"],
                summary["best_params"],
                summary["best_run_dir"],
            )
        log.info("results in %s: %s", sweep_dir, ", ".join(sorted(p.name for p in sweep_dir.iterdir() if p.is_file())))
        if failures and len(failures) == self.n_trials:
            raise failures[0]  # every trial failed: the same bug each time, not a bad corner of the search space
        return summary
