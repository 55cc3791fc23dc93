"""A trained model ready to apply, for ``predict.py`` and the service: a checkpoint (weights-only) or an exported
``.onnx`` file, with its preprocessing, output names, operating points (the run's ``metrics.json``), temperature
scaling and inference backend (cxr.jobs.int8)."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from cxr.data.dataset import Preprocessing
from cxr.errors import PredictError
from cxr.jobs.checkpoint_run import run_directory

log = logging.getLogger(__name__)
DEFAULT_THRESHOLD = 0.5
ONNX_METADATA_PREFIX = "cxr."


# --------------------------------------------------------------------------------------------------- the model
def output_names(hparams) -> list[str]:
    """Names of the model's outputs: the findings of a multi-label model, else one output, ``finding``."""
    hparams = dict(hparams or {})
    findings = list(hparams.get("findings") or [])
    if hparams.get("task", "binary") == "multilabel":
        if not findings:
            raise PredictError("a multi-label checkpoint without 'findings' in its hyper-parameters")
        return findings
    return findings if len(findings) == 1 else ["finding"]


def _finding_operating_point(test: dict, name: str):
    """A multi-label run's per-finding operating point, wherever the evaluation keeps it."""
    for key in ("findings", "per_finding", "per_finding_metrics"):
        entry = (test.get(key) or {}).get(name) if isinstance(test.get(key), dict) else None
        if isinstance(entry, dict) and isinstance(entry.get("operating_point"), dict):
            return entry["operating_point"]
    entry = test.get(name)
    return entry.get("operating_point") if isinstance(entry, dict) else None


def operating_points(ckpt_path: str | Path, names: list[str]) -> tuple[list[float], str]:
    """Thresholds per output from the run's ``metrics.json`` (chosen on validation), else 0.5 and why."""
    metrics_file = run_directory(ckpt_path) / "metrics.json"
    if not metrics_file.is_file():
        return [DEFAULT_THRESHOLD] * len(names), f"default 0.5 (no {metrics_file})"
    try:
        metrics = json.loads(metrics_file.read_text()) or {}
    except (OSError, ValueError) as error:
        return [DEFAULT_THRESHOLD] * len(names), f"default 0.5 ({metrics_file}: {error})"
    evaluated = metrics.get("checkpoint")
    if evaluated and (metrics_file.parent / evaluated).resolve() != Path(ckpt_path).resolve():
        return [DEFAULT_THRESHOLD] * len(names), (
            f"default 0.5 (the run's operating point was chosen for {evaluated}, not for {Path(ckpt_path).name})"
        )
    test = metrics.get("test") or {}
    points = [_finding_operating_point(test, n) for n in names]
    if len(names) == 1 and isinstance(test.get("operating_point"), dict):
        points = [test["operating_point"]]  # the binary task: metrics["test"]["operating_point"]
    found = [isinstance(p, dict) and p.get("threshold") is not None for p in points]
    if not any(found):
        return [DEFAULT_THRESHOLD] * len(names), f"default 0.5 (no operating point in {metrics_file})"
    thresholds = [float(p["threshold"]) if ok else DEFAULT_THRESHOLD for p, ok in zip(points, found)]
    chosen_on = sorted({str(p.get("chosen_on", "validation")) for p, ok in zip(points, found) if ok})
    source = f"run operating point ({', '.join(chosen_on)})"
    missing = [n for n, ok in zip(names, found) if not ok]
    if missing:
        source += f"; 0.5 for {', '.join(missing)} (none chosen)"
    return thresholds, source


@dataclass
class Predictor:
    """A model ready to apply: preprocessing, output names, thresholds, and a batch -> (N, K) probabilities."""

    preprocessing: Preprocessing
    names: list[str]
    thresholds: list[float]
    threshold_source: str
    backend: str
    model: torch.nn.Module | None = None  # the LightningModule (checkpoints only; Grad-CAM needs it)
    session: object = None  # ONNX Runtime session (exported .onnx files)
    dicom_window: str = "voi"  # how a DICOM's values become 0-255 (cxr.data.dicom, dicom.window)
    details: dict = field(default_factory=dict)
    temperatures: list[float] | None = None  # the run's temperature scaling (checkpoints; an export has it built in)
    calibration_source: str = "none"

    def probabilities(self, images: torch.Tensor) -> np.ndarray:
        if self.session is not None:
            array = np.ascontiguousarray(images.numpy(), dtype=np.float32)
            output = self.session.run(None, {self.session.get_inputs()[0].name: array})[0]
            return np.asarray(output, dtype=np.float32).reshape(len(array), len(self.names))
        from cxr import inference

        flat = inference.predict_probabilities(self.model, [images], self.backend, batch_size=len(images))
        probabilities = flat.reshape(len(images), len(self.names))
        if self.backend == "onnxruntime_int8":
            probabilities = self._fp32_near_thresholds(images, probabilities)
        if self.temperatures and any(t != 1.0 for t in self.temperatures):
            from cxr.evaluation.calibration import apply_temperature

            probabilities = np.stack(
                [apply_temperature(probabilities[:, k], t) for k, t in enumerate(self.temperatures)], axis=1
            ).astype(np.float32)
        return probabilities

    def _fp32_near_thresholds(self, images: torch.Tensor, probabilities: np.ndarray) -> np.ndarray:
        """int8 probabilities with the images near an operating point re-scored in fp32 (cxr.jobs.int8). The
        thresholds hold for temperature-scaled probabilities: mapped back through the (monotone) scaling."""
        from cxr import inference

        thresholds = np.asarray(self.thresholds, dtype=np.float64)
        if self.temperatures:
            t = np.clip(thresholds, 1e-7, 1 - 1e-7)
            thresholds = 1 / (1 + np.exp(-np.log(t / (1 - t)) * np.asarray(self.temperatures, dtype=np.float64)))
        near = inference.near_threshold(probabilities, thresholds)
        if near.any():
            exact = inference.predict_probabilities(self.model, [images[torch.from_numpy(near)]], "torch")
            probabilities = probabilities.copy()
            probabilities[near] = exact.reshape(int(near.sum()), len(self.names))
            self.details["fp32_rescored"] = self.details.get("fp32_rescored", 0) + int(near.sum())
        return probabilities


def rescored(predictor: Predictor) -> dict:
    if predictor.backend != "onnxruntime_int8":
        return {}
    return {"fp32_rescored": predictor.details.get("fp32_rescored", 0)}


def _preprocessing(settings: dict | None, source: str) -> Preprocessing:
    if not settings:
        raise PredictError(f"{source}: no preprocessing recorded (channels, image_size, ...); cannot prepare inputs")
    known = Preprocessing.__dataclass_fields__
    return Preprocessing(**{k: v for k, v in dict(settings).items() if k in known})


def load_predictor(path: str | Path, backend: str = "auto", threshold=None, device: str = "auto") -> Predictor:
    """A checkpoint (weights-only, via cxr.checkpoints) or an exported ``.onnx`` file with cxr metadata."""
    if "://" in str(path):
        raise PredictError(f"ckpt_path={path}: only local model files are loaded (download it and give its path)")
    path = Path(path)
    if not path.is_file():
        raise PredictError(f"ckpt_path: file not found: {path}")
    if path.suffix.lower() == ".onnx":
        predictor = _onnx_predictor(path)
    else:
        from cxr.models.checkpoints import load_classifier

        model, checkpoint = load_classifier(path)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        model.to(device).eval()
        names = output_names(model.hparams)
        thresholds, source = operating_points(path, names)
        from cxr.evaluation.calibration import read_temperatures

        temperatures, calibration_source = read_temperatures(path, run_directory(path), names)
        from cxr.jobs import int8

        preprocessing = _preprocessing(model.hparams.get("preprocessing"), str(path))
        choice = int8.choose(model, path, preprocessing, backend)
        log.info("inference backend %s", choice.reason)
        chosen = choice.backend
        details = {
            "program": model.hparams.get("program"),
            "task": model.hparams.get("task", "binary"),
            "epoch": checkpoint.get("epoch"),
            "inference": choice.summary(),
        }
        predictor = Predictor(
            preprocessing,
            names,
            thresholds,
            source,
            chosen,
            model=model,
            details=details,
            temperatures=temperatures,
            calibration_source=calibration_source,
        )
    if threshold is not None:
        from omegaconf import ListConfig

        values = (
            list(threshold) if isinstance(threshold, (list, tuple, ListConfig)) else [threshold] * len(predictor.names)
        )
        if len(values) != len(predictor.names):
            raise PredictError(
                f"threshold: {len(values)} values for {len(predictor.names)} outputs ({', '.join(predictor.names)})"
            )
        predictor.thresholds, predictor.threshold_source = [float(v) for v in values], "threshold= given"
    return predictor


def onnx_metadata(path: str | Path) -> dict:
    """The ``cxr.*`` metadata_props of an exported ONNX model, JSON-decoded."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {
        p.key[len(ONNX_METADATA_PREFIX) :]: json.loads(p.value)
        for p in model.metadata_props
        if p.key.startswith(ONNX_METADATA_PREFIX)
    }


def check_external_data(path: Path) -> None:
    """Refuse an ONNX model whose external data (tensors kept in other files) lies outside its own folder."""
    import onnx
    from onnx import external_data_helper

    model = onnx.load(str(path), load_external_data=False)
    folder = path.resolve().parent
    for tensor in external_data_helper._get_all_tensors(model):  # initializers and attributes, subgraphs too
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((entry.value for entry in tensor.external_data if entry.key == "location"), "")
        target = (folder / location).resolve()
        if not location or os.path.isabs(location) or not target.is_relative_to(folder):
            raise PredictError(
                f"{path}: tensor {tensor.name!r:.60} keeps its data in {location!r:.120}, outside "
                f"the model's folder {folder}; refused"
            )


def _onnx_predictor(path: Path) -> Predictor:
    try:
        import onnxruntime as ort
    except ImportError as error:
        raise PredictError(f"{path}: running an .onnx model needs onnxruntime (pip install -e '.[fast]')") from error
    try:
        metadata = onnx_metadata(path)
    except Exception as error:  # not an ONNX protobuf, or metadata that is not JSON
        raise PredictError(f"{path}: not a readable ONNX model ({type(error).__name__}: {error})") from error
    if "preprocessing" not in metadata or "output_names" not in metadata:
        raise PredictError(f"{path}: no cxr metadata (preprocessing, output_names): export it with export.py")
    check_external_data(path)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = torch.get_num_threads()
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime's own errors (a broken graph, missing external data)
        raise PredictError(
            f"{path}: ONNX Runtime cannot load it ({type(error).__name__}: "
            f"{(str(error).splitlines() or [''])[0][:200]})"
        ) from None
    names = list(metadata["output_names"])
    thresholds = metadata.get("thresholds") or [DEFAULT_THRESHOLD] * len(names)
    return Predictor(
        _preprocessing(metadata["preprocessing"], str(path)),
        names,
        [float(t) for t in thresholds],
        f"{metadata.get('threshold_source', 'export')} (from the ONNX metadata)",
        "onnxruntime (file)",
        session=session,
        details=metadata,
        calibration_source=f"{metadata.get('calibration', 'none')} (built into the ONNX graph)",
    )


# ---------------------------------------------------------------------------------------------------- the run
