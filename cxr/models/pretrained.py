"""Networks for the named pretrained sources (cxr.models.sources): torchxrayvision's DenseNet-121 and ResNet-50,
any timm model, and DINOv2-class encoders through transformers (RAD-DINO), each an encoder plus a head sized to
the task. Weights are read weights-only (safetensors or ``torch.load(weights_only=True)``); where the source has
output names, head rows whose name matches a task finding are kept.
"""

from __future__ import annotations

import json
import logging
import pickle

import torch
from torch import nn

from cxr.errors import ConfigError
from cxr.models import sources
from cxr.models.weights_file import (  # noqa: F401 - also this module's API
    PretrainedWeightsError,
    convert_command,
    read_weights,
    xrv_weights_path,
)

log = logging.getLogger(__name__)


def matched_head(old: nn.Linear, labels, findings, num_outputs: int) -> tuple[nn.Linear, dict[str, str]]:
    """A new head of ``num_outputs`` rows; a row whose finding matches one of the source's ``labels`` starts from
    that output's weights. Returns the head and {finding: source output}."""
    head = nn.Linear(old.in_features, num_outputs)
    by_name = {sources.finding_name(label): i for i, label in enumerate(labels) if label}
    mapped = {}
    with torch.no_grad():
        for row, finding in enumerate(findings or []):
            if num_outputs > 1 and finding in by_name:
                head.weight[row].copy_(old.weight[by_name[finding]])
                head.bias[row].copy_(old.bias[by_name[finding]])
                mapped[finding] = labels[by_name[finding]]
    return head, mapped


class PretrainedNet(nn.Module):
    """An encoder returning one embedding per image (``features``) and a linear head sized to the task."""

    head: nn.Linear
    head_mapping: dict

    def features(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def is_head_parameter(self, name: str) -> bool:
        return name.startswith("head.")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.head(self.features(images))
        return logits.squeeze(1) if self.head.out_features == 1 else logits


def _source(weights, kind: str):
    source = sources.parse(weights) if weights else None
    if source is not None and source.kind != kind:
        raise ConfigError(f"model.weights={weights}: {source.kind} weights do not fit a {kind} network")
    return source


class XrvNet(PretrainedNet):
    """torchxrayvision's DenseNet-121 (224 px) or ResNet-50 (512 px), one input channel, built with torchvision
    (the same parameter names as xrv's) so that torchxrayvision is needed only to convert its pickled files."""

    def __init__(self, arch: str = "densenet121", num_outputs: int = 1, findings=None, weights=None, weights_file=None):
        super().__init__()
        import torchvision

        source = _source(weights, "xrv")
        labels = (
            source.labels
            if source
            else sources.XRV[f"{arch}-res224-all" if arch == "densenet121" else "resnet50-res512-all"][1]
        )
        self.encoder = torchvision.models.get_model(arch, weights=None, num_classes=len(labels))
        first = "features.conv0" if arch == "densenet121" else "conv1"
        parent = self.encoder.features if arch == "densenet121" else self.encoder
        setattr(parent, first.split(".")[-1], nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False))
        last = "classifier" if arch == "densenet121" else "fc"
        if source is not None:
            key = f"model.weights={source.key}"
            path = xrv_weights_path(sources.locate(source, weights_file))
            state = {k: v for k, v in read_weights(path, key).items() if k != "op_threshs"}
            try:
                self.encoder.load_state_dict(state)
            except RuntimeError as error:
                raise PretrainedWeightsError(
                    f"{key}: {path} does not fit torchxrayvision's {arch} ({str(error).splitlines()[0]})"
                ) from None
            log.info("%s: loaded %d tensors from %s", key, len(state), path)
        self.head, self.head_mapping = matched_head(getattr(self.encoder, last), labels, findings, int(num_outputs))
        if source is not None:
            log.info("model.weights=%s: head rows kept for %s", source.key, sorted(self.head_mapping) or "none")
        setattr(self.encoder, last, nn.Identity())
        self.arch = arch

    def features(self, images: torch.Tensor) -> torch.Tensor:
        if self.arch == "densenet121":  # xrv's features2: relu, global average pool
            maps = torch.relu(self.encoder.features(images))
            return torch.flatten(nn.functional.adaptive_avg_pool2d(maps, 1), 1)
        return self.encoder(images)


class XrvDenseNet(XrvNet):
    def __init__(self, num_outputs: int = 1, findings=None, weights=None, weights_file=None):
        super().__init__("densenet121", num_outputs, findings, weights, weights_file)


class XrvResNet(XrvNet):
    def __init__(self, num_outputs: int = 1, findings=None, weights=None, weights_file=None):
        super().__init__("resnet50", num_outputs, findings, weights, weights_file)


class TimmNet(PretrainedNet):
    """Any timm model by name, its classifier removed (timm's ``num_classes=0``), weights read by timm's own loader
    (weights-only, its per-model key filters) from a local file."""

    def __init__(self, name: str, num_outputs: int = 1, findings=None, weights=None, weights_file=None):
        super().__init__()
        import timm

        source = _source(weights, "timm")
        if source is None:
            self.encoder = timm.create_model(name, pretrained=False, num_classes=0)
        else:
            path = sources.locate(source, weights_file)
            if path.is_dir():
                path = next(
                    (path / f for f in ("model.safetensors", "pytorch_model.bin") if (path / f).is_file()), path
                )
            try:
                self.encoder = timm.create_model(
                    name, pretrained=True, num_classes=0, pretrained_cfg_overlay={"file": str(path), "source": "timm"}
                )
            except (RuntimeError, pickle.UnpicklingError, OSError, ValueError) as error:
                raise PretrainedWeightsError(
                    f"model.weights={source.key}: {path} cannot be loaded into timm's {name} "
                    f"({type(error).__name__}: {str(error).splitlines()[0][:200]})"
                ) from None
            log.info("model.weights=%s: loaded %s", source.key, path)
        self.head, self.head_mapping = nn.Linear(self.encoder.num_features, int(num_outputs)), {}

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.encoder(images)


HF_MODELS = {"dinov2": ("Dinov2Config", "Dinov2Model"), "vit": ("ViTConfig", "ViTModel")}


class HFEncoderNet(PretrainedNet):
    """A transformers ViT-class encoder (DINOv2: RAD-DINO) whose pooled CLS embedding feeds the head. ``config``:
    the model's config.json as text (kept in the checkpoint, so it rebuilds without the files)."""

    def __init__(
        self, model_type: str, config: str, num_outputs: int = 1, findings=None, weights=None, weights_file=None
    ):
        super().__init__()
        import transformers

        config_class, model_class = (getattr(transformers, n) for n in HF_MODELS[model_type])
        source = _source(weights, "hf")
        settings = {k: v for k, v in json.loads(config).items() if k not in ("auto_map", "architectures")}
        if source is None:
            self.encoder = model_class(config_class(**settings))
        else:
            folder = sources.locate(source, weights_file)
            try:
                self.encoder = model_class.from_pretrained(str(folder), use_safetensors=True).train()  # loaded in eval
            except (OSError, ValueError, RuntimeError) as error:
                raise PretrainedWeightsError(
                    f"model.weights={source.key}: {folder} is not a {model_type} folder with model.safetensors "
                    f"({type(error).__name__}: {str(error).splitlines()[0][:200]})"
                ) from None
            log.info("model.weights=%s: loaded %s", source.key, folder)
        self.head, self.head_mapping = nn.Linear(self.encoder.config.hidden_size, int(num_outputs)), {}

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.encoder(pixel_values=images).pooler_output
