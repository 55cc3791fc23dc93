"""The thesis network as Keras built it (Glorot-uniform weights, zero biases, 150 -> 7 after four conv/pool blocks)
and trained it (EarlyStopping(monitor='acc', min_delta=0.0005, patience=2) on the training accuracy)."""

from __future__ import annotations

import math

import lightning as L
import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from torch import nn

from cxr.models.thesis_cnn import ThesisCNN


@pytest.mark.parametrize("channels", [1, 3])
def test_glorot_uniform_weights_and_zero_biases(channels):
    torch.manual_seed(0)
    net = ThesisCNN(in_channels=channels)
    layers = [m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert len(layers) == 6
    for layer in layers:
        weight = layer.weight.detach()
        receptive = weight[0, 0].numel() if weight.dim() == 4 else 1  # Keras: fan = channels x kernel area
        fan_in, fan_out = weight.shape[1] * receptive, weight.shape[0] * receptive
        bound = math.sqrt(6.0 / (fan_in + fan_out))  # glorot_uniform: U(-limit, limit)
        assert weight.abs().max() <= bound
        assert weight.abs().max() >= 0.98 * bound  # the whole interval is used (>= 512 draws per layer)
        assert weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.1)  # uniform: sd = limit / sqrt 3
        assert abs(weight.mean().item()) < 0.1 * bound
        assert torch.count_nonzero(layer.bias) == 0


def test_per_layer_output_shapes_150_to_7():
    net = ThesisCNN(in_channels=3, image_size=150)
    shapes = []
    hooks = [
        m.register_forward_hook(lambda m, i, o: shapes.append((type(m).__name__, tuple(o.shape[1:]))))
        for m in [*net.features, *net.classifier]
    ]
    net(torch.zeros(2, 3, 150, 150))
    for hook in hooks:
        hook.remove()
    expected = []  # Keras model.summary() of the thesis network
    for filters, size in ((32, 148), (64, 72), (128, 34), (256, 15)):
        expected += [
            ("Conv2d", (filters, size, size)),
            ("MaxPool2d", (filters, size // 2, size // 2)),
            ("ReLU", (filters, size // 2, size // 2)),
        ]  # pool then ReLU: they commute
    expected += [("Flatten", (256 * 7 * 7,)), ("Linear", (512,)), ("ReLU", (512,)), ("Linear", (1,))]
    assert shapes == expected


def keras_early_stopping_epochs(accuracies, min_delta=0.0005, patience=2) -> int:
    """Epochs Keras 2.2 (2018) trains with EarlyStopping(monitor='acc', min_delta, patience): its on_epoch_end,
    with monitor_op = np.greater for an accuracy and best starting at -inf."""
    best, wait = -np.inf, 0
    for epoch, current in enumerate(accuracies):
        if np.greater(current - min_delta, best):
            best, wait = current, 0
        else:
            wait += 1
            if wait >= patience:
                return epoch + 1
    return len(accuracies)


class ScriptedAccuracy(L.LightningModule):
    """Logs a scripted training accuracy per epoch (one batch each) under the key the thesis programs monitor."""

    def __init__(self, accuracies):
        super().__init__()
        self.accuracies = accuracies
        self.weight = nn.Parameter(torch.zeros(1))

    def training_step(self, batch, batch_idx):
        self.log("train/acc", float(self.accuracies[self.current_epoch]), on_step=False, on_epoch=True)
        return (self.weight * batch[0]).sum()

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(1, 1)), batch_size=1)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


SEQUENCES = {
    "improves then plateaus": [0.55, 0.60, 0.65, 0.65, 0.65, 0.70, 0.80],
    "creeps below min_delta": [0.60, 0.6002, 0.6004, 0.6006, 0.7],
    "creeps above min_delta": [0.60, 0.6006, 0.6012, 0.6018, 0.6024, 0.6030],
    "one bad epoch recovers": [0.50, 0.60, 0.58, 0.62, 0.63, 0.64],
    "two bad epochs after recovering": [0.50, 0.60, 0.58, 0.62, 0.61, 0.615, 0.70],
    "improves by less than min_delta over best": [0.60, 0.6008, 0.6005, 0.6012, 0.6011, 0.7],
    "best is not the last": [0.70, 0.90, 0.85, 0.9003, 0.80, 0.95],
    "never stops": [0.1, 0.2, 0.3, 0.4, 0.5],
}


@pytest.mark.parametrize("name", sorted(SEQUENCES))
def test_early_stopping_stops_where_keras_would(make_cfg, name):
    accuracies = SEQUENCES[name]
    cfg = make_cfg(["program=A"])
    stopping = instantiate(cfg.callbacks.early_stopping)  # the thesis programs' own configuration
    trainer = L.Trainer(
        max_epochs=len(accuracies),
        callbacks=[stopping],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(ScriptedAccuracy(accuracies))
    assert trainer.current_epoch == keras_early_stopping_epochs(accuracies)


def test_the_scripted_sequences_cover_stopping_and_not_stopping():
    epochs = {name: keras_early_stopping_epochs(values) for name, values in SEQUENCES.items()}
    # worked by hand from Keras' rule: improvement = acc - 0.0005 > best; stop at the 2nd epoch in a row without one
    assert epochs == {
        "improves then plateaus": 5,
        "creeps below min_delta": 3,
        "creeps above min_delta": 6,
        "one bad epoch recovers": 6,
        "two bad epochs after recovering": 6,
        "best is not the last": 4,
        "improves by less than min_delta over best": 4,
        "never stops": 5,
    }
