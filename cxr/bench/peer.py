"""The Keras peer: the thesis' own Keras model (TensorFlow optional, ``.[parity]``), timed inside the PyTorch
measures' round-robin so that the ratio to Keras comes from the same rounds."""

from __future__ import annotations

import numpy as np
import torch

from cxr.models.keras_reference import tensorflow_available


def keras_training(images: torch.Tensor, targets: torch.Tensor, steps: int) -> dict:
    """Candidates for ``interleaved``: ``keras fit`` (one ``fit`` of ``steps`` batches of 10, as the thesis trains)
    and ``keras train_on_batch`` (fit's compiled step without its per-call set-up); {} without TensorFlow."""
    if not tensorflow_available():
        return {}
    from cxr.models.keras_reference import thesis_keras_model

    model = thesis_keras_model(images.shape[1], images.shape[-1], seed=0)
    x = np.ascontiguousarray(images.permute(0, 2, 3, 1).numpy())
    y = targets.numpy().astype(np.float32)
    x_round, y_round = np.concatenate([x] * steps), np.concatenate([y] * steps)
    return {
        "keras fit": lambda: model.fit(x_round, y_round, batch_size=len(x), epochs=1, shuffle=False, verbose=0),
        "keras train_on_batch": lambda: [model.train_on_batch(x, y) for _ in range(steps)],
    }


def keras_inference(images: torch.Tensor, batch: int) -> dict:
    """``keras predict`` (batch ``batch``) and ``keras predict_on_batch`` over ``images``; {} without TensorFlow."""
    if not tensorflow_available():
        return {}
    from cxr.models.keras_reference import thesis_keras_model

    model = thesis_keras_model(images.shape[1], images.shape[-1], seed=0)
    x = np.ascontiguousarray(images.permute(0, 2, 3, 1).numpy())
    return {
        "keras predict": lambda: model.predict(x, batch_size=batch, verbose=0),
        "keras predict_on_batch": lambda: [model.predict_on_batch(x[i : i + batch]) for i in range(0, len(x), batch)],
    }


def tensorflow_version() -> str | None:
    if not tensorflow_available():
        return None
    import tensorflow as tf

    return tf.__version__
