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
    from hydra.errors import HydraException

    from cxr.errors import user_error_types

    return (*user_error_types(), HydraException)


def catch_user_errors(task: Callable[[DictConfig], object]) -> Callable[[DictConfig], object]:
    """Wrap a Hydra task function: a user error becomes one ``error:`` line and exit status 1."""
    @functools.wraps(task)
    def wrapper(cfg: DictConfig):
        try:
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
            status = job(cfg)
        except user_error_types() as error:
            if show_tracebacks:  # HYDRA_FULL_ERROR=1, as for train.py
                raise
            sys.stdout.flush()
            print(f"{prog}: error: {one_line(error)}", file=sys.stderr, flush=True)
            status = 2
        if status:
            sys.exit(status)

    return app


def run_app(app: Callable[[], object], argv_transform: Callable[[list[str]], list[str]] | None = None) -> None:
    """Run a ``@hydra.main`` app (``argv_transform`` rewrites ``sys.argv[1:]`` first), printing user errors and
    Hydra's own config errors as one line on stderr."""
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
    except _user_errors() as error:  # config composition, overrides, missing config: before the job ran
        if show_tracebacks:
            raise
        from hydra.errors import HydraException

        _fail(one_line(error), 2 if isinstance(error, HydraException) else 1)
    finally:
        if not show_tracebacks:
            os.environ.pop("HYDRA_FULL_ERROR", None)


def _fail(message: str, status: int) -> None:
    sys.stdout.flush()
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(status)


# ------------------------------------------------------------------------------------------------ train
@hydra.main(version_base="1.3", config_path="pkg://cxr.conf", config_name="train")
@catch_user_errors
def _train_app(cfg: DictConfig) -> float:
    from cxr.pipeline import objective, train

    quiet_library_noise()  # again: importing Lightning (inside Hydra's logging) has added its own console handler
    metrics = train(cfg)
    return objective(metrics)  # what an Optuna sweeper (hparams_search=...) maximises: validation AUROC, never test


def train_main() -> None:
    """``cxr-train`` / ``python train.py [overrides]``; ``resume=<run dir>`` resumes a killed run."""
    from cxr.run_dir import resume_arguments
    from cxr.run_lock import lock_from_arguments

    run_app(_train_app, lambda argv: lock_from_arguments(resume_arguments(argv)))


# --------------------------------------------------------------------------------------------- evaluate
@hydra.main(version_base="1.3", config_path="pkg://cxr.conf", config_name="evaluate")
@catch_user_errors
def _evaluate_app(cfg: DictConfig) -> float | None:
    from cxr.pipeline import evaluate, evaluation_config

    quiet_library_noise()  # again: importing Lightning (inside Hydra's logging) has added its own console handler
    metrics = evaluate(evaluation_config(cfg))
    return (metrics.get("test") or {}).get("auroc")


def evaluate_main() -> None:
    """``cxr-evaluate`` / ``python evaluate.py ckpt_path=<file> [overrides]``."""
    run_app(_evaluate_app)


# ------------------------------------------------------------------------------------------------ check
def check_main() -> None:
    """``cxr-check`` / ``python -m cxr.check [the overrides train.py takes]``."""
    from cxr import check

    run_app(check.app, check.no_output_arguments)


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
    print(f"\nreport: {report.directory / 'report.md'} (and report.html)")
    return 0


def compare_script() -> None:
    sys.exit(compare_main())
