"""predict.py, export.py and the model card, on a checkpoint trained here (one epoch of program D on the demo set)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

pytest.importorskip("pydicom", reason="pip install -e '.[predict]'")

from cxr.data.dataset import Preprocessing
from cxr.data.inputs import collect_inputs, prepare_input
from cxr.errors import PredictError
from cxr.jobs.export import export
from cxr.jobs.predict import predict, predict_rows
from cxr.jobs.predictor import Predictor, load_predictor, onnx_metadata, operating_points, output_names
from cxr.jobs.train import train
from cxr.models.checkpoints import load_classifier
from tests.conftest import DEMO_OVERRIDES, NIH_SAMPLE, REPO, compose_config, require_real_data
from tests.dicom_fixtures import (
    NARROW_PNG,
    PATIENT_BIRTH,
    PATIENT_ID,
    PATIENT_NAME,
    SOURCE_PNG,
    source_pixels,
    write_as_stored,
    write_broken_set,
    write_lossless_set,
)

PROBABILITY_TOLERANCE = 1e-6  # same pixels -> same input tensor; only the batch composition differs


@pytest.fixture(scope="module")
def trained_run(demo_root, tmp_path_factory) -> Path:
    """A finished training run with a real checkpoint and metrics.json (about 20 s on 2 cores)."""
    run = tmp_path_factory.mktemp("trained") / "run"
    cfg = compose_config(
        "train",
        DEMO_OVERRIDES(demo_root)
        + ["program=D", "trainer.max_epochs=1", "logger=csv", "evaluation.bootstrap.n_resamples=50"]
        # a best checkpoint distinct from last.ckpt in one epoch (D selects from epoch 5 on otherwise)
        + ["program.training.selection.min_epochs=1"],
        run,
    )
    train(cfg)
    return run


def checkpoint_of(run: Path) -> Path:
    return run / json.loads((run / "metrics.json").read_text())["checkpoint"]


def predict_cfg(tmp_path: Path, overrides: list[str], name: str = "predict"):
    return compose_config("predict", overrides + ["progress=false"], tmp_path / name)


def test_output_names_for_binary_and_multilabel_models():
    assert output_names({"net": {}}) == ["finding"]
    assert output_names({"task": "binary"}) == ["finding"]
    assert output_names({"task": "multilabel", "findings": ["Effusion", "Mass"]}) == ["Effusion", "Mass"]
    with pytest.raises(PredictError, match="without 'findings'"):
        output_names({"task": "multilabel"})


@pytest.mark.slow  # trains the module's checkpoint (about 25 s)
def test_operating_point_comes_from_the_run_else_05(trained_run, tmp_path):
    metrics = json.loads((trained_run / "metrics.json").read_text())
    thresholds, source = operating_points(checkpoint_of(trained_run), ["finding"])
    assert thresholds == [metrics["test"]["operating_point"]["threshold"]] and "run operating point" in source
    last = trained_run / "checkpoints" / "last.ckpt"  # not the evaluated checkpoint: its threshold does not apply
    assert last.is_file() and last != checkpoint_of(trained_run)
    thresholds, source = operating_points(last, ["finding"])
    assert thresholds == [0.5] and "not for last.ckpt" in source
    alone = tmp_path / "elsewhere.ckpt"
    shutil.copy(checkpoint_of(trained_run), alone)
    thresholds, source = operating_points(alone, ["finding"])
    assert thresholds == [0.5] and "no " in source and "metrics.json" in source


def test_per_finding_operating_points_of_a_multilabel_run(tmp_path):
    """metrics.json of a multi-label run: metrics["test"]["findings"][finding]["operating_point"]["threshold"]."""
    (tmp_path / "checkpoints").mkdir()
    findings = {
        "Effusion": {"auroc": {"value": 0.8}, "operating_point": {"chosen_on": "youden on val", "threshold": 0.23}},
        "Mass": {"auroc": {"value": None}, "operating_point": {"threshold": None}},
    }
    (tmp_path / "metrics.json").write_text(json.dumps({"test": {"task": "multilabel", "findings": findings}}))
    thresholds, source = operating_points(tmp_path / "checkpoints" / "best.ckpt", ["Effusion", "Mass"])
    assert thresholds == [0.23, 0.5] and "youden on val" in source and "0.5 for Mass" in source


def test_model_card_of_a_multilabel_run(make_cfg, tmp_path):
    from omegaconf import open_dict

    from cxr.evaluation.model_card import model_card

    cfg = make_cfg([])
    with open_dict(cfg):
        cfg.task = {"name": "multilabel", "findings": ["Effusion", "Mass"]}
    metrics = {
        "program": "D",
        "data": "demo",
        "params": 1,
        "checkpoint": None,
        "epochs_trained": 1,
        "test": {
            "n": 9,
            "task": "multilabel",
            "mean_auroc": {"value": 0.7, "ci_low": 0.6, "ci_high": 0.8},
            "findings": {
                "Effusion": {
                    "auroc": {"value": 0.71, "ci_low": 0.61, "ci_high": 0.81},
                    "operating_point": {"threshold": 0.2, "sensitivity": 0.8},
                }
            },
        },
    }
    card = model_card(cfg, metrics, tmp_path)
    assert "multi-label: one probability per finding (2: Effusion, Mass)" in card
    assert "| Effusion | 0.710 [0.610, 0.810] | n/a | 0.200 | 0.800 | n/a |" in card
    assert "mean AUROC 0.700 [0.600, 0.800]" in card


@pytest.mark.slow  # trains the module's checkpoint (about 25 s)
def test_training_run_writes_a_model_card(trained_run):
    card = (trained_run / "model_card.md").read_text()
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert "not a medical device" in card and "synthetic" in card
    assert f"{metrics['test']['operating_point']['threshold']:.4f}" in card
    assert f"{metrics['test']['auroc']:.3f} [{metrics['test']['ci']['auroc']['ci_low']:.3f}" in card
    assert "## Known limitations" in card and "| view_position |" in card


def test_inputs_from_lists_globs_and_folders(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    for name in ("a/x.png", "a/b/y.jpg", "a/b/z.dcm", "a/readme.txt"):
        (tmp_path / name).write_bytes(b"")
    found, skipped = collect_inputs(str(tmp_path / "a"))
    assert [p.name for p in found] == ["x.png", "y.jpg", "z.dcm"] and skipped == 1
    (tmp_path / "list.txt").write_text("a/x.png\n# comment\n\na/missing.png\n")
    assert [p.name for p in collect_inputs(f"@{tmp_path / 'list.txt'}")[0]] == ["x.png", "missing.png"]
    (tmp_path / "list.csv").write_text("patient,path\n1,a/b/y.jpg\n")
    assert collect_inputs(f"@{tmp_path / 'list.csv'}")[0] == [tmp_path / "a" / "b" / "y.jpg"]
    with pytest.raises(PredictError, match=r"list.txt: not an image .* give inputs=@"):
        collect_inputs(str(tmp_path / "list.txt"))  # a list is never guessed from the file name
    with pytest.raises(PredictError, match="list file not found"):
        collect_inputs(f"@{tmp_path / 'none.txt'}")
    assert [p.name for p in collect_inputs(str(tmp_path / "a" / "**" / "*.jpg"))[0]] == ["y.jpg"]
    with pytest.raises(PredictError, match="matches no file"):
        collect_inputs(str(tmp_path / "*.nothing"))


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory) -> Path:
    """Real PNGs (256 and 64 px), a JPEG, lossless DICOMs of one PNG, broken files and a text file."""
    require_real_data()
    folder = tmp_path_factory.mktemp("inputs") / "mixed"
    (folder / "png").mkdir(parents=True)
    shutil.copy(SOURCE_PNG, folder / "png" / SOURCE_PNG.name)
    thumbnail = next(p for p in sorted((NIH_SAMPLE / "images").glob("*.png")) if Image.open(p).size == (64, 64))
    shutil.copy(thumbnail, folder / "png" / thumbnail.name)
    Image.open(SOURCE_PNG).convert("L").save(folder / "png" / "as_jpeg.jpg", quality=95)
    write_lossless_set(folder / "dicom", source_pixels())
    write_broken_set(folder / "broken", source_pixels())
    (folder / "broken" / "cut.png").write_bytes(SOURCE_PNG.read_bytes()[:2000])
    (folder / "broken" / "empty.png").write_bytes(b"")
    (folder / "notes.txt").write_text("not an input\n")
    return folder


def _snapshot(folder: Path) -> dict:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


@pytest.mark.slow
@pytest.mark.real_data
def test_predict_mixed_folder_one_row_per_input(trained_run, mixed_folder, tmp_path):
    before = _snapshot(mixed_folder)
    cfg = predict_cfg(
        tmp_path, [f"ckpt_path={checkpoint_of(trained_run)}", f"inputs={mixed_folder}", "json=true", "cam=true"]
    )
    status = predict(cfg)
    out = Path(cfg.paths.output_dir)
    assert status == 1 and _snapshot(mixed_folder) == before  # failures reported; nothing written beside inputs

    rows = pd.read_csv(out / "predictions.csv", keep_default_na=False).set_index("path")
    expected = {str(p) for p in mixed_folder.rglob("*") if p.is_file() and p.name != "notes.txt"}
    assert set(rows.index) == expected
    error = {Path(p).name: e for p, e in rows["error"].items()}
    assert "multi-frame" in error["multi_frame.dcm"] and "without pixel data" in error["report.dcm"]
    assert "cannot decode the pixel data" in error["truncated.dcm"] and "truncated" in error["cut.png"]
    assert "zero-byte" in error["empty.png"]
    assert sum(e != "" for e in error.values()) == 5 and error["invalid_values.dcm"] == ""

    ok = rows[rows["error"] == ""]
    p = ok["probability_finding"].astype(float)
    png_p = p[str(mixed_folder / "png" / SOURCE_PNG.name)]
    dicoms = [path for path in ok.index if "/dicom/" in path]
    assert len(dicoms) == 19 and (ok.loc[dicoms, "format"] == "dicom").all()
    assert np.abs(p[dicoms] - png_p).max() <= PROBABILITY_TOLERANCE  # lossless DICOM == its PNG
    metrics = json.loads((trained_run / "metrics.json").read_text())
    threshold = metrics["test"]["operating_point"]["threshold"]
    assert (ok["threshold_finding"].astype(float) == threshold).all()
    assert (ok["decision_finding"].astype(int) == (p > threshold).astype(int)).all()
    assert "view position LL" in rows.loc[str(mixed_folder / "broken" / "lateral_ct.dcm"), "warning"]

    saved = json.loads((out / "predictions.json").read_text())
    assert len(saved["predictions"]) == len(rows) and saved["thresholds"] == {"finding": threshold}
    overlays = sorted((out / "cam").glob("*.png"))
    assert len(overlays) == len(ok) and Image.open(overlays[0]).size == (320, 320)
    page = (out / "cam.html").read_text()
    assert page.count("<img ") == len(ok) and f"p = {png_p:.3f}" in page
    for file in out.rglob("*"):  # no patient-identifying DICOM field in any output
        if file.is_file():
            content = file.read_bytes()
            for secret in (PATIENT_NAME, PATIENT_ID, PATIENT_BIRTH, "Hospital of Identifiable"):
                assert secret.encode() not in content, f"{secret} in {file}"


@pytest.mark.slow
@pytest.mark.real_data
def test_lossless_dicoms_of_a_png_predict_the_png_probability(trained_run, tmp_path):
    """python predict.py, as a user runs it: a real PNG (grey 0-211) and its 8-bit DICOMs without a VOI window
    (explicit VR little endian, RLE, JPEG 2000) get one probability; dicom.window=minmax stretches them (another)."""
    require_real_data()
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    png = shutil.copy(NARROW_PNG, inputs / NARROW_PNG.name)
    dicoms = write_as_stored(inputs / "dicom", source_pixels(NARROW_PNG))
    work = tmp_path / "work"
    work.mkdir()
    result = subprocess.run(
        [sys.executable, str(REPO / "predict.py"), f"ckpt_path={checkpoint_of(trained_run)}", f"inputs={inputs}"],
        cwd=work,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    (predictions,) = work.glob("outputs/predict/runs/*/predictions.csv")
    p = pd.read_csv(predictions).set_index("path")["probability_finding"]
    assert len(p) == 4 and all(abs(p[str(d)] - p[str(png)]) <= PROBABILITY_TOLERANCE for d in dicoms.values())

    cfg = predict_cfg(tmp_path, [f"ckpt_path={checkpoint_of(trained_run)}", f"inputs={inputs}", "dicom.window=minmax"])
    assert predict(cfg) == 0
    stretched = pd.read_csv(Path(cfg.paths.output_dir) / "predictions.csv").set_index("path")["probability_finding"]
    assert stretched[str(png)] == pytest.approx(p[str(png)], abs=PROBABILITY_TOLERANCE)
    assert all(abs(stretched[str(d)] - p[str(png)]) > PROBABILITY_TOLERANCE for d in dicoms.values())


def test_unknown_dicom_window_is_refused_before_anything_loads(tmp_path):
    cfg = predict_cfg(tmp_path, [f"ckpt_path={tmp_path / 'none.ckpt'}", "inputs=x", "dicom.window=auto"])
    with pytest.raises(PredictError, match="dicom.window='auto': choose voi .*, stored .* or minmax"):
        predict(cfg)


def test_multilabel_outputs_and_grad_cam_per_finding(tmp_path):
    """K outputs: one probability/decision/threshold column each, and one overlay per input and finding."""
    from cxr.evaluation.gradcam import write_cam_report

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(4, 3),
    )
    predictor = Predictor(
        Preprocessing(channels=1, image_size=32),
        ["Effusion", "Mass", "Nodule"],
        [0.2, 0.5, 0.8],
        "given",
        "torch",
        model=net.eval(),
    )
    for i in range(3):
        Image.fromarray((np.random.default_rng(i).random((40, 40)) * 255).astype(np.uint8)).save(tmp_path / f"{i}.png")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    frame = predict_rows(predictor, collect_inputs(str(tmp_path))[0], batch_size=2, progress=False)
    assert len(frame) == 4 and (frame["error"] != "").sum() == 1
    for k, name in enumerate(predictor.names):
        good = frame[frame["error"] == ""]
        assert (good[f"decision_{name}"] == (good[f"probability_{name}"] > predictor.thresholds[k])).all()
        assert (frame[f"threshold_{name}"] == predictor.thresholds[k]).all()
    write_cam_report(predictor, frame, tmp_path / "out", size=64)
    assert len(list((tmp_path / "out" / "cam").glob("*_Mass.png"))) == 3
    assert len(list((tmp_path / "out" / "cam").glob("*.png"))) == 9


def test_multilabel_onnx_export_runs_alone_with_its_metadata(tmp_path):
    """A K-output network through export_onnx (dynamo, dynamic batch) and back through predict's ONNX path."""
    from cxr.jobs.export import export_onnx, graph_module

    class Classifier(torch.nn.Module):  # a forward with len(images), as the multi-label LightningModule has
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Sequential(
                torch.nn.Conv2d(1, 4, 3),
                torch.nn.ReLU(),
                torch.nn.AdaptiveAvgPool2d(1),
                torch.nn.Flatten(),
                torch.nn.Linear(4, 3),
            )

        def forward(self, images):
            return self.net(images).reshape(len(images), -1)

    torch.manual_seed(0)
    net = Classifier().eval()
    preprocessing = {
        "channels": 1,
        "image_size": 32,
        "resample": "bilinear",
        "pixel_divisor": 255.0,
        "mean": 0.5,
        "std": 0.25,
    }
    meta = {
        "preprocessing": preprocessing,
        "output_names": ["Effusion", "Mass", "Nodule"],
        "thresholds": [0.1, 0.5, 0.9],
        "threshold_source": "test",
    }
    export_onnx(graph_module(net, 3), torch.zeros(2, 1, 32, 32), tmp_path / "m.onnx", meta)  # batch 2, run on 5
    for i in range(5):
        Image.fromarray((np.random.default_rng(i).random((40, 50)) * 255).astype(np.uint8)).save(tmp_path / f"{i}.png")
    predictor = load_predictor(tmp_path / "m.onnx")
    assert predictor.names == meta["output_names"] and predictor.thresholds == [0.1, 0.5, 0.9]
    assert predictor.preprocessing == Preprocessing(**preprocessing)
    frame = predict_rows(predictor, collect_inputs(str(tmp_path))[0], batch_size=5, progress=False)
    images = torch.stack([prepare_input(p, predictor.preprocessing)[0] for p in frame["path"]])
    with torch.no_grad():
        expected = torch.sigmoid(net(images)).numpy()
    got = frame[[f"probability_{n}" for n in predictor.names]].to_numpy(dtype=np.float32)
    assert got.shape == (5, 3) and np.abs(got - expected).max() <= 1e-5


def test_bad_model_argument_is_one_clear_error(tmp_path):
    with pytest.raises(PredictError, match="file not found"):
        load_predictor(tmp_path / "missing.ckpt")
    not_onnx = tmp_path / "model.onnx"
    not_onnx.write_bytes(b"garbage")
    with pytest.raises(PredictError, match="not a readable ONNX model"):
        load_predictor(not_onnx)


@pytest.mark.slow
@pytest.mark.real_data
def test_export_onnx_and_torchscript_reproduce_the_checkpoint(trained_run, mixed_folder, tmp_path):
    """Parity at export time, metadata embedded, and predict.py from the .onnx alone agrees with the checkpoint."""
    ckpt = checkpoint_of(trained_run)
    onnx_cfg = compose_config(
        "export",
        [f"ckpt_path={ckpt}", "format=onnx", f"parity_inputs={NIH_SAMPLE / 'images'}", "parity_n=32"],
        tmp_path / "onnx",
    )
    report = export(onnx_cfg)
    onnx_file = Path(report["export"])
    stored = json.loads(onnx_file.with_name("model.onnx.parity.json").read_text())
    assert stored["parity"]["n"] == 32 and stored["parity"]["max_abs_delta_p"] <= 1e-4 and stored["parity"]["passed"]
    meta = onnx_metadata(onnx_file)
    model, _ = load_classifier(ckpt)
    assert meta["preprocessing"] == dict(model.hparams.preprocessing) and meta["output_names"] == ["finding"]
    assert meta["thresholds"] == operating_points(ckpt, ["finding"])[0]

    images = mixed_folder / "png"
    from_ckpt = predict_cfg(tmp_path, [f"ckpt_path={ckpt}", f"inputs={images}", "backend=eager"], "p_ckpt")
    from_onnx = predict_cfg(tmp_path, [f"ckpt_path={onnx_file}", f"inputs={images}"], "p_onnx")
    assert predict(from_ckpt) == 0 and predict(from_onnx) == 0
    a = pd.read_csv(Path(from_ckpt.paths.output_dir) / "predictions.csv")
    b = pd.read_csv(Path(from_onnx.paths.output_dir) / "predictions.csv")
    assert list(a["path"]) == list(b["path"]) and len(a) == 3
    assert np.abs(a["probability_finding"] - b["probability_finding"]).max() <= 1e-5
    assert (a["decision_finding"] == b["decision_finding"]).all()
    assert (a["threshold_finding"] == b["threshold_finding"]).all()

    ts_cfg = compose_config("export", [f"ckpt_path={ckpt}", "format=torchscript"], tmp_path / "ts")
    report = export(ts_cfg)  # parity on the run's own test images (splits.csv)
    assert report["parity"]["passed"] and "test images of the run" in report["parity"]["images"]
    extra = {"cxr.json": ""}
    loaded = torch.jit.load(report["export"], _extra_files=extra)
    assert json.loads(extra["cxr.json"])["output_names"] == ["finding"]
    batch = torch.zeros(5, 1, 150, 150)
    assert loaded(batch).shape == (5, 1)


@pytest.mark.slow
@pytest.mark.real_data
def test_predict_command_line_exit_statuses_and_no_patient_data_in_logs(trained_run, mixed_folder, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    def run(*arguments):
        return subprocess.run(
            [sys.executable, "predict.py", *arguments, f"hydra.run.dir={tmp_path / 'run'}"],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )

    result = run(f"ckpt_path={tmp_path / 'none.ckpt'}", "inputs=x")
    assert result.returncode == 2
    assert "predict.py: error: ckpt_path: file not found" in result.stderr and "Traceback" not in result.stderr

    # end to end through the CLI (console and predict.log): identity fields, some with values invalid for their VR
    inputs = [mixed_folder / "broken" / "invalid_values.dcm", mixed_folder / "png" / SOURCE_PNG.name]
    (tmp_path / "list.txt").write_text("".join(f"{path}\n" for path in inputs))
    result = run(f"ckpt_path={checkpoint_of(trained_run)}", f"inputs=@{tmp_path / 'list.txt'}")  # as documented
    assert result.returncode == 0, result.stderr
    assert "2 input(s): 2 predicted, 0 failed" in result.stdout
    logged = [result.stdout, result.stderr] + [
        f.read_text(errors="replace") for f in (tmp_path / "run").rglob("*") if f.is_file()
    ]
    assert any("invalid_values.dcm" in text for text in logged)
    for secret in (PATIENT_NAME, PATIENT_ID, "not-a-date"):
        assert not any(secret in text for text in logged), secret


@pytest.mark.slow
@pytest.mark.real_data
def test_default_backend_is_int8_calibrated_on_the_run_and_keeps_fp32_decisions(trained_run, tmp_path, capsys):
    """backend=auto (the default): int8 calibrated on the run's validation images where it agrees with fp32; every
    decision equals fp32's, and the images near the operating point carry fp32's probability."""
    from cxr import inference

    require_real_data()
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for path in sorted((NIH_SAMPLE / "images").glob("*.png"))[:160]:
        shutil.copy(path, inputs / path.name)
    ckpt = checkpoint_of(trained_run)
    default = predict_cfg(tmp_path, [f"ckpt_path={ckpt}", f"inputs={inputs}", "json=true"], "p_default")
    assert predict(default) == 0
    out = Path(default.paths.output_dir)  # (before the next config replaces Hydra's run directory)
    saved = json.loads((out / "predictions.json").read_text())["inference"]
    assert saved["backend"] == "onnxruntime_int8", saved["reason"]
    assert saved["int8_calibration_images"] > 0 and saved["int8_max_abs_difference_vs_fp32"] <= inference.INT8_AGREEMENT
    assert "re-scored in fp32 (near an operating point)" in capsys.readouterr().out  # the run's summary
    a = pd.read_csv(out / "predictions.csv").set_index("path")
    fp32 = predict_cfg(tmp_path, [f"ckpt_path={ckpt}", f"inputs={inputs}", "backend=onnxruntime"], "p_fp32")
    assert predict(fp32) == 0
    b = pd.read_csv(Path(fp32.paths.output_dir) / "predictions.csv").set_index("path").loc[a.index]
    difference = (a["probability_finding"] - b["probability_finding"]).abs()
    assert 0 < difference.max() <= inference.INT8_DECISION_MARGIN  # int8 did score (not all in fp32)
    assert (a["decision_finding"] == b["decision_finding"]).all()
    threshold = float(a["threshold_finding"].iloc[0])
    near = (b["probability_finding"] - threshold).abs() <= inference.INT8_DECISION_MARGIN - difference.max()
    assert (difference[near] <= 1e-5).all() and saved["fp32_rescored"] >= int(near.sum())


@pytest.mark.slow  # trains the module's checkpoint (about 25 s)
def test_default_backend_without_the_runs_data_is_fp32_and_says_why(trained_run, tmp_path):
    """A checkpoint copied away from its run: nothing to calibrate int8 on, so fp32 ONNX Runtime (or torch)."""
    from cxr.jobs import int8

    alone = tmp_path / "elsewhere.ckpt"
    shutil.copy(checkpoint_of(trained_run), alone)
    predictor = load_predictor(alone)
    assert predictor.backend in ("onnxruntime", "torch")
    reason = predictor.details["inference"]["reason"]
    assert "int8 not used" in reason and "validation images are not readable" in reason
    model, _ = load_classifier(alone)
    assert int8.choose(model, alone, predictor.preprocessing, "torch").backend == "torch"  # asked: kept


def test_near_threshold_marks_rows_close_to_any_output_threshold():
    from cxr.inference import INT8_DECISION_MARGIN, near_threshold

    p = np.array([[0.5, 0.1], [0.5 + 2 * INT8_DECISION_MARGIN, 0.3 + INT8_DECISION_MARGIN / 2], [0.2, 0.9]])
    assert near_threshold(p, [0.5, 0.3]).tolist() == [True, True, False]
    assert near_threshold(np.array([0.5, 0.7]), 0.5).tolist() == [True, False]
