"""The command-line entry points: parse the command line, call one job (:mod:`cxr.jobs`), print its outcome.

``train.py`` / ``cxr-train``, ``evaluate.py`` / ``cxr-evaluate``, ``python -m cxr.check`` / ``cxr-check``,
``compare.py`` / ``cxr-compare``, ``predict.py`` / ``cxr-predict``, ``export.py`` / ``cxr-export``,
``python -m cxr.prepare`` and ``python -m cxr.download``.

A user error (:class:`cxr.errors.UserError`: label file, image, split, config, checkpoint, data check; or an unknown
override key) ends with one line ``error: <message>`` on stderr and exit status 1 (2 for a config that does not
compose), without a traceback; ``HYDRA_FULL_ERROR=1`` shows the traceback instead. Any other exception is a bug and
keeps its traceback.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import hydra
from hydra.errors import HydraException
from hydra.experimental.callback import Callback
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from cxr.cli_suggest import composition_error_line
from cxr.errors import ConfigError, UserError

# what a user's input or settings cause: cxr's own errors and OmegaConf's (a missing or mistyped value)
USER_ERRORS = (UserError, OmegaConfBaseException)
# ... and, around a Hydra app, Hydra's (a config that does not compose, an unknown override key)
USER_OR_CONFIG_ERRORS = (*USER_ERRORS, HydraException)

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
    warnings.filterwarnings(
        "ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning
    )
    # Lightning's advice to lower log_every_n_steps when an epoch has fewer batches: it concerns step-level curves
    # only; the epoch metrics (history.csv, TensorBoard, the progress lines) are complete whatever it is
    warnings.filterwarnings(
        "ignore",
        message=r"The number of training batches \(\d+\) is smaller than the logging "
        "interval",
    )
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
        if isinstance(cause, USER_OR_CONFIG_ERRORS):  # raised inside a constructor: the cause is the message
            error = cause
    text = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
    cause = error.__cause__
    if isinstance(cause, OmegaConfBaseException) and str(cause).strip():
        text += f" ({str(cause).strip().splitlines()[0]})"
    text = text.split(" Config search path:")[0]  # Hydra's missing-config message lists its search path
    text = text.removeprefix("ERROR ")  # a data-check line ("ERROR truncated: …") after "error: "
    return text or type(error).__name__


MANDATORY_EXAMPLES = {"ckpt_path": "<run>/checkpoints/<file>.ckpt", "inputs": "<image, folder, glob or @list.txt>"}


def require_set(cfg: DictConfig) -> None:
    """Refuse a config with mandatory keys (``???``) left unset, naming each of them (not only the first)."""
    from omegaconf import OmegaConf

    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        example = " ".join(f"{key}={MANDATORY_EXAMPLES.get(key, '<...>')}" for key in missing)
        raise ConfigError(
            f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} required but not set: give {example}"
        )


def catch_user_errors(task: Callable[[DictConfig], object]) -> Callable[[DictConfig], object]:
    """Wrap a Hydra task function: a user error becomes one ``error:`` line and exit status 1."""

    @functools.wraps(task)
    def wrapper(cfg: DictConfig):
        try:
            require_set(cfg)
            return task(cfg)
        except USER_OR_CONFIG_ERRORS as error:
            if show_tracebacks:
                raise
            raise _UserExit(one_line(error)) from None

    return wrapper


def job_app(job: Callable[[DictConfig], int], config_name: str, prog: str) -> Callable[[], None]:
    """A Hydra app around ``job(cfg) -> exit status`` (predict.py, export.py): a user error is one
    ``<prog>: error: …`` line and exit status 2 (the command itself is wrong)."""

    @hydra.main(version_base="1.3", config_path="pkg://cxr.conf", config_name=config_name)
    def app(cfg: DictConfig) -> None:
        try:
            require_set(cfg)
            status = job(cfg)
        except USER_ERRORS as error:
            if show_tracebacks:  # HYDRA_FULL_ERROR=1, as for train.py
                raise
            sys.stdout.flush()
            print(f"{prog}: error: {one_line(error)}", file=sys.stderr, flush=True)
            status = 2
        if status:
            sys.exit(status)

    app.config_name = config_name  # for run_app's suggestions of keys and options
    return app


def run_app(
    app: Callable[[], object],
    argv_transform: Callable[[list[str]], list[str]] | None = None,
    config_name: str | None = None,
) -> None:
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
    except USER_ERRORS as error:  # raised before the job (resume=)
        if show_tracebacks:
            raise
        _fail(one_line(error), 1)
    finally:
        if not show_tracebacks:
            os.environ.pop("HYDRA_FULL_ERROR", None)


def _fail(message: str, status: int) -> None:
    sys.stdout.flush()
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(status)


class SweepHydraConfig(Callback):
    """Hydra callback (hydra/default.yaml): the sweep's own config is Hydra's config before the sweeper and launcher
    are made, so that ``${hydra:runtime.cwd}`` (``paths.*``) resolves in the sweep and search directories, the
    search's storage and the launcher's settings. Hydra 1.3 sets it only inside each job (hydra#2247)."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        import copy

        from hydra.core.hydra_config import HydraConfig

        HydraConfig.instance().set_config(copy.deepcopy(config))  # a copy: set_config makes its hydra node read-only


# ------------------------------------------------------------------------------------------------ train
@hydra.main(version_base="1.3", config_path="pkg://cxr.conf", config_name="train")
@catch_user_errors
def _train_app(cfg: DictConfig) -> float:
    from cxr.jobs.cv import cross_validate
    from cxr.jobs.train import objective, train
    from cxr.run_dir import failure_recorded

    quiet_library_noise()  # again: importing Lightning (inside Hydra's logging) has added its own console handler
    with failure_recorded(cfg, one_line):
        metrics = cross_validate(cfg) if (cfg.get("cv") or {}).get("folds") else train(cfg)  # cv.folds=K: K runs
    return objective(metrics)  # what an Optuna sweeper (hparams_search=...) maximises: validation AUROC, never test


def train_main() -> None:
    """``cxr-train`` / ``python train.py [overrides]``; ``resume=<run dir>`` resumes a killed run."""
    from cxr.run_dir import note_swept_keys, resume_arguments
    from cxr.run_lock import lock_from_arguments

    run_app(_train_app, lambda argv: lock_from_arguments(note_swept_keys(resume_arguments(argv))), config_name="train")


# --------------------------------------------------------------------------------------------- evaluate
@hydra.main(version_base="1.3", config_path="pkg://cxr.conf", config_name="evaluate")
@catch_user_errors
def _evaluate_app(cfg: DictConfig) -> float | None:
    from cxr.jobs.evaluate import evaluate, evaluation_config
    from cxr.run_dir import failure_recorded

    quiet_library_noise()  # again: importing Lightning (inside Hydra's logging) has added its own console handler
    with failure_recorded(cfg, one_line):
        metrics = evaluate(evaluation_config(cfg))
    # a sweep over evaluate.py would optimise what is returned: a validation figure, never a test one
    return (metrics.get("validation") or {}).get("auroc")


def evaluate_main() -> None:
    """``cxr-evaluate`` / ``python evaluate.py ckpt_path=<file> [overrides]``."""
    run_app(_evaluate_app, config_name="evaluate")


# ------------------------------------------------------------------------------------------------ check
# Hydra would otherwise create outputs/<task>/runs/<time>/ with .hydra/ and a log file; check and prepare write nothing.
NO_OUTPUT = ("hydra.run.dir=.", "hydra.output_subdir=null", "hydra/job_logging=none")


def no_output_arguments(argv: list[str]) -> list[str]:
    """The no-output overrides first (a user's own override of the same key wins), then ``argv``."""
    given = {arg.split("=", 1)[0].lstrip("+~") for arg in argv}
    return [o for o in NO_OUTPUT if o.split("=", 1)[0] not in given] + list(argv)


def _log_to_stderr() -> None:
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="[%(asctime)s] %(message)s", datefmt="%H:%M:%S", force=True
    )


@hydra.main(version_base="1.3", config_path="pkg://cxr.conf", config_name="train")
@catch_user_errors
def _check_app(cfg: DictConfig) -> None:
    from cxr.jobs.check import run_check

    _log_to_stderr()
    report = run_check(cfg)
    lines = report.lines()
    print("\n".join(lines), flush=True)
    if not report.ok:  # the first problem as the one error line on stderr (the full report is on stdout above)
        first = next((line for line in lines if line.startswith("ERROR")), lines[-1])
        print(f"error: {first.removeprefix('ERROR').strip()}", file=sys.stderr, flush=True)
    sys.exit(0 if report.ok else 1)


def check_main() -> None:
    """``cxr-check`` / ``python -m cxr.check [the overrides train.py takes]``: prints one line per problem class
    and fact; exits 1 when training would fail. Writes no run directory."""
    run_app(_check_app, no_output_arguments, config_name="train")


# ---------------------------------------------------------------------------------------------- prepare
PREPARE_FLAGS = {"--list": "list", "--prune": "prune", "--shards": "shards"}
_prepare_options: dict = {}


@hydra.main(version_base="1.3", config_path="pkg://cxr.conf", config_name="train")
def _prepare_app(cfg: DictConfig) -> None:
    from cxr.jobs.prepare import list_or_prune, prepare

    _log_to_stderr()
    for noisy in ("litdata", "lightning"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    options = _prepare_options
    try:
        if options.get("list") or options.get("prune"):
            list_or_prune(cfg, bool(options.get("prune")))
            return
        summary = prepare(cfg, options.get("workers"), bool(options.get("shards")))
    except (ValueError, OSError) as error:  # bad labels, missing images, unwritable cache dir: one line
        print(f"cxr.prepare: {error}", file=sys.stderr)
        sys.exit(1)
    if options.get("json"):
        Path(options["json"]).write_text(json.dumps(summary, indent=1))


def prepare_main() -> None:
    """``python -m cxr.prepare [--workers=N] [--shards] [--list | --prune] [--json=FILE] [train.py overrides]``:
    take its own flags out of argv, then run the Hydra app with the no-output overrides."""
    from cxr.jobs import prepare

    args = []
    for arg in sys.argv[1:]:
        if arg in PREPARE_FLAGS:
            _prepare_options[PREPARE_FLAGS[arg]] = True
        elif arg.startswith("--workers="):
            value = arg.split("=", 1)[1]
            if not value.isdigit() or int(value) < 1:
                print(f"cxr.prepare: --workers={value}: give a positive number of processes", file=sys.stderr)
                sys.exit(2)
            _prepare_options["workers"] = int(value)
        elif arg.startswith("--json="):
            _prepare_options["json"] = arg.split("=", 1)[1]
        elif arg in ("-h", "--help") and not args:
            print(prepare.__doc__)
            return
        else:
            args.append(arg)
    sys.argv[1:] = no_output_arguments(args)
    _prepare_app()


# --------------------------------------------------------------------------------------------- download
def download_main(argv: list[str] | None = None) -> int:
    """``python -m cxr.download NAME [--to DIR] [--mirror URL | --from DIR] [--manifest CSV] [--jobs N] [--partial]``."""
    import argparse

    from cxr.errors import DownloadError
    from cxr.jobs import download as job

    parser = argparse.ArgumentParser(prog="python -m cxr.download", description=job.__doc__.split("\n\n")[1])
    parser.add_argument("dataset", choices=job.DATASETS)
    parser.add_argument("--to", default=".", metavar="DIR", help="destination folder (default: the current one)")
    parser.add_argument(
        "--mirror",
        metavar="URL",
        help="base URL under which every file (archives, Data_Entry_2017_v2020.csv, "
        "train_val_list.txt, test_list.txt) is fetched by its name",
    )
    parser.add_argument(
        "--from",
        dest="source_dir",
        metavar="DIR_OF_ARCHIVES",
        help="take the archives from this folder instead of downloading them (the only way for the datasets "
        "behind a registration: chexpert, mimic_cxr, padchest, vindr_cxr, rsna_pneumonia)",
    )
    parser.add_argument(
        "--partial",
        action="store_true",
        help="accept a subset of the release (some of PadChest's N.zip, part of a PhysioNet tree); "
        "each archive is still checked whole",
    )
    parser.add_argument(
        "--manifest", metavar="CSV", help="archive,url,md5,images (default: the release's list shipped with cxr)"
    )
    parser.add_argument("--jobs", type=int, default=3, help="archives fetched in parallel (default 3)")
    parser.add_argument(
        "--keep-archives",
        action="store_true",
        help="keep the downloaded .tar.gz files after extraction (default: delete them)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    if args.mirror and args.source_dir:
        parser.error("--mirror and --from exclude each other")
    try:
        root = job.download(
            args.dataset,
            args.to,
            args.manifest,
            args.mirror,
            args.source_dir,
            args.jobs,
            args.keep_archives,
            progress=not args.no_progress,
            partial=args.partial,
        )
    except DownloadError as error:
        print(f"cxr.download: {error}", file=sys.stderr)
        return 1
    except OSError as error:  # an unwritable or full destination: the message names the file
        print(f"cxr.download: {error.strerror or error}: {error.filename or args.to}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("cxr.download: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    if args.dataset != "nih":
        print(f"{args.dataset} is ready in {root}. Use it with:\n  data={args.dataset} data.root={root}", flush=True)
        return 0
    print(
        f"NIH ChestX-ray14 is ready in {root}. Train with:\n  python train.py data=nih data.root={root} "
        f"data.labels={root}/Data_Entry_2017_v2020.csv split=official",
        flush=True,
    )
    return 0


# --------------------------------------------------------------------------------------- predict, export
def predict_main() -> None:
    """``cxr-predict`` / ``python predict.py ckpt_path=<.ckpt | .onnx> inputs=<...>`` (exit 0, 1 inputs failed, 2)."""
    from cxr.jobs.predict import predict

    run_app(job_app(predict, "predict", "predict.py"))


def export_main() -> None:
    """``cxr-export`` / ``python export.py ckpt_path=<.ckpt> format=onnx|torchscript`` (exit 2 on a user error)."""
    from cxr.jobs.export import export

    run_app(job_app(lambda cfg: export(cfg) and 0, "export", "export.py"))


# ---------------------------------------------------------------------------------------------- compare
def compare_main(argv: list[str] | None = None) -> int:
    """``cxr-compare`` / ``python compare.py <run or multirun directories...> [--out DIR]``."""
    import argparse

    from cxr.evaluation.report import compare
    from cxr.evaluation.seeds import seed_table

    parser = argparse.ArgumentParser(
        prog="compare.py",
        description="Compare training runs in one report (report.md and a self-contained report.html)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("paths", nargs="+", help="run directories, or folders holding them (multiruns, outputs/)")
    parser.add_argument(
        "--out", default=None, help="report directory (default: outputs/compare/<date_time>/); never overwritten"
    )
    parser.add_argument("--set", default="test", dest="set_name", help="evaluation set: test or external")
    parser.add_argument("--n-resamples", type=int, default=1000, help="patient resamples of the paired bootstrap")
    parser.add_argument("--seed", type=int, default=0, help="seed of the paired bootstrap")
    args = parser.parse_args(argv)
    if args.n_resamples < 1:
        parser.error("--n-resamples must be at least 1")
    try:
        report = compare(args.paths, out=args.out, set_name=args.set_name, n_resamples=args.n_resamples, seed=args.seed)
    except (*USER_OR_CONFIG_ERRORS, OSError, json.JSONDecodeError) as error:  # unreadable run files included
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"compare.py: error: {one_line(error)}", file=sys.stderr)
        return 2
    print(report.table)
    if report.seed_groups:  # runs differing only in seed or fold: mean, SD, t-interval (cxr/evaluation/seeds.py)
        print("\n" + seed_table(report.seed_groups))
    if report.skipped:
        print(
            f"\nskipped {len(report.skipped)} director{'y' if len(report.skipped) == 1 else 'ies'} without a "
            "finished run:"
        )
        for directory, reason in report.skipped.items():
            print(f"  {directory}: {reason}")
    print(f"\nreport: {report.directory / 'report.md'} (and report.html)")
    return 0


def compare_script() -> None:
    sys.exit(compare_main())
