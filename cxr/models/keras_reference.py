"""The thesis' own Keras network (TensorFlow is optional: ``pip install -e ".[parity]"``) and the weight transfer
to :class:`cxr.models.thesis_cnn.ThesisCNN`: the reference of the parity test and the benchmark's Keras peer.

The network is the thesis' ``Sequential`` code (section 3.2.2) as written; its loss is Keras 2's
``binary_crossentropy`` on the sigmoid output, which clips the probability to [1e-7, 1 - 1e-7]. Keras 3 instead
recovers the logit of a sigmoid output and does not clip, so the 2018 behaviour is spelled out here
(:func:`keras2_binary_crossentropy`).
"""

from __future__ import annotations

import numpy as np
import torch


def _import_tensorflow():
    """``import tensorflow``, after torch's compiler stack: Triton (imported by ``torch._dynamo``, e.g. when an
    optimizer is built) crashes the process with a segmentation fault when it is loaded after TensorFlow 2.21."""
    import importlib

    import torch._dynamo  # noqa: F401

    return importlib.import_module("tensorflow")  # not an import statement, which isort would move above torch's


def tensorflow_available() -> bool:
    try:
        _import_tensorflow()
    except Exception:  # ImportError, or a broken install
        return False
    return True


def keras2_binary_crossentropy(y_true, y_pred):
    """Keras 2.2's ``binary_crossentropy(target, output)`` (TensorFlow backend, 2018): clip, back to a logit,
    ``sigmoid_cross_entropy_with_logits``, mean over the batch."""
    tf = _import_tensorflow()

    epsilon = 1e-7
    y_true = tf.reshape(tf.cast(y_true, y_pred.dtype), tf.shape(y_pred))
    clipped = tf.clip_by_value(y_pred, epsilon, 1.0 - epsilon)
    logits = tf.math.log(clipped / (1.0 - clipped))
    return tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=y_true, logits=logits), axis=-1)


def thesis_keras_model(channels: int = 3, image_size: int = 150, seed: int | None = 0, clip_loss: bool = True):
    """The thesis' Keras model, compiled as in the thesis (Adam lr 3e-4 with Keras' epsilon 1e-7). ``clip_loss``:
    Keras 2's clipped cross-entropy (the thesis); False: Keras 3's stock ``binary_crossentropy``."""
    _import_tensorflow()
    import keras
    from keras import layers, models, optimizers

    if seed is not None:
        keras.utils.set_random_seed(seed)
    model = models.Sequential([keras.Input((image_size, image_size, channels))])
    for width in (32, 64, 128, 256):
        model.add(layers.Conv2D(width, (3, 3), activation="relu"))
        model.add(layers.MaxPooling2D((2, 2)))
    model.add(layers.Flatten())
    model.add(layers.Dense(512, activation="relu"))
    model.add(layers.Dense(1, activation="sigmoid"))
    model.compile(
        loss=keras2_binary_crossentropy if clip_loss else "binary_crossentropy",
        optimizer=optimizers.Adam(learning_rate=3e-4, epsilon=1e-7),
        metrics=["acc"],
    )
    return model


def copy_keras_weights(model, net: torch.nn.Module) -> None:
    """Copy the Keras model's weights into ``net`` (a ThesisCNN of the same shape).

    Convolution kernels go from (kh, kw, in, out) to (out, in, kh, kw) and dense kernels from (in, out) to
    (out, in). Keras flattens the last feature map in NHWC order, PyTorch in NCHW: the first dense kernel's rows are
    permuted from (h, w, c) to (c, h, w) so that both networks compute the same function.
    """
    keras_layers = [layer for layer in model.layers if layer.weights]
    torch_layers = [m for m in net.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    if len(keras_layers) != len(torch_layers):
        raise ValueError(f"{len(keras_layers)} Keras layers with weights vs {len(torch_layers)} in the torch net")
    flattened = False
    for layer, module in zip(keras_layers, torch_layers):
        kernel, bias = (np.asarray(w) for w in layer.get_weights())
        if isinstance(module, torch.nn.Conv2d):
            weight = kernel.transpose(3, 2, 0, 1)
            last_channels = kernel.shape[-1]
        elif not flattened:
            side = int(round((kernel.shape[0] / last_channels) ** 0.5))
            weight = kernel.reshape(side, side, last_channels, -1).transpose(3, 2, 0, 1).reshape(kernel.shape[1], -1)
            flattened = True
        else:
            weight = kernel.T
        if tuple(weight.shape) != tuple(module.weight.shape):
            raise ValueError(f"Keras layer {layer.name}: weight {weight.shape} vs torch {tuple(module.weight.shape)}")
        with torch.no_grad():
            module.weight.copy_(torch.from_numpy(np.ascontiguousarray(weight)))
            module.bias.copy_(torch.from_numpy(bias))


def keras_weights_as_torch(model, net: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The Keras model's current weights in ``net``'s layout (a copy; ``net`` is unchanged)."""
    import copy

    twin = copy.deepcopy(net)
    copy_keras_weights(model, twin)
    return {name: value.detach().clone() for name, value in twin.state_dict().items()}


def compare_training(
    images: torch.Tensor,
    targets: torch.Tensor,
    steps: int,
    loss: str = "keras_bce",
    optimizer: str = "cxr.models.optimizers.KerasAdam",
    batch_size: int = 10,
    seed: int = 0,
    twin_channels_last: bool = False,
) -> dict:
    """Train the thesis' Keras model and a ThesisCNN started from the same (copied) weights on the same batches
    (``images``: N x C x H x W float, in order, ``batch_size`` per step) and compare them after every step.

    ``loss``: a name of :mod:`cxr.models.losses`; ``optimizer``: the class (``program.training.optimizer``),
    run with lr 3e-4 and epsilon 1e-7 as the thesis. With ``twin_channels_last`` a second
    ThesisCNN runs the same steps with channels_last inputs: other convolution kernels, other float rounding, the
    noise floor any two implementations share. Returns per-step lists: ``keras_loss``, ``torch_loss``,
    ``max_weight_diff`` (largest |w_keras - w_torch| over all parameters), ``relative_weight_diff``
    (||w_keras - w_torch|| / ||w_keras - w_start||) and the twin's ``noise_max_weight_diff`` and
    ``noise_relative_weight_diff`` (the same measures between the two PyTorch runs).
    """
    import copy

    from hydra.utils import get_class

    from cxr.models.losses import binary_loss
    from cxr.models.thesis_cnn import ThesisCNN

    if images.shape[0] < steps * batch_size:
        raise ValueError(f"{steps} steps of {batch_size} need {steps * batch_size} images, got {images.shape[0]}")
    channels, size = images.shape[1], images.shape[-1]
    model = thesis_keras_model(channels, size, seed=seed)
    net = ThesisCNN(channels, size)
    copy_keras_weights(model, net)
    start = {k: v.clone() for k, v in net.state_dict().items()}
    twin = copy.deepcopy(net) if twin_channels_last else None
    make = get_class(optimizer)
    optimizers = [make(m.parameters(), lr=3e-4, eps=1e-7) for m in ([net, twin] if twin else [net])]
    loss_fn = binary_loss(loss)
    result = {
        key: []
        for key in (
            "keras_loss",
            "torch_loss",
            "max_weight_diff",
            "relative_weight_diff",
            "noise_max_weight_diff",
            "noise_relative_weight_diff",
        )
    }
    for step in range(steps):
        x = images[step * batch_size : (step + 1) * batch_size]
        y = targets[step * batch_size : (step + 1) * batch_size].float()
        keras_loss = model.train_on_batch(x.permute(0, 2, 3, 1).numpy(), y.numpy(), return_dict=True)["loss"]
        for module, opt, memory_format in zip((net, twin), optimizers, (torch.contiguous_format, torch.channels_last)):
            opt.zero_grad()
            value = loss_fn(module(x.contiguous(memory_format=memory_format)), y)
            value.backward()
            opt.step()
            if module is net:
                torch_loss = float(value.detach())
        reference = keras_weights_as_torch(model, net)
        weights = net.state_dict()
        diff = torch.cat([(reference[k] - weights[k]).flatten() for k in weights])
        moved = torch.cat([(reference[k] - start[k]).flatten() for k in weights])
        result["keras_loss"].append(float(keras_loss))
        result["torch_loss"].append(torch_loss)
        result["max_weight_diff"].append(float(diff.abs().max()))
        result["relative_weight_diff"].append(float(diff.norm() / moved.norm()))
        if twin is not None:
            noise = torch.cat([(twin.state_dict()[k] - weights[k]).flatten() for k in weights])
            own = torch.cat([(weights[k] - start[k]).flatten() for k in weights])
            result["noise_max_weight_diff"].append(float(noise.abs().max()))
            result["noise_relative_weight_diff"].append(float(noise.norm() / own.norm()))
    return result
