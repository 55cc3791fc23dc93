"""The hyper-parameter search (``hparams_search=...``): Optuna studies, their search space in Hydra's override
syntax, the pruning of hopeless trials during training, and the results a person reads after a search.

The sweeper itself (``hydra_plugins/cxr_optuna_sweeper``) asks Optuna for one trial at a time and runs it as a
Hydra job; the job (``cxr.jobs.train.train``) reports validation AUROC per epoch here and stops when the pruner says.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cxr.errors import ConfigError

log = logging.getLogger(__name__)

JOURNAL_SUFFIXES = (".log", ".journal", ".jsonl")  # a storage path with one of these is a JournalFileBackend
PRUNED_ATTR = "pruned_at_epoch"  # the trial's user attribute the job sets when the pruner stopped it
RUN_DIR_ATTR = "run_dir"


def sqlite_storage(path: str) -> str:
    """``sqlite:///<absolute path>`` for an Optuna study, creating its folder (SQLite does not)."""
    path = Path(path).expanduser().resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def default_storage(config) -> str:
    """``<paths.log_dir>/search/<study name>.db``: a study beside its sweeps (resolved once HydraConfig is set,
    as paths.* may read ``${hydra:runtime.cwd}``)."""
    log_dir = config.get("paths", {}).get("log_dir") or "outputs"
    return str(Path(log_dir) / "search" / f"{config.hydra.sweeper.study_name}.db")


def storage_url(spec: str) -> str | None:
    """The study's storage as a URL that every worker can open: an Optuna RDB URL as given (``sqlite:///…``,
    ``postgresql://…``), ``journal:///<abs path>`` for a journal file (``*.log``: NFS clusters without a
    database), a plain path as SQLite at that path (relative to the working directory); ``:memory:``: None."""
    spec = str(spec)
    if spec == ":memory:":
        return None
    if "://" in spec:
        return spec
    path = Path(spec).expanduser().resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"journal://{path}" if path.suffix in JOURNAL_SUFFIXES else f"sqlite:///{path}"


def open_storage(url: str):
    """The Optuna storage behind :func:`storage_url`'s URL."""
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage
    from sqlalchemy.exc import SQLAlchemyError

    if url.startswith("journal://"):
        return JournalStorage(JournalFileBackend(url.removeprefix("journal://")))
    # a worker's SQLite write may wait for another worker's: the default 5 s timeout fails trials under load
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    for attempt in range(3):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
        except SQLAlchemyError:  # two workers creating a new database's tables at once: the second finds them
            if attempt == 2:
                raise
            time.sleep(1 + attempt)


def build_optuna_object(spec: Any, kind: str):
    """A sampler or pruner from ``{_target_: optuna.<kind>s.<Class>, ...}``; only Optuna's own classes (a search
    config names no other code)."""
    from hydra.utils import instantiate
    from omegaconf import DictConfig, OmegaConf

    if spec is None or not isinstance(spec, (dict, DictConfig)):
        return spec  # None, or already built (Hydra instantiates a sweeper's nested _target_ nodes with it)
    spec = OmegaConf.to_container(spec, resolve=True) if isinstance(spec, DictConfig) else dict(spec)
    target = str(spec.get("_target_", ""))
    if not target.startswith(f"optuna.{kind}s."):
        raise ConfigError(
            f"hydra.sweeper.{kind}._target_={target!r}: choose one of Optuna's {kind}s (optuna.{kind}s.<Class>)"
        )
    return instantiate(spec)


# --------------------------------------------------------------------------------------------- search space
def search_space(arguments: list[str]) -> tuple[dict, dict]:
    """Optuna distributions for the sweep overrides (``choice(...)``, ``range(...)``, ``interval(...)``,
    ``tag(log, interval(...))``) and the fixed overrides passed to every trial, as hydra-optuna-sweeper read them."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import Transformer
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    distributions, fixed = {}, {}
    for override in OverridesParser.create().parse_overrides(arguments):
        name = override.get_key_element()
        value = override.value()
        if not override.is_sweep_override():
            fixed[name] = override.get_value_element_as_str()
        elif override.is_choice_sweep() or (override.is_range_sweep() and value.shuffle):
            distributions[name] = CategoricalDistribution(list(override.sweep_iterator(transformer=Transformer.encode)))
        elif override.is_range_sweep():
            if any(isinstance(v, float) for v in (value.start, value.stop, value.step)):
                # Hydra's range excludes stop; Optuna's high is inclusive
                distributions[name] = FloatDistribution(value.start, value.stop - value.step, step=value.step)
            else:
                distributions[name] = IntDistribution(int(value.start), int(value.stop) - 1, step=int(value.step))
        elif override.is_interval_sweep():
            log_scale = "log" in value.tags
            if isinstance(value.start, int) and isinstance(value.end, int):
                distributions[name] = IntDistribution(value.start, value.end, log=log_scale)
            else:
                distributions[name] = FloatDistribution(float(value.start), float(value.end), log=log_scale)
        else:
            raise ConfigError(
                f"hydra.sweeper.params: {name}: {override.input_line} is not a search space Optuna "
                "knows (choice, range, interval, tag(log, interval(...)))"
            )
    for name in fixed:
        distributions.pop(name, None)
    return distributions, fixed


def suggest(trial, distributions: dict) -> dict:
    """Ask the trial for every parameter through Optuna's public suggest API."""
    from optuna.distributions import CategoricalDistribution, IntDistribution

    params = {}
    for name, distribution in distributions.items():
        if isinstance(distribution, CategoricalDistribution):
            params[name] = trial.suggest_categorical(name, distribution.choices)
        elif isinstance(distribution, IntDistribution):
            params[name] = trial.suggest_int(
                name, distribution.low, distribution.high, step=distribution.step, log=distribution.log
            )
        else:
            params[name] = trial.suggest_float(
                name, distribution.low, distribution.high, step=distribution.step, log=distribution.log
            )
    return params


def quote(value: str) -> str:
    """``value`` as one quoted string in Hydra's override grammar (paths with spaces or colons)."""
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


# ---------------------------------------------------------------------------------------- the job's side
@dataclass
class TrialHandle:
    """The Optuna trial this training run is, opened from the storage the sweeper passed in the job's config."""

    study_name: str
    number: int
    trial: Any
    monitor: str


def current_trial() -> TrialHandle | None:
    """This job's trial when the cxr Optuna sweeper launched it (``hydra.sweeper.trial`` is set), else None."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    sweeper = HydraConfig.get().get("sweeper") or {}
    if sweeper.get("trial") is None or not str(sweeper.get("_target_", "")).startswith("hydra_plugins.cxr_optuna"):
        return None
    import optuna

    storage = open_storage(storage_url(sweeper.storage))
    study = optuna.load_study(
        study_name=sweeper.study_name, storage=storage, pruner=build_optuna_object(sweeper.get("pruner"), "pruner")
    )
    study_id = storage.get_study_id_from_name(sweeper.study_name)
    trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, int(sweeper.trial))
    return TrialHandle(
        sweeper.study_name, int(sweeper.trial), optuna.trial.Trial(study, trial_id), sweeper.get("monitor", "val/auroc")
    )


def pruning_callback(handle: TrialHandle):
    """A Lightning callback that reports the monitored validation figure to the trial after every validation epoch
    and stops training when the pruner says the trial is hopeless."""
    import lightning as L

    # Not optuna-integration's PyTorchLightningPruningCallback: it raises TrialPruned inside fit, which ends the run
    # without its history, curves and metrics.json; stopping like EarlyStopping keeps the run directory whole.
    class OptunaPruning(L.Callback):
        def __init__(self):
            self.pruned_at_epoch: int | None = None

        def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            if trainer.sanity_checking:
                return
            value = trainer.callback_metrics.get(handle.monitor)
            prune = False
            if trainer.is_global_zero and value is not None and math.isfinite(float(value)):
                epoch = trainer.current_epoch + 1  # 1-based, as history.csv
                handle.trial.report(float(value), step=epoch)
                prune = handle.trial.should_prune()
                if prune:
                    self.pruned_at_epoch = epoch
                    handle.trial.set_user_attr(PRUNED_ATTR, epoch)
                    log.info(
                        "trial %d pruned after epoch %d (%s %.4f)", handle.number, epoch, handle.monitor, float(value)
                    )
            if trainer.strategy.reduce_boolean_decision(prune, all=False):
                trainer.should_stop = True

    return OptunaPruning()


# ---------------------------------------------------------------------------------------- the results
def write_results(study, sweep_dir: Path) -> dict:
    """The files a person reads after a search, in the sweep directory: ``trials.csv`` and ``trials.md`` (state,
    validation figure, parameters, run directory of every trial of the study, all workers'), ``best.yaml`` (also as
    ``optimization_results.yaml``, hydra-optuna-sweeper's name), ``history.png`` and ``importance.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import optuna
    import pandas as pd
    from omegaconf import OmegaConf

    from cxr.artifacts import write_csv, write_text

    sweep_dir.mkdir(parents=True, exist_ok=True)
    trials = study.get_trials(deepcopy=False)
    rows = [
        {
            "trial": t.number,
            "state": t.state.name,
            "value": t.value,
            **{f"params.{k}": v for k, v in t.params.items()},
            "pruned_at_epoch": t.user_attrs.get(PRUNED_ATTR),
            "run_dir": t.user_attrs.get(RUN_DIR_ATTR),
        }
        for t in trials
    ]
    table = pd.DataFrame(rows)
    write_csv(sweep_dir / "trials.csv", table)
    write_text(sweep_dir / "trials.md", f"# Study {study.study_name}: {len(trials)} trials\n\n{_markdown(table)}")

    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    summary: dict = {
        "name": study.study_name,
        "direction": study.direction.name.lower(),
        "n_trials": len(trials),
        "states": {s: int(n) for s, n in table["state"].value_counts().items()} if rows else {},
    }
    notes = []
    if complete:
        best = study.best_trial
        summary.update(
            best_trial=best.number,
            best_value=best.value,
            best_params=best.params,
            best_run_dir=best.user_attrs.get(RUN_DIR_ATTR),
        )
        _plot(optuna.visualization.matplotlib.plot_optimization_history, study, sweep_dir / "history.png")
    else:
        notes.append("no complete trial yet: no best trial and no history plot")
    varied = {k for t in complete for k in t.params if len({str(u.params.get(k)) for u in complete}) > 1}
    if len(complete) >= 2 and varied:
        _plot(optuna.visualization.matplotlib.plot_param_importances, study, sweep_dir / "importance.png")
    else:
        notes.append(f"importance.png needs 2 complete trials that differ in a parameter ({len(complete)} complete)")
    if notes:
        summary["notes"] = notes
    text = OmegaConf.to_yaml(OmegaConf.create(summary))
    write_text(sweep_dir / "best.yaml", text)
    write_text(sweep_dir / "optimization_results.yaml", text)
    return summary


def _plot(plot, study, path: Path) -> None:
    """One of Optuna's matplotlib plots as a PNG (they are 'experimental' since 2.2: the warning says nothing here)."""
    import warnings

    import matplotlib.pyplot as plt
    from optuna.exceptions import ExperimentalWarning

    from cxr.evaluation.figures import save_figure

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        figure = plot(study).figure
    save_figure(figure, path)
    plt.close(figure)


def _markdown(table) -> str:
    """A pandas table as a Markdown table (pandas' to_markdown needs tabulate, not installed for one table)."""

    def cell(value) -> str:
        return "" if value is None or value != value else str(value).replace("|", "\\|")

    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines) + "\n"
