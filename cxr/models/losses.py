"""Binary losses on the network's logit, selected by ``model.loss`` (``program.training.loss``).

- ``bce_with_logits``: binary cross-entropy computed from the logit (numerically exact, never saturates).
- ``keras_bce``: what the thesis' Keras 2 code computed with ``Dense(1, activation='sigmoid')`` and
  ``loss='binary_crossentropy'``: the sigmoid probability clipped to [1e-7, 1 - 1e-7] before the logarithm, so a
  saturated output (|logit| > ~16) gives a constant loss and a zero gradient. With program B's raw 0-255 input the
  initial logits are in the hundreds, and this clipping decides how (and whether) the network learns
  (tests/test_keras_parity.py, docs/programs.md "Keras parity").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

KERAS_EPSILON = 1e-7  # keras.backend.epsilon()
LOSSES = ("bce_with_logits", "keras_bce")


def masked(loss):
    """``loss`` over the labelled targets only: a NaN target (a finding the dataset does not label, or an ignored
    uncertain label) adds no term and no gradient; the mean is over the labelled entries."""

    def wrapped(logits: torch.Tensor, targets: torch.Tensor, pos_weight: torch.Tensor | None = None):
        labelled = ~torch.isnan(targets)
        if bool(labelled.all()):
            return loss(logits, targets, pos_weight, reduction="mean")
        terms = loss(logits, torch.where(labelled, targets, torch.zeros_like(targets)), pos_weight, reduction="none")
        return (terms * labelled).sum() / labelled.sum().clamp(min=1)

    wrapped.__doc__ = loss.__doc__
    return wrapped


@masked
def bce_with_logits(logits, targets, pos_weight=None, reduction="mean"):
    return F.binary_cross_entropy_with_logits(logits, targets, pos_weight=pos_weight, reduction=reduction)


@masked
def keras_bce(logits, targets, pos_weight=None, reduction="mean"):
    """Keras' ``binary_crossentropy`` of ``sigmoid(logits)``: probabilities clipped to [eps, 1 - eps] (zero gradient
    outside), then ``-(w y log p + (1 - y) log(1 - p))`` averaged; ``pos_weight`` weighs the class-1 terms as Keras'
    ``class_weight={1: w}`` does."""
    probabilities = torch.sigmoid(logits).clamp(KERAS_EPSILON, 1.0 - KERAS_EPSILON)
    positive = targets * torch.log(probabilities)
    if pos_weight is not None:
        positive = positive * pos_weight
    terms = -(positive + (1.0 - targets) * torch.log1p(-probabilities))
    return terms.mean() if reduction == "mean" else terms


def binary_loss(name: str):
    """The loss function called ``name`` (one of :data:`LOSSES`)."""
    if name not in LOSSES:
        raise ValueError(f"model.loss={name!r}: use one of {', '.join(LOSSES)}")
    return {"bce_with_logits": bce_with_logits, "keras_bce": keras_bce}[name]


def balanced_pos_weight(targets: torch.Tensor, multilabel: bool) -> torch.Tensor:
    """``class_weight=balanced``: n_negative / n_positive of the training targets (per finding for multi-label, 1
    for a finding without positives); a binary training split of one class is refused."""
    targets = torch.as_tensor(targets, dtype=torch.float32)
    positives = targets.nansum(dim=0)  # NaN: a finding the dataset does not label (or an ignored uncertain label)
    if multilabel:
        labelled = (~torch.isnan(targets)).sum(dim=0)
        return torch.where(positives > 0, (labelled - positives) / positives.clamp(min=1), torch.ones_like(positives))
    if positives == 0 or positives == len(targets):
        raise ValueError("class_weight=balanced: the training split holds a single class")
    return (len(targets) - positives) / positives
