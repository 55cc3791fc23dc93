"""Callbacks that a resumed run depends on: the random state saved in checkpoints, and input grids that draw
augmented images without moving the random streams."""

from __future__ import annotations

import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from cxr.callbacks import InputImageGrid, RandomState
from cxr.data.datamodule import ChestXrayDataModule

AUGMENTATION = {"degrees": 7, "translate": 0.06, "scale": [0.9, 1.1], "horizontal_flip": False}  # program D


def draws() -> tuple:
    return random.random(), float(np.random.rand()), float(torch.rand(1))


def test_random_state_round_trip_through_a_weights_only_checkpoint(tmp_path):
    torch.manual_seed(3), np.random.seed(3), random.seed(3)
    saved = RandomState().state_dict()
    torch.save({"state": saved}, tmp_path / "state.pt")
    expected = draws()
    draws()  # move every stream on
    RandomState().load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True)["state"])
    assert draws() == expected


def test_input_grid_draws_augmented_images_without_moving_the_random_streams(tmp_path, demo_root):
    datamodule = ChestXrayDataModule(
        str(demo_root / "Data_Entry_demo.csv"),
        str(demo_root),
        {"method": "thesis", "train": 0.6, "val": 0.2, "seed": 100},
        {"channels": 1, "image_size": 32},
        augmentation=AUGMENTATION,
    )
    datamodule.setup("fit")
    logger = TensorBoardLogger(tmp_path)
    trainer = SimpleNamespace(loggers=[logger], datamodule=datamodule, ckpt_path=None)
    torch.manual_seed(0), np.random.seed(0), random.seed(0)
    expected = draws()
    torch.manual_seed(0), np.random.seed(0), random.seed(0)
    InputImageGrid(n_images=4).on_fit_start(trainer, None)
    assert draws() == expected
    logger.experiment.flush()
    assert list(tmp_path.rglob("events.out.tfevents.*"))  # the grids were written


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_random_state_saves_and_restores_the_cuda_generators():
    torch.cuda.manual_seed_all(5)
    torch.rand(1, device="cuda")  # initialise CUDA
    saved = RandomState().state_dict()
    assert len(saved["cuda"]) == torch.cuda.device_count()
    expected = torch.rand(4, device="cuda").cpu()
    torch.rand(4, device="cuda")
    RandomState().load_state_dict(saved)
    assert torch.equal(torch.rand(4, device="cuda").cpu(), expected)


def test_last_checkpoint_is_written_every_epoch_even_without_a_new_best(make_cfg, tmp_path):
    """Lightning's own save_last skips epochs that saved no top-k checkpoint; resume= needs the latest epoch."""
    import lightning as L
    from hydra.utils import instantiate
    from torch.utils.data import DataLoader, TensorDataset

    class Scripted(L.LightningModule):
        AUROC = (0.9, 0.5, 0.4)  # best in the first epoch, then worse

        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(2, 1)

        def training_step(self, batch, _):
            return self.layer(batch[0]).sum()

        def validation_step(self, batch, _):
            self.log("val/auroc", self.AUROC[self.current_epoch])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    cfg = make_cfg(["~logger"])
    callbacks = [instantiate(cfg.callbacks[name]) for name in ("model_checkpoint", "last_checkpoint")]
    for callback in callbacks:
        callback.dirpath = str(tmp_path / "checkpoints")
    loader = DataLoader(TensorDataset(torch.ones(4, 2)), batch_size=2)
    trainer = L.Trainer(
        max_epochs=3, callbacks=callbacks, logger=False, enable_progress_bar=False, enable_model_summary=False
    )
    trainer.fit(Scripted(), loader, loader)
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert (last["epoch"], last["global_step"]) == (2, 6)
    # the best epoch, the first, is named from 1 as history.csv and metrics.json count; it holds weights only
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["best-epoch001.ckpt", "last.ckpt"]
    best = torch.load(tmp_path / "checkpoints" / "best-epoch001.ckpt", weights_only=True)
    assert best["epoch"] == 0 and "optimizer_states" not in best and "optimizer_states" in last
