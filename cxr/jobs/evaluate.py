"""The evaluation job behind ``evaluate.py``: a trained checkpoint scored on the test split its run was trained
against (and the external set), with the checkpoint's preprocessing; returns the metrics."""

from __future__ import annotations

import logging
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from cxr.artifacts import file_digest, write_json
from cxr.data.training_overlap import training_overlap
from cxr.errors import ConfigError
from cxr.evaluation.operating_points import validation_summary
from cxr.evaluation.runner import evaluate_sets
from cxr.jobs.train import _build_data, _evaluation_settings
from cxr.models import sources
from cxr.models.checkpoints import load_classifier, plain_setting
from cxr.run_dir import prepare_run_directory, run_name

log = logging.getLogger(__name__)


SPLIT_SOURCES = ("run", "config")


def _run_split(cfg: DictConfig, checkpoint: dict) -> Path | None:
    """``split_from=run`` (default): the ``splits.csv`` of the run the checkpoint belongs to
    (``<run>/checkpoints/<file>.ckpt``), after checking that the label file is the one it was trained against;
    ``split_from=config``: None (split the labels anew as the config says)."""
    source = cfg.get("split_from", "run")
    if source not in SPLIT_SOURCES:
        raise ConfigError(f"split_from={source!r}: choose run (the run's splits.csv) or config (split anew)")
    if source == "config":
        return None
    ckpt_path = Path(cfg.ckpt_path).resolve()
    splits = ckpt_path.parent.parent / "splits.csv"
    if not splits.is_file():
        raise ConfigError(
            f"{splits} not found: {ckpt_path} is not inside a train.py run directory "
            "(<run>/checkpoints/*.ckpt), so the split it was trained against is unknown; "
            "split the labels from the config with split_from=config"
        )
    trained_on = (checkpoint.get("cxr") or {}).get("labels_sha256")
    labels = cfg.data.get("labels")
    if trained_on and labels and Path(labels).is_file() and file_digest(labels) != trained_on:
        raise ConfigError(
            f"data.labels={labels} changed since {ckpt_path.name} was trained (its SHA-256 differs), "
            f"so {splits} may not describe it; restore the label file, or split it anew with "
            "split_from=config"
        )
    return splits


def _training_overlap(cfg: DictConfig, splits: Path | None, datamodule) -> dict | None:
    """``split_from=config``: the new test (and external) images and patients the checkpoint's run trained or
    validated on, from its splits.csv; refused unless ``allow_training_overlap``. None with the run's own split."""
    if splits is not None:
        return None
    trained = Path(cfg.ckpt_path).resolve().parent.parent / "splits.csv"
    if not trained.is_file():
        log.warning("split_from=config: %s not found, so overlap with the checkpoint's training is unchecked", trained)
        return {"checked_against": None, "allowed": bool(cfg.get("allow_training_overlap", False))}
    sets = {name: datamodule.rows(name) for name in datamodule.eval_set_names()}
    return training_overlap(trained, sets, allowed=bool(cfg.get("allow_training_overlap", False)))


def evaluate(cfg: DictConfig) -> dict:
    """Evaluate ``cfg.ckpt_path`` on the test split the run was trained against (its splits.csv; ``split_from=config``
    splits anew) and on the external set, with the checkpoint's preprocessing."""
    if cfg.preprocessing_from not in ("checkpoint", "config"):
        raise ConfigError(f"preprocessing_from={cfg.preprocessing_from!r}: choose 'checkpoint' or 'config'")
    model, checkpoint = load_classifier(cfg.ckpt_path)
    trained = checkpoint.get("hyper_parameters") or {}  # the initial weights, as data (never fetched again)
    pretrained = sources.summary(  # the leakage flag of the checkpoint's initial weights on this data
        plain_setting(trained.get("weights"), "hyper_parameters.weights"),
        model.hparams.get("weights_file"),
        model.hparams.get("preprocessing"),
        cfg.data.name,
        model.hparams.get("weights_trained_on"),
    )
    if pretrained["leakage"]:
        log.warning("LEAKAGE: %s", pretrained["leakage"]["warning"])
    splits = _run_split(cfg, checkpoint)
    if splits is not None:
        with open_dict(cfg):
            cfg.data.split = {"method": "file", "path": str(splits)}
        log.info("test split: %s (the run's own; split_from=config splits anew)", splits)
    cfg.run_name = run_name(cfg)
    output_dir = prepare_run_directory(cfg)
    preprocessing = model.hparams.preprocessing
    if cfg.preprocessing_from == "config" or not preprocessing:
        preprocessing = OmegaConf.to_container(cfg.program.preprocessing, resolve=True)
    log.info("preprocessing (%s): %s", cfg.preprocessing_from, preprocessing)
    datamodule = _build_data(cfg, output_dir, preprocessing=preprocessing)
    overlap = _training_overlap(cfg, splits, datamodule)
    results = evaluate_sets(model, datamodule, output_dir, _evaluation_settings(cfg), run_name=cfg.run_name)
    epoch = checkpoint.get("epoch")
    metrics = {
        "run_name": cfg.run_name,
        "program": model.hparams.get("program"),
        "data": cfg.data.name,
        "params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "checkpoint": str(Path(cfg.ckpt_path).resolve()),
        "checkpoint_epoch": None if epoch is None else epoch + 1,
        "checkpoint_choice": "ckpt_path",
        "epochs_trained": (epoch if epoch is not None else -1) + 1,
        "split_from": str(splits) if splits is not None else "config",
        "preprocessing": preprocessing,
        "split": datamodule.summary,
        "leakage": datamodule.leakage,
        "training_overlap": overlap,
        "validation": validation_summary(output_dir),  # what evaluate.py returns (a sweep never sees a test figure)
        "pretrained": pretrained,
        **results,
    }
    write_json(output_dir / "metrics.json", metrics)
    log.info("run directory: %s", output_dir)
    return metrics


_NOT_FOR_EVALUATION = (
    "ckpt_path",
    "debug",
    "trainer",
    "callbacks",
    "logger",
    "seed",
    "data_check",
    "check_only",
    "run_name",
    "hparams_search",
)  # a search preset would make evaluate.py launch a sweep


def evaluation_config(cfg: DictConfig) -> DictConfig:
    """Recompose ``evaluate`` with the checkpoint's training overrides first (the experiment's settings only,
    cxr.replay), then this command line's."""
    from hydra import compose

    from cxr.models.checkpoints import read_checkpoint
    from cxr.replay import replayable

    if OmegaConf.is_missing(cfg, "ckpt_path") or not cfg.get("ckpt_path"):
        raise ConfigError("ckpt_path is required: python evaluate.py ckpt_path=<run dir>/checkpoints/last.ckpt")
    stored = (read_checkpoint(cfg.ckpt_path).get("cxr") or {}).get("overrides", [])
    given = list(HydraConfig.get().overrides.task)
    inherited = replayable(stored, f"{cfg.ckpt_path}: training override", given, _NOT_FOR_EVALUATION)
    if inherited:
        log.info("overrides from the checkpoint's training run: %s", " ".join(inherited))
    return compose(config_name="evaluate", overrides=inherited + given)
