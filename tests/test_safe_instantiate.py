"""Checkpoints cannot run code: every _target_ of a checkpoint's hyper-parameters (and of the training overrides
evaluate.py replays) must lie in the allowlist of cxr.safe_instantiate; crafted files are refused, naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cxr.models.checkpoints import CheckpointError, load_classifier
from cxr.safe_instantiate import UnsafeTargetError, check_overrides, check_target, check_targets, instantiate

ADAM = {"_target_": "torch.optim.Adam", "lr": 1e-3}
THESIS_CNN = {"_target_": "cxr.models.thesis_cnn.ThesisCNN", "in_channels": 1, "image_size": 48}


@pytest.mark.parametrize(
    "target",
    [
        "cxr.models.thesis_cnn.ThesisCNN",
        "torch.optim.Adam",
        "torch.optim.SGD",
        "torch.optim.lr_scheduler.ReduceLROnPlateau",
        "torchvision.models.resnet18",
    ],
)
def test_the_allowlist_builds_networks_optimisers_and_schedulers(target):
    check_target(target, "net._target_")


@pytest.mark.parametrize(
    "target, says",
    [
        ("os.system", "not allowed"),
        ("builtins.exec", "not allowed"),
        ("subprocess.run", "not allowed"),
        ("cxr.modelsx.y", "not allowed"),  # a prefix of a name is not the package
        ("cxr.models.classifier.torch.save", "resolves to torch"),  # starts inside, resolves outside
        ("cxr.models.classifier.hydra.utils.instantiate", "resolves to hydra"),
        ("cxr.models", "not a class or function"),  # a module
        ("torch.optim.lr_scheduler.no_such_thing", "cannot be found"),
        ("${oc.env:HOME}", "not allowed"),  # an interpolation is not a dotted path
    ],
)
def test_anything_else_is_refused_naming_the_key(target, says):
    with pytest.raises(UnsafeTargetError, match=rf"^net\._target_=.*{says}"):
        check_target(target, "net._target_")


def test_nested_targets_are_checked_too(tmp_path):
    victim = tmp_path / "created"
    nested = {**THESIS_CNN, "hidden": {"_target_": "os.system", "_args_": [f"touch {victim}"]}}
    with pytest.raises(UnsafeTargetError, match=r"net\.hidden\._target_='os\.system'"):
        instantiate(nested, "net")
    listed = {**THESIS_CNN, "filters": [32, {"_target_": "posix.system", "_args_": [f"touch {victim}"]}]}
    with pytest.raises(UnsafeTargetError, match=r"net\.filters\[1\]\._target_='posix\.system'"):
        check_targets(listed, "net")
    assert not victim.exists()
    assert isinstance(instantiate(THESIS_CNN, "net"), torch.nn.Module)


def _crafted_checkpoint(path, **hyper_parameters):
    """A checkpoint that torch.load(weights_only=True) accepts: only plain values, no pickled code."""
    hparams = {
        "net": THESIS_CNN,
        "optimizer": ADAM,
        "scheduler": None,
        "preprocessing": None,
        "program": "A",
        "class_weight": None,
        **hyper_parameters,
    }
    torch.save({"hyper_parameters": hparams, "state_dict": {}, "epoch": 0}, path)
    return path


# targets that Hydra's own blocklist lets through and that write a file (os.system and subprocess.* it blocks)
@pytest.mark.parametrize(
    "config",
    [
        {"_target_": "builtins.open", "_args_": ["{victim}", "w"]},
        {"_target_": "torch.save", "_args_": [{}, "{victim}"]},
        {**THESIS_CNN, "hidden": {"_target_": "numpy.save", "_args_": ["{victim}", [1]]}},
        {"_target_": "cxr.models.classifier.torch.save", "_args_": [{}, "{victim}"]},
    ],
)
def test_a_crafted_network_creates_no_file_and_names_the_key(tmp_path, config):
    victim = tmp_path / "created_by_the_checkpoint"
    text = repr(config).replace("{victim}", str(victim))
    ckpt = _crafted_checkpoint(tmp_path / "crafted.ckpt", net=eval(text))
    with pytest.raises(CheckpointError, match=r"crafted\.ckpt: refused: hyper_parameters\.net\.(_target_|args\.)"):
        load_classifier(ckpt)
    assert not list(tmp_path.glob("created_by_the_checkpoint*"))  # numpy.save appends .npy


@pytest.mark.parametrize(
    "key, config",
    [
        ("optimizer", {"_target_": "builtins.open", "_args_": ["{victim}", "w"]}),
        ("scheduler", {"_target_": "numpy.savetxt", "_args_": ["{victim}", [1]]}),
    ],
)
def test_a_checkpoint_optimizer_or_scheduler_is_never_read(tmp_path, key, config):
    """Optimiser and scheduler come from the config the user runs: a loaded checkpoint has none to build."""
    from cxr.errors import ConfigError

    victim = tmp_path / "created_by_the_checkpoint"
    from cxr.models.classifier import Classifier

    trained = Classifier(net=THESIS_CNN, optimizer=ADAM)
    crafted = eval(repr(config).replace("{victim}", str(victim)))
    torch.save(
        {"hyper_parameters": {**dict(trained.hparams), key: crafted}, "state_dict": trained.state_dict()},
        tmp_path / "crafted.ckpt",
    )
    model, _ = load_classifier(tmp_path / "crafted.ckpt")
    with pytest.raises(ConfigError, match="the optimizer of the config you run"):
        model.configure_optimizers()
    assert not list(tmp_path.glob("created_by_the_checkpoint*"))


def touch(path, **_):
    """An "optimizer" Hydra's own blocklist lets through and that takes ``params=`` and ``fused=``: it writes a file."""
    Path(path).touch()


def test_the_classifier_refuses_an_unsafe_optimizer_even_with_the_fused_fallback(tmp_path):
    from cxr.models.classifier import BinaryClassifier

    victim = tmp_path / "created"
    model = BinaryClassifier(
        net=THESIS_CNN, optimizer={"_target_": f"{__name__}.touch", "path": str(victim)}, fused_optimizer=True
    )
    with pytest.raises(UnsafeTargetError, match=r"optimizer\._target_='tests\.test_safe_instantiate\.touch'"):
        model.configure_optimizers()
    assert not victim.exists()


@pytest.mark.parametrize(
    "override, key",
    [
        ("model.net._target_=os.system", "model.net._target_"),
        ("data._target_=os.system", "data._target_"),
        ("+model.net.extra={_target_:posix.system,_args_:[touch]}", "model.net.extra._target_"),
    ],
)
def test_replayed_training_overrides_are_checked(override, key):
    check_overrides(["program=C", "data=nih", "model.optimizer._target_=torch.optim.SGD"], "x.ckpt")
    with pytest.raises(UnsafeTargetError, match=rf"x\.ckpt: training override {key}="):
        check_overrides([override], "x.ckpt: training override")
