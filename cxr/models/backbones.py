"""torchvision classification networks as cxr backbones: head sized to the task, grey input, pretrained weights.

``TorchvisionNet(name="densenet121", num_outputs=14, in_channels=1, weights="imagenet")`` builds any
``torchvision.models`` classification model by name, replaces its last linear layer by one with ``num_outputs``
outputs and takes grey input either as a 3-channel copy (``grey_input="copy"``) or through a 1-channel first
convolution (``"conv1"``; with pretrained weights its filter is the sum of the RGB filters, so a grey image gives
the same activations as its RGB copy). ``weights``: ``none``, ``imagenet`` (torchvision's weights from the cache
under ``TORCH_HOME``, downloaded when online) or the path of a state dict (loaded weights-only; missing and
unexpected keys are reported).
"""

from __future__ import annotations

import logging
import os
import pickle
from pathlib import Path

import torch
from torch import nn

from cxr.errors import ConfigError

log = logging.getLogger(__name__)
GREY_INPUTS = ("copy", "conv1")
_STRIPPED_PREFIXES = ("module.", "net.", "model.")  # DataParallel, a cxr checkpoint's LightningModule, wrappers


class WeightsError(ConfigError):
    """Weights that cannot be found or loaded; the message names the file and what to do."""


def no_weights(weights) -> bool:
    """Whether ``model.weights`` asks for none (random initialisation)."""
    return weights is None or str(weights).lower() in ("none", "null", "")


def imagenet_weights(name: str):
    """torchvision's default (ImageNet) weights enum of model ``name``."""
    from torchvision.models import get_model_weights

    return get_model_weights(name).DEFAULT


def imagenet_cache_file(name: str) -> Path:
    """Where torchvision keeps (and looks for) the ImageNet weights of ``name``: $TORCH_HOME/hub/checkpoints/<file>."""
    url = imagenet_weights(name).url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def build_torchvision_model(name: str, weights=None) -> nn.Module:
    """``torchvision.models.<name>`` with ImageNet weights (``weights="imagenet"``) or random initialisation.

    ImageNet weights come from torchvision's cache, else from its download; offline and not cached, one line
    names the file and where to put it."""
    from torchvision.models import get_model, list_models

    if name not in list_models():
        raise ValueError(
            f"model.net.name={name!r} is not a torchvision model (e.g. densenet121, resnet50, "
            "efficientnet_b0; torchvision.models.list_models() lists them)"
        )
    if str(weights) != "imagenet":
        return get_model(name, weights=None)
    enum = imagenet_weights(name)
    cached = imagenet_cache_file(name)
    try:  # torchvision's own loader unpickles with weights_only=False: the cache file is read weights-only here
        state = enum.get_state_dict(progress=True, check_hash=True, weights_only=True)
    except pickle.UnpicklingError as error:
        raise WeightsError(
            f"{cached}: cannot be loaded weights-only ({str(error).splitlines()[0]}); delete it and "
            "it is downloaded again"
        ) from None
    except Exception as error:  # URLError, socket errors, HTTP errors, a truncated download
        raise WeightsError(
            f"ImageNet weights for {name} are not in the cache and could not be downloaded "
            f"({type(error).__name__}): put {cached.name} (from {enum.url}) at {cached} (set TORCH_HOME to use "
            "another cache), or train without them: model.weights=none"
        ) from None
    model = get_model(name, weights=None)
    model.load_state_dict(state)
    return model


def _parent(root: nn.Module, dotted: str) -> tuple[nn.Module, str]:
    *path, leaf = dotted.split(".")
    module = root
    for part in path:
        module = getattr(module, part)
    return module, leaf


def _last_linear(model: nn.Module) -> str:
    name = next((n for n, m in reversed(list(model.named_modules())) if isinstance(m, nn.Linear)), None)
    if name is None:
        raise ValueError(f"{type(model).__name__} has no linear classification layer to resize")
    return name


def _first_conv(model: nn.Module) -> str:
    name = next((n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)
    if name is None:
        raise ValueError(f"{type(model).__name__} has no first convolution to make single-channel")
    return name


def read_state_dict(path: str | Path, prefixes=_STRIPPED_PREFIXES) -> dict[str, torch.Tensor]:
    """A state dict from ``path``, loaded weights-only; a checkpoint's ``state_dict`` and common prefixes
    (``module.``, ``net.``, ``model.``, the model's name) are unwrapped."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsError(f"model.weights={path}: no such file (use none, imagenet or the path of a state dict)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise WeightsError(
            f"model.weights={path}: cannot be loaded weights-only ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''})"
        ) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"model.weights={path}: not a state dict (a mapping of names to tensors)")
    for prefix in prefixes:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def load_state_dict_report(model: nn.Module, path: str | Path, name: str = "") -> dict[str, list[str]]:
    """Load the state dict at ``path`` into ``model`` (non-strict); log and return missing / unexpected keys.

    Tensors whose shape differs (e.g. a head for another number of findings) are left out and listed as
    ``mismatched``."""
    state = read_state_dict(path, _STRIPPED_PREFIXES + ((f"{name}.",) if name else ()))  # e.g. CheXNet's densenet121.
    own = model.state_dict()
    mismatched = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    result = model.load_state_dict({k: v for k, v in state.items() if k not in mismatched}, strict=False)
    report = {
        "missing": list(result.missing_keys),
        "unexpected": list(result.unexpected_keys),
        "mismatched": mismatched,
    }
    loaded = len(state) - len(report["unexpected"]) - len(mismatched)
    if loaded == 0:
        raise WeightsError(
            f"model.weights={path}: none of its {len(state)} tensors fits this network "
            f"(first keys: {', '.join(list(state)[:3])}; the network's: {', '.join(list(own)[:3])})"
        )
    log.info("model.weights=%s: loaded %d of %d tensors of the network", path, loaded, len(own))
    for kind, keys in report.items():
        if keys:
            log.warning(
                "model.weights=%s: %d %s key(s): %s%s",
                path,
                len(keys),
                kind,
                ", ".join(keys[:8]),
                " ..." if len(keys) > 8 else "",
            )
    return report


class TorchvisionNet(nn.Module):
    """A torchvision classification model returning ``num_outputs`` logits per image (one output: shape (N,))."""

    def __init__(
        self,
        name: str = "densenet121",
        num_outputs: int = 1,
        in_channels: int = 3,
        weights: str | None = None,
        grey_input: str = "copy",
    ):
        super().__init__()
        if in_channels not in (1, 3):
            raise ValueError(f"in_channels={in_channels}: torchvision backbones take 1 (grey) or 3 (RGB) channels")
        if grey_input not in GREY_INPUTS:
            raise ValueError(f"model.net.grey_input={grey_input!r}: choose one of {', '.join(GREY_INPUTS)}")
        self.name, self.num_outputs = name, int(num_outputs)
        pretrained = str(weights) == "imagenet"
        self.model = build_torchvision_model(name, "imagenet" if pretrained else None)
        self.head_name = _last_linear(self.model)
        parent, leaf = _parent(self.model, self.head_name)
        old = getattr(parent, leaf)
        setattr(parent, leaf, nn.Linear(old.in_features, self.num_outputs))
        self.repeat_grey = in_channels == 1 and grey_input == "copy"
        if in_channels == 1 and grey_input == "conv1":
            parent, leaf = _parent(self.model, _first_conv(self.model))
            conv = getattr(parent, leaf)
            single = nn.Conv2d(
                1,
                conv.out_channels,
                conv.kernel_size,
                conv.stride,
                conv.padding,
                conv.dilation,
                conv.groups,
                conv.bias is not None,
                conv.padding_mode,
            )
            if pretrained:  # a grey image x gives the activations its RGB copy (x, x, x) gave
                with torch.no_grad():
                    single.weight.copy_(conv.weight.sum(dim=1, keepdim=True))
                    if conv.bias is not None:
                        single.bias.copy_(conv.bias)
            setattr(parent, leaf, single)
        if not no_weights(weights) and not pretrained:
            self.weights_report = load_state_dict_report(self.model, weights, name)

    def is_head_parameter(self, name: str) -> bool:
        """Whether ``name`` (from ``self.named_parameters()``) belongs to the classification head."""
        return name.startswith(f"model.{self.head_name}.")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.repeat_grey:
            images = images.expand(-1, 3, -1, -1)
        logits = self.model(images)
        return logits.squeeze(1) if self.num_outputs == 1 else logits
