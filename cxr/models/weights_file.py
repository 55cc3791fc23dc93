"""Reading a pretrained weights file weights-only: a state dict from safetensors or a weights-only torch file; a
whole pickled model is refused with the command that converts it once (unpickling can run code)."""

from __future__ import annotations

import pickle
from pathlib import Path

import torch

from cxr.errors import ConfigError


class PretrainedWeightsError(ConfigError):
    """Weights that cannot be read weights-only or do not fit the network; the message says what to do."""


def convert_command(kind: str, path: Path) -> str:
    return f"python -m cxr.models.convert {kind} {path} --trust-pickle"


def read_weights(path: Path, key: str) -> dict[str, torch.Tensor]:
    """A state dict from a .safetensors file or a weights-only torch file; a pickled whole model is refused with
    the conversion command (unpickling can run code)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise PretrainedWeightsError(
            f"{key}: {path} is a whole pickled model (torchxrayvision publishes its DenseNets so), not a state dict, "
            "and cxr loads weights only (unpickling a model runs code from the file); if you trust it, convert it "
            f"once: {convert_command('xrv', path)} (writes {path.with_suffix('.safetensors').name} beside it, "
            "which cxr then uses)"
        ) from None
    except Exception as error:
        raise PretrainedWeightsError(f"{key}: {path}: not readable weights ({type(error).__name__})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PretrainedWeightsError(f"{key}: {path} is not a state dict (a mapping of names to tensors)")
    return {k.removeprefix("module."): v for k, v in state.items()}


def xrv_weights_path(path: Path) -> Path:
    """``path``, or the safetensors file ``python -m cxr.models.convert`` wrote beside it."""
    converted = Path(path).with_suffix(".safetensors")
    return converted if converted.is_file() else Path(path)
