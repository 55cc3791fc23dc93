"""Apply a trained model to new X-rays:
``python predict.py ckpt_path=<.ckpt | .onnx> inputs=<file|folder|glob|@list.txt>``.

Inputs (PNG, JPEG, DICOM; DICOM recognised by content) are prepared exactly as the model was trained (the
checkpoint's or the ONNX file's ``preprocessing``), predicted in batches, and written to ``predictions.csv`` (and
``predictions.json``) in the run directory: path, format, probability and decision per output at the run's
operating point, that threshold and where it came from, warnings and errors. An unreadable input gets a row with
its error and the run goes on; the exit status is 1 when any input failed. Nothing is written beside the inputs.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cxr.data.dataset import Preprocessing
from cxr.data.dicom import check_window
from cxr.data.inputs import InputImages, collect_inputs
from cxr.errors import PredictError

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


def run_directory(ckpt_path: str | Path) -> Path:
    """The training run a checkpoint belongs to (checkpoints live in ``<run>/checkpoints/``)."""
    path = Path(ckpt_path).resolve()
    return path.parent.parent if path.parent.name == "checkpoints" else path.parent


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


def _rescored(predictor: Predictor) -> dict:
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


def shown_path(path: Path) -> tuple[str, str]:
    """The path as predictions.csv (UTF-8) can hold it, and a warning when a file name is not UTF-8: its
    undecodable bytes are written as \\x escapes."""
    text = str(path)
    try:
        text.encode("utf-8")
        return text, ""
    except UnicodeEncodeError:
        return os.fsencode(path).decode("utf-8", "backslashreplace"), "file name is not UTF-8 (shown with \\x escapes)"


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
def predict_rows(
    predictor: Predictor, paths: list[Path], batch_size: int = 64, num_workers: int = 0, progress: bool | None = None
) -> pd.DataFrame:
    """One row per input: path, format, probability/decision/threshold per output, threshold source, warning, error."""
    from tqdm.auto import tqdm

    loader = torch.utils.data.DataLoader(
        InputImages(paths, predictor.preprocessing, predictor.dicom_window),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=list,
    )
    rows: list[dict] = []
    with tqdm(
        total=len(paths),
        desc="predict",
        unit="img",
        file=sys.stderr,
        disable=None if progress is None else not progress,
    ) as bar:  # None: a bar only on a terminal
        for items in loader:
            good = [item for item in items if item["image"] is not None]
            probabilities = predictor.probabilities(torch.stack([item["image"] for item in good])) if good else []
            by_index = {item["index"]: p for item, p in zip(good, probabilities)}
            for item in items:
                shown, note = shown_path(paths[item["index"]])
                row = {"path": shown, "format": item["format"]}
                p = by_index.get(item["index"])
                for k, name in enumerate(predictor.names):
                    row[f"probability_{name}"] = float(p[k]) if p is not None else None
                    # class 1 strictly above the operating point
                    row[f"decision_{name}"] = int(p[k] > predictor.thresholds[k]) if p is not None else None
                    row[f"threshold_{name}"] = predictor.thresholds[k]
                row.update(
                    threshold_source=predictor.threshold_source,
                    warning="; ".join(w for w in (item["warning"], note) if w),
                    error=item["error"],
                )
                rows.append(row)
            bar.update(len(items))
    frame = pd.DataFrame(rows)
    for name in predictor.names:
        frame[f"decision_{name}"] = frame[f"decision_{name}"].astype("Int64")
    return frame


def summary_lines(frame: pd.DataFrame, predictor: Predictor, skipped: int, output: Path) -> list[str]:
    failed = frame[frame["error"] != ""]
    lines = [
        f"{len(frame)} input(s): {len(frame) - len(failed)} predicted, {len(failed)} failed, "
        f"{int((frame['warning'] != '').sum())} with warnings"
        + (f"; {skipped} other file(s) in the folders skipped (not PNG, JPEG or DICOM)" if skipped else "")
    ]
    lines.append(f"thresholds: {predictor.threshold_source}")
    if predictor.temperatures and any(t != 1.0 for t in predictor.temperatures):
        lines.append(
            f"calibration: {predictor.calibration_source}, T = {', '.join(f'{t:.3g}' for t in predictor.temperatures)}"
        )
    for k, name in enumerate(predictor.names):
        decided = frame[f"decision_{name}"].dropna()
        lines.append(f"  {name}: {int(decided.sum())} of {len(decided)} above {predictor.thresholds[k]:.4g}")
    lines.append(f"backend: {predictor.details.get('inference', {}).get('reason', predictor.backend)}")
    if predictor.backend == "onnxruntime_int8":
        lines.append(f"  re-scored in fp32 (near an operating point): {_rescored(predictor)['fp32_rescored']}")
    for _, row in failed.head(5).iterrows():
        lines.append(f"FAILED {row['path']}: {row['error']}")
    if len(failed) > 5:
        lines.append(f"... and {len(failed) - 5} more failures (column 'error' of {output})")
    lines.append(f"predictions: {output}")
    return lines


def predict(cfg) -> int:
    """The job behind predict.py: returns the exit status (0 all predicted, 1 some inputs failed)."""
    from cxr.artifacts import write_csv, write_json

    output_dir = Path(cfg.paths.output_dir)
    try:
        dicom_window = check_window(str((cfg.get("dicom") or {}).get("window", "voi")))
    except ValueError as error:
        raise PredictError(str(error)) from None
    paths, skipped = collect_inputs(cfg.inputs)  # a wrong inputs= fails before the model is loaded
    predictor = load_predictor(
        cfg.ckpt_path, cfg.get("backend", "auto"), cfg.get("threshold"), cfg.get("device", "auto")
    )
    predictor.dicom_window = dicom_window
    if cfg.get("cam") and predictor.model is None:
        raise PredictError("cam=true needs a checkpoint: Grad-CAM differentiates the PyTorch model, not an .onnx file")
    log.info(
        "%d input(s); model outputs %s; preprocessing %s; backend %s; DICOM window %s",
        len(paths),
        predictor.names,
        predictor.preprocessing,
        predictor.backend,
        predictor.dicom_window,
    )
    started = time.perf_counter()
    frame = predict_rows(
        predictor, paths, int(cfg.get("batch_size", 64)), int(cfg.get("num_workers", 0)), progress=cfg.get("progress")
    )
    seconds = time.perf_counter() - started
    output = write_csv(output_dir / "predictions.csv", frame)
    if cfg.get("json"):
        records = json.loads(frame.to_json(orient="records"))
        write_json(
            output_dir / "predictions.json",
            {
                "model": str(Path(cfg.ckpt_path).resolve()),
                "outputs": predictor.names,
                "thresholds": dict(zip(predictor.names, predictor.thresholds)),
                "threshold_source": predictor.threshold_source,
                "calibration": predictor.calibration_source,
                "temperatures": predictor.temperatures,
                "preprocessing": predictor.preprocessing.__dict__,
                "dicom_window": predictor.dicom_window,
                "inference": {
                    **predictor.details.get("inference", {"backend": predictor.backend}),
                    **_rescored(predictor),
                },
                "predictions": records,
            },
        )
    if cfg.get("cam"):
        from cxr.evaluation.cam_context import model_quality
        from cxr.evaluation.gradcam import write_cam_report
        from cxr.evaluation.localisation import read_boxes

        cam_started = time.perf_counter()
        quality, _ = model_quality(cfg.ckpt_path, run_directory(cfg.ckpt_path), predictor.names)
        page = write_cam_report(
            predictor,
            frame,
            output_dir,
            size=int(cfg.get("cam_size", 320)),
            boxes=read_boxes(cfg.get("cam_boxes", "nih2017")),
            quality=quality,
        )
        log.info(
            "Grad-CAM: %d input(s) in %.1f s; page %s",
            int((frame["error"] == "").sum()),
            time.perf_counter() - cam_started,
            page,
        )
    for line in summary_lines(frame, predictor, skipped, output):
        print(line)
    print(f"read and predicted in {seconds:.1f} s ({len(frame) / max(seconds, 1e-9):.0f} inputs/s)")
    return 1 if (frame["error"] != "").any() else 0
