"""Named pretrained sources (docs/pretrained.md): files in each publisher's exact format with random weights, served
from a loopback HTTP server for download, checksum, resume and cache; the preprocessing each source expects
reaching the network; the pickled-model refusal and its conversion; train -> evaluate -> predict; leakage."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hydra.utils import instantiate
from PIL import Image

from cxr.bench.backbones import ARCHITECTURES
from cxr.bench.range_server import RangeServer
from cxr.data.dataset import Preprocessing
from cxr.errors import DownloadError
from cxr.models import sources
from cxr.models.weights_cache import RemoteFile, fetch, sha256_of
from tests.conftest import DEMO_OVERRIDES, NIH_SAMPLE, REPO, compose_config, require_real_data

xrv = pytest.importorskip("torchxrayvision")
timm = pytest.importorskip("timm")
transformers = pytest.importorskip("transformers")

XRV_NIH = sources.XRV["densenet121-res224-nih"][0]
RAD_DINO_PROCESSOR = {  # RAD-DINO's preprocessor_config.json, at a tiny size
    "crop_size": {"height": 56, "width": 56},
    "do_center_crop": True,
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": [0.5307, 0.5307, 0.5307],
    "image_processor_type": "BitImageProcessor",
    "image_std": [0.2583, 0.2583, 0.2583],
    "resample": 3,
    "rescale_factor": 0.00392156862745098,
    "size": {"shortest_edge": 56},
}


@pytest.fixture(scope="module")
def published(tmp_path_factory) -> dict[str, Path]:
    """One file (or folder) per source in the publisher's exact format, random weights."""
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("published")
    torch.manual_seed(0)
    files = {"xrv": root / XRV_NIH}  # xrv's DenseNets: the whole model pickled (torch.save(model))
    torch.save(xrv.models.DenseNet(num_classes=18, in_channels=1), files["xrv"])
    timm_dir = root / "timm-resnet10t"  # timm on the Hugging Face hub: model.safetensors, the model's state dict
    timm_dir.mkdir()
    save_file(timm.create_model("resnet10t").state_dict(), str(timm_dir / "model.safetensors"))
    files["timm"] = timm_dir / "model.safetensors"
    config = transformers.Dinov2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, patch_size=14, image_size=56
    )
    files["hf"] = root / "rad-dino"  # config.json + model.safetensors + preprocessor_config.json
    transformers.Dinov2Model(config).save_pretrained(files["hf"])
    (files["hf"] / "preprocessor_config.json").write_text(json.dumps(RAD_DINO_PROCESSOR))
    return files


def test_xrv_table_matches_torchxrayvision():
    """Output names and file names as xrv.models.model_urls publishes them; xrv's DenseNet keys fit cxr's net."""
    from cxr.models.pretrained import XrvDenseNet

    for name, (file, labels, _) in sources.XRV.items():
        assert xrv.models.model_urls[name]["weights_url"].endswith("/" + file)
        assert list(xrv.models.model_urls[name]["labels"]) == list(labels)
    ours = set(XrvDenseNet(num_outputs=3).encoder.state_dict())
    theirs = set(xrv.models.DenseNet(num_classes=18).state_dict()) - {"classifier.weight", "classifier.bias"}
    assert ours == theirs


def test_download_checksum_resume_and_cache(published, tmp_path, monkeypatch, caplog):
    """From a loopback server: a dropped transfer resumes with a Range request, the pin is checked, the cache is
    reused, a wrong pin is refused; offline, one line names the URL, the file and where to put it."""
    body = published["xrv"].read_bytes()
    path = "mlmed/torchxrayvision/releases/download/v1/" + XRV_NIH
    with RangeServer({path: body}) as server:
        monkeypatch.setenv("CXR_WEIGHTS_MIRROR", server.url.rstrip("/"))
        remote = RemoteFile("https://github.com/" + path, XRV_NIH, sha256_of(published["xrv"]))
        server.drop_once.add(path)
        with pytest.raises(DownloadError, match="cannot download"):
            fetch(remote, tmp_path / "cache", "model.weights=xrv:densenet121-res224-nih")
        part = tmp_path / "cache" / (XRV_NIH + ".part")
        resumed_at = part.stat().st_size
        assert 0 < resumed_at < len(body)
        got = fetch(remote, tmp_path / "cache", "key")
        assert got.read_bytes() == body and not part.exists()
        assert server.requests[-1][1] == f"bytes={resumed_at}-"
        requests = len(server.requests)
        assert fetch(remote, tmp_path / "cache", "key") == got and len(server.requests) == requests  # cached
        wrong = RemoteFile(remote.url, "other.pt", "0" * 64)
        server.files["mlmed/torchxrayvision/releases/download/v1/other.pt"] = body
        with pytest.raises(DownloadError, match="expected 0000"):
            fetch(wrong, tmp_path / "cache", "key")
    monkeypatch.setenv("CXR_WEIGHTS_MIRROR", "http://127.0.0.1:9")
    with pytest.raises(DownloadError) as error:
        fetch(RemoteFile("https://github.com/x/y.pt", "y.pt"), tmp_path / "offline", "model.weights=xrv:x")
    message = str(error.value)
    assert "\n" not in message and "http://127.0.0.1:9/x/y.pt" in message and str(tmp_path / "offline/y.pt") in message


@pytest.mark.slow
@pytest.mark.parametrize("weights", ["xrv:densenet121-res224-all", "timm:resnet10t", "hf:microsoft/rad-dino"])
def test_offline_each_named_source_stops_with_one_line(weights, tmp_path):
    env = {**os.environ, "CXR_WEIGHTS_MIRROR": "http://127.0.0.1:9", "CXR_WEIGHTS_DIR": str(tmp_path / "cache")}
    result = subprocess.run(
        [sys.executable, str(REPO / "train.py"), f"model.weights={weights}"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0 and len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-2000:]
    assert "http://127.0.0.1:9/" in lines[0] and str(tmp_path / "cache") in lines[0]


def _reference(kind: str, image: Image.Image, folder: Path | None) -> np.ndarray:
    """The network input each library itself makes of ``image`` (already at the source's size)."""
    if kind == "xrv":
        return xrv.utils.normalize(np.asarray(image.convert("L"), dtype=np.float32), 255)[None]
    if kind == "timm":
        config = timm.data.resolve_data_config({}, model=timm.create_model("resnet10t"))
        pixels = np.asarray(image.convert("RGB"), dtype=np.float32).transpose(2, 0, 1) / 255
        return (pixels - np.reshape(config["mean"], (3, 1, 1))) / np.reshape(config["std"], (3, 1, 1))
    processor = transformers.AutoImageProcessor.from_pretrained(str(folder))
    return processor(image.convert("RGB"), return_tensors="np")["pixel_values"][0]


@pytest.mark.parametrize("kind", ["xrv", "timm", "hf"])
def test_each_source_preprocessing_reaches_the_network(kind, published, make_cfg):
    """The data pipeline's tensor for a known image equals what the source's library makes of it, and is what
    the network's first layer receives; the checkpoint's hyper-parameters record it."""
    weights = {"xrv": "xrv:densenet121-res224-nih", "timm": "timm:resnet10t", "hf": "hf:microsoft/rad-dino"}[kind]
    cfg = make_cfg(["task=multilabel", f"model.weights={weights}", f"model.weights_file={published[kind]}"])
    if kind == "xrv":
        subprocess.run(
            [sys.executable, "-m", "cxr.models.convert", "xrv", str(published["xrv"]), "--trust-pickle"], check=True
        )
    sources.apply_to_config(cfg)
    data = instantiate(cfg.data)
    data.prepare_data()
    data.setup("fit")
    dataset = data.datasets["train"]
    size = cfg.program.preprocessing.image_size
    resample = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}
    known = Image.open(dataset.paths[0]).resize((size, size), resample[cfg.program.preprocessing.resample])
    expected = torch.from_numpy(np.asarray(_reference(kind, known, published.get("hf")), dtype=np.float32))
    image = dataset[0][0]
    assert image.shape == expected.shape
    torch.testing.assert_close(image, expected, atol=2e-2 if kind != "xrv" else 1.0, rtol=1e-4)
    model = instantiate(cfg.model)
    seen = []
    first = next(m for m in model.net.modules() if isinstance(m, torch.nn.Conv2d))
    first.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    model.eval()
    with torch.no_grad():
        model(image[None])
    torch.testing.assert_close(seen[0][0], image)
    recorded = Preprocessing(**model.hparams.preprocessing)  # what the checkpoint gives predict.py and export.py
    assert recorded == dataset.preprocessing
    assert {**model.hparams.preprocessing, **sources.preprocessing(sources.parse(weights), published[kind])} == dict(
        model.hparams.preprocessing
    )


def test_pickled_model_is_refused_with_the_conversion_command(tmp_path, published):
    from cxr.models.pretrained import PretrainedWeightsError, read_weights

    copy = tmp_path / XRV_NIH
    copy.write_bytes(published["xrv"].read_bytes())
    with pytest.raises(PretrainedWeightsError, match="python -m cxr.models.convert xrv .* --trust-pickle"):
        read_weights(copy, "model.weights=xrv:densenet121-res224-nih")
    refused = subprocess.run(
        [sys.executable, "-m", "cxr.models.convert", "xrv", str(copy)], capture_output=True, text=True
    )
    assert (
        refused.returncode == 2 and "--trust-pickle" in refused.stderr and not copy.with_suffix(".safetensors").exists()
    )


def test_leakage_table():
    assert sources.leakage("xrv:densenet121-res224-nih", "nih")["overlap"] == ["nih"]
    assert sources.leakage("xrv:densenet121-res224-rsna", "nih")["overlap"] == ["rsna"]  # RSNA relabels NIH images
    assert sources.leakage("xrv:densenet121-res224-chex", "nih") is None
    assert sources.leakage("timm:resnet10t", "nih", declared=["NIH"])["overlap"] == ["nih"]
    assert sources.leakage("none", "nih") is None


def test_linear_probe_trains_only_the_head_and_backbone_lr_scale():
    from cxr.models.classifier import Classifier

    net = {"name": "xrv/densenet121", "args": {}}
    adam = {"_target_": "torch.optim.Adam", "lr": 1e-3}
    probe = Classifier(net, optimizer=adam, task="multilabel", findings=["Effusion", "Mass"], freeze="backbone")
    assert {n for n, p in probe.named_parameters() if p.requires_grad} == {"net.head.weight", "net.head.bias"}
    probe.train()
    assert not probe.net.encoder.training and probe.net.head.training
    groups = probe.configure_optimizers().param_groups
    assert len(groups) == 1 and sum(p.numel() for p in groups[0]["params"]) == 1024 * 2 + 2
    tuned = Classifier(net, optimizer=adam, task="multilabel", findings=["Effusion", "Mass"], backbone_lr_scale=0.1)
    assert [g["lr"] for g in tuned.configure_optimizers().param_groups] == [1e-3, pytest.approx(1e-4)]


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.mark.slow
def test_xrv_train_evaluate_predict_reproduce(published, demo_root, tmp_path):
    """As the docs write it: convert, train from the local file, then evaluate.py and predict.py give the run's
    test probabilities."""
    _run(["-m", "cxr.models.convert", "xrv", str(published["xrv"]), "--trust-pickle"], tmp_path)
    common = ["evaluation.inference_backend=torch", "evaluation.bootstrap.n_resamples=20", "logger=csv"]
    _run(
        [str(REPO / "train.py"), "task=multilabel", "model.weights=xrv:densenet121-res224-nih"]
        + [f"model.weights_file={published['xrv']}", "trainer.max_epochs=1", "+trainer.limit_train_batches=1"]
        + ["+trainer.limit_val_batches=1", *DEMO_OVERRIDES(demo_root), *common],
        tmp_path,
    )
    run = next((tmp_path / "outputs" / "train" / "runs").iterdir())
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["pretrained"]["named_source"] == "xrv:densenet121-res224-nih"
    assert metrics["pretrained"]["preprocessing"]["std"] == 1 / 2048 and metrics["pretrained"]["leakage"] is None
    checkpoint = run / metrics["checkpoint"]
    trained = pd.read_csv(run / "predictions_test.csv").set_index("image")
    _run([str(REPO / "evaluate.py"), f"ckpt_path={checkpoint}", "evaluation.inference_backend=torch"], tmp_path)
    evaluated = next((tmp_path / "outputs" / "evaluate" / "runs").iterdir())
    again = pd.read_csv(evaluated / "predictions_test.csv").set_index("image")
    columns = [c for c in trained.columns if c.startswith("probability_")]
    np.testing.assert_allclose(again.loc[trained.index, columns], trained[columns], atol=1e-5)
    images = [str(demo_root / "images" / name) for name in trained.index[:4]]
    images = [p if Path(p).exists() else str(next(demo_root.rglob(Path(p).name))) for p in images]
    _run(
        [str(REPO / "predict.py"), f"ckpt_path={checkpoint}", f"inputs=[{','.join(images)}]", "backend=torch"], tmp_path
    )
    predicted = pd.read_csv(next((tmp_path / "outputs" / "predict" / "runs").iterdir()) / "predictions.csv")
    predicted.index = [Path(p).name for p in predicted["path"]] if "path" in predicted else predicted.index
    for finding in ("Effusion", "Mass"):
        np.testing.assert_allclose(
            predicted.loc[trained.index[:4], f"probability_{finding}"].to_numpy(dtype=float),
            trained.loc[trained.index[:4], f"probability_{finding}"].to_numpy(dtype=float),
            atol=1e-4,
        )


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["timm", "hf"])
def test_timm_and_hf_sources_train_and_reload(kind, published, make_cfg):
    """fast_dev_run from the local file in the publisher's format; the checkpoint's weights rebuild without it."""
    from cxr.jobs.train import train

    weights = {"timm": "timm:resnet10t", "hf": "hf:microsoft/rad-dino"}[kind]
    cfg = make_cfg(
        ["task=multilabel", f"model.weights={weights}", f"model.weights_file={published[kind]}", "debug=fdr"]
        + ["evaluation.inference_backend=torch", "evaluation.bootstrap.n_resamples=20", "model.backbone_lr_scale=0.1"]
    )
    metrics = train(cfg)
    assert metrics["pretrained"]["named_source"] == weights and metrics["test"]["task"] == "multilabel"


@pytest.mark.slow
@pytest.mark.real_data
def test_nih_weights_on_nih_data_are_flagged(published, tmp_path):
    """A linear probe of NIH-trained xrv weights on the real NIH sample: warning at start, metrics.json and card."""
    require_real_data(NIH_SAMPLE)
    subprocess.run(
        [sys.executable, "-m", "cxr.models.convert", "xrv", str(published["xrv"]), "--trust-pickle"], check=True
    )
    from cxr.jobs.train import train

    cfg = compose_config(
        "train",
        ["data=nih", f"data.root={NIH_SAMPLE}/images", f"data.labels={NIH_SAMPLE}/labels.csv", "task=multilabel"]
        + ["model.weights=xrv:densenet121-res224-nih", f"model.weights_file={published['xrv']}", "debug=fdr"]
        + ["model.freeze=backbone", "evaluation.inference_backend=torch", "evaluation.bootstrap.n_resamples=20"],
        tmp_path / "run",
    )
    metrics = train(cfg)
    assert metrics["pretrained"]["leakage"]["overlap"] == ["nih"]
    assert "**Leakage:" in (tmp_path / "run" / "model_card.md").read_text()


@pytest.mark.slow
def test_bench_backbones_rows(tmp_path):
    """``python -m cxr.bench --only backbones``: one row per architecture with parameters and peak memory."""
    out = tmp_path / "bench.json"
    _run(["-m", "cxr.bench", "--only", "backbones", "--tiny", "--out", str(out)], tmp_path)
    rows = json.loads(out.read_text())["rows"]
    assert [r["measure"].split(" (")[0] for r in rows] == [f"backbone {name}" for name in ARCHITECTURES]
    assert all(r["details"]["params"] > 1e6 and r["details"]["peak_mb"] > 0 and r["fast"] > 0 for r in rows)


@pytest.mark.slow
def test_embed_writes_npy_index_and_parquet(published, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        Image.fromarray(np.full((64, 64), 40 * i, dtype=np.uint8)).save(images / f"{i}.png")
    out = tmp_path / "embeddings"
    _run(
        ["-m", "cxr.embed", "--weights", "timm:resnet10t", "--weights-file", str(published["timm"])]
        + ["--inputs", str(images), "--out", str(out)],
        tmp_path,
    )
    embeddings = np.load(out / "embeddings.npy")
    index = pd.read_csv(out / "index.csv")
    assert embeddings.shape == (3, 512) and list(index["row"]) == [0, 1, 2]
    assert Path(index["path"][0]).name == "0.png"
    if pytest.importorskip("pyarrow"):
        assert len(pd.read_parquet(out / "embeddings.parquet")) == 3
