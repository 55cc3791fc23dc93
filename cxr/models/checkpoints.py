"""Load classifier checkpoints without executing code: ``torch.load(weights_only=True)``, and every ``_target_`` of
the hyper-parameters checked against the allowlist of :mod:`cxr.safe_instantiate` before anything is built."""
from __future__ import annotations

from pathlib import Path

import torch

from cxr.errors import UserError
from cxr.models.classifier import BinaryClassifier
from cxr.safe_instantiate import UnsafeTargetError, check_targets


class CheckpointError(UserError, ValueError):
    """A checkpoint that cannot be loaded safely or does not hold a cxr classifier."""


class UnsafeCheckpointError(CheckpointError, UnsafeTargetError):
    """A checkpoint whose hyper-parameters name something outside the allowlist (cxr.safe_instantiate)."""


def read_checkpoint(path: str | Path) -> dict:
    """The checkpoint dictionary, loaded weights-only (tensors and plain Python values, no code)."""
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
