"""Multi-label task, the models: torchvision backbones and their weights, the classifier's K outputs and loss, the
binary path unchanged, model presets, the CPU fast path and a frozen backbone."""

from __future__ import annotations

import urllib.error

import pytest
import torch

from cxr.models.backbones import TorchvisionNet, WeightsError, imagenet_cache_file
from cxr.models.classifier import BinaryClassifier, Classifier
from tests.multilabel_fixtures import ADAM, FINDINGS3, SMALL_CNN


# ------------------------------------------------------------------------------------------------ backbones
def test_densenet121_with_14_outputs_has_the_published_parameter_count():
    net = TorchvisionNet("densenet121", num_outputs=14, in_channels=3)
    assert sum(p.numel() for p in net.parameters()) == 6_968_206
    assert net(torch.zeros(2, 3, 64, 64)).shape == (2, 14)


@pytest.mark.parametrize("name", ["resnet18", "efficientnet_b0"])
def test_head_is_sized_to_the_task_and_one_output_is_squeezed(name):
    assert TorchvisionNet(name, num_outputs=5, in_channels=1)(torch.zeros(2, 1, 64, 64)).shape == (2, 5)
    assert TorchvisionNet(name, num_outputs=1, in_channels=3)(torch.zeros(2, 3, 64, 64)).shape == (2,)


def test_unknown_torchvision_model_is_named():
    with pytest.raises(ValueError, match="'resnet_9000' is not a torchvision model"):
        TorchvisionNet("resnet_9000")


@pytest.fixture
def cached_imagenet(tmp_path, monkeypatch):
    """TORCH_HOME in a temp dir holding a (random) resnet18 state dict under torchvision's file name."""
    from torchvision.models import resnet18

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    torch.manual_seed(0)
    reference = resnet18()
    file = imagenet_cache_file("resnet18")
    assert str(file).startswith(str(tmp_path / "torch"))
    file.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), file)
    return reference


def test_imagenet_weights_load_from_the_cache_with_a_new_head(cached_imagenet):
    net = TorchvisionNet("resnet18", num_outputs=3, in_channels=3, weights="imagenet")
    assert torch.equal(net.model.layer4[1].conv2.weight, cached_imagenet.layer4[1].conv2.weight)
    assert net.model.fc.out_features == 3


def test_grey_input_conv1_sums_the_rgb_filters_and_matches_the_3_channel_copy(cached_imagenet):
    conv1 = TorchvisionNet("resnet18", num_outputs=2, in_channels=1, weights="imagenet", grey_input="conv1")
    copy = TorchvisionNet("resnet18", num_outputs=2, in_channels=1, weights="imagenet", grey_input="copy")
    assert conv1.model.conv1.in_channels == 1
    assert torch.allclose(conv1.model.conv1.weight, cached_imagenet.conv1.weight.sum(dim=1, keepdim=True))
    copy.model.fc.load_state_dict(conv1.model.fc.state_dict())
    grey = torch.rand(2, 1, 64, 64)
    conv1.eval(), copy.eval()
    assert torch.allclose(conv1(grey), copy(grey), atol=1e-4)


def test_imagenet_weights_offline_and_not_cached_stop_with_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(WeightsError) as error:
        TorchvisionNet("resnet18", num_outputs=3, weights="imagenet")
    message = str(error.value)
    assert "\n" not in message and "resnet18-f37072fd.pth" in message
    assert str(tmp_path / "empty" / "hub" / "checkpoints") in message and "model.weights=none" in message


def test_state_dict_path_reports_missing_and_unexpected_keys(tmp_path, caplog):
    source = TorchvisionNet("resnet18", num_outputs=3)
    state = {f"module.{k}": v for k, v in source.model.state_dict().items() if not k.startswith("layer4.1.bn2")}
    state["module.extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "weights.pt")
    net = TorchvisionNet("resnet18", num_outputs=3, weights=str(tmp_path / "weights.pt"))
    assert torch.equal(net.model.layer1[0].conv1.weight, source.model.layer1[0].conv1.weight)
    assert "extra.weight" in net.weights_report["unexpected"]
    assert "layer4.1.bn2.weight" in net.weights_report["missing"]
    assert "missing key(s)" in caplog.text and "unexpected key(s)" in caplog.text
    with pytest.raises(WeightsError, match="no such file"):
        TorchvisionNet("resnet18", weights=str(tmp_path / "absent.pt"))


# ------------------------------------------------------------------------------------------------ classifier
def test_multilabel_classifier_has_k_outputs_and_per_finding_pos_weight_loss():
    torch.manual_seed(0)
    model = Classifier(net=SMALL_CNN, optimizer=ADAM, task="multilabel", findings=FINDINGS3)
    assert model.hparams.task == "multilabel" and model.hparams.findings == FINDINGS3
    images, targets = torch.rand(4, 1, 32, 32), torch.tensor([[1.0, 0, 0], [0, 1, 1], [0, 0, 0], [1, 1, 0]])
    probabilities = model.predict_step((images, targets, None), 0)
    assert probabilities.shape == (4, 3) and bool(((probabilities > 0) & (probabilities < 1)).all())
    model.pos_weight.copy_(torch.tensor([1.0, 2.0, 3.0]))
    logits = model(images)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(
        logits, targets, pos_weight=torch.tensor([1.0, 2.0, 3.0])
    )
    assert torch.allclose(model.loss(logits, targets), expected)


def test_binary_classifier_is_the_thesis_path_unchanged():
    """Same seed, same batch: the generalised Classifier gives the logits and loss of the plain thesis network."""
    from cxr.models.thesis_cnn import ThesisCNN

    torch.manual_seed(3)
    model = BinaryClassifier(net=SMALL_CNN, optimizer=ADAM, class_weight=2.5)
    torch.manual_seed(3)
    reference = ThesisCNN(in_channels=1, image_size=32, filters=[4, 8], hidden=8)
    images, targets = torch.rand(6, 1, 32, 32), torch.tensor([0.0, 1, 1, 0, 1, 0])
    logits = model(images)
    assert logits.shape == (6,) and torch.equal(logits, reference(images))
    expected = torch.nn.functional.binary_cross_entropy_with_logits(
        reference(images), targets, pos_weight=torch.tensor(2.5)
    )
    assert torch.equal(model.loss(logits, targets), expected)
    assert model.hparams.task == "binary" and model.hparams.findings == ["finding"]


def test_checkpoint_of_a_pretrained_model_loads_without_fetching_weights(tmp_path, cached_imagenet, monkeypatch):
    from cxr.models.checkpoints import load_classifier

    net = {"_target_": "cxr.models.backbones.TorchvisionNet", "name": "resnet18", "in_channels": 1}
    model = Classifier(net=net, optimizer=ADAM, task="multilabel", findings=FINDINGS3, weights="imagenet")
    assert model.hparams.weights == "imagenet"
    assert model.hparams.net == {"name": "torchvision/resnet18", "args": {"in_channels": 1}}
    torch.save({"hyper_parameters": dict(model.hparams), "state_dict": model.state_dict()}, tmp_path / "m.ckpt")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "nothing-cached"))  # a fetch would now fail
    loaded, _ = load_classifier(tmp_path / "m.ckpt")
    images = torch.rand(2, 1, 64, 64)
    model.eval(), loaded.eval()
    assert loaded.hparams.findings == FINDINGS3 and torch.equal(loaded(images), model(images))


def test_imagenet_weights_for_the_thesis_network_are_refused():
    with pytest.raises(ValueError, match="has no ImageNet weights"):
        Classifier(net=SMALL_CNN, optimizer=ADAM, weights="imagenet")


# ------------------------------------------------------------------------------------------------ presets, fast path
def test_torchvision_backbone_trains_on_the_cpu_fast_path_channels_last_and_bf16():
    net = {"_target_": "cxr.models.backbones.TorchvisionNet", "name": "resnet18", "in_channels": 1}
    model = Classifier(net=net, optimizer=ADAM, task="multilabel", findings=FINDINGS3, channels_last=True)
    images, targets = torch.rand(4, 1, 64, 64), torch.tensor([[1.0, 0, 0], [0, 1, 1], [0, 0, 0], [1, 1, 0]])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(images)
    assert logits.dtype == torch.bfloat16 and logits.shape == (4, 3)
    loss = model.loss(logits, targets)
    loss.backward()
    assert loss.dtype == torch.float32 and model.net.model.conv1.weight.grad is not None


@pytest.mark.parametrize("preset", ["densenet121", "resnet50", "efficientnet_b0"])
def test_model_presets_name_their_torchvision_network(make_cfg, preset):
    cfg = make_cfg([f"model={preset}", "task=multilabel"])
    assert cfg.model.net.name == preset and cfg.model.net._target_ == "cxr.models.backbones.TorchvisionNet"
    assert cfg.model.findings == cfg.task.findings and len(cfg.model.findings) == 14


@pytest.mark.parametrize(
    "overrides, outputs",
    [
        (["task=multilabel", "task.findings=[Mass,Nodule]"], 2),
        (["program=D"], 1),
    ],
)
def test_any_torchvision_model_by_name_composes_into_a_classifier(make_cfg, overrides, outputs):
    from hydra.utils import instantiate

    cfg = make_cfg(["model=torchvision", "model.net.name=mobilenet_v3_small", *overrides])
    model = instantiate(cfg.model)
    assert model.net.name == "mobilenet_v3_small" and model.hparams.findings == list(cfg.task.findings)
    output = model(torch.zeros(2, cfg.program.preprocessing.channels, 64, 64))
    assert output.shape == ((2, outputs) if cfg.task.name == "multilabel" else (2,))


def test_freeze_backbone_trains_only_the_head_for_the_first_epochs():
    from unittest.mock import PropertyMock, patch

    net = {"_target_": "cxr.models.backbones.TorchvisionNet", "name": "mobilenet_v3_small", "in_channels": 3}
    model = Classifier(net=net, optimizer=ADAM, task="multilabel", findings=FINDINGS3, freeze_backbone_epochs=2)
    trainable = lambda: {n for n, p in model.net.named_parameters() if p.requires_grad}  # noqa: E731
    head = {n for n, _ in model.net.named_parameters() if model.net.is_head_parameter(n)}
    assert head == {f"model.{model.net.head_name}.weight", f"model.{model.net.head_name}.bias"}
    for epoch, expected in ((0, head), (1, head), (2, {n for n, _ in model.net.named_parameters()})):
        with patch.object(Classifier, "current_epoch", new_callable=PropertyMock, return_value=epoch):
            model.on_train_epoch_start()
        assert trainable() == expected
