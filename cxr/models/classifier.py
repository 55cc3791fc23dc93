"""LightningModule for the binary No Finding (0) / finding (1) task: BCE on logits, Adam, torchmetrics."""
from __future__ import annotations

import hydra
import lightning as L
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torchmetrics import MetricCollection
from torchmetrics.classification import BinaryAccuracy, BinaryAUROC, BinaryRecall, BinarySpecificity

from cxr.safe_instantiate import check_targets, instantiate


def _plain(value):
    """OmegaConf nodes -> plain dicts, so checkpoints hold only primitives (safe weights-only loading)."""
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, DictConfig) else value


def binary_metrics(prefix: str) -> MetricCollection:
    """Accuracy, per-class accuracy (class 0 = specificity, class 1 = sensitivity) and AUROC."""
    return MetricCollection(
        {"acc": BinaryAccuracy(), "acc_class0": BinarySpecificity(), "acc_class1": BinaryRecall(),
         "auroc": BinaryAUROC()},
        prefix=prefix,
    )


class BinaryClassifier(L.LightningModule):
    """Wraps a network that returns one logit per image.

    ``net``, ``optimizer`` and ``scheduler`` are Hydra configs (``_target_``), kept as plain dicts in the
    checkpoint's hyper-parameters so that ``BinaryClassifier.load_from_checkpoint(path)`` rebuilds everything.
    ``preprocessing`` records how inputs were made (channels, size, divisor) for evaluation of the checkpoint.
    """

    def __init__(self, net: dict, optimizer: dict, scheduler: dict | None = None,
                 preprocessing: dict | None = None, program: str | None = None, class_weight=None,
                 channels_last: bool | str = False, fused_optimizer: bool = False):
        super().__init__()
        # CPU fast path (cxr.bench): NHWC inputs ("auto": on the CPU only) and a fused optimizer step; both give the
        # fp32 results to rounding. Not hyper-parameters: they change speed, not the model.
        if channels_last not in (True, False, "auto"):
            raise ValueError(f"channels_last={channels_last!r}: use true, false or auto")
        self.channels_last, self.fused_optimizer = channels_last, bool(fused_optimizer)
        self.save_hyperparameters({
            "net": _plain(net), "optimizer": _plain(optimizer), "scheduler": _plain(scheduler),
            "preprocessing": _plain(preprocessing), "program": program, "class_weight": class_weight,
        }, logger=False)  # the pipeline logs hyper-parameters once, with the final metrics
        self.run_metadata: dict = {}  # saved in checkpoints as "cxr" (training overrides, provenance)
        self.net = instantiate(self.hparams.net, "net")
        # weight of class-1 terms in the loss; "balanced" is set from the training split in setup()
        weight = class_weight if isinstance(class_weight, (int, float)) else 1.0
        self.register_buffer("pos_weight", torch.tensor(float(weight)))
        self.train_metrics = binary_metrics("train/")
        self.val_metrics = binary_metrics("val/")

    def setup(self, stage: str) -> None:
        if self.hparams.class_weight == "balanced" and stage == "fit" and self.trainer.datamodule is not None:
            targets = self.trainer.datamodule.datasets["train"].targets
            n_class1 = float(targets.sum())
            if n_class1 == 0 or n_class1 == len(targets):
                raise ValueError("class_weight=balanced: the training split holds a single class")
            self.pos_weight.fill_((len(targets) - n_class1) / n_class1)
        elif self.hparams.class_weight not in (None, "balanced") and not isinstance(self.hparams.class_weight,
                                                                                     (int, float)):
            raise ValueError(f"class_weight={self.hparams.class_weight!r}: use null, balanced or a number")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.channels_last and images.dim() == 4 and (self.channels_last is True or images.device.type == "cpu"):
            images = images.contiguous(memory_format=torch.channels_last)
        return self.net(images)

    def _step(self, batch, metrics: MetricCollection, stage: str, on_step: bool):
        images, targets, _ = batch
        logits = self(images)
        loss = F.binary_cross_entropy_with_logits(logits.float(), targets, pos_weight=self.pos_weight)
        metrics.update(torch.sigmoid(logits.detach().float()), targets.long())
        self.log(f"{stage}/loss", loss, on_step=on_step, on_epoch=True, prog_bar=True, batch_size=len(targets))
        self.log_dict(metrics, on_step=False, on_epoch=True, prog_bar=stage == "val", batch_size=len(targets))
        return loss

    def training_step(self, batch, batch_idx):
        return self._step(batch, self.train_metrics, "train", on_step=True)

    def validation_step(self, batch, batch_idx):
        self._step(batch, self.val_metrics, "val", on_step=False)

    def predict_step(self, batch, batch_idx, dataloader_idx: int = 0):
        return torch.sigmoid(self(batch[0]).float())

    def _optimizer(self) -> torch.optim.Optimizer:
        """The configured optimizer; with ``fused_optimizer``, its fused kernel where it has one (Adam, AdamW, SGD)."""
        check_targets(self.hparams.optimizer, "optimizer")  # before the fallback below can swallow a refusal
        if self.fused_optimizer and "fused" not in self.hparams.optimizer:
            try:
                return hydra.utils.instantiate(self.hparams.optimizer, params=self.parameters(), fused=True)
            except (TypeError, RuntimeError, ValueError, hydra.errors.InstantiationException):
                pass  # no fused kernel for this optimizer, torch version or device: the plain one below
        return instantiate(self.hparams.optimizer, "optimizer", params=self.parameters())

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["cxr"] = self.run_metadata

    def configure_optimizers(self):
        optimizer = self._optimizer()
        if not self.hparams.scheduler:
            return optimizer
        scheduler_cfg = dict(self.hparams.scheduler)
        interval = scheduler_cfg.pop("interval", "epoch")
        monitor = scheduler_cfg.pop("monitor", "val/auroc")
        scheduler = instantiate(scheduler_cfg, "scheduler", optimizer=optimizer)
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "interval": interval, "monitor": monitor}}
