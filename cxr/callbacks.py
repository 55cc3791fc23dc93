"""Lightning callbacks: checkpoints named by 1-based epoch, per-epoch history (training curves), plain progress
lines, input-image grids, resumable random state, checkpoint on interrupt."""

from __future__ import annotations

import logging
import random
import sys
import time
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException

log = logging.getLogger(__name__)


def tensorboard_writer(trainer: L.Trainer):
    """The SummaryWriter of the trainer's TensorBoard logger, or None when TensorBoard is not in use."""
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            return logger.experiment
    return None


class EpochCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint whose file names count epochs from 1 (``best-epoch002.ckpt`` is the second
    epoch), as history.csv, metrics.json and the model card do; Lightning's ``{epoch}`` counts from 0. With a
    monitor, ``min_epochs`` keeps epochs before it from being chosen (an early validation peak is often noise)."""

    def __init__(self, *args, min_epochs: int = 1, **kwargs):
        super().__init__(*args, **kwargs)
        if isinstance(min_epochs, bool) or not isinstance(min_epochs, int) or min_epochs < 1:
            raise ValueError(
                f"min_epochs={min_epochs!r}: give the first epoch (1-based) a checkpoint may be chosen from"
            )
        self.min_epochs = min_epochs

    def _too_early(self, trainer: L.Trainer) -> bool:
        return bool(self.monitor) and trainer.current_epoch + 1 < self.min_epochs

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._too_early(trainer):
            super().on_train_epoch_end(trainer, pl_module)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._too_early(trainer):
            super().on_validation_end(trainer, pl_module)

    def format_checkpoint_name(
        self, metrics: dict, filename: str | None = None, ver: int | None = None, prefix: str | None = None
    ) -> str:
        metrics = dict(metrics)
        if "epoch" in metrics:
            metrics["epoch"] = metrics["epoch"] + 1
        return super().format_checkpoint_name(metrics, filename=filename, ver=ver, prefix=prefix)


class SmoothedMetric(L.Callback):
    """Logs an exponential moving average of a validation metric after every epoch (``val/auroc`` ->
    ``val/auroc_ema``: ema = weight * value + (1 - weight) * previous ema), for checkpoint selection and early
    stopping that follow the trend, not one lucky epoch of a small validation set. An epoch whose value is NaN
    (a one-class validation set) leaves the average unchanged. Listed before the callbacks that read it."""

    def __init__(self, metric: str = "val/auroc", weight: float = 0.4, suffix: str = "_ema"):
        if not 0 < weight <= 1:
            raise ValueError(f"weight={weight!r}: the weight of the newest epoch must lie in (0, 1] (1: no smoothing)")
        self.metric, self.weight, self.name = metric, float(weight), f"{metric}{suffix}"
        self.value: float | None = None

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        current = trainer.callback_metrics.get(self.metric)
        if current is None or trainer.sanity_checking:
            return
        current = float(current)
        if not np.isnan(current):
            self.value = current if self.value is None else self.weight * current + (1 - self.weight) * self.value
        value = float("nan") if self.value is None else self.value
        pl_module.log(self.name, value, on_step=False, on_epoch=True)
        trainer.callback_metrics[self.name] = torch.tensor(value)  # read by the callbacks after this one, this epoch

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state_dict: dict) -> None:
        self.value = state_dict.get("value")


class EpochHistory(L.Callback):
    """Records the epoch-level metrics (train and val loss, accuracy, AUROC) after every epoch."""

    KEYS = ("train/loss_epoch", "train/acc", "train/auroc", "val/loss", "val/acc", "val/auroc", "val/auroc_ema")

    def __init__(self):
        self.rows: list[dict] = []

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        getattr(pl_module, "log_training_epoch_metrics", lambda: None)()  # the module's epoch-end metrics, first
        metrics = trainer.callback_metrics
        row = {"epoch": trainer.current_epoch + 1}
        for key in self.KEYS:
            if key in metrics:
                row[key.replace("_epoch", "")] = float(metrics[key])
        self.rows.append(row)

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(
            self.rows,
            columns=[
                "epoch",
                "train/loss",
                "train/acc",
                "train/auroc",
                "val/loss",
                "val/acc",
                "val/auroc",
                "val/auroc_ema",
            ],
        )

    def state_dict(self) -> dict:
        return {"rows": self.rows}

    def load_state_dict(self, state_dict: dict) -> None:
        self.rows = list(state_dict.get("rows", []))


def progress_bar_enabled(setting: bool | None, stream=None) -> bool:
    """``trainer.enable_progress_bar``: as set, or when null a bar only where ``stream`` (stdout, where Lightning's
    bars draw) is a terminal; elsewhere its redraws would fill the log, and ProgressLog writes lines instead."""
    if setting is not None:
        return bool(setting)
    isatty = getattr(sys.stdout if stream is None else stream, "isatty", None)
    return bool(isatty and isatty())


class ProgressLog(L.Callback):
    """Progress as plain log lines: one per epoch (steps, train loss, val loss and AUROC, time elapsed) and, when no
    progress bar is drawn (no terminal), one every ``every_n_steps`` optimizer steps (0: none), so a batch job's log
    shows the run moving. Lightning's bars (TQDM, Rich) only redraw one line; it has no plain-line progress."""

    def __init__(self, every_n_steps: int = 50):
        if every_n_steps < 0:
            raise ValueError(f"callbacks.progress_log.every_n_steps={every_n_steps}: give 0 (epoch lines only) or more")
        self.every_n_steps = every_n_steps
        self._started = time.monotonic()
        self._losses: list[torch.Tensor] = []
        self._last_step = -1
        self._epoch_first_step = 0

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._started = time.monotonic()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._losses = []
        self._epoch_first_step = trainer.global_step

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int
    ) -> None:
        if not self.every_n_steps or trainer.progress_bar_callback is not None or not trainer.is_global_zero:
            return
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor):
            self._losses.append(loss.detach())  # read once per line: no device-to-host sync per step
        step = trainer.global_step
        if step % self.every_n_steps or step == self._last_step:  # several batches per step (accumulation)
            return
        self._last_step = step
        total = trainer.estimated_stepping_batches
        loss_text = ""
        if self._losses:  # the mean since the previous line
            loss_text = f"loss {torch.stack(self._losses).float().mean():.4f} (mean of {len(self._losses)} batches), "
        log.info(
            "%s step %d%s (batch %d/%s): %s%s elapsed",
            self._epoch(trainer),
            step,
            f"/{total}" if total not in (None, float("inf")) else "",
            batch_idx + 1,
            trainer.num_training_batches,
            loss_text,
            _duration(time.monotonic() - self._started),
        )
        self._losses = []

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or trainer.sanity_checking:
            return
        metrics = trainer.callback_metrics
        parts = [f"{trainer.global_step - self._epoch_first_step} steps ({trainer.global_step} in all)"]
        for key, name in (("train/loss_epoch", "train loss"), ("val/loss", "val loss"), ("val/auroc", "val AUROC")):
            if key in metrics:
                parts.append(f"{name} {float(metrics[key]):.4f}")
        log.info(
            "%s done: %s; %s elapsed",
            self._epoch(trainer),
            ", ".join(parts),
            _duration(time.monotonic() - self._started),
        )

    @staticmethod
    def _epoch(trainer: L.Trainer) -> str:
        epochs = trainer.max_epochs
        return f"epoch {trainer.current_epoch + 1}" + (f"/{epochs}" if epochs and epochs > 0 else "")


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours}:{minutes:02d}:{seconds:02d}"
    return f"{minutes}:{seconds:02d}" if minutes else f"{seconds} s"


class InputImageGrid(L.Callback):
    """Logs a grid of the first images of each split to TensorBoard, as the network sees them.

    Drawing augmented training images uses the random generators: it runs on a saved copy of their state (restored
    afterwards), so the grid changes nothing in training and a resumed run (which skips it) stays exact."""

    def __init__(self, n_images: int = 16):
        self.n_images = n_images

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        writer = tensorboard_writer(trainer)
        datamodule = trainer.datamodule
        if writer is None or datamodule is None or trainer.ckpt_path:  # a resumed run logged them at its start
            return
        state = RandomState.capture()
        try:
            self._log_grids(writer, datamodule)
        finally:
            RandomState.restore(state)

    def _log_grids(self, writer, datamodule) -> None:
        from torchvision.utils import make_grid

        for name in ("train", "val", "test"):
            dataset = datamodule.datasets.get(name)
            if not dataset:
                continue
            items = [dataset[i] for i in range(min(self.n_images, len(dataset)))]
            images = torch.stack([image for image, _, _ in items])
            low, high = images.amin(), images.amax()  # display range (program B: 0-255; D: standardised)
            images = (images - low) / (high - low).clamp(min=1e-8) if low < 0 or high > 1 else images
            grid = make_grid(images, nrow=8, padding=2, pad_value=1.0)
            labels = " ".join(
                str(int(target))
                if target.dim() == 0
                # multi-label: the findings' indices
                else "+".join(str(i) for i in target.nonzero().flatten().tolist()) or "-"
                for _, target, _ in items
            )
            writer.add_image(f"inputs/{name}", grid, global_step=0)
            writer.add_text(f"inputs/{name}_labels", f"labels (0 = No Finding, 1 = finding): {labels}", 0)


class RandomState(L.Callback):
    """Saves the Python, NumPy, torch (CPU and, when present, every CUDA device's) random states in checkpoints
    and restores them on resume, so a resumed run shuffles and augments its remaining epochs exactly as an
    uninterrupted one (Lightning does not save them). Weights-only loadable: tensors and plain values.
    Under DDP every process's states are gathered into rank 0's checkpoint (``ranks``), and each process gets its
    own back on resume (augmentation draws differ per process)."""

    @staticmethod
    def capture() -> dict:
        kind, keys, position, has_gauss, gauss = np.random.get_state()
        state = {
            "python": random.getstate(),
            "torch": torch.get_rng_state(),
            "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, gauss],
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    @staticmethod
    def restore(state: dict) -> None:
        kind, keys, position, has_gauss, gauss = state["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, gauss))
        random.setstate(_as_tuples(state["python"]))
        torch.set_rng_state(state["torch"])
        cuda = state.get("cuda")
        if cuda and torch.cuda.is_available():
            if len(cuda) != torch.cuda.device_count():
                log.warning(
                    "resuming with %d CUDA device(s), the checkpoint saved %d: CUDA random state not "
                    "restored, the run is not bit-exact",
                    torch.cuda.device_count(),
                    len(cuda),
                )
            else:
                torch.cuda.set_rng_state_all(cuda)

    def state_dict(self) -> dict:
        state = self.capture()
        if _world_size() > 1:  # every rank dumps the checkpoint (rank 0 writes it): gather all ranks' states
            states = [None] * _world_size()
            torch.distributed.all_gather_object(states, state)
            state = {**state, "ranks": states}
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        ranks = state_dict.get("ranks") or []
        rank = torch.distributed.get_rank() if _world_size() > 1 else 0
        if len(ranks) == _world_size() and rank < len(ranks):
            state_dict = ranks[rank]
        elif ranks:
            log.warning(
                "resuming with %d processes a checkpoint of %d: random states not restored per process",
                _world_size(),
                len(ranks),
            )
        self.restore(state_dict)


def _world_size() -> int:
    return (
        torch.distributed.get_world_size()
        if torch.distributed.is_available() and torch.distributed.is_initialized()
        else 1
    )


def _as_tuples(value):
    return tuple(_as_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


class CheckpointOnInterrupt(L.Callback):
    """On Ctrl-C or SIGTERM, saves ``interrupted.ckpt`` before Lightning stops the run."""

    def __init__(self, dirpath: str):
        self.dirpath = dirpath

    def on_train_batch_end(self, trainer: L.Trainer, *args) -> None:
        if trainer.received_sigterm:  # single-process Lightning would only stop at the end of the epoch
            raise SIGTERMException()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, (KeyboardInterrupt, SIGTERMException)) and not trainer.fast_dev_run:
            if trainer.world_size > 1:  # saving is collective: a rank that stopped alone would wait forever
                log.warning(
                    "interrupted: resume from the last finished epoch with: python train.py resume=%s",
                    Path(self.dirpath).parent,
                )
                return
            path = Path(self.dirpath) / "interrupted.ckpt"
            trainer.save_checkpoint(path)
            log.warning(
                "interrupted: saved %s (resume from the last finished epoch with: python train.py resume=%s)",
                path,
                Path(self.dirpath).parent,
            )
