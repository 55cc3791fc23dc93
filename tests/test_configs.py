"""Every config group composes, and the composed configs say what the thesis programs are."""

from __future__ import annotations

import pytest
from hydra.utils import instantiate

from cxr.data.splits import resolve_size

PROGRAMS = {"A": (3, 255, 3000), "B": (1, 1, 3000), "C": (3, 255, 4606)}


def test_program_d_changes_the_recipe_not_the_network_or_the_test_images(make_cfg):
    c, d = make_cfg(["program=C"]), make_cfg(["program=D"])
    assert d.data.split.train == c.data.split.train and d.data.split.val == c.data.split.val
    assert d.model.net == {**c.model.net, "in_channels": 1}
    assert d.callbacks.early_stopping.monitor == "val/auroc" and d.model.class_weight == "balanced"
    assert d.data.augmentation.degrees > 0 and d.model.scheduler._target_.endswith("ReduceLROnPlateau")
    assert c.data.augmentation is None and c.model.scheduler is None and c.model.class_weight is None


@pytest.mark.parametrize("program", sorted(PROGRAMS))
def test_programs_compose_to_the_thesis_settings(make_cfg, program):
    cfg = make_cfg([f"program={program}"])
    channels, divisor, train_size = PROGRAMS[program]
    assert cfg.program.preprocessing.channels == channels == cfg.model.net.in_channels
    assert cfg.data.preprocessing.pixel_divisor == divisor
    assert cfg.data.split.train == train_size and cfg.data.split.val == 500 and cfg.data.split.pool == 5606
    assert cfg.model.optimizer.lr == pytest.approx(3e-4)
    assert cfg.data.batch_size == 10 and cfg.trainer.max_epochs == 100
    stop = cfg.callbacks.early_stopping
    assert (stop.monitor, stop.min_delta, stop.patience, stop.mode) == ("train/acc", 0.0005, 2, "max")
    assert cfg.callbacks.model_checkpoint.monitor == "val/auroc"
    assert cfg.callbacks.last_checkpoint.monitor is None and cfg.callbacks.last_checkpoint.filename == "last"


def test_demo_data_scales_split_sizes_and_nih_does_not(make_cfg):
    assert make_cfg(["data=demo"]).data.split.scale is True
    nih = make_cfg(["data=nih", "data.root=/x", "data.labels=/x/labels.csv"])
    assert nih.data.split.scale is False and nih.data.demo is None
    assert nih.data.root == "/x"


@pytest.mark.parametrize("split", ["thesis", "patient", "official"])
def test_split_group_selects_method(make_cfg, split):
    cfg = make_cfg([f"split={split}"])
    assert cfg.data.split.method == split
    if split == "official":
        assert cfg.data.split.test_list == f"{cfg.data.root}/test_list.txt"


def test_other_groups_set_what_they_say(make_cfg):
    base = make_cfg([])
    assert (base.trainer.accelerator, base.trainer.precision) == ("cpu", "32-true")
    assert list(base.logger) == ["tensorboard"] and base.trainer.get("fast_dev_run") is None
    gpu = make_cfg(["trainer=gpu"])
    assert (gpu.trainer.accelerator, gpu.trainer.precision, gpu.trainer.max_epochs) == ("gpu", "auto", 100)
    assert make_cfg(["trainer=cpu_fast"]).trainer.precision == "auto"
    csv = make_cfg(["logger=csv"])
    assert list(csv.logger) == ["csv"] and csv.logger.csv.save_dir == csv.paths.output_dir
    assert make_cfg(["~logger"]).get("logger") is None
    fdr = make_cfg(["debug=fdr"])
    assert fdr.trainer.fast_dev_run is True and fdr.callbacks.early_stopping is not None
    overfit = make_cfg(["debug=overfit"])
    assert overfit.callbacks.early_stopping is None and overfit.trainer.overfit_batches == 3
    assert overfit.trainer.max_epochs == 30
    limit = make_cfg(["debug=limit"])
    assert (limit.trainer.max_epochs, limit.trainer.limit_train_batches, limit.trainer.limit_val_batches) == (
        3,
        0.2,
        0.5,
    )
    sample = make_cfg(["experiment=thesis_nih_sample"])
    assert sample.data.name == "nih" and sample.data.split.scale is True
    assert sample.data.root.endswith("shared/data/nih") and sample.data.external.root.endswith("nih/full-res")
    assert sample.evaluation.expert_labels.endswith("google2019_nih-chest-xray-labels.csv.gz")


@pytest.mark.parametrize("program, checkpoint", [("A", "last"), ("B", "last"), ("C", "last"), ("D", "best")])
def test_each_program_says_which_checkpoint_is_evaluated(make_cfg, program, checkpoint):
    cfg = make_cfg([f"program={program}"])
    assert cfg.evaluation.checkpoint == checkpoint
    assert make_cfg([f"program={program}", "evaluation.checkpoint=best"]).evaluation.checkpoint == "best"


def test_any_key_can_be_overridden(make_cfg):
    cfg = make_cfg(
        [
            "model.optimizer.lr=0.01",
            "data.batch_size=32",
            "data.split.seed=7",
            "seed=3",
            "program.preprocessing.image_size=120",
        ]
    )
    assert cfg.model.optimizer.lr == 0.01 and cfg.data.batch_size == 32 and cfg.data.split.seed == 7
    assert cfg.model.net.image_size == 120 and cfg.data.preprocessing.image_size == 120


def test_model_instantiates_with_the_thesis_parameter_count(make_cfg):
    model = instantiate(make_cfg(["program=B"]).model)
    assert sum(p.numel() for p in model.parameters()) == 6_811_393
    assert model.hparams.preprocessing["channels"] == 1 and model.hparams.program == "B"


def test_scaled_thesis_sizes():
    assert resolve_size(4606, 963, "train", scale=True, pool=5606) == round(4606 / 5606 * 963)


def test_unknown_program_and_unknown_key_are_named_in_the_error(make_cfg):
    from hydra.errors import ConfigCompositionException, MissingConfigException

    available = r"Could not find .program/Z.[\s\S]*Available options in .program.:[\s\S]*\tC\n\tD"
    with pytest.raises(MissingConfigException, match=available):
        make_cfg(["program=Z"])
    with pytest.raises(ConfigCompositionException, match=r"data\.bogus"):
        make_cfg(["data.bogus=1"])
