"""The command-line entry points: ``train.py`` / ``cxr-train``, ``evaluate.py`` / ``cxr-evaluate``,
``python -m cxr.check`` / ``cxr-check`` and ``compare.py`` / ``cxr-compare``.

A user error (label file, image, split, config, checkpoint, data check, unknown override key) ends with one line
``error: <message>`` on stderr and exit status 1 (2 for a config that does not compose), without a traceback;
``HYDRA_FULL_ERROR=1`` shows the traceback instead. Any other exception is a bug and keeps its traceback.
"""
from __future__ import annotations

import functools
import logging
import os
import sys
import warnings
from typing import Callable

import hydra
from hydra.errors import HydraException
from omegaconf import DictConfig

show_tracebacks = False  # HYDRA_FULL_ERROR=1 as the user set it (we set it ourselves to receive Hydra's errors)


class _UserExit(SystemExit):
    """A user error already turned into its message; passes through Hydra (it catches Exception only)."""

    def __init__(self, message: str, status: int = 1):
        super().__init__(status)
        self.message = message


def quiet_library_noise() -> None:
    """The one place where known library messages that tell a user nothing are filtered, each with the reason; every
    other Python warning goes to the logging system (the console and the run's log file), not to stderr alone."""
    # torch 2.10+ deprecates LeafSpec, which Lightning's own _pytree helper still uses on every fit: nothing a user
    # can change; it goes when Lightning uses TreeSpec.is_leaf()
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                            category=FutureWarning)
    # Lightning's advice to lower log_every_n_steps when an epoch has fewer batches: it concerns step-level curves
    # only; the epoch metrics (history.csv, TensorBoard, the progress lines) are complete whatever it is
    warnings.filterwarnings("ignore", message=r"The number of training batches \(\d+\) is smaller than the logging "
                            "interval")
    # Lightning's "💡 Tip: ... try installing litlogger / litmodels" lines advertise its cloud service on every run
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_no_advertisement)
    logging.captureWarnings(True)
    # lightning/__init__ gives the "lightning" logger its own stderr handler; under Hydra, whose handlers (console
    # and log file) receive Lightning's records too, each line would show twice. Present once Lightning is imported.
    lightning_logger = logging.getLogger("lightning")
    if logging.getLogger().handlers and lightning_logger.propagate:
        for handler in list(lightning_logger.handlers):
            if type(handler) is logging.StreamHandler:
                lightning_logger.removeHandler(handler)


def _no_advertisement(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("💡 Tip:")


def one_line(error: BaseException) -> str:
    """A user error as one line: a failed constructor's own message, its OmegaConf cause, no search path."""
    from hydra.errors import InstantiationException

    if isinstance(error, InstantiationException) and error.__cause__ is not None:
        cause = error.__cause__
        if isinstance(cause, _user_errors()):  # raised inside a constructor: the cause is the message
            error = cause
    text = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
    cause = error.__cause__
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(cause, OmegaConfBaseException) and str(cause).strip():
        text += f" ({str(cause).strip().splitlines()[0]})"
    text = text.split(" Config search path:")[0]  # Hydra's missing-config message lists its search path
    text = text.removeprefix("ERROR ")  # a data-check line ("ERROR truncated: …") after "error: "
    return text or type(error).__name__


def _user_errors() -> tuple[type[BaseException], ...]:
    from cxr.errors import user_error_types

    return (*user_error_types(), HydraException)


MANDATORY_EXAMPLES = {"ckpt_path": "<run>/checkpoints/<file>.ckpt", "inputs": "<image, folder, glob or @list.txt>"}


def require_set(cfg: DictConfig) -> None:
    """Refuse a config with mandatory keys (``???``) left unset, naming each of them (not only the first)."""
    from omegaconf import OmegaConf

    from cxr.errors import ConfigError

    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        example = " ".join(f"{key}={MANDATORY_EXAMPLES.get(key, '<...>')}" for key in missing)
        raise ConfigError(f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} required but not set: "
                          f"give {example}")


def catch_user_errors(task: Callable[[DictConfig], object]) -> Callable[[DictConfig], object]:
    """Wrap a Hydra task function: a user error becomes one ``error:`` line and exit status 1."""
    @functools.wraps(task)
    def wrapper(cfg: DictConfig):
        try:
            require_set(cfg)
            return task(cfg)
        except _user_errors() as error:
            if show_tracebacks:
                raise
            raise _UserExit(one_line(error)) from None

    return wrapper


def job_app(job: Callable[[DictConfig], int], config_name: str, prog: str) -> Callable[[], None]:
    """A Hydra app around ``job(cfg) -> exit status`` (predict.py, export.py): a user error is one
    ``<prog>: error: …`` line and exit status 2 (the command itself is wrong)."""
    from cxr.errors import user_error_types

    @hydra.main(version_base="1.3", config_path="pkg://cxr.conf", config_name=config_name)
    def app(cfg: DictConfig) -> None:
        try:
            require_set(cfg)
            status = job(cfg)
        except user_error_types() as error:
            if show_tracebacks:  # HYDRA_FULL_ERROR=1, as for train.py
                raise
            sys.stdout.flush()
            print(f"{prog}: error: {one_line(error)}", file=sys.stderr, flush=True)
            status = 2
        if status:
            sys.exit(status)

    app.config_name = config_name  # for run_app's suggestions of keys and options
    return app


def run_app(app: Callable[[], object], argv_transform: Callable[[list[str]], list[str]] | None = None,
            config_name: str | None = None) -> None:
    """Run a ``@hydra.main`` app (``argv_transform`` rewrites ``sys.argv[1:]`` first), printing user errors and
    Hydra's own config errors as one line on stderr; ``config_name`` (the app's primary config) lets an unknown
    key be answered with the nearest known one."""
    global show_tracebacks
    show_tracebacks = os.environ.get("HYDRA_FULL_ERROR") == "1"
    quiet_library_noise()
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra re-raises instead of printing a trimmed stack: we print one line
    try:
        if argv_transform is not None:
            sys.argv[1:] = argv_transform(sys.argv[1:])
        app()
    except _UserExit as stop:
        _fail(stop.message, stop.code)
    except HydraException as error:  # config composition, overrides, missing config: before the job ran
        if show_tracebacks:
            raise
        message = composition_error_line(error, config_name or getattr(app, "config_name", None), sys.argv[1:])
        _fail(message or one_line(error), 2)
    except _user_errors() as error:  # raised before the job (resume=): imports every module with error types
        if show_tracebacks:
            raise
        _fail(one_line(error), 1)
    finally:
        if not show_tracebacks:
            os.environ.pop("HYDRA_FULL_ERROR", None)


def composition_error_line(error: BaseException, config_name: str | None, argv: list[str]) -> str | None:
    """An unknown key, config group or option in a newcomer's words: the nearest valid name by ``difflib``
    ("did you mean `program`?") instead of Hydra's "To append to your config use +progam=C", and a group's
    options without its internal configs (names starting with ``_``, such as ``_thesis``). None: not such an
    error, or the suggestion itself failed (the caller prints Hydra's message)."""
    import re

    from hydra.errors import ConfigCompositionException, MissingConfigException

    try:
        if isinstance(error, MissingConfigException) and error.missing_cfg_file and "/" in error.missing_cfg_file:
            group, _, option = error.missing_cfg_file.rpartition("/")
            options = [o for o in (error.options or []) if not o.startswith("_")]
            if not options:  # not a group at all: ``progam/x=C``
                return _unknown_key_line(group.replace("/", "."), _override_line(argv, group), config_name,
                                         argv) if config_name else None
            guess = _nearest(option, options)
            hint = f"; did you mean `{group}={guess}`?" if guess else ""
            return f"{group}={option}: {group} has no option {option!r}{hint} (options: {', '.join(options)})"
        found = re.match(r"Could not override '([^']+)'\.\s*To append", str(error))
        if isinstance(error, ConfigCompositionException) and found and config_name:
            key = found.group(1)
            return _unknown_key_line(key, _override_line(argv, key), config_name, argv)
    except Exception:  # noqa: BLE001 - a suggestion must never hide the error itself
        return None
    return None


def _override_line(argv: list[str], key: str) -> str:
    """The command-line override that sets ``key`` (or ``key`` alone when none does)."""
    return next((a for a in argv if a.partition("=")[0].lstrip("+~").split("@")[0] == key), key)


def _nearest(name: str, candidates: list[str], cutoff: float = 0.6) -> str | None:
    """The candidate closest to ``name`` (case-insensitive; difflib's ratio of at least ``cutoff``)."""
    import difflib

    by_lower = {c.lower(): c for c in candidates}
    found = difflib.get_close_matches(name.lower(), list(by_lower), n=1, cutoff=cutoff)
    return by_lower[found[0]] if found else None


def _unknown_key_line(key: str, line: str, config_name: str, argv: list[str]) -> str:
    """``line`` sets ``key``, which the composed config lacks: name the nearest key or config group."""
    keys, groups = _known_names(config_name, [a for a in argv if a != line and not a.startswith("-")])
    parent, _, leaf = key.rpartition(".")
    siblings = [k.rpartition(".")[2] for k in keys if k.rpartition(".")[0] == parent]
    if not parent:
        siblings += [g for g in groups if "/" not in g]
    guess = _nearest(leaf, siblings)
    guess = f"{parent}.{guess}" if guess and parent else guess or _nearest(key, keys, cutoff=0.8)
    if guess:
        return f"{line}: unknown key {key!r}; did you mean `{guess}`?"
    return (f"{line}: unknown key {key!r} (no config key or group of that name; `--cfg job` prints the keys, "
            f"`--help` the groups; +{line.lstrip('+')} would add it as a new key)")


def _known_names(config_name: str, overrides: list[str]) -> tuple[list[str], list[str]]:
    """The dotted keys of the composed config (with these overrides when they compose, else the defaults; Hydra's
    own keys under ``hydra.``) and the config groups (``hydra/launcher`` ...)."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    GlobalHydra.instance().clear()  # the failed app's instance
    with initialize_config_module("cxr.conf", version_base="1.3"):
        loader = GlobalHydra.instance().hydra.config_loader

        def groups_under(parent: str) -> list[str]:
            names = [f"{parent}/{g}" if parent else g for g in loader.list_groups(parent)]
            return names + [sub for name in names for sub in groups_under(name)]

        groups = groups_under("")
        try:
            cfg = compose(config_name, overrides=overrides, return_hydra_config=True)
        except Exception:  # noqa: BLE001 - another bad override, or a sweep (a,b): the defaults' keys
            cfg = compose(config_name, return_hydra_config=True)
    GlobalHydra.instance().clear()

    def walk(node, prefix: str) -> list[str]:
        if not isinstance(node, dict):
            return []
        return [k for name, value in node.items() for k in [f"{prefix}{name}", *walk(value, f"{prefix}{name}.")]]

    return walk(OmegaConf.to_container(cfg, resolve=False), ""), groups


def _fail(message: str, status: int) -> None:
    sys.stdout.flush()
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(status)


# ------------------------------------------------------------------------------------------------ train
@hydra.main(version_base="1.3", config_path="pkg://cxr.conf", config_name="train")
@catch_user_errors
def _train_app(cfg: DictConfig) -> float:
    from cxr.pipeline import objective, train
    from cxr.run_dir import failure_recorded

    quiet_library_noise()  # again: importing Lightning (inside Hydra's logging) has added its own console handler
    with failure_recorded(cfg, one_line):
        metrics = train(cfg)
    return objective(metrics)  # what an Optuna sweeper (hparams_search=...) maximises: validation AUROC, never test


def train_main() -> None:
    """``cxr-train`` / ``python train.py [overrides]``; ``resume=<run dir>`` resumes a killed run."""
    from cxr.run_dir import note_swept_keys, resume_arguments
    from cxr.run_lock import lock_from_arguments

    run_app(_train_app, lambda argv: lock_from_arguments(note_swept_keys(resume_arguments(argv))),
            config_name="train")


# --------------------------------------------------------------------------------------------- evaluate
@hydra.main(version_base="1.3", config_path="pkg://cxr.conf", config_name="evaluate")
@catch_user_errors
def _evaluate_app(cfg: DictConfig) -> float | None:
    from cxr.pipeline import evaluate, evaluation_config
    from cxr.run_dir import failure_recorded

    quiet_library_noise()  # again: importing Lightning (inside Hydra's logging) has added its own console handler
    with failure_recorded(cfg, one_line):
        metrics = evaluate(evaluation_config(cfg))
    return (metrics.get("test") or {}).get("auroc")


def evaluate_main() -> None:
    """``cxr-evaluate`` / ``python evaluate.py ckpt_path=<file> [overrides]``."""
    run_app(_evaluate_app, config_name="evaluate")


# ------------------------------------------------------------------------------------------------ check
def check_main() -> None:
    """``cxr-check`` / ``python -m cxr.check [the overrides train.py takes]``."""
    from cxr import check

    run_app(check.app, check.no_output_arguments, config_name="train")


# ---------------------------------------------------------------------------------------------- compare
def compare_main(argv: list[str] | None = None) -> int:
    """``cxr-compare`` / ``python compare.py <run or multirun directories...> [--out DIR]``."""
    import argparse
    import json

    from cxr.evaluation.report import compare

    parser = argparse.ArgumentParser(prog="compare.py", description="Compare training runs in one report "
                                     "(report.md and a self-contained report.html)",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("paths", nargs="+", help="run directories, or folders holding them (multiruns, outputs/)")
    parser.add_argument("--out", default=None,
                        help="report directory (default: outputs/compare/<date_time>/); never overwritten")
    parser.add_argument("--set", default="test", dest="set_name", help="evaluation set: test or external")
    parser.add_argument("--n-resamples", type=int, default=1000, help="patient resamples of the paired bootstrap")
    parser.add_argument("--seed", type=int, default=0, help="seed of the paired bootstrap")
    args = parser.parse_args(argv)
    if args.n_resamples < 1:
        parser.error("--n-resamples must be at least 1")
    try:
        report = compare(args.paths, out=args.out, set_name=args.set_name, n_resamples=args.n_resamples,
                         seed=args.seed)
    except (*_user_errors(), OSError, json.JSONDecodeError) as error:  # unreadable run files included
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"compare.py: error: {one_line(error)}", file=sys.stderr)
        return 2
    print(report.table)
    if report.skipped:
        print(f"\nskipped {len(report.skipped)} director{'y' if len(report.skipped) == 1 else 'ies'} without a "
              "finished run:")
        for directory, reason in report.skipped.items():
            print(f"  {directory}: {reason}")
    print(f"\nreport: {report.directory / 'report.md'} (and report.html)")
    return 0


def compare_script() -> None:
    sys.exit(compare_main())
