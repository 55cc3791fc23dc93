"""The training job behind ``train.py``: takes a composed Hydra config, checks the data, fits, evaluates, saves; returns
the metrics."""

from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf, open_dict

from cxr.artifacts import file_digest, run_provenance, write_csv, write_json, write_text
from cxr.callbacks import EpochHistory, progress_bar_enabled, tensorboard_writer
from cxr.errors import ConfigError, UserError
from cxr.evaluation.figures import save_figure, training_curves_figure
from cxr.evaluation.model_card import write_model_card
from cxr.evaluation.runner import evaluate_sets
from cxr.inference import resolve_precision
from cxr.jobs import search
from cxr.models import sources
from cxr.models.checkpoints import load_classifier, read_checkpoint
from cxr.run_dir import (
    command_line_overrides,
    global_rank,
    prepare_run_directory,
    record_directory_size,
    requeued_job,
    resume_checkpoint,
    run_name,
)
from cxr.tracking import log_run_files

log = logging.getLogger(__name__)


class DataCheckError(UserError, ValueError):
    """The dataset would make training fail; the message holds the first problem line."""


def _check_data(cfg: DictConfig, output_dir: Path, datamodule=None) -> None:
    """The validation pass of ``python -m cxr.check``, before any training (saved as data_check.txt), on the
    labelled tables the DataModule will train on. A resume does not repeat a check its first start passed."""
    from cxr.data.images import ImageIndexError
    from cxr.data.labels import LabelFileError
    from cxr.jobs.check import run_check

    previous = output_dir / "data_check.txt"
    passed = previous.read_text().splitlines()[-1:] if cfg.get("ckpt_path") and previous.is_file() else []
    if passed and passed[0].startswith("OK"):
        log.info("data check: passed at this run's first start (%s); not repeated on resume", previous)
        return
    data = None
    if datamodule is not None:
        try:
            data = datamodule.labelled_data()
        except (LabelFileError, ImageIndexError, ValueError):
            data = None  # the check reads the files itself and names the problem
    started = time.monotonic()
    report = run_check(cfg, data=data)
    log.info("data check took %.1f s", time.monotonic() - started)
    lines = report.lines()
    write_text(output_dir / "data_check.txt", "\n".join(lines) + "\n")
    for line in lines:
        log.log(logging.ERROR if line.startswith(("ERROR", "FAILED")) else logging.INFO, "data check: %s", line)
    if not report.ok:
        first = next(line for line in lines if line.startswith("ERROR"))
        raise DataCheckError(f"{first} (all problems: {output_dir / 'data_check.txt'})")


def _build_data(cfg: DictConfig, output_dir: Path, datamodule=None, write: bool = True, **overrides):
    if datamodule is None:
        datamodule = instantiate(cfg.data, **overrides)
    datamodule.prepare_data()
    datamodule.setup("fit")
    if not write:  # DDP ranks > 0
        return datamodule
    write_csv(output_dir / "splits.csv", datamodule.split_table())
    if len(datamodule.dropped):
        write_csv(output_dir / "dropped_images.csv", datamodule.dropped)
    return datamodule


def _evaluation_settings(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg.evaluation, resolve=True) if cfg.get("evaluation") else {}


def _hyperparameters(cfg: DictConfig) -> dict:
    """The settings a reader compares runs by (TensorBoard HParams)."""
    split = cfg.data.split
    return {
        "run_name": cfg.run_name,
        "program": cfg.program.name,
        "data": cfg.data.name,
        "seed": cfg.seed,
        "channels": cfg.program.preprocessing.channels,
        "pixel_divisor": cfg.program.preprocessing.pixel_divisor,
        "split": split.method,
        "split_train": str(split.get("train")),
        "split_val": str(split.get("val")),
        "batch_size": cfg.data.batch_size,
        "lr": cfg.model.optimizer.get("lr"),
        "max_epochs": cfg.trainer.get("max_epochs"),
    }


def _final_metrics(results: dict) -> dict:
    return {
        f"{name}/{key}": value
        for name, metrics in results.items()
        for key in ("auroc", "accuracy", "accuracy_class0", "accuracy_class1", "balanced_accuracy")
        if (value := metrics.get(key)) is not None
    }


CHECKPOINT_CHOICES = ("last", "best")


KEEP = {"best": 1, "none": 0, "all": -1}


def _keep_checkpoints(cfg: DictConfig) -> None:
    """``callbacks.checkpoint.keep`` (beside last.ckpt: best, none, all or N best) as the best-checkpoint
    callback's ``save_top_k``; with ``all`` its files are named ``epochNNN.ckpt``."""
    callbacks = cfg.get("callbacks") or {}
    keep, saver = (callbacks.get("checkpoint") or {}).get("keep"), callbacks.get("model_checkpoint")
    if keep is None or not saver:
        return
    top_k = KEEP.get(str(keep), keep)
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < -1:
        raise ConfigError(
            f"callbacks.checkpoint.keep={keep!r}: choose best, none, all, or a number of best "
            "checkpoints to keep beside last.ckpt"
        )
    with open_dict(cfg):
        saver.save_top_k = top_k
        if top_k == -1 and str(saver.get("filename", "")).startswith("best-"):
            saver.filename = saver.filename.removeprefix("best-")


def _checkpoint_choice(cfg: DictConfig) -> str:
    """``evaluation.checkpoint``: ``last`` (the weights at the end of fit, as the thesis) or ``best`` (by the
    checkpoint callback's monitor, validation AUROC)."""
    choice = (cfg.get("evaluation") or {}).get("checkpoint", "best")
    if choice not in CHECKPOINT_CHOICES:
        raise ConfigError(f"evaluation.checkpoint={choice!r}: choose last (end of fit) or best (by validation AUROC)")
    checkpointing = (cfg.get("callbacks") or {}).get("model_checkpoint")
    monitored = checkpointing and checkpointing.get("monitor")
    if choice == "best" and not cfg.trainer.get("fast_dev_run") and not monitored:
        raise ConfigError(
            "evaluation.checkpoint=best needs callbacks.model_checkpoint with a monitor; use evaluation.checkpoint=last"
        )
    if (
        choice == "best"
        and monitored
        and checkpointing.get("save_top_k", 1) == 0
        and not cfg.trainer.get("fast_dev_run")
    ):
        raise ConfigError(
            "evaluation.checkpoint=best needs a best checkpoint, but callbacks.checkpoint.keep=none "
            "keeps none: use evaluation.checkpoint=last, or callbacks.checkpoint.keep=best"
        )
    return choice


def _weights_to_evaluate(cfg: DictConfig, trainer: L.Trainer, model, callbacks: list, output_dir: Path):
    """The model to score after fit, as ``evaluation.checkpoint`` says, and what was scored (for metrics.json):
    ``checkpoint`` (file, relative to the run directory), ``checkpoint_epoch`` (1-based, as history.csv) and
    ``checkpoint_choice``. Without a checkpoint (fast_dev_run) the weights in memory at the end of fit."""
    choice = _checkpoint_choice(cfg)
    savers = [] if trainer.fast_dev_run else [c for c in callbacks if isinstance(c, ModelCheckpoint)]
    saver = next((c for c in savers if c.monitor), None)
    path, too_short = "", ""
    if choice == "best":
        path = saver.best_model_path if saver else ""
        if saver and not path and getattr(saver, "min_epochs", 1) > trainer.current_epoch:
            too_short = f", training ended before selection's min_epochs={saver.min_epochs}"
            log.warning("no checkpoint could be chosen (%s): evaluating the last epoch", too_short[2:])
            choice = "last"
    if choice == "last":  # the file saved after every epoch (monitor=None), else Lightning's save_last file
        path = next((c.best_model_path for c in savers if not c.monitor and c.best_model_path), "") or next(
            (c.last_model_path for c in savers if c.last_model_path), ""
        )
    in_memory = {
        "checkpoint": None,
        "checkpoint_epoch": None if trainer.fast_dev_run else trainer.current_epoch,
        "checkpoint_choice": "end of fit (weights in memory, no checkpoint file)",
    }
    if not path or not Path(path).is_file():  # fast_dev_run or checkpointing switched off: nothing was written
        log.info("evaluating the weights at the end of fit (no checkpoint file)")
        return model, in_memory
    loaded, checkpoint = load_classifier(path)
    if choice == "last" and checkpoint.get("global_step") != trainer.global_step:
        log.warning(
            "%s is from step %s, not the end of fit (step %d): evaluating the weights in memory",
            path,
            checkpoint.get("global_step"),
            trainer.global_step,
        )
        return model, in_memory
    log.info("evaluating the %s checkpoint: %s", choice, path)
    return loaded, {
        "checkpoint": os.path.relpath(path, output_dir),
        "checkpoint_epoch": checkpoint.get("epoch", -1) + 1,
        "checkpoint_choice": f"best by {saver.monitor}{_from_epoch(saver)}"
        if choice == "best"
        else f"last (end of fit{too_short})",
    }


def _from_epoch(saver) -> str:
    first = getattr(saver, "min_epochs", 1)
    return f" from epoch {first} on" if first > 1 else ""


def _validation_summary(history: EpochHistory | None, trainer: L.Trainer) -> dict:
    """Validation AUROC of the best and of the last epoch: what a hyper-parameter search maximises (never test)."""
    values = history.frame()["val/auroc"].dropna().tolist() if history is not None else []
    last = trainer.callback_metrics.get("val/auroc")
    last = float(last) if last is not None else (values[-1] if values else None)
    return {"auroc_best": max(values) if values else last, "auroc_last": last}


def objective(metrics: dict) -> float:
    """The value a hyper-parameter search maximises: the best validation AUROC of the run (NaN when there is none,
    e.g. a validation batch of one class; Optuna then marks the trial failed)."""
    value = (metrics.get("validation") or {}).get("auroc_best")
    return float("nan") if value is None else float(value)


def build_trainer(cfg: DictConfig) -> tuple[L.Trainer, list]:
    """The Trainer of ``cfg.trainer`` (its strategy included) with the configured callbacks and loggers, and the
    callbacks; tests/test_presets.py builds every preset with it."""
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c and "_target_" in c]
    trial = search.current_trial()  # a trial of hparams_search=...: report val AUROC per epoch, stop when hopeless
    pruning = search.pruning_callback(trial) if trial is not None else None
    if pruning is not None:
        callbacks.append(pruning)
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c and "_target_" in c]
    precision = resolve_precision(cfg.trainer.get("precision"), cfg.trainer.get("accelerator"))  # auto: bf16 if native
    trainer = instantiate(
        cfg.trainer,
        callbacks=callbacks,
        logger=loggers or False,
        precision=precision,
        enable_progress_bar=progress_bar_enabled(cfg.trainer.get("enable_progress_bar")),
    )
    return trainer, callbacks


def train(cfg: DictConfig) -> dict:
    """Fit the model on the train split, evaluate the weights ``evaluation.checkpoint`` names, and save.

    Under DDP every rank runs this; only rank 0 checks the data, writes files and evaluates (other ranks return
    ``{}`` after fitting)."""
    _keep_checkpoints(cfg)
    _checkpoint_choice(cfg)  # a bad choice fails before anything runs
    rank_zero = global_rank() == 0
    finished = requeued_job(cfg)
    if finished is not None:
        return finished
    sources.apply_to_config(cfg)  # a named pretrained source: its network and preprocessing (cxr.models.sources)
    weights_leakage = sources.leakage(cfg.model.get("weights"), cfg.data.name, cfg.model.get("weights_trained_on"))
    if weights_leakage and rank_zero:
        log.warning("LEAKAGE: %s", weights_leakage["warning"])
    cfg.run_name = run_name(cfg)  # the name its directory was given; config.yaml and every later file say it
    if rank_zero:
        output_dir = prepare_run_directory(cfg, resuming=cfg.get("ckpt_path") is not None)
    else:
        output_dir = Path(cfg.paths.output_dir)
    ckpt_path = resume_checkpoint(cfg, output_dir)
    if ckpt_path is not None:
        read_checkpoint(ckpt_path)  # local and weights-only, refused in one line before Lightning reads it
    datamodule = instantiate(cfg.data)  # its data step runs once, for the data check and for training
    if rank_zero and (cfg.get("data_check", True) or cfg.get("check_only")):
        datamodule.prepare_data()
        _check_data(cfg, output_dir, datamodule)
    if cfg.get("check_only"):
        return {"data_check": "ok"}
    L.seed_everything(cfg.seed, workers=True)
    datamodule = _build_data(cfg, output_dir, datamodule, write=rank_zero)

    model = instantiate(cfg.model)
    pretrained = _pretrained_summary(cfg, model)
    model.run_metadata = {
        "overrides": command_line_overrides(),
        **run_provenance(),
        "labels_sha256": file_digest(cfg.data.labels) if cfg.data.get("labels") else None,  # registered: release
    }  # evaluate.py: has the label file changed?
    trainer, callbacks = build_trainer(cfg)

    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    except SIGTERMException:
        raise SystemExit(128 + signal.SIGTERM) from None  # a terminated run must not look successful
    if not trainer.is_global_zero:
        return {}  # DDP: rank 0 evaluates and writes
    trial = search.current_trial()  # a trial of hparams_search=... (None in a plain run)
    pruning = next((c for c in callbacks if hasattr(c, "pruned_at_epoch")), None)  # a search trial's pruner
    if pruning is not None and pruning.pruned_at_epoch is not None:
        return _pruned_trial(cfg, trainer, callbacks, output_dir, trial, pruning.pruned_at_epoch)

    model, scored = _weights_to_evaluate(cfg, trainer, model, callbacks, output_dir)
    model.to(trainer.strategy.root_device)  # a GPU run evaluates on its GPU (torch backend); the CPU as before
    writer = tensorboard_writer(trainer)
    results = evaluate_sets(
        model,
        datamodule,
        output_dir,
        _evaluation_settings(cfg),
        writer=writer,
        step=trainer.global_step,
        run_name=cfg.run_name,
    )

    history = _write_history(
        callbacks,
        output_dir,
        writer,
        trainer.global_step,
        title=f"{cfg.run_name}: training curves",
        scored_epoch=scored["checkpoint_epoch"],
        scored_by=scored["checkpoint_choice"],
    )

    metrics = {
        "run_name": cfg.run_name,
        "program": cfg.program.name,
        "data": cfg.data.name,
        "params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        **scored,  # checkpoint (file), checkpoint_epoch, checkpoint_choice: which weights were scored
        "epochs_trained": trainer.current_epoch if not trainer.fast_dev_run else 1,
        "processes": trainer.world_size,  # DDP processes that trained (devices x nodes)
        "precision": str(trainer.precision),  # what training ran in (trainer.precision=auto decides per CPU)
        "split": datamodule.summary,
        "validation": _validation_summary(history, trainer),
        "leakage": datamodule.leakage,
        "pretrained": pretrained,
        **({"search": {"study": trial.study_name, "trial": trial.number}} if trial is not None else {}),
        **results,
    }
    write_json(output_dir / "metrics.json", metrics)
    write_model_card(cfg, metrics, output_dir)  # model_card.md (cxr/evaluation/model_card.py)
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):  # HParams tab: settings beside final metrics
            logger.log_hyperparams(_hyperparameters(cfg), metrics=_final_metrics(results))
        else:
            logger.log_hyperparams(_hyperparameters(cfg))
            logger.log_metrics(_final_metrics(results), step=trainer.global_step)
    log_run_files(trainer.loggers, cfg, output_dir, results, trainer.global_step)  # MLflow / W&B artifacts
    for logger in trainer.loggers:
        logger.finalize("success")
    size = record_directory_size(output_dir)
    log.info("run directory: %s (%.1f MB)", output_dir, size / 1e6)
    return metrics


def _pretrained_summary(cfg: DictConfig, model) -> dict:
    """metrics.json's record of the initial weights (source, file, training data, preprocessing, leakage flag)."""
    return sources.summary(
        model.hparams.get("weights"),
        model.hparams.get("weights_file"),
        OmegaConf.to_container(cfg.program.preprocessing, resolve=True),
        cfg.data.name,
        model.hparams.get("weights_trained_on"),
        getattr(model.net, "head_mapping", None),
    )


def _write_history(callbacks: list, output_dir: Path, writer, step: int, **figure_args) -> EpochHistory | None:
    """history.csv and training_curves.png from the epoch history callback (also to TensorBoard); ``figure_args``:
    the figure's title and the scored epoch."""
    history = next((c for c in callbacks if isinstance(c, EpochHistory)), None)
    if history is not None:
        write_csv(output_dir / "history.csv", history.frame())
        figure = training_curves_figure(history.frame(), **figure_args)
        save_figure(figure, output_dir / "training_curves.png")
        if writer is not None:
            writer.add_figure("training_curves", figure, global_step=step)
    return history


def _pruned_trial(cfg: DictConfig, trainer: L.Trainer, callbacks: list, output_dir: Path, trial, epoch: int) -> dict:
    """A search trial the pruner stopped: its history and validation figures, ``status: pruned``, no test
    evaluation (the search never reads it, and a hopeless trial should cost no more time)."""
    history = _write_history(
        callbacks,
        output_dir,
        tensorboard_writer(trainer),
        trainer.global_step,
        title=f"{cfg.run_name}: training curves (pruned)",
    )
    metrics = {
        "status": "pruned",
        "run_name": cfg.run_name,
        "program": cfg.program.name,
        "data": cfg.data.name,
        "epochs_trained": epoch,
        "validation": _validation_summary(history, trainer),
        "search": {"study": trial.study_name, "trial": trial.number, "state": "PRUNED", "pruned_at_epoch": epoch},
    }
    write_json(output_dir / "metrics.json", metrics)
    log_run_files(trainer.loggers, cfg, output_dir, {}, trainer.global_step)
    for logger in trainer.loggers:
        logger.log_hyperparams(_hyperparameters(cfg))
        logger.finalize("pruned")
    log.info("pruned after epoch %d; run directory: %s", epoch, output_dir)
    return metrics
