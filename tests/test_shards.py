"""data.format=shards (LitData): the same images and labels as the PNG path, reshuffled per epoch, split across
ranks and workers without duplicates or gaps, resumable mid-epoch; train.py runs on them."""

from __future__ import annotations

import json

import pytest
import torch
from hydra.utils import instantiate

from cxr.data.shards import ChestXrayShards, IndexedShards, shard_loader


def _datamodule(make_cfg, tmp_path, *overrides):
    cfg = make_cfg([f"data.cache_dir={tmp_path / 'cache'}", f"data.shards_dir={tmp_path / 'shards'}", *overrides])
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    return datamodule


@pytest.fixture
def both(make_cfg, tmp_path):
    """(the PNG datamodule, the shards datamodule) of the same config (program B: grey, raw 0-255)."""
    png = _datamodule(make_cfg, tmp_path, "program=B")
    shards = _datamodule(make_cfg, tmp_path, "program=B", "data.format=shards")
    return png, shards


def _items(loader) -> dict[int, tuple[torch.Tensor, float]]:
    found = {}
    for images, targets, indices in loader:
        for image, target, index in zip(images, targets, indices.tolist()):
            assert index not in found, f"index {index} twice"
            found[index] = (image, float(target))
    return found


def test_evaluation_sets_give_the_png_paths_batches(both):
    png, shards = both
    for name in ("val", "test"):
        assert isinstance(shards.datasets[name], IndexedShards)
        batches = list(zip(png.eval_dataloader(name), shards.eval_dataloader(name)))
        assert len(batches) == len(png.eval_dataloader(name)) > 0
        for a, b in batches:
            for x, y in zip(a, b):
                assert torch.equal(x, y)


def test_training_split_holds_the_same_images_and_labels_and_reshuffles(both):
    png, shards = both
    train = shards.datasets["train"]
    assert isinstance(train, ChestXrayShards) and len(train) == len(png.datasets["train"])
    loader = shards.train_dataloader()
    orders = []
    for _ in range(2):
        items = _items(loader)
        assert sorted(items) == list(range(len(png.datasets["train"])))
        for index, (image, target) in items.items():
            expected = png.datasets["train"][index]
            assert torch.equal(image, expected[0]) and target == float(expected[1])
        orders.append(list(items))
    assert orders[0] != orders[1]  # a new order every epoch
    unshuffled = ChestXrayShards(train.input_dir.path, train.preprocessing, shuffle=False)
    png_batches = list(png._loader("train", shuffle=False))
    for a, b in zip(png_batches, shard_loader(unshuffled, png.batch_size)):
        assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_rgb_programs_read_the_stored_grey_plane_as_three_channels(make_cfg, tmp_path):
    png = _datamodule(make_cfg, tmp_path, "program=A")
    shards = _datamodule(make_cfg, tmp_path, "program=A", "data.format=shards")
    a, b = png.datasets["test"][0], shards.datasets["test"][0]
    assert a[0].shape[0] == 3 and torch.equal(a[0], b[0]) and a[1:] == b[1:]
    # one shard folder per split, written once; the greyscale program (same split sizes) reads the same shards
    folders = sorted(p.name for p in (tmp_path / "shards").iterdir())
    assert len(folders) == 3 and all(
        json.loads((tmp_path / "shards" / f / "cxr-shards.json").read_text())["n_images"] > 0 for f in folders
    )
    grey = _datamodule(make_cfg, tmp_path, "program=B", "data.format=shards")
    assert sorted(p.name for p in (tmp_path / "shards").iterdir()) == folders
    assert torch.equal(grey.datasets["test"][0][0], b[0][:1] * 255)  # B: one channel, raw 0-255


@pytest.mark.slow
@pytest.mark.parametrize("drop_last", [False, None])
def test_ranks_and_workers_share_an_epoch_without_duplicates(both, monkeypatch, drop_last):
    _, shards = both
    folder, preprocessing = shards.datasets["train"].input_dir.path, shards.preprocessing
    n = len(shards.datasets["train"])
    world = 2
    per_rank = []
    for rank in range(world):  # LitData reads WORLD_SIZE / GLOBAL_RANK, as set by torchrun and Lightning
        monkeypatch.setenv("WORLD_SIZE", str(world))
        monkeypatch.setenv("GLOBAL_RANK", str(rank))
        dataset = ChestXrayShards(folder, preprocessing, seed=7, drop_last=drop_last)
        per_rank.append(list(_items(shard_loader(dataset, batch_size=4, num_workers=2))))
    seen = [i for rank in per_rank for i in rank]
    assert len(seen) == len(set(seen))  # no image twice in an epoch, across ranks and workers
    if drop_last is False:
        assert sorted(seen) == list(range(n))  # and none left out
    else:  # LitData's DDP default: equal counts per rank (nobody waits at the all-reduce), a few left out
        assert len(per_rank[0]) == len(per_rank[1]) and n - len(seen) < world * 4 * 2


def test_resumes_mid_epoch_from_the_loader_state(both):
    _, shards = both
    folder, preprocessing = shards.datasets["train"].input_dir.path, shards.preprocessing

    def loader():
        return shard_loader(ChestXrayShards(folder, preprocessing, seed=3), batch_size=4)

    full = [index for _, _, indices in loader() for index in indices.tolist()]
    interrupted = loader()
    first = []
    for step, (_, _, indices) in enumerate(interrupted):
        first += indices.tolist()
        if step == 2:
            state = interrupted.state_dict()
            break
    resumed = loader()
    resumed.load_state_dict(state)
    rest = [index for _, _, indices in resumed for index in indices.tolist()]
    assert first + rest == full


@pytest.mark.slow
def test_multilabel_shards_carry_the_multi_hot_targets(make_cfg, tmp_path):
    png = _datamodule(make_cfg, tmp_path, "program=B", "task=multilabel")
    shards = _datamodule(make_cfg, tmp_path, "program=B", "task=multilabel", "data.format=shards")
    findings = png.target_columns
    assert len(findings) == 14
    for name in ("val", "test"):
        for (x, t, i), (y, u, j) in zip(png.eval_dataloader(name), shards.eval_dataloader(name)):
            assert torch.equal(x, y) and torch.equal(i, j)
            assert t.shape == u.shape == (len(i), len(findings)) and torch.equal(t, u)
    expected = png.datasets["train"].targets
    assert expected.sum() > 0  # some findings present
    seen = 0
    for _, targets, indices in shards.train_dataloader():
        assert torch.equal(targets, expected[indices])
        seen += len(indices)
    assert seen == len(expected)
    binary = _datamodule(make_cfg, tmp_path, "program=B", "data.format=shards")  # same images, binary targets
    assert binary.datasets["train"].input_dir.path != shards.datasets["train"].input_dir.path


def test_train_runs_on_shards(make_cfg, tmp_path):
    from cxr.jobs.train import train

    cfg = make_cfg(
        [
            "data.format=shards",
            f"data.cache_dir={tmp_path / 'cache'}",
            f"data.shards_dir={tmp_path / 'shards'}",
            "debug=fdr",
        ]
    )
    metrics = train(cfg)
    assert metrics["test"]["n"] > 0


@pytest.mark.slow
def test_a_lightning_checkpoint_taken_mid_epoch_resumes_the_epoch_where_it_stopped(make_cfg, tmp_path):
    """Lightning stores the StreamingDataLoader's state in its checkpoints (stateful loaders): fitting from a
    checkpoint saved after 3 of an epoch's batches sees exactly that epoch's remaining images."""
    import lightning as L

    datamodule = _datamodule(
        make_cfg, tmp_path, "program=B", "data.format=shards", "program.preprocessing.image_size=16"
    )

    class Recorder(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(16 * 16, 1)
            self.seen = []

        def training_step(self, batch, batch_idx):
            images, targets, indices = batch
            self.seen += indices.tolist()
            if len(self.seen) <= 3 * datamodule.batch_size and batch_idx == 2:
                self.trainer.save_checkpoint(tmp_path / "mid.ckpt")
            return torch.nn.functional.binary_cross_entropy_with_logits(
                self.layer(images.flatten(1)).squeeze(1), targets
            )

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    def fit(ckpt_path=None) -> list[int]:
        L.seed_everything(5)
        model = Recorder()
        trainer = L.Trainer(
            max_epochs=1,
            accelerator="cpu",
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            limit_val_batches=0,
        )
        trainer.fit(model, train_dataloaders=datamodule.train_dataloader(), ckpt_path=ckpt_path)
        return model.seen

    full = fit()
    assert sorted(full) == list(range(len(datamodule.datasets["train"])))
    rest = fit(tmp_path / "mid.ckpt")
    assert full[: 3 * datamodule.batch_size] + rest == full


DDP_SCRIPT = """
import json, sys
import lightning as L
import torch
from cxr.data.dataset import Preprocessing
from cxr.data.shards import ChestXrayShards, shard_loader

folder, out, drop_last = sys.argv[1], sys.argv[2], {"none": None, "false": False}[sys.argv[3]]
dataset = ChestXrayShards(folder, Preprocessing(channels=1, image_size=150), seed=1, drop_last=drop_last)  # before fit,
                                                                                # as the datamodule makes it

class Recorder(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(150 * 150, 1)
        self.seen = {}

    def train_dataloader(self):
        return shard_loader(dataset, batch_size=4, num_workers=1)

    def training_step(self, batch, batch_idx):
        self.seen.setdefault(self.current_epoch, []).extend(batch[2].tolist())
        return self.layer(batch[0].flatten(1)).mean()

    def on_train_end(self):
        with open(f"{out}.{self.global_rank}.json", "w") as f:
            json.dump(self.seen, f)
        self.trainer.strategy.barrier()  # rank 0 exits only once every rank has written

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)

trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=2, logger=False,
                    enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
trainer.fit(Recorder())
"""


@pytest.mark.slow
def test_two_ddp_processes_share_each_epoch_without_duplicates(both, tmp_path):
    """A real 2-process DDP run (gloo on CPU) through Lightning, the dataset made before the process group, with
    the datamodule's setting (drop_last=None: LitData's equal counts per rank). drop_last=False is not tried here:
    uneven counts per rank leave one rank waiting at the gradient all-reduce for ever (LitData warns of it)."""
    drop_last = "none"
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    _, shards = both
    folder = shards.datasets["train"].input_dir.path
    n = len(shards.datasets["train"])
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, str(script), folder, str(tmp_path / "seen"), drop_last],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"seen.{rank}.json").read_text()) for rank in (0, 1)]
    orders = []
    for epoch in ("0", "1"):
        seen = ranks[0][epoch] + ranks[1][epoch]
        assert len(seen) == len(set(seen)) and ranks[0][epoch] and ranks[1][epoch]  # both ranks, no image twice
        assert len(ranks[0][epoch]) == len(ranks[1][epoch]) and n - len(seen) < 2 * 4 * 1
        orders.append(ranks[0][epoch])
    assert orders[0] != orders[1]  # reshuffled per epoch


@pytest.mark.parametrize("task", ["binary", "multilabel"])
def test_balanced_class_weight_is_n_negative_over_n_positive_of_the_training_split_for_png_and_shards(
    make_cfg, tmp_path, task
):
    """Program D's class_weight=balanced (also optuna_D's choice) on both image formats: pos_weight from the training
    split's labels, checked against counts taken from the label file itself."""
    import pandas as pd

    from cxr.data.labels import FINDINGS

    class Trainer:  # what Classifier.setup reads of a Trainer
        def __init__(self, datamodule):
            self.datamodule = datamodule

    for image_format in ("png", "shards"):
        cfg = make_cfg(
            [
                "program=D",
                f"task={task}",
                f"data.format={image_format}",
                f"data.cache_dir={tmp_path / 'cache'}",
                f"data.shards_dir={tmp_path / 'shards'}",
            ]
        )
        datamodule = instantiate(cfg.data)
        datamodule.prepare_data()
        datamodule.setup("fit")
        model = instantiate(cfg.model)
        model.trainer = Trainer(datamodule)
        model.setup("fit")
        labels = pd.read_csv(cfg.data.labels)
        train_images = set(datamodule.split_table().query("split == 'train'")["image"])
        findings = labels.loc[labels["Image Index"].isin(train_images), "Finding Labels"].str.split("|")
        columns = list(cfg.task.findings) if task == "multilabel" else ["any"]
        expected = []
        for finding in columns:
            positive = findings.map(lambda f: f != ["No Finding"] if finding == "any" else finding in f)
            n_pos, n_neg = int(positive.sum()), int((~positive).sum())
            expected.append(n_neg / n_pos if n_pos else 1.0)
        assert len(findings) == len(train_images) and set(columns) <= set(FINDINGS) | {"any"}
        assert model.pos_weight.reshape(-1).tolist() == pytest.approx(expected), image_format
