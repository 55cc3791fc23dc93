"""LightningModule for the binary No Finding (0) / finding (1) task and the 14-finding multi-label task: BCE on
logits, Adam, torchmetrics."""

from __future__ import annotations

import warnings

import hydra
import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import (
    BinaryAccuracy,
    BinaryAUROC,
    BinaryRecall,
    BinarySpecificity,
    MultilabelAccuracy,
    MultilabelStatScores,
)

from cxr.errors import ConfigError
from cxr.models import registry, sources
from cxr.models.backbones import no_weights
from cxr.models.losses import balanced_pos_weight, binary_loss
from cxr.safe_instantiate import check_targets, instantiate

TASKS = ("binary", "multilabel")
MISSING = -1  # a NaN target (finding not labelled: cxr.data.findings) as torchmetrics' ignore_index


def _plain(value):
    """OmegaConf nodes -> plain dicts, so checkpoints hold only primitives (safe weights-only loading)."""
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, DictConfig) else value


def binary_metrics(prefix: str) -> MetricCollection:
    """Accuracy, per-class accuracy (class 0 = specificity, class 1 = sensitivity) and AUROC."""
    return MetricCollection(
        {
            "acc": BinaryAccuracy(),
            "acc_class0": BinarySpecificity(),
            "acc_class1": BinaryRecall(),
            "auroc": BinaryAUROC(),
        },
        prefix=prefix,
    )


def multilabel_metrics(prefix: str, num_labels: int) -> MetricCollection:
    """Accuracy over all (image, finding) decisions; AUROC per finding is computed at epoch end (FindingAUROC)."""
    return MetricCollection({"acc": MultilabelAccuracy(num_labels=num_labels, ignore_index=MISSING)}, prefix=prefix)


class FindingAUROC(torch.nn.Module):
    """AUROC per finding over an epoch, and their mean over the findings that have both classes (``<stage>/auroc``:
    the checkpoint and early-stopping monitor); a finding with one class only (or none labelled) is not logged.

    One BinaryAUROC per finding, each ignoring missing targets: torchmetrics' MultilabelAUROC fails on a finding
    whose targets are all ignored (a finding the dataset does not label), so only the defined ones are computed."""

    def __init__(self, findings: list[str]):
        super().__init__()
        self.findings = list(findings)
        self.aurocs = torch.nn.ModuleList(BinaryAUROC(ignore_index=MISSING) for _ in self.findings)
        self.counts = MultilabelStatScores(num_labels=len(findings), average=None, ignore_index=MISSING)

    def update(self, probabilities: torch.Tensor, targets: torch.Tensor) -> None:
        for j, metric in enumerate(self.aurocs):
            metric.update(probabilities[:, j], targets[:, j])
        self.counts.update(probabilities, targets)

    def compute_and_reset(self) -> tuple[float, dict[str, float]]:
        """(mean AUROC over findings with both classes, or 0.0 when none has; per finding)."""
        try:
            with warnings.catch_warnings():  # a finding absent this epoch: left out below, no need to warn
                warnings.simplefilter("ignore", UserWarning)
                tp, fp, tn, fn, _ = self.counts.compute().T
                both = ((tp + fn) > 0) & ((tn + fp) > 0)
                per_finding = {
                    f: float(metric.compute()) for f, metric, ok in zip(self.findings, self.aurocs, both) if ok
                }
        except (RuntimeError, ValueError):  # nothing seen this epoch (e.g. a sanity check without batches)
            return 0.0, {}
        finally:
            for metric in self.aurocs:
                metric.reset()
            self.counts.reset()
        return (sum(per_finding.values()) / len(per_finding) if per_finding else 0.0), per_finding


class Classifier(L.LightningModule):
    """Wraps a network that returns one logit per image (``task=binary``) or one per finding (``multilabel``).

    ``net`` is the user's ``model.net`` config, kept in the checkpoint as data: a name of cxr's model registry with
    typed arguments (cxr.models.registry; a checkpoint names no code). ``optimizer`` and ``scheduler`` are Hydra
    configs of the run; they are not saved, so a loaded checkpoint trains only with the optimiser of the config
    the user runs.
    ``preprocessing`` records how inputs were made (channels, size, divisor) for evaluation of the checkpoint.
    ``task`` and ``findings`` (the output names, in order) size the head: the net is built with
    ``num_outputs=len(findings)`` (1 for binary). ``freeze_backbone_epochs``: train only the head at first.
    ``weights`` (``model.weights``): the network's initial weights, none, ``imagenet`` (torchvision backbones) or
    the path of a state dict; kept in ``hparams.weights`` (a checkpoint is loaded without them), or a named
    source (``xrv:...``, ``timm:...``, ``hf:...``; cxr.models.sources) read from ``weights_file`` or its cache.
    ``freeze=backbone``: a linear probe (only the head trains; the frozen encoder stays in eval mode).
    ``backbone_lr_scale``: the encoder's learning rate as a fraction of the head's. ``weights_trained_on``: datasets
    the initial weights saw, beyond cxr's table (the leakage flag).
    """

    def __init__(
        self,
        net: dict,
        optimizer: dict | None = None,
        scheduler: dict | None = None,
        preprocessing: dict | None = None,
        program: str | None = None,
        class_weight=None,
        channels_last: bool | str = False,
        fused_optimizer: bool = False,
        task: str = "binary",
        findings: list[str] | None = None,
        freeze_backbone_epochs: int = 0,
        weights: str | None = None,
        loss: str = "bce_with_logits",
        weights_file: str | None = None,
        freeze: str | None = None,
        backbone_lr_scale: float = 1.0,
        weights_trained_on: list[str] | None = None,
    ):
        super().__init__()
        if task not in TASKS:
            raise ValueError(f"task={task!r}: choose one of {', '.join(TASKS)}")
        findings = list(findings) if findings else (["finding"] if task == "binary" else [])
        if task == "binary" and len(findings) != 1:
            raise ValueError(f"task=binary has one output, got findings={findings}")
        if task == "multilabel" and not findings:
            raise ValueError("task=multilabel needs task.findings, the list of findings to predict")
        # CPU fast path (cxr.bench): NHWC inputs ("auto": on the CPU only) and a fused optimizer step; both give the
        # fp32 results to rounding. Not hyper-parameters: they change speed, not the model.
        if channels_last not in (True, False, "auto"):
            raise ValueError(f"channels_last={channels_last!r}: use true, false or auto")
        self.channels_last, self.fused_optimizer = channels_last, bool(fused_optimizer)
        try:
            net = registry.spec_from_config(dict(_plain(net)), "model.net")
        except registry.ModelSpecError as error:
            raise ConfigError(str(error)) from None
        loads_weights = registry.entry(net["name"]).loads_weights
        weights = None if no_weights(weights) else str(weights)
        source = sources.parse(weights)
        if source is not None and net["name"].split("/")[0] != source.kind:
            raise ConfigError(
                f"model.weights={weights} needs its own network ({sources.network(source, weights_file)['name']}); "
                "train.py sets it, in code call cxr.models.sources.apply_to_config(cfg) first"
            )
        if freeze not in (None, "none", "backbone"):
            raise ConfigError(f"model.freeze={freeze!r}: choose none (fine-tune everything) or backbone (linear probe)")
        if not float(backbone_lr_scale) > 0:
            raise ConfigError(
                f"model.backbone_lr_scale={backbone_lr_scale}: a positive fraction of the head's learning rate"
            )
        if weights == "imagenet" and not loads_weights:
            raise ConfigError(
                f"model.weights=imagenet: {net['name']} has no ImageNet weights (a torchvision "
                "backbone has: model=densenet121); use none or the path of a state dict"
            )
        # the run's own settings, never saved in a checkpoint (a checkpoint names no code to build)
        self.optimizer_config, self.scheduler_config = _plain(optimizer), _plain(scheduler)
        self.save_hyperparameters(
            {
                "net": net,
                "weights": weights,
                "preprocessing": _plain(preprocessing),
                "program": program,
                "class_weight": class_weight,
                "loss": loss,
                "task": task,
                "findings": [str(f) for f in _plain(findings)],
                "freeze_backbone_epochs": int(freeze_backbone_epochs or 0),
                "weights_file": None if no_weights(weights_file) else str(weights_file),
                "freeze": None if freeze in (None, "none") else freeze,
                "backbone_lr_scale": float(backbone_lr_scale),
                "weights_trained_on": [str(d) for d in _plain(weights_trained_on) or []],
            },
            logger=False,
        )  # the pipeline logs hyper-parameters once, with the final metrics
        self.run_metadata: dict = {}  # saved in checkpoints as "cxr" (training overrides, provenance)
        self.multilabel = task == "multilabel"
        self.loss_fn = binary_loss(loss)  # cxr.models.losses: keras_bce (thesis programs) or bce_with_logits
        extra = {} if "num_outputs" in net["args"] else {"num_outputs": len(findings)}  # the head sized to the task
        if loads_weights and weights:
            extra["weights"] = weights
        if "findings" in registry.entry(net["name"]).parameters:  # a pretrained source: head rows mapped by name
            extra["findings"] = list(findings)
            if weights:
                extra["weights_file"] = self.hparams.weights_file
        self.net = registry.build(net, "model.net", **extra)
        if self.linear_probe:  # only the head's parameters train (and count as trainable)
            for name, parameter in self.net.named_parameters():
                parameter.requires_grad_(self._is_head(name))
        path = None if loads_weights else weights
        if path:  # a network that does not load weights itself (the thesis CNN): a state dict file
            from cxr.models.backbones import load_state_dict_report

            load_state_dict_report(self.net, path)
        # weight of class-1 terms in the loss (per finding for multi-label); "balanced" is set from the training
        # split in setup()
        weight = class_weight if isinstance(class_weight, (int, float)) else 1.0
        self.register_buffer(
            "pos_weight",
            torch.full((len(findings),), float(weight)) if self.multilabel else torch.tensor(float(weight)),
        )
        if self.multilabel:
            self.train_metrics = multilabel_metrics("train/", len(findings))
            self.val_metrics = multilabel_metrics("val/", len(findings))
            self.train_finding_auroc, self.val_finding_auroc = FindingAUROC(findings), FindingAUROC(findings)
        else:
            self.train_metrics = binary_metrics("train/")
            self.val_metrics = binary_metrics("val/")
        self.val_loss = MeanMetric()
        self._train_auroc_logged_epoch = -1

    def setup(self, stage: str) -> None:
        if self.hparams.class_weight == "balanced" and stage == "fit" and self.trainer.datamodule is not None:
            # from the label rows, not the dataset: a streamed shard dataset holds no targets tensor
            targets = self.trainer.datamodule.targets("train")
            self.pos_weight.copy_(balanced_pos_weight(targets, self.multilabel).reshape(self.pos_weight.shape))
        elif self.hparams.class_weight not in (None, "balanced") and not isinstance(
            self.hparams.class_weight, (int, float)
        ):
            raise ValueError(f"class_weight={self.hparams.class_weight!r}: use null, balanced or a number")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.channels_last and images.dim() == 4 and (self.channels_last is True or images.device.type == "cpu"):
            images = images.contiguous(memory_format=torch.channels_last)
        logits = self.net(images)
        return logits.reshape(len(images), -1) if self.multilabel else logits

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The training loss, in one place: ``model.loss`` (BCE on the logits, or Keras 2's clipped BCE for the thesis
        programs), class-1 terms weighted by ``pos_weight`` (one weight per finding for multi-label)."""
        return self.loss_fn(logits.float(), targets, pos_weight=self.pos_weight)

    def _step(self, batch, metrics: MetricCollection, stage: str, on_step: bool):
        images, targets, _ = batch
        logits = self(images)
        loss = self.loss(logits, targets)
        probabilities = torch.sigmoid(logits.detach().float())
        classes = targets.nan_to_num(MISSING).long()  # multi-label: a missing finding is ignored by the metrics
        metrics.update(probabilities, classes)
        if self.multilabel:
            getattr(self, f"{stage}_finding_auroc").update(probabilities, classes)
        if stage == "val":  # mean over all images of all DDP processes (their validation batches may differ in number)
            self.val_loss.update(loss.detach(), weight=len(targets))
            self.log("val/loss", self.val_loss, on_step=False, on_epoch=True, prog_bar=True)
        else:
            self.log(
                f"{stage}/loss",
                loss,
                on_step=on_step,
                on_epoch=True,
                prog_bar=True,
                batch_size=len(targets),
                sync_dist=True,
            )  # DDP: the mean over the processes (equal batches in training)
        self.log_dict(metrics, on_step=False, on_epoch=True, prog_bar=stage == "val", batch_size=len(targets))
        return loss

    def _log_finding_auroc(self, stage: str) -> None:
        mean, per_finding = getattr(self, f"{stage}_finding_auroc").compute_and_reset()
        self.log(f"{stage}/auroc", mean, prog_bar=stage == "val")
        for finding, value in per_finding.items():
            self.log(f"{stage}/auroc/{finding}", value)

    def _is_head(self, name: str) -> bool:
        return getattr(self.net, "is_head_parameter", lambda name: name.startswith("classifier."))(name)

    @property
    def linear_probe(self) -> bool:
        return self.hparams.get("freeze") == "backbone"

    def on_train_epoch_start(self) -> None:
        epochs = self.hparams.get("freeze_backbone_epochs") or 0
        if epochs or self.linear_probe:  # the head trains alone for the first N epochs (BatchNorm still adapts)
            frozen = self.linear_probe or self.current_epoch < epochs
            for name, parameter in self.net.named_parameters():
                parameter.requires_grad_(self._is_head(name) or not frozen)
        if self.linear_probe:
            self.train(True)

    def train(self, mode: bool = True):
        """A linear probe keeps its frozen encoder in eval mode (BatchNorm statistics and dropout fixed)."""
        super().train(mode)
        if mode and self.linear_probe:
            for name, module in self.net.named_modules():
                own = [f"{name}.{p}" for p, _ in module.named_parameters()] or [f"{name}.weight"]
                if name and not any(self._is_head(p) for p in own):
                    module.eval()
        return self

    def parameter_groups(self) -> list[dict]:
        """The optimiser's parameter groups: the head at the configured learning rate, the encoder at
        ``backbone_lr_scale`` times it (left out of a linear probe)."""
        head, backbone = [], []
        for name, parameter in self.named_parameters():
            is_head = not name.startswith("net.") or self._is_head(name[len("net.") :])
            (head if is_head else backbone).append(parameter)
        scale = self.hparams.get("backbone_lr_scale") or 1.0
        groups = [{"params": head}]
        if backbone and not self.linear_probe:
            lr = (self.optimizer_config or {}).get("lr")
            groups.append({"params": backbone, **({"lr": lr * scale} if scale != 1.0 and lr is not None else {})})
        return groups

    def on_train_epoch_end(self) -> None:
        self.log_training_epoch_metrics()

    def log_training_epoch_metrics(self) -> None:
        """Multi-label: log this epoch's training AUROC (mean and per finding), once per epoch. Lightning runs the
        callbacks' ``on_train_epoch_end`` before the module's, so a callback that reads the epoch's metrics calls this
        first (cxr.callbacks.EpochHistory); otherwise it would read the previous epoch's value."""
        if self.multilabel and self._train_auroc_logged_epoch != self.current_epoch:
            self._train_auroc_logged_epoch = self.current_epoch
            self._log_finding_auroc("train")

    def on_validation_epoch_end(self) -> None:
        if self.multilabel and not self.trainer.sanity_checking:
            self._log_finding_auroc("val")
        elif self.multilabel:
            self.val_finding_auroc.compute_and_reset()

    def training_step(self, batch, batch_idx):
        return self._step(batch, self.train_metrics, "train", on_step=True)

    def validation_step(self, batch, batch_idx):
        self._step(batch, self.val_metrics, "val", on_step=False)

    def predict_step(self, batch, batch_idx, dataloader_idx: int = 0):
        """Probabilities: shape (N,) for binary, (N, K) for multi-label (columns in ``hparams.findings`` order)."""
        return torch.sigmoid(self(batch[0]).float())

    def _optimizer(self) -> torch.optim.Optimizer:
        """The configured optimizer; with ``fused_optimizer``, its fused kernel where it has one (Adam, AdamW, SGD)."""
        if not self.optimizer_config:
            raise ConfigError(
                "no optimizer: a model loaded from a checkpoint trains with the optimizer of the config "
                "you run (train.py ckpt_path=...), never one from the file"
            )
        check_targets(self.optimizer_config, "optimizer")  # before the fallback below can swallow a refusal
        groups = self.parameter_groups()  # passed to the built partial: Hydra would wrap dicts of tensors
        if self.fused_optimizer and "fused" not in self.optimizer_config:
            try:
                return hydra.utils.instantiate(self.optimizer_config, _partial_=True, fused=True)(groups)
            except (TypeError, RuntimeError, ValueError, hydra.errors.InstantiationException):
                pass  # no fused kernel for this optimizer, torch version or device: the plain one below
        return instantiate(self.optimizer_config, "optimizer", _partial_=True)(groups)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["cxr"] = self.run_metadata

    def configure_optimizers(self):
        optimizer = self._optimizer()
        if not self.scheduler_config:
            return optimizer
        scheduler_cfg = dict(self.scheduler_config)
        interval = scheduler_cfg.pop("interval", "epoch")
        monitor = scheduler_cfg.pop("monitor", "val/auroc")
        scheduler = instantiate(scheduler_cfg, "scheduler", optimizer=optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": interval, "monitor": monitor},
        }


BinaryClassifier = Classifier  # the name before multi-label; old configs and checkpoints use it
