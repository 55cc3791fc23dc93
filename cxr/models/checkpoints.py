"""Load classifier checkpoints as data: a local file, ``torch.load(weights_only=True)``, the network rebuilt only
from cxr's model registry (:mod:`cxr.models.registry`: a name and typed arguments), every other setting a plain
value. A checkpoint's optimiser and scheduler settings are never read: they come from the config the user runs.
Checkpoints written before the registry (``net._target_`` of cxr's own networks) are read through it."""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import torch

from cxr.errors import UserError
from cxr.models.classifier import BinaryClassifier
from cxr.models.registry import ModelSpecError, spec_from_config
from cxr.safe_instantiate import UnsafeTargetError

# the hyper-parameters a checkpoint gives back (plain values); net is a registry spec, the rest is never read
SETTINGS = (
    "preprocessing", "program", "class_weight", "task", "findings", "loss",
    "weights_file", "freeze", "backbone_lr_scale", "weights_trained_on",
)  # fmt: skip


class CheckpointError(UserError, ValueError):
    """A checkpoint that cannot be loaded safely or does not hold a cxr classifier."""


class UnsafeCheckpointError(CheckpointError, UnsafeTargetError):
    """A checkpoint whose hyper-parameters name something outside the allowlist (cxr.safe_instantiate)."""


ZIP_MAGIC, PICKLE_PROTOCOL = b"PK\x03\x04", 0x80  # torch.save's zip archive; its legacy format is a pickle


def is_url(path) -> bool:
    """Whether ``path`` names a remote resource (``http://``, ``s3://``, ``file://``...) rather than a local file."""
    return "://" in str(path)


def read_checkpoint(path: str | Path) -> dict:
    """The checkpoint dictionary of a local file, loaded weights-only (tensors and plain Python values, no code).

    A file that is neither of torch.save's formats is "not a checkpoint"; the refusal to unpickle is kept for a
    real pickle that holds objects other than weights."""
    if is_url(path):
        raise CheckpointError(
            f"ckpt_path={path}: only local checkpoint files are loaded (download it and give its path)"
        )
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    with open(path, "rb") as file:
        head = file.read(4)
    if not (head.startswith(ZIP_MAGIC) or head[:1] == bytes([PICKLE_PROTOCOL])):
        raise CheckpointError(
            f"{path}: not a checkpoint ({_what_it_is(path, head)}, not a file written by "
            "torch.save); give a .ckpt file of a run (<run>/checkpoints/)"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:  # the weights-only unpickler met a global outside its allowlist
        found = re.search(
            r"WeightsUnpickler error:\s*(.+?)(?: was not an allowed global|\n\n|$)", str(error), re.DOTALL
        )
        raise CheckpointError(
            f"{path}: cannot be loaded weights-only ({found.group(1).strip() if found else type(error).__name__}); "
            "refusing to unpickle arbitrary objects from a checkpoint"
        ) from error
    except Exception as error:  # a truncated or foreign zip, a damaged pickle: torch's first sentence names it
        reason = re.sub(r"^\[enforce fail at [^]]*\]\s*\.?\s*", "", str(error).strip()).split(". ")[0].splitlines()
        raise CheckpointError(
            f"{path}: not a readable checkpoint, damaged or truncated ({type(error).__name__}: "
            f"{(reason or [''])[0][:200]})"
        ) from error


def _what_it_is(path: Path, head: bytes) -> str:
    if not head:
        return "an empty file"
    try:
        with open(path, encoding="utf-8") as file:
            file.read(4096)
        return "a text file"
    except UnicodeDecodeError:
        return "an unknown binary format"


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
