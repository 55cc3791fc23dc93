"""Lightning callbacks of the framework: per-epoch history (training curves) and input-image grids."""
from __future__ import annotations

import lightning as L
import pandas as pd
import torch
from lightning.pytorch.loggers import TensorBoardLogger


def tensorboard_writer(trainer: L.Trainer):
    """The SummaryWriter of the trainer's TensorBoard logger, or None when TensorBoard is not in use."""
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            return logger.experiment
    return None


class EpochHistory(L.Callback):
    """Records the epoch-level metrics (train and val loss, accuracy, AUROC) after every epoch."""

    KEYS = ("train/loss_epoch", "train/acc", "train/auroc", "val/loss", "val/acc", "val/auroc")

    def __init__(self):
        self.rows: list[dict] = []

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = trainer.callback_metrics
        row = {"epoch": trainer.current_epoch + 1}
        for key in self.KEYS:
            if key in metrics:
                row[key.replace("_epoch", "")] = float(metrics[key])
        self.rows.append(row)

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=["epoch", "train/loss", "train/acc", "train/auroc",
                                                "val/loss", "val/acc", "val/auroc"])

    def state_dict(self) -> dict:
        return {"rows": self.rows}

    def load_state_dict(self, state_dict: dict) -> None:
        self.rows = list(state_dict.get("rows", []))


class InputImageGrid(L.Callback):
    """Logs a grid of the first images of each split to TensorBoard, as the network sees them."""

    def __init__(self, n_images: int = 16):
        self.n_images = n_images

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        writer = tensorboard_writer(trainer)
        datamodule = trainer.datamodule
        if writer is None or datamodule is None:
            return
        from torchvision.utils import make_grid

        for name in ("train", "val", "test"):
            dataset = datamodule.datasets.get(name)
            if not dataset:
                continue
            items = [dataset[i] for i in range(min(self.n_images, len(dataset)))]
            images = torch.stack([image for image, _, _ in items])
            images = images / images.amax().clamp(min=1e-8) if images.amax() > 1 else images  # program B: 0-255
            grid = make_grid(images, nrow=8, padding=2, pad_value=1.0)
            labels = " ".join(str(int(target)) for _, target, _ in items)
            writer.add_image(f"inputs/{name}", grid, global_step=0)
            writer.add_text(f"inputs/{name}_labels", f"labels (0 = No Finding, 1 = finding): {labels}", 0)
