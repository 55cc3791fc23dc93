"""The two jobs behind ``train.py`` and ``evaluate.py``: each takes a composed Hydra config and returns metrics."""
from __future__ import annotations

import logging
import os
import signal
from pathlib import Path

import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from cxr.artifacts import run_provenance, write_csv, write_json, write_text
from cxr.callbacks import EpochHistory, tensorboard_writer
from cxr.checkpoints import load_classifier
from cxr.evaluation.figures import save_figure, training_curves_figure
from cxr.evaluation.runner import evaluate_sets
from cxr.inference import resolve_precision
from cxr.model_card import write_model_card

log = logging.getLogger(__name__)


class RunDirectoryError(RuntimeError):
    """The run directory already holds a finished run."""


def command_line_overrides() -> list[str]:
    """This job's command-line overrides, with relative paths that exist made absolute (for checkpoints)."""
    if not HydraConfig.initialized():
        return []
    overrides = []
    for override in HydraConfig.get().overrides.task:
        key, sep, value = override.partition("=")
        if sep and value and not os.path.isabs(value) and ("/" in value or os.sep in value) and os.path.exists(value):
            value = os.path.abspath(value)
        overrides.append(f"{key}{sep}{value}")
    return overrides


def _prepare_run_directory(cfg: DictConfig, resuming: bool = False) -> Path:
    output_dir = Path(cfg.paths.output_dir)
    if (output_dir / "metrics.json").exists():
        raise RunDirectoryError(f"{output_dir} already holds a finished run (metrics.json); a new run never "
                                "overwrites one: choose another hydra.run.dir")
    if not resuming and any((output_dir / "checkpoints").glob("*.ckpt")):
        raise RunDirectoryError(f"{output_dir} holds an unfinished run; resume it with: python train.py "
                                f"resume={output_dir}")
    output_dir.mkdir(parents=True, exist_ok=True)
    write_text(output_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    write_json(output_dir / "run.json", run_provenance())
    return output_dir


def _resume_checkpoint(cfg: DictConfig, output_dir: Path) -> str | None:
    """``ckpt_path=last`` means this run directory's ``checkpoints/last.ckpt``."""
    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path != "last":
        return ckpt_path
    last = output_dir / "checkpoints" / "last.ckpt"
    if not last.is_file():
        raise RunDirectoryError(f"nothing to resume: {last} does not exist (no epoch finished before the crash?)")
    log.info("resuming from %s", last)
    return str(last)


def resume_arguments(argv: list[str]) -> list[str]:
    """Expand ``resume=<run dir>`` into that run's own overrides + ``hydra.run.dir=<run dir> ckpt_path=last``."""
    resume = [a for a in argv if a.startswith("resume=")]
    if not resume:
        return argv
    run_dir = Path(resume[-1].partition("=")[2]).resolve()
    overrides_file = run_dir / ".hydra" / "overrides.yaml"
    if not overrides_file.is_file():
        raise SystemExit(f"resume={run_dir}: not a run directory of train.py (no .hydra/overrides.yaml)")
    previous = [o for o in OmegaConf.load(overrides_file)
                if _override_key(o) not in ("hydra.run.dir", "ckpt_path", "resume")]
    others = [a for a in argv if not a.startswith("resume=")]
    return [*previous, *others, f"hydra.run.dir={run_dir}", "ckpt_path=last"]


class DataCheckError(ValueError):
    """The dataset would make training fail; the message holds the first problem line."""


def _check_data(cfg: DictConfig, output_dir: Path) -> None:
    """The validation pass of ``python -m cxr.check``, before any training (saved as data_check.txt)."""
    from cxr.check import run_check

    report = run_check(cfg)
    lines = report.lines()
    write_text(output_dir / "data_check.txt", "\n".join(lines) + "\n")
    for line in lines:
        log.log(logging.ERROR if line.startswith(("ERROR", "FAILED")) else logging.INFO, "data check: %s", line)
    if not report.ok:
        first = next(line for line in lines if line.startswith("ERROR"))
        raise DataCheckError(f"{first} (all problems: {output_dir / 'data_check.txt'})")


def _build_data(cfg: DictConfig, output_dir: Path, **overrides):
    datamodule = instantiate(cfg.data, **overrides)
    datamodule.prepare_data()
    datamodule.setup("fit")
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
        "program": cfg.program.name, "data": cfg.data.name, "seed": cfg.seed,
        "channels": cfg.program.preprocessing.channels, "pixel_divisor": cfg.program.preprocessing.pixel_divisor,
        "split": split.method, "split_train": str(split.get("train")), "split_val": str(split.get("val")),
        "batch_size": cfg.data.batch_size, "lr": cfg.model.optimizer.get("lr"),
        "max_epochs": cfg.trainer.get("max_epochs"),
    }


def _final_metrics(results: dict) -> dict:
    return {f"{name}/{key}": value for name, metrics in results.items()
            for key in ("auroc", "accuracy", "accuracy_class0", "accuracy_class1", "balanced_accuracy")
            if (value := metrics.get(key)) is not None}


def train(cfg: DictConfig) -> dict:
    """Fit the model on the train split, pick the best checkpoint by validation AUROC, evaluate and save."""
    output_dir = _prepare_run_directory(cfg, resuming=cfg.get("ckpt_path") is not None)
    ckpt_path = _resume_checkpoint(cfg, output_dir)
    if cfg.get("data_check", True) or cfg.get("check_only"):
        _check_data(cfg, output_dir)
        if cfg.get("check_only"):
            return {"data_check": "ok"}
    L.seed_everything(cfg.seed, workers=True)
    datamodule = _build_data(cfg, output_dir)

    model = instantiate(cfg.model)
    model.run_metadata = {"overrides": command_line_overrides(), **run_provenance()}
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c and "_target_" in c]
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c and "_target_" in c]
    precision = resolve_precision(cfg.trainer.get("precision"), cfg.trainer.get("accelerator"))  # auto: bf16 if native
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, precision=precision)

    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    except SIGTERMException:
        raise SystemExit(128 + signal.SIGTERM) from None  # a terminated run must not look successful

    checkpoint = next((c for c in callbacks if isinstance(c, ModelCheckpoint)), None)
    best_path = checkpoint.best_model_path if checkpoint else ""
    if best_path:
        log.info("evaluating the best checkpoint by %s: %s", checkpoint.monitor, best_path)
        model, _ = load_classifier(best_path)
    writer = tensorboard_writer(trainer)
    results = evaluate_sets(model, datamodule, output_dir, _evaluation_settings(cfg), writer=writer,
                            step=trainer.global_step)

    history = next((c for c in callbacks if isinstance(c, EpochHistory)), None)
    if history is not None:
        write_csv(output_dir / "history.csv", history.frame())
        figure = training_curves_figure(history.frame())
        save_figure(figure, output_dir / "training_curves.png")
        if writer is not None:
            writer.add_figure("training_curves", figure, global_step=trainer.global_step)

    metrics = {
        "program": cfg.program.name,
        "data": cfg.data.name,
        "params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "checkpoint": os.path.relpath(best_path, output_dir) if best_path else None,
        "epochs_trained": trainer.current_epoch if not trainer.fast_dev_run else 1,
        "split": datamodule.summary,
        **results,
    }
    write_json(output_dir / "metrics.json", metrics)
    write_model_card(cfg, metrics, output_dir)  # model_card.md (cxr/model_card.py)
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):  # HParams tab: settings beside final metrics
            logger.log_hyperparams(_hyperparameters(cfg), metrics=_final_metrics(results))
        else:
            logger.log_hyperparams(_hyperparameters(cfg))
            logger.log_metrics(_final_metrics(results), step=trainer.global_step)
        logger.finalize("success")
    log.info("run directory: %s", output_dir)
    return metrics


def evaluate(cfg: DictConfig) -> dict:
    """Evaluate ``cfg.ckpt_path`` on the test split and the external set with the checkpoint's preprocessing."""
    output_dir = _prepare_run_directory(cfg)
    model, checkpoint = load_classifier(cfg.ckpt_path)
    preprocessing = model.hparams.preprocessing
    if cfg.preprocessing_from == "config" or not preprocessing:
        preprocessing = OmegaConf.to_container(cfg.program.preprocessing, resolve=True)
    elif cfg.preprocessing_from != "checkpoint":
        raise ValueError(f"preprocessing_from={cfg.preprocessing_from!r}: choose 'checkpoint' or 'config'")
    log.info("preprocessing (%s): %s", cfg.preprocessing_from, preprocessing)
    datamodule = _build_data(cfg, output_dir, preprocessing=preprocessing)
    results = evaluate_sets(model, datamodule, output_dir, _evaluation_settings(cfg))
    metrics = {
        "program": model.hparams.get("program"),
        "data": cfg.data.name,
        "params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "checkpoint": str(Path(cfg.ckpt_path).resolve()),
        "epochs_trained": checkpoint.get("epoch", -1) + 1,
        "preprocessing": preprocessing,
        "split": datamodule.summary,
        **results,
    }
    write_json(output_dir / "metrics.json", metrics)
    log.info("run directory: %s", output_dir)
    return metrics


_NOT_FOR_EVALUATION = ("hydra", "ckpt_path", "debug", "trainer", "callbacks", "logger", "seed")


def _override_key(override: str) -> str:
    return override.partition("=")[0].lstrip("+~")


def evaluation_config(cfg: DictConfig) -> DictConfig:
    """Recompose ``evaluate`` with the checkpoint's training overrides first, then this command line's."""
    from hydra import compose

    from cxr.checkpoints import read_checkpoint

    stored = (read_checkpoint(cfg.ckpt_path).get("cxr") or {}).get("overrides", [])
    given = list(HydraConfig.get().overrides.task)
    given_keys = {_override_key(o) for o in given}
    inherited = [o for o in stored if _override_key(o) not in given_keys
                 and not _override_key(o).split(".")[0].split("/")[0] in _NOT_FOR_EVALUATION]
    if inherited:
        log.info("overrides from the checkpoint's training run: %s", " ".join(inherited))
    return compose(config_name="evaluate", overrides=inherited + given)
