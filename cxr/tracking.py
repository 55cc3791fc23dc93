"""Run tracking beyond TensorBoard and CSV: ``logger=mlflow`` and ``logger=wandb``. Lightning's loggers record the
per-epoch metrics; this module adds what a tracking server shows of a finished run: its name, the whole resolved
config, the final metrics with their confidence intervals, and the run's files (figures, model card, metrics.json)
as artifacts."""

from __future__ import annotations

import logging
import math
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

ARTIFACT_SUFFIXES = (
    ".json",
    ".md",
    ".csv",
    ".yaml",
    ".png",
    ".txt",
    ".html",
    ".log",
)  # not checkpoints: log_model does


def mlflow_logger(store: str, artifact_location: str | None = None, **kwargs):
    """Lightning's MLFlowLogger on ``store``: a tracking URI as given (``http://…``, ``sqlite:///…``,
    ``databricks``), or a path, taken as a SQLite file whose folder is created (MLflow 3 refuses its old file
    store, and SQLite does not create folders)."""
    from lightning.pytorch.loggers import MLFlowLogger

    if ":" not in store or Path(store).is_absolute():  # a path (a Windows drive letter aside)
        path = Path(store).expanduser().resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        store = f"sqlite:///{path}"
        if artifact_location:  # else MLflow puts artifacts in ./mlartifacts of the working directory
            artifact_location = str(Path(artifact_location).expanduser().resolve())
    return MLFlowLogger(tracking_uri=store, artifact_location=artifact_location, **kwargs)


def flat_metrics(results: dict, prefix: str = "") -> dict[str, float]:
    """Every finite number of the evaluation results as ``test/auroc``, ``test/ci/auroc/ci_low``, …"""
    flat = {}
    for key, value in results.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flat_metrics(value, f"{name}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            flat[name] = float(value)
    return flat


def run_files(output_dir: Path) -> list[Path]:
    """The files of a run directory worth keeping beside it in a tracking server (figures, reports, tables)."""
    return sorted(
        p
        for p in output_dir.rglob("*")
        if p.is_file()
        and p.suffix in ARTIFACT_SUFFIXES
        and not any(
            part.startswith(".") or part in ("checkpoints", "wandb", "tensorboard")
            for part in p.relative_to(output_dir).parts
        )
    )


def run_name(cfg: DictConfig, output_dir: Path) -> str:
    """``run_name`` when the config has one, else the run directory's name (a date and time, or a trial number)."""
    return str(cfg.get("run_name") or output_dir.name)


def log_run_files(loggers: list, cfg: DictConfig, output_dir: Path, results: dict, step: int) -> None:
    """Send each MLflow or W&B logger the run's name, resolved config, final metrics (with CIs) and files."""
    from lightning.pytorch.loggers import MLFlowLogger, WandbLogger

    config = OmegaConf.to_container(cfg, resolve=True)
    final = flat_metrics(results)
    for logger in loggers:
        if isinstance(logger, MLFlowLogger):
            client, run_id = logger.experiment, logger.run_id
            if not cfg.get("run_name"):  # MLFlowLogger was given run_name when the config has one
                client.set_tag(run_id, "mlflow.runName", run_name(cfg, output_dir))
            client.log_dict(run_id, config, "config.yaml")
            if final:
                logger.log_metrics(final, step=step)
            for path in run_files(output_dir):
                folder = path.parent.relative_to(output_dir).as_posix()
                client.log_artifact(run_id, str(path), None if folder == "." else folder)
        elif isinstance(logger, WandbLogger):
            import wandb

            run = logger.experiment
            run.name = run_name(cfg, output_dir)
            run.config.update(config, allow_val_change=True)
            run.summary.update(final)
            files = run_files(output_dir)
            figures = {
                f"figures/{path.relative_to(output_dir).with_suffix('').as_posix()}": wandb.Image(str(path))
                for path in files
                if path.suffix == ".png"
            }  # in the run's media panel
            if figures:
                run.log(figures)
            artifact = wandb.Artifact(f"run-{run.id}", type="run-files")
            for path in files:
                artifact.add_file(str(path), name=path.relative_to(output_dir).as_posix())
            run.log_artifact(artifact)
