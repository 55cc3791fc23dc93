"""Load classifier checkpoints as data: a local file, ``torch.load(weights_only=True)``, the network rebuilt only
from cxr's model registry (:mod:`cxr.models.registry`: a name and typed arguments), every other setting a plain
value. A checkpoint's optimiser and scheduler settings are never read: they come from the config the user runs.
Checkpoints written before the registry (``net._target_`` of cxr's own networks) are read through it."""
from __future__ import annotations

from pathlib import Path

import torch

from cxr.models.classifier import BinaryClassifier
from cxr.models.registry import ModelSpecError, spec_from_config
from cxr.safe_instantiate import UnsafeTargetError

# the hyper-parameters a checkpoint gives back (plain values); net is a registry spec, the rest is never read
SETTINGS = ("preprocessing", "program", "class_weight", "task", "findings", "loss")


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded safely or does not hold a cxr classifier."""


class UnsafeCheckpointError(CheckpointError, UnsafeTargetError):
    """A checkpoint whose hyper-parameters name something outside the allowlist (cxr.safe_instantiate)."""


def is_url(path) -> bool:
    """Whether ``path`` names a remote resource (``http://``, ``s3://``, ``file://``...) rather than a local file."""
    return "://" in str(path)


def read_checkpoint(path: str | Path) -> dict:
    """The checkpoint dictionary of a local file, loaded weights-only (tensors and plain Python values, no code)."""
    if is_url(path):
        raise CheckpointError(f"ckpt_path={path}: only local checkpoint files are loaded (download it and give its "
                              "path)")
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle.UnpicklingError and friends: the file needs more than weights
        raise CheckpointError(
            f"{path}: cannot be loaded weights-only ({type(error).__name__}: {str(error).splitlines()[0]}); "
            "refusing to unpickle arbitrary objects from a checkpoint"
        ) from error


def plain_setting(value, key: str):
    """``value`` when it is plain data (numbers, strings, booleans, None, lists and string-keyed mappings of them)
    with no ``_target_`` and no interpolation; ModelSpecError naming ``key`` otherwise."""
    if isinstance(value, str):
        if "${" in value:
            raise ModelSpecError(f"{key}={value!r}: an interpolation is not a value")
        return value
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, (list, tuple)):
        return [plain_setting(v, f"{key}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        for name in value:
            if not isinstance(name, str) or name.startswith("_") and name.endswith("_"):
                raise ModelSpecError(f"{key}.{name}: a checkpoint setting names no code")
        return {name: plain_setting(v, f"{key}.{name}") for name, v in value.items()}
    raise ModelSpecError(f"{key}: a {type(value).__name__} is not a plain value")


def model_arguments(hparams: dict) -> dict:
    """The Classifier's arguments from a checkpoint's hyper-parameters: the registry spec of the network (the
    initial weights never fetched again: the checkpoint holds the trained ones) and the plain settings."""
    net = hparams["net"]
    if isinstance(net, dict) and "_target_" in net:  # written before the registry: weights sat in net
        net = {k: v for k, v in net.items() if k != "weights"}
    spec = spec_from_config(net, "hyper_parameters.net")
    if "weights" in spec["args"]:
        spec["args"]["weights"] = None
    settings = {k: plain_setting(hparams[k], f"hyper_parameters.{k}") for k in SETTINGS if k in hparams}
    return {"net": spec, "weights": None, **settings}


def load_classifier(path: str | Path) -> tuple[BinaryClassifier, dict]:
    """Rebuild the classifier from the checkpoint's registry spec and settings and load its weights."""
    checkpoint = read_checkpoint(path)
    hparams = checkpoint.get("hyper_parameters")
    if not isinstance(hparams, dict) or "net" not in hparams or not isinstance(checkpoint.get("state_dict"), dict):
        raise CheckpointError(f"{path}: not a cxr classifier checkpoint (no network hyper-parameters)")
    try:
        arguments = model_arguments(hparams)
    except ModelSpecError as error:
        raise UnsafeCheckpointError(f"{path}: refused: {error}") from None
    model = BinaryClassifier(**arguments)
    model.load_state_dict(checkpoint["state_dict"])
    return model, checkpoint
