"""Load classifier checkpoints without executing code: ``torch.load(weights_only=True)``, and every ``_target_`` of
the hyper-parameters checked against the allowlist of :mod:`cxr.safe_instantiate` before anything is built."""
from __future__ import annotations

import pickle
import re
from pathlib import Path

import torch

from cxr.errors import UserError
from cxr.models.classifier import BinaryClassifier
from cxr.safe_instantiate import UnsafeTargetError, check_targets


class CheckpointError(UserError, ValueError):
    """A checkpoint that cannot be loaded safely or does not hold a cxr classifier."""


class UnsafeCheckpointError(CheckpointError, UnsafeTargetError):
    """A checkpoint whose hyper-parameters name something outside the allowlist (cxr.safe_instantiate)."""


ZIP_MAGIC, PICKLE_PROTOCOL = b"PK\x03\x04", 0x80  # torch.save's zip archive; its legacy format is a pickle


def read_checkpoint(path: str | Path) -> dict:
    """The checkpoint dictionary, loaded weights-only (tensors and plain Python values, no code).

    A file that is neither of torch.save's formats is "not a checkpoint"; the refusal to unpickle is kept for a
    real pickle that holds objects other than weights."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    with open(path, "rb") as file:
        head = file.read(4)
    if not (head.startswith(ZIP_MAGIC) or head[:1] == bytes([PICKLE_PROTOCOL])):
        raise CheckpointError(f"{path}: not a checkpoint ({_what_it_is(path, head)}, not a file written by "
                              "torch.save); give a .ckpt file of a run (<run>/checkpoints/)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:  # the weights-only unpickler met a global outside its allowlist
        found = re.search(r"WeightsUnpickler error:\s*(.+?)(?: was not an allowed global|\n\n|$)", str(error),
                          re.DOTALL)
        raise CheckpointError(
            f"{path}: cannot be loaded weights-only ({found.group(1).strip() if found else type(error).__name__}); "
            "refusing to unpickle arbitrary objects from a checkpoint"
        ) from error
    except Exception as error:  # a truncated or foreign zip, a damaged pickle: torch's first sentence names it
        reason = re.sub(r"^\[enforce fail at [^]]*\]\s*\.?\s*", "", str(error).strip()).split(". ")[0].splitlines()
        raise CheckpointError(f"{path}: not a readable checkpoint, damaged or truncated ({type(error).__name__}: "
                              f"{(reason or [''])[0][:200]})") from error


def _what_it_is(path: Path, head: bytes) -> str:
    if not head:
        return "an empty file"
    try:
        with open(path, encoding="utf-8") as file:
            file.read(4096)
        return "a text file"
    except UnicodeDecodeError:
        return "an unknown binary format"


def load_classifier(path: str | Path) -> tuple[BinaryClassifier, dict]:
    """Rebuild the classifier from the checkpoint's hyper-parameters and load its weights."""
    checkpoint = read_checkpoint(path)
    hparams = checkpoint.get("hyper_parameters")
    if not hparams or "net" not in hparams or "state_dict" not in checkpoint:
        raise CheckpointError(f"{path}: not a cxr classifier checkpoint (no network hyper-parameters)")
    try:
        check_targets(hparams, "hyper_parameters")
    except UnsafeTargetError as error:
        raise UnsafeCheckpointError(f"{path}: refused: {error}") from None
    arguments = {k: hparams.get(k) for k in ("net", "optimizer", "scheduler", "preprocessing", "program",
                                             "class_weight", "task", "findings", "loss") if k in hparams or k == "net"}
    if isinstance(arguments["net"], dict) and "weights" in arguments["net"]:
        # the checkpoint holds the trained weights: never fetch or read the initial ones (ImageNet, a file) again
        arguments["net"] = {**arguments["net"], "weights": None}
    model = BinaryClassifier(**arguments)
    model.load_state_dict(checkpoint["state_dict"])
    return model, checkpoint
