"""Issue 19, safe by design: each route a hostile file took on the code before it, tried as that file would, and
refused with one line (docs/security.md). Files are data: checkpoints, run directories, replayed settings,
shards and input files never name code to run, exhaust the machine or delete what is not cxr's."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from cxr.models.checkpoints import CheckpointError, load_classifier
from tests.test_entry_points import run

THESIS_CNN = {"_target_": "cxr.models.thesis_cnn.ThesisCNN", "in_channels": 1, "image_size": 48}
ADAM = {"_target_": "torch.optim.Adam", "lr": 1e-3}


def assert_one_error_line(result, *fragments: str, status: int = 1) -> str:
    """One ``error:`` line (``predict.py: error:`` for predict.py), the last on stderr; exit ``status``."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == status, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert lines and "error: " in lines[-1] and sum("error" in line.lower() for line in lines) == 1, result.stderr[
        -3000:
    ]
    for fragment in fragments:
        assert fragment in lines[-1], lines[-1]
    return lines[-1]


class _Touch:
    """Unpickling this creates ``path``: what a hostile pickle would do instead."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def evil_pickle(folder: Path) -> tuple[Path, Path]:
    """A file that runs code when unpickled (torch.load weights_only=False), and the file that code creates."""
    victim = folder / "created_by_the_pickle"
    evil = folder / "evil.pt"
    evil.write_bytes(pickle.dumps(_Touch(victim)))
    return evil, victim


def trained_checkpoint(path: Path, **hparams) -> Path:
    """A real cxr checkpoint of the thesis network (hyper-parameters as the classifier saves them), changed."""
    from cxr.models.classifier import Classifier

    model = Classifier(net=THESIS_CNN, optimizer=ADAM, preprocessing={"channels": 1, "image_size": 48})
    torch.save(
        {"hyper_parameters": {**dict(model.hparams), **hparams}, "state_dict": model.state_dict(), "epoch": 0}, path
    )
    return path


# ---------------------------------------------------------------------------------------------- 1. checkpoints
def test_a_checkpoint_describes_its_network_as_a_registry_name_with_typed_arguments(tmp_path):
    ckpt = trained_checkpoint(tmp_path / "model.ckpt")
    stored = torch.load(ckpt, weights_only=True)["hyper_parameters"]
    assert stored["net"] == {"name": "thesis_cnn", "args": {"in_channels": 1, "image_size": 48}}
    assert "optimizer" not in stored and "scheduler" not in stored
    assert "_target_" not in repr(stored)
    model, _ = load_classifier(ckpt)
    assert type(model.net).__name__ == "ThesisCNN"
    from cxr.models import registry

    assert registry.signature_mismatches() == []


def test_an_old_checkpoint_is_read_through_the_registry(tmp_path):
    """Checkpoints written before the registry named cxr's own classes: those are mapped onto registry names."""
    from cxr.models.classifier import Classifier

    model = Classifier(net=THESIS_CNN, optimizer=ADAM)
    old = {
        "net": {**THESIS_CNN, "weights": None},
        "optimizer": ADAM,
        "scheduler": None,
        "program": "A",
        "preprocessing": None,
        "task": "binary",
        "findings": ["finding"],
        "class_weight": None,
    }
    torch.save({"hyper_parameters": old, "state_dict": model.state_dict()}, tmp_path / "old.ckpt")
    loaded, _ = load_classifier(tmp_path / "old.ckpt")
    assert loaded.hparams.net["name"] == "thesis_cnn"
    images = torch.rand(2, 1, 48, 48)
    assert torch.equal(loaded.eval()(images), model.eval()(images))


def test_route_1_a_private_helper_inside_an_allowed_module_is_refused(tmp_path):
    """``torchvision.models._api.WeightsEnum.get_state_dict`` passed the module allowlist and unpickled a URL."""
    evil, victim = evil_pickle(tmp_path)
    weights = {"_target_": "torchvision.models._api.Weights", "url": f"file://{evil}", "transforms": None, "meta": {}}
    net = {"_target_": "torchvision.models._api.WeightsEnum.get_state_dict", "_args_": [weights]}
    ckpt = trained_checkpoint(tmp_path / "crafted.ckpt", net=net)
    with pytest.raises(
        CheckpointError,
        match=r"crafted\.ckpt: refused: hyper_parameters\.net\._target_="
        r"'torchvision\.models\._api\.WeightsEnum\.get_state_dict' is not in "
        r"cxr's model registry",
    ):
        load_classifier(ckpt)
    nested = {"name": "thesis_cnn", "args": {"in_channels": weights}}
    with pytest.raises(CheckpointError, match=r"hyper_parameters\.net\.args\.in_channels: a dict where int"):
        load_classifier(trained_checkpoint(tmp_path / "nested.ckpt", net=nested))
    assert not victim.exists()


@pytest.mark.slow
def test_route_1_predict_py_refuses_the_private_helper_checkpoint_in_one_line(tmp_path):
    evil, victim = evil_pickle(tmp_path)
    net = {
        "_target_": "torchvision.models._api.WeightsEnum.get_state_dict",
        "_args_": [
            {"_target_": "torchvision.models._api.Weights", "url": f"file://{evil}", "transforms": None, "meta": {}}
        ],
    }
    ckpt = trained_checkpoint(tmp_path / "crafted.ckpt", net=net)
    image = tmp_path / "x.png"
    from PIL import Image

    Image.new("L", (48, 48)).save(image)
    result = run(["predict.py", f"ckpt_path={ckpt}", f"inputs={image}", f"hydra.run.dir={tmp_path / 'p'}"], tmp_path)
    assert_one_error_line(result, "crafted.ckpt: refused: hyper_parameters.net._target_=", status=2)
    assert not victim.exists()


OC_CREATE = "${oc.create:{_target_: torch.load, f: EVIL, weights_only: false}}"


@pytest.mark.parametrize(
    "hparams, key",
    [
        ({"net": {"name": "thesis_cnn", "args": {"hidden": OC_CREATE}}}, "hyper_parameters.net.args.hidden"),
        ({"net": {**THESIS_CNN, "filters": [32, OC_CREATE]}}, "hyper_parameters.net.args.filters"),
        ({"preprocessing": {"channels": 1, "resample": OC_CREATE}}, "hyper_parameters.preprocessing.resample"),
        ({"program": OC_CREATE}, "hyper_parameters.program"),
    ],
)
def test_route_2_an_interpolation_in_the_hyper_parameters_is_refused(tmp_path, hparams, key):
    evil, victim = evil_pickle(tmp_path)
    text = repr(hparams).replace("EVIL", str(evil))
    ckpt = trained_checkpoint(tmp_path / "crafted.ckpt", **eval(text))
    with pytest.raises(CheckpointError, match=rf"crafted\.ckpt: refused: {key.replace('.', '[.]')}.*interpolation"):
        load_classifier(ckpt)
    assert not victim.exists()


# ------------------------------------------------------------------------------------- 2. replayed settings
def test_replayed_settings_keep_the_experiment():
    from cxr.replay import replayable

    stored = [
        "program=C",
        "data=nih",
        "data.root=/data/nih",
        "split=official",
        "model=densenet121",
        "model.net.grey_input=conv1",
        "task=multilabel",
        "task.findings=[Mass,Nodule]",
        "seed=3",
        "trainer.max_epochs=3",
        "callbacks.early_stopping=null",
        "program.training.optimizer=torch.optim.SGD",
        "program.preprocessing.image_size=64",
        "~callbacks.model_checkpoint",
    ]
    assert replayable(stored, "x.ckpt") == stored
    assert replayable(stored, "x.ckpt", given=["seed=4"], dropped=("trainer", "seed")) == [
        o for o in stored if not o.startswith(("seed", "trainer"))
    ]


@pytest.mark.parametrize(
    "override, says",
    [
        ("paths.output_dir=/elsewhere", "paths.output_dir: paths.* settings are never replayed"),
        ("hydra.run.dir=/elsewhere", "hydra.run.dir: hydra.* settings are never replayed"),
        ("+hydra.callbacks.x._target_=torch.load", "hydra.callbacks.x._target_: hydra.* settings"),
        ("model.net._target_=os.system", "model.net._target_: a key that names code"),
        ("+model.net.extra={_target_:posix.system,_args_:[touch]}", "model.net.extra: a dict where"),
        ("data.root=${oc.create:{_target_:torch.load,f:evil.pt,weights_only:false}}", "data.root: an interpolation"),
        ("data.root='${oc.create:{_target_: torch.load, f: evil.pt}}'", "data.root: an interpolation"),
        ("data.root=${oc.create:{_target_: torch.load, f: evil.pt}}", "data.root: an interpolation"),
        ("data.root=[", "data.root: 'data.root=[' is not a valid override"),
        ("seed=${oc.env:HOME}", "seed: an interpolation"),
        ("program=${oc.env:HOME}", "program: an interpolation is not an option name"),
        ("program=../../../tmp/x", "program: '../../../tmp/x' is not an option name"),
        ("resume_from=/x", "resume_from: not a setting that describes the experiment"),
        ("program.training.optimizer=os.system", "program.training.optimizer='os.system' is not allowed"),
        ("seed=1,2", "a sweep"),
    ],
)
def test_replayed_settings_outside_the_schema_are_refused_naming_the_key(override, says):
    from cxr.replay import ReplayError, replayable

    with pytest.raises(ReplayError, match="^x.ckpt: training override: " if "optimizer=" not in override else "^x"):
        replayable(["program=C", override], "x.ckpt: training override")
    with pytest.raises(ReplayError) as error:
        replayable([override], "x.ckpt: training override")
    assert says in str(error.value) and "\n" not in str(error.value)
    assert replayable([override], "x.ckpt", given=[override.lstrip("+~")]) == []  # the command line's own wins


@pytest.mark.slow
@pytest.mark.parametrize(
    "override, key",
    [
        ("paths.output_dir={elsewhere}", "paths.output_dir"),
        ("data.labels=${{oc.create:{{_target_: builtins.open, file: {elsewhere}, mode: w}}}}", "data.labels"),
    ],
)
def test_route_3_evaluate_py_refuses_a_replayed_override_in_one_line(tmp_path, override, key):
    elsewhere = tmp_path / "elsewhere"
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    trained_checkpoint(ckpt)
    checkpoint = torch.load(ckpt, weights_only=True)
    checkpoint["cxr"] = {"overrides": ["program=B", override.format(elsewhere=elsewhere)]}
    torch.save(checkpoint, ckpt)
    result = run(["evaluate.py", f"ckpt_path={ckpt}", f"hydra.run.dir={tmp_path / 'e'}"], tmp_path)
    assert_one_error_line(result, f"last.ckpt: training override: {key}")
    assert not elsewhere.exists()


@pytest.mark.slow
def test_route_3_resume_refuses_a_hydra_callback_in_the_run_s_overrides(tmp_path):
    victim = tmp_path / "created_by_the_callback"
    run_dir = tmp_path / "run"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "overrides.yaml").write_text(
        f"- program=B\n- +hydra.callbacks.x._target_=builtins.open\n- +hydra.callbacks.x.file={victim}\n"
        "- +hydra.callbacks.x.mode=w\n"
    )
    result = run(["train.py", f"resume={run_dir}"], tmp_path)
    assert_one_error_line(result, f"resume={run_dir}: overrides.yaml: hydra.callbacks.x._target_: hydra.*")
    assert not victim.exists()


# ------------------------------------------------------------------------------------------------- 3. loading
@pytest.mark.slow
@pytest.mark.parametrize("script", ["train.py", "evaluate.py", "predict.py"])
def test_route_4_a_checkpoint_url_is_refused_in_one_line(tmp_path, script):
    url = "http://127.0.0.1:9/x.ckpt"  # nothing listens: a fetch would fail with a traceback, not this line
    extra = ["inputs=x.png"] if script == "predict.py" else []
    result = run([script, f"ckpt_path={url}", *extra, f"hydra.run.dir={tmp_path / 'r'}"], tmp_path)
    assert_one_error_line(result, f"ckpt_path={url}: only local", status=2 if script == "predict.py" else 1)


def test_route_4_train_reads_a_resumed_checkpoint_weights_only_and_lightning_too(tmp_path, monkeypatch, make_cfg):
    """A pickled last.ckpt is refused before Lightning sees it; Lightning is asked for weights-only loading."""
    import lightning as L

    from cxr.jobs.train import train

    cfg = make_cfg(["debug=fdr", "data_check=false"])
    evil, victim = evil_pickle(tmp_path)
    with pytest.raises(CheckpointError, match=r"evil\.pt: cannot be loaded weights-only"):
        cfg.ckpt_path = str(evil)
        train(cfg)
    assert not victim.exists()
    calls = []
    monkeypatch.setattr(
        L.Trainer, "fit", lambda self, *a, **k: calls.append(k) or (_ for _ in ()).throw(KeyboardInterrupt)
    )
    good = trained_checkpoint(tmp_path / "good.ckpt")
    cfg = make_cfg(["debug=fdr", "data_check=false", f"ckpt_path={good}"])
    with pytest.raises(KeyboardInterrupt):
        train(cfg)
    assert calls[0]["weights_only"] is True and calls[0]["ckpt_path"] == str(good)


@pytest.mark.slow
def test_route_4_resume_with_a_pickled_last_ckpt_is_one_line(tmp_path, demo_root):
    from tests.conftest import DEMO_OVERRIDES

    evil, victim = evil_pickle(tmp_path)
    run_dir = tmp_path / "run"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in DEMO_OVERRIDES(demo_root)))
    (run_dir / "checkpoints").mkdir()
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(evil.read_bytes())
    result = run(["train.py", f"resume={run_dir}", "data_check=false"], tmp_path)
    assert_one_error_line(result, "last.ckpt: cannot be loaded weights-only")
    assert not victim.exists()


def test_route_5_shards_written_with_pickle_are_refused(tmp_path):
    from litdata import optimize

    from cxr.data.dataset import Preprocessing
    from cxr.data.shards import MARKER, ChestXrayShards, IndexedShards, ShardFormatError

    victim = tmp_path / "created_by_the_shard"
    folder = tmp_path / "shards" / "train-48px-nearest-2-0123456789abcdef"
    optimize(
        fn=_hostile_sample,
        inputs=[str(victim), str(victim)],
        output_dir=str(folder),
        chunk_bytes="1MB",
        num_workers=1,
        verbose=False,
        start_method="fork",
    )
    (folder / MARKER).write_text('{"format": 2, "n_images": 2}')
    assert not victim.exists()
    preprocessing = Preprocessing(channels=1, image_size=48)
    with pytest.raises(ShardFormatError, match=r"index\.json: serializer\(s\) pickle are not cxr's own"):
        IndexedShards(folder, preprocessing)[0]
    with pytest.raises(ShardFormatError, match="pickle"):
        ChestXrayShards(folder, preprocessing)
    assert not victim.exists()


def _hostile_sample(path: str) -> dict:
    return {"index": 0, "image": "x.png", "target": 0, "pixels": _Touch(Path(path))}


def test_route_5_a_cached_imagenet_file_is_read_weights_only(tmp_path, monkeypatch):
    """torchvision unpickles its weights cache with weights_only=False; cxr reads it weights-only."""
    from cxr.models.backbones import WeightsError, build_torchvision_model, imagenet_cache_file

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cached = imagenet_cache_file("resnet18")
    cached.parent.mkdir(parents=True)
    evil, victim = evil_pickle(tmp_path)
    cached.write_bytes(evil.read_bytes())
    with pytest.raises(WeightsError, match="cannot be loaded weights-only"):
        build_torchvision_model("resnet18", "imagenet")
    assert not victim.exists()


# ------------------------------------------------------------------------------------------- 4. hostile inputs
def huge_png(path: Path, size: int = 13000) -> Path:
    """A 16-bit grey PNG of size x size zeros: about 330 KB on disk, 338 MB of pixels once decoded."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    compressor = zlib.compressobj(9)
    row = bytes(1 + size * 2)  # filter byte + the row's 16-bit samples
    body = b"".join(compressor.compress(row) for _ in range(size)) + compressor.flush()
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", size, size, 16, 0, 0, 0, 0))
        + chunk(b"IDAT", body)
        + chunk(b"IEND", b"")
    )
    return path


def claiming_dicom(path: Path, size: int, transfer_syntax: str, bits: int = 16) -> Path:
    """A small DICOM file whose header claims ``size x size`` pixels (RLE: one tiny encapsulated frame)."""
    import struct

    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import UID, RLELossless, generate_uid

    meta = FileMetaDataset()
    meta.TransferSyntaxUID = UID(transfer_syntax)
    meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.1.1")  # Digital X-Ray Image Storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    dataset = Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID, dataset.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    dataset.Modality, dataset.Rows, dataset.Columns = "DX", size, size
    dataset.BitsAllocated = dataset.BitsStored = bits
    dataset.HighBit, dataset.SamplesPerPixel, dataset.PixelRepresentation = bits - 1, 1, 0
    dataset.PhotometricInterpretation = "MONOCHROME2"
    if transfer_syntax == RLELossless:
        dataset.PixelData = encapsulate([struct.pack("<16I", 1, 64, *[0] * 14) + b"\x81\x00" * 8])
    else:
        dataset.PixelData = bytes(size * 2 * 64)  # the first 64 rows; deflated, a few hundred bytes
    dataset.save_as(path, enforce_file_format=True)
    return path


PEAK = """
import sys
from cxr.data.{module} import {function}
try:
    {function}(sys.argv[1]{arguments})
    print("decoded")
except Exception as error:
    print("refused:", error)
# VmHWM: this process's peak resident memory (ru_maxrss would count the forked parent's before exec)
peak = next(line for line in open("/proc/self/status") if line.startswith("VmHWM"))
print("peak_mib", int(peak.split()[1]) // 1024)
"""


def decode_in_a_subprocess(path: Path, module: str, function: str, arguments: str = "") -> tuple[str, int]:
    import subprocess
    import sys

    from tests.conftest import REPO

    result = subprocess.run(
        [sys.executable, "-c", PEAK.format(module=module, function=function, arguments=arguments), str(path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = result.stdout.strip().splitlines()
    assert result.returncode == 0 and len(lines) == 2, result.stderr[-2000:]
    return lines[0], int(lines[1].split()[1])


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="peak memory read from /proc (Linux)")
@pytest.mark.parametrize("kind", ["png_13000_16bit", "dicom_16000_deflated", "dicom_40000_rle"])
def test_memory_an_image_claiming_gigabytes_is_refused_before_decoding(tmp_path, kind):
    from pydicom.uid import DeflatedExplicitVRLittleEndian, RLELossless

    if kind.startswith("png"):
        path = huge_png(tmp_path / "huge.png")
        message, peak = decode_in_a_subprocess(path, "images", "load_image", ", channels=1, size=32")
    else:
        size, syntax = (16000, DeflatedExplicitVRLittleEndian) if "deflated" in kind else (40000, RLELossless)
        path = claiming_dicom(tmp_path / "huge.dcm", size, syntax, bits=16 if size == 16000 else 8)
        message, peak = decode_in_a_subprocess(path, "dicom", "read_dicom")
    assert path.stat().st_size < 400_000
    assert message.startswith("refused:") and "above the limit of 128 MiB (CXR_MAX_PIXEL_BYTES)" in message, message
    assert peak < 200, f"{peak} MiB at the peak"  # numpy, Pillow and pydicom themselves take about 60 MiB


def test_the_pixel_limit_is_settable(tmp_path, monkeypatch):
    from PIL import Image

    from cxr.data.images import ImageReadError, load_image

    Image.new("L", (64, 64)).save(tmp_path / "x.png")
    assert load_image(tmp_path / "x.png", channels=1, size=16).shape == (16, 16, 1)
    monkeypatch.setenv("CXR_MAX_PIXEL_BYTES", "4000")
    with pytest.raises(ImageReadError, match=r"64 x 64 pixels x 1 bytes = 0 MiB decoded, above the limit"):
        load_image(tmp_path / "x.png", channels=1, size=16)


@pytest.mark.slow
def test_predict_py_survives_link_loops_a_non_utf8_name_and_a_huge_png(tmp_path):
    """The link loop used to walk for ever, the file name crashed the CSV writer (no predictions.csv), the PNG took
    5 GB: now one row each, the others predicted."""
    import os

    import pandas as pd
    from PIL import Image

    folder = tmp_path / "inputs"
    folder.mkdir()
    Image.new("L", (64, 64), 128).save(folder / "good.png")
    (folder / "a").symlink_to(".")
    (folder / "b").symlink_to(".")
    with open(os.path.join(os.fsencode(folder), b"\xff\xfe.png"), "wb") as handle:
        handle.write((folder / "good.png").read_bytes())
    huge_png(folder / "huge.png")
    ckpt = trained_checkpoint(tmp_path / "model.ckpt")
    result = run(
        ["predict.py", f"ckpt_path={ckpt}", f"inputs={folder}", f"hydra.run.dir={tmp_path / 'p'}", "progress=false"],
        tmp_path,
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    rows = pd.read_csv(tmp_path / "p" / "predictions.csv", keep_default_na=False).set_index("path")
    assert sorted(rows.index) == sorted(
        [str(folder / "good.png"), str(folder / "huge.png"), str(folder) + "/\\xff\\xfe.png"]
    )
    assert "above the limit" in rows.loc[str(folder / "huge.png"), "error"]
    assert rows.loc[str(folder) + "/\\xff\\xfe.png", "warning"] == "file name is not UTF-8 (shown with \\x escapes)"
    assert rows.loc[str(folder) + "/\\xff\\xfe.png", "error"] == ""
    assert rows.loc[str(folder / "good.png"), "error"] == ""


@pytest.mark.slow
def test_onnx_external_data_outside_its_folder_is_one_line(tmp_path):
    import json

    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.ones((1,), np.float32), "scale")
    weight.data_location = TensorProto.EXTERNAL
    weight.ClearField("raw_data")
    weight.external_data.add(key="location", value="../secret.bin")
    (tmp_path / "secret.bin").write_bytes(np.ones((1,), np.float32).tobytes())
    graph = helper.make_graph(
        [helper.make_node("Mul", ["images", "scale"], ["logits"])],
        "g",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [None, 1, 48, 48])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)],
        [weight],
    )
    model = helper.make_model(graph)
    for key, value in {"preprocessing": {"channels": 1, "image_size": 48}, "output_names": ["finding"]}.items():
        model.metadata_props.add(key=f"cxr.{key}", value=json.dumps(value))
    (tmp_path / "model").mkdir()
    onnx.save(model, tmp_path / "model" / "model.onnx")
    from PIL import Image

    Image.new("L", (48, 48)).save(tmp_path / "x.png")
    result = run(
        [
            "predict.py",
            f"ckpt_path={tmp_path / 'model' / 'model.onnx'}",
            f"inputs={tmp_path / 'x.png'}",
            f"hydra.run.dir={tmp_path / 'p'}",
        ],
        tmp_path,
    )
    assert_one_error_line(result, "model.onnx: tensor 'scale' keeps its data in '../secret.bin', outside", status=2)


def test_dicom_free_text_is_echoed_only_as_known_codes(tmp_path):
    from pydicom.uid import ExplicitVRLittleEndian

    from cxr.data.dicom import read_dicom

    path = claiming_dicom(tmp_path / "x.dcm", 16, "1.2.840.10008.1.2.1.99", bits=8)  # any syntax: rewritten below
    import pydicom

    dataset = pydicom.dcmread(path)
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset.PixelData = bytes(16 * 16)
    dataset.Modality = "\x1b[2J rm -rf / PATIENT NAME"
    dataset.ViewPosition = "Dr. Who's lateral"
    dataset.save_as(path, enforce_file_format=True)
    warnings = read_dicom(path).warnings
    assert warnings == ["modality unrecognised: the model was trained on chest radiographs (CR/DX)"]
    dataset.Modality, dataset.ViewPosition = "CT", "LL"
    dataset.save_as(path, enforce_file_format=True)
    assert [w.split(":")[0] for w in read_dicom(path).warnings] == ["modality CT", "view position LL"]


class _Malformed416:
    """An HTTP server answering every Range request with 416 and a malformed Content-Range."""

    def __enter__(self):
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                self.send_response(416)
                self.send_header("Content-Range", "bytes */12abc")
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()


def test_a_mirror_answering_416_with_a_malformed_content_range_is_one_line(tmp_path):
    from cxr.data.download import fetch
    from cxr.errors import DownloadError

    target = tmp_path / "images_01.tar.gz"
    target.with_name(target.name + ".part").write_bytes(b"partial")
    with _Malformed416() as server, pytest.raises(DownloadError) as error:
        fetch(server.url + target.name, target)
    assert str(error.value) == (
        f"{server.url}images_01.tar.gz: HTTP 416 with a malformed Content-Range 'bytes */12abc'; {target}.part kept"
    )


def test_a_tampered_split_list_from_the_mirror_is_refused(tmp_path):
    import gzip

    from cxr.bench.range_server import RangeServer
    from cxr.data.download import METADATA_FILES, download_release, shipped
    from cxr.errors import DownloadError

    files = {name: gzip.decompress(shipped(name + ".gz").read_bytes()) for name in METADATA_FILES}
    files["test_list.txt"] = files["test_list.txt"].replace(b"00000003_000.png\n", b"")  # one image moved
    with (
        RangeServer(files) as server,
        pytest.raises(
            DownloadError,
            match=r"^test_list\.txt: SHA-256 [0-9a-f]{64} "
            r"is not the release's 3d0c44b6",
        ),
    ):
        download_release(tmp_path, mirror=server.url, progress=False, echo=lambda _: None)
    assert not (tmp_path / "test_list.txt").exists()
    assert (tmp_path / "train_val_list.txt").is_file()  # verified, kept


# ----------------------------------------------------------------------------------------------- 5. data loss
@pytest.mark.slow
def test_prune_deletes_only_folders_cxr_made_and_lists_them_first(tmp_path, demo_root):
    import subprocess
    import sys

    from cxr.data.shards import MARKER
    from tests.conftest import DEMO_OVERRIDES, REPO

    shards = tmp_path / "nih"  # data.shards_dir pointed at a dataset
    (shards / "images_001" / "images").mkdir(parents=True)
    (shards / "images_001" / "images" / "00000001_000.png").write_bytes(b"an X-ray")
    look_alike = shards / "train-48px-nearest-10-0123456789abcdef"  # cxr's naming, no marker: not ours
    look_alike.mkdir()
    (look_alike / "notes.txt").write_text("mine")
    ours = shards / "val-48px-bilinear-12-fedcba9876543210"
    ours.mkdir()
    (ours / MARKER).write_text('{"format": 2, "n_images": 12}')
    (ours / "chunk-0-0.bin").write_bytes(bytes(100))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "cxr.prepare",
            *DEMO_OVERRIDES(demo_root),
            f"data.shards_dir={shards}",
            f"data.cache_dir={tmp_path / 'cache'}",
            f"paths.log_dir={tmp_path}/outputs",
            "--prune",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (shards / "images_001" / "images" / "00000001_000.png").read_bytes() == b"an X-ray"
    assert (look_alike / "notes.txt").exists() and not ours.exists()
    lines = result.stdout.splitlines()
    first = lines.index("deleting 0 cache(s) and 1 shard folder(s):")
    assert lines[first + 1] == f"  {ours}"
    assert "images_001: " in result.stdout and "[not cxr's, never pruned]" in result.stdout


@pytest.mark.slow
def test_a_second_run_in_the_same_run_directory_is_refused_in_one_line(tmp_path, demo_root):
    """The lock is taken before Hydra writes .hydra/ (the first run's overrides stay), and released at exit."""
    from cxr.run_lock import lock_run_directory, release_run_directory
    from tests.conftest import DEMO_OVERRIDES

    run_dir = tmp_path / "run"
    lock_run_directory(run_dir)  # the first run, still running
    command = ["train.py", *DEMO_OVERRIDES(demo_root), "check_only=true", f"hydra.run.dir={run_dir}"]
    try:
        result = run(command, tmp_path)
    finally:
        release_run_directory(run_dir)
    assert_one_error_line(result, f"{run_dir} is in use by another run (process ")
    assert not (run_dir / ".hydra").exists() and not (run_dir / "run.json").exists()
    result = run(command, tmp_path)  # the first run has ended
    assert result.returncode == 0, result.stderr[-3000:]
    assert (run_dir / "run.json").exists()


def _labels_with_a_blank_patient_id(demo_root: Path, folder: Path) -> tuple[Path, Path]:
    """The demo labels as a main set with one blank Patient ID cell, and an external set of other images of
    patients who are in it."""
    import pandas as pd

    table = pd.read_csv(demo_root / "Data_Entry_demo.csv", dtype=str, keep_default_na=False)
    repeated = table[table.duplicated("Patient ID", keep=False)].groupby("Patient ID").head(1).head(3)
    main = table.drop(repeated.index).reset_index(drop=True)
    main.loc[2, "Patient ID"] = ""
    folder.mkdir(exist_ok=True)
    main.to_csv(folder / "main.csv", index=False)
    repeated.to_csv(folder / "external.csv", index=False)
    return folder / "main.csv", folder / "external.csv"


def test_a_blank_patient_id_is_refused_by_default_and_the_check_fails_closed(make_cfg, demo_root, tmp_path):
    from hydra.utils import instantiate

    from cxr.data.patient_ids import MissingPatientIdError
    from cxr.jobs.check import run_check

    main, external = _labels_with_a_blank_patient_id(demo_root, tmp_path / "labels")
    sets = [f"data.labels={main}", f"+data.external.labels={external}", f"data.external.root={demo_root}"]
    cfg = make_cfg([*sets, "split=patient"])
    datamodule = instantiate(cfg.data)
    with pytest.raises(
        MissingPatientIdError,
        match=r"main\.csv: 1 of \d+ images have no patient id \(first: line 4 "
        r"\(\d{8}_\d{3}\.png\)\).*data\.missing_patient_id=image",
    ):
        datamodule.setup("fit")
    report = run_check(cfg)
    assert not report.ok and any("have no patient id" in line for line in report.lines())
    # the explicit alternative: each such image is its own patient, recorded; the external patients are then seen
    cfg = make_cfg([*sets, "split=patient", "data.missing_patient_id=image"])
    assert not run_check(cfg).ok  # external patients with images in train/val: refused as leakage
    cfg = make_cfg(
        [*sets, "split=patient", "data.missing_patient_id=image", "data.allow_overlap.external_patients=true"]
    )
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    assert datamodule.leakage["missing_patient_id"] == {"policy": "image", "images": 1}
    assert datamodule.leakage["external_patients"]["count"] >= 1  # those of the 3 whose images are in train/val
