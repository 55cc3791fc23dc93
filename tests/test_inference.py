"""The fast paths agree with the baseline: inference backends (ONNX Runtime, channels_last, bf16) and the training
fast path (channels_last + fused Adam; bf16 autocast), on a briefly trained thesis network and demo / real images.

Tolerances (probabilities of class 1): fp32 backends max |diff| < 1e-5 (ONNX Runtime < 1e-4), bf16 < 0.02, int8
< 0.05; AUROC differences < 1e-6 for fp32 backends, < 0.02 for bf16, < 0.05 for int8.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
import torch

from cxr import inference
from cxr.bench.compute import TrainPath, stepper
from cxr.data.datamodule import ChestXrayDataModule
from cxr.data.dataset import ChestXrayDataset, Preprocessing
from cxr.evaluation.metrics import auroc
from tests.conftest import NIH_SAMPLE, require_real_data

PREPROCESSING = {"channels": 3, "image_size": 150, "resample": "nearest", "pixel_divisor": 255.0}
TOLERANCE = {"torch": 1e-5, "onnxruntime": 1e-4, "torch_bf16": 0.02, "onnxruntime_int8": 0.05, "auto": 1e-4}
AUROC_TOLERANCE = {"torch": 1e-6, "onnxruntime": 1e-6, "torch_bf16": 0.02, "onnxruntime_int8": 0.05, "auto": 1e-6}
BASELINE = TrainPath("baseline", False, False, "32-true")
DEFAULT = TrainPath("default", "auto", True, "32-true")
BF16 = TrainPath("bf16", "auto", True, "bf16-mixed")
needs_onnxruntime = pytest.mark.skipif(
    not inference.onnxruntime_available(), reason="onnxruntime not installed (pip install -e '.[fast]')"
)


@pytest.fixture(scope="module")
def demo_data(demo_root):
    datamodule = ChestXrayDataModule(
        str(demo_root / "Data_Entry_demo.csv"),
        str(demo_root),
        {"method": "thesis", "train": 0.6, "val": 0.2, "seed": 100},
        PREPROCESSING,
    )
    datamodule.setup("fit")
    train = datamodule.datasets["train"]
    batches = [
        (torch.stack([train[i][0] for i in range(s, min(s + 10, len(train)))]), train.targets[s : s + 10])
        for s in range(0, len(train), 10)
    ]
    evaluation = list(datamodule.eval_dataloader("test")) + list(datamodule.eval_dataloader("val"))
    return batches, evaluation


def _train(path: TrainPath, batches, epochs: int = 2):
    step = stepper(path, seed=0)
    for _ in range(epochs):
        for images, targets in batches:
            step(images, targets)
    return step.model.eval()


@pytest.fixture(scope="module")
def trained(demo_data):
    """The thesis network after two epochs on the demo training split (fp32 baseline path)."""
    return _train(BASELINE, demo_data[0])


def _labels(loader) -> np.ndarray:
    return np.concatenate([batch[1].numpy() for batch in loader])


def _check_agreement(model, loader, backend, caplog):
    """The backend agrees with eager torch, and it is the backend that ran: a silent fallback to torch (a failed
    ONNX export or check) would agree too."""
    reference = inference.predict_probabilities(model, loader, "eager")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="cxr.inference"):
        fast = inference.predict_probabilities(model, loader, backend)
    expected = inference.choose_backend(model, backend)  # auto: onnxruntime where installed, else torch
    ran = [r.getMessage() for r in caplog.records if "images scored by" in r.getMessage()]
    assert ran and ran[-1].split("scored by ")[1].startswith(f"{expected} "), (expected, ran)
    assert fast.shape == reference.shape and fast.dtype == np.float32
    assert np.abs(fast - reference).max() < TOLERANCE[backend]
    labels = _labels(loader)
    if 0 < labels.sum() < len(labels):
        assert abs(auroc(labels, fast) - auroc(labels, reference)) <= AUROC_TOLERANCE[backend]
    return reference, fast


@pytest.mark.parametrize(
    "backend",
    [
        "torch",
        "torch_bf16",
        pytest.param("onnxruntime", marks=needs_onnxruntime),
        pytest.param("onnxruntime_int8", marks=needs_onnxruntime),
        "auto",
    ],
)
def test_inference_backends_agree_with_the_eager_baseline(trained, demo_data, backend, caplog):
    reference, _ = _check_agreement(trained, demo_data[1], backend, caplog)
    assert reference.max() - reference.min() > 1e-3  # a model whose outputs differ between images


@pytest.mark.real_data
@pytest.mark.parametrize(
    "backend",
    [
        "torch",
        "torch_bf16",
        pytest.param("onnxruntime", marks=needs_onnxruntime),
        pytest.param("onnxruntime_int8", marks=needs_onnxruntime),
    ],
)
def test_inference_backends_agree_on_real_nih_images(trained, backend, caplog):
    require_real_data(NIH_SAMPLE)
    labels = pd.read_csv(NIH_SAMPLE / "labels.csv").head(48)
    table = pd.DataFrame(
        {
            "path": [str(NIH_SAMPLE / "images" / name) for name in labels["Image Index"]],
            "target": (labels["Finding Labels"] != "No Finding").astype(int),
        }
    )
    dataset = ChestXrayDataset(table, Preprocessing(**PREPROCESSING))
    loader = torch.utils.data.DataLoader(dataset, batch_size=10)
    _check_agreement(trained, loader, backend, caplog)


def test_auto_prefers_onnxruntime_when_installed_and_never_bf16(trained):
    expected = "onnxruntime" if inference.onnxruntime_available() else "torch"
    assert inference.choose_backend(trained, "auto") == expected
    with pytest.raises(ValueError, match="inference backend"):
        inference.choose_backend(trained, "tensorrt")


@pytest.mark.parametrize("batch_size", [4, 64])
def test_regrouped_batches_keep_loader_order(trained, batch_size):
    images = torch.rand(23, 3, 150, 150, generator=torch.Generator().manual_seed(3))
    loader = [(images[a:b], None, None) for a, b in ((0, 10), (10, 13), (13, 23))]
    with torch.inference_mode():
        one_by_one = np.array([torch.sigmoid(trained(images[i : i + 1])).item() for i in range(23)], dtype=np.float32)
    got = inference.predict_probabilities(trained, loader, "torch", batch_size=batch_size)
    assert got.shape == (23,) and np.abs(got - one_by_one).max() < 1e-5
    assert inference.predict_probabilities(trained, [], "torch").shape == (0,)


def test_predict_restores_training_mode(trained):
    trained.train()
    inference.predict_probabilities(trained, [(torch.rand(2, 3, 150, 150), None, None)], "torch")
    assert trained.training
    trained.eval()


@needs_onnxruntime
def test_onnx_session_follows_weight_changes(demo_data):
    model = _train(BASELINE, demo_data[0][:1], epochs=1)
    loader = demo_data[1][:2]
    first = inference.predict_probabilities(model, loader, "onnxruntime")
    with torch.no_grad():
        model.net.classifier[-1].bias.add_(1.0)  # in place: same storage, new version
    changed = inference.predict_probabilities(model, loader, "onnxruntime")
    expected = inference.predict_probabilities(model, loader, "eager")
    assert np.abs(changed - expected).max() < 1e-4 and np.abs(changed - first).min() > 1e-3


@needs_onnxruntime
def test_a_failed_onnx_export_falls_back_to_torch(trained, demo_data, monkeypatch, caplog):
    model = _train(BASELINE, demo_data[0][:1], epochs=1)

    def broken(*args, **kwargs):
        raise RuntimeError("exporter missing")

    monkeypatch.setattr(inference, "export_onnx", broken)
    with caplog.at_level(logging.WARNING, logger="cxr.inference"):
        got = inference.predict_probabilities(model, demo_data[1], "onnxruntime")
    assert "using torch" in caplog.text
    assert np.abs(got - inference.predict_probabilities(model, demo_data[1], "eager")).max() < 1e-5


def test_evaluation_runner_uses_the_configured_backend(trained, demo_data, monkeypatch):
    from cxr.evaluation import runner

    seen, calibrations = [], []
    real = inference.predict_probabilities

    def spy(model, loader, backend="auto", batch_size=64, calibration=None):
        seen.append((backend, batch_size))
        calibrations.append(calibration)
        return real(model, loader, backend, batch_size, calibration)

    monkeypatch.setattr(inference, "predict_probabilities", spy)
    loaders = {"test": demo_data[1][:2], "val": demo_data[1][2:]}

    class Data:
        def rows(self, name):
            return pd.DataFrame(
                {"image": range(len(_labels(loaders[name]))), "patient_id": 0, "target": _labels(loaders[name])}
            )

        def eval_dataloader(self, name):
            return loaders[name]

    frame = runner.predictions_frame(
        trained, Data(), "test", {"inference_backend": "torch", "inference_batch_size": 32}
    )
    assert seen == [("torch", 32)] and len(frame) == len(_labels(loaders["test"]))
    runner.predictions_frame(trained, Data(), "test")
    assert seen[-1] == ("auto", 64) and calibrations == [None, None]
    if inference.onnxruntime_available():  # int8 ranges from the validation split, not the set being scored
        runner.predictions_frame(trained, Data(), "test", {"inference_backend": "onnxruntime_int8"})
        assert seen[-1] == ("onnxruntime_int8", 64) and calibrations[-1] is loaders["val"]


def test_training_fast_path_agrees_with_the_fp32_baseline(demo_data):
    """channels_last + fused Adam (the default config) and bf16 autocast (trainer=cpu_fast), trained from the same
    initial weights on the same batches, give the baseline's predictions within the stated tolerances."""
    batches, evaluation = demo_data[0][:4], demo_data[1]
    baseline = inference.predict_probabilities(_train(BASELINE, batches, epochs=1), evaluation, "eager")
    default = inference.predict_probabilities(_train(DEFAULT, batches, epochs=1), evaluation, "eager")
    bf16 = inference.predict_probabilities(_train(BF16, batches, epochs=1), evaluation, "eager")
    assert np.abs(default - baseline).max() < 1e-3
    assert np.abs(bf16 - baseline).max() < 0.02


def test_classifier_fast_options(trained):
    from cxr.models.classifier import BinaryClassifier

    net = {"_target_": "cxr.models.thesis_cnn.ThesisCNN"}
    model = BinaryClassifier(
        net=net, optimizer={"_target_": "torch.optim.Adam", "lr": 1e-3}, fused_optimizer=True, channels_last="auto"
    )
    assert model.configure_optimizers().defaults.get("fused") is True
    plain = BinaryClassifier(net=net, optimizer={"_target_": "torch.optim.Adam", "lr": 1e-3})
    assert not plain.configure_optimizers().defaults.get("fused")
    other = BinaryClassifier(net=net, optimizer={"_target_": "torch.optim.RMSprop", "lr": 1e-3}, fused_optimizer=True)
    assert isinstance(other.configure_optimizers(), torch.optim.RMSprop)  # fused where it exists, else plain
    with pytest.raises(ValueError, match="channels_last"):
        BinaryClassifier(net=net, optimizer={"_target_": "torch.optim.Adam"}, channels_last="yes")


def test_precision_auto_picks_bf16_only_on_cpus_with_native_bf16(monkeypatch):
    monkeypatch.setattr(inference, "cpu_supports_bf16", lambda: True)
    assert inference.resolve_precision("auto", "cpu") == "bf16-mixed"
    monkeypatch.setattr(inference, "cpu_supports_bf16", lambda: False)
    assert inference.resolve_precision("auto", "cpu") == "32-true"
    assert inference.resolve_precision("auto", "gpu") == "16-mixed"
    assert inference.resolve_precision("32-true", "cpu") == "32-true"
    assert inference.resolve_precision("bf16-mixed", "cpu") == "bf16-mixed"


@pytest.mark.skipif(
    not inference.cpu_supports_bf16(),
    reason="this CPU has no native bfloat16 (AVX512-BF16 or AMX): trainer=cpu_fast trains in 32-true here",
)
def test_cpu_fast_trainer_config_trains_in_bf16(make_cfg):
    from cxr.jobs.train import train

    cfg = make_cfg(["trainer=cpu_fast", "debug=fdr"])
    assert cfg.trainer.precision == "auto" and cfg.model.channels_last == "auto" and cfg.model.fused_optimizer
    metrics = train(cfg)
    assert metrics["precision"] == "bf16-mixed" and metrics["test"]["n"] > 0


def test_cpu_fast_says_it_ran_fp32_on_a_cpu_without_bf16(make_cfg, monkeypatch):
    from cxr.jobs.train import train

    monkeypatch.setattr(inference, "cpu_supports_bf16", lambda: False)
    metrics = train(make_cfg(["trainer=cpu_fast", "debug=fdr"]))
    assert metrics["precision"] == "32-true"


def test_without_onnxruntime_auto_is_torch(trained, demo_data, monkeypatch, caplog):
    monkeypatch.setitem(__import__("sys").modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    assert not inference.onnxruntime_available()
    assert inference.choose_backend(trained, "auto") == "torch"
    assert "onnxruntime" not in inference.available_backends(trained)
    with caplog.at_level(logging.WARNING, logger="cxr.inference"):
        assert inference.choose_backend(trained, "onnxruntime") == "torch"
    assert "not installed" in caplog.text
    reference = inference.predict_probabilities(trained, demo_data[1], "eager")
    assert np.abs(inference.predict_probabilities(trained, demo_data[1], "auto") - reference).max() < 1e-5


@needs_onnxruntime
def test_int8_ranges_come_from_the_calibration_images(demo_data):
    model = _train(BASELINE, demo_data[0][:2], epochs=1)
    loader = demo_data[1]
    own = inference.predict_probabilities(model, loader, "onnxruntime_int8")  # calibrated on the first batch
    images = torch.cat([batch[0] for batch in loader])
    inference._INT8_SESSIONS.pop(model, None)
    dark = inference.predict_probabilities(model, loader, "onnxruntime_int8", calibration=[(0.1 * images, None)])
    inference._INT8_SESSIONS.pop(model, None)
    again = inference.predict_probabilities(model, loader, "onnxruntime_int8")
    assert np.array_equal(own, again)  # deterministic for the same calibration images
    assert np.abs(dark - own).max() > 1e-4  # ranges measured on dimmed images quantize differently


@needs_onnxruntime
def test_an_int8_model_too_far_from_fp32_falls_back_to_torch(demo_data, monkeypatch, caplog):
    model = _train(BASELINE, demo_data[0][:1], epochs=1)
    monkeypatch.setattr(inference, "INT8_CHECK_TOLERANCE", 0.0)
    with caplog.at_level(logging.WARNING, logger="cxr.inference"):
        got = inference.predict_probabilities(model, demo_data[1], "onnxruntime_int8")
    assert "int8 ONNX Runtime differs from torch" in caplog.text
    assert np.abs(got - inference.predict_probabilities(model, demo_data[1], "torch")).max() == 0
