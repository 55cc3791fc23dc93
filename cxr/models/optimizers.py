"""Keras' Adam for the thesis programs: the same update as Keras (2.x and 3.x), built on torch's Adam kernels."""

from __future__ import annotations

import math

import torch


class KerasAdam(torch.optim.Adam):
    """Adam with Keras' epsilon ("epsilon hat" of Kingma and Ba):
    ``p -= lr sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)``.

    torch's Adam adds ``eps`` to the bias-corrected ``sqrt(v) / sqrt(1 - b2^t)`` instead, which for the same
    ``eps`` is a ``1 / sqrt(1 - b2^t)`` times smaller epsilon (about 30x at step 1): weights with gradients near
    1e-6 then move by up to the full learning rate where Keras moves them a quarter of it, and the PyTorch and
    Keras trajectories of the thesis net part after one step (tests/test_keras_parity.py). Running torch's Adam
    (foreach or fused kernel) with ``eps_t = eps / sqrt(1 - b2^t)`` set before each step gives Keras' update exactly.
    """

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-7, **kwargs):
        super().__init__(params, lr=lr, betas=betas, eps=eps, **kwargs)
        for group in self.param_groups:
            group.setdefault("keras_epsilon", group["eps"])

    def step(self, closure=None):
        for group in self.param_groups:
            # the steps taken so far, as Keras' optimizer.iterations: a plain number kept in the param group (saved
            # and restored with the optimizer state), not read from the parameters' step tensors, which the fused
            # kernel keeps on the GPU (a device-to-host sync every step); a checkpoint from before the counter
            # starts from the parameters' own counters
            t = group.get("keras_steps")
            if t is None:
                t = next(
                    (float(self.state[p]["step"]) for p in group["params"] if "step" in self.state.get(p, {})), 0.0
                )
            group["eps"] = group["keras_epsilon"] / math.sqrt(1.0 - group["betas"][1] ** (t + 1.0))
            group["keras_steps"] = t + 1.0
        return super().step(closure)
