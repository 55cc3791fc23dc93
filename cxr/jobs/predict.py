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
from pathlib import Path

import pandas as pd
import torch

from cxr.data.dicom import check_window
from cxr.data.inputs import InputImages, collect_inputs
from cxr.errors import PredictError
from cxr.jobs.checkpoint_run import run_directory
from cxr.jobs.predictor import Predictor, load_predictor, rescored

log = logging.getLogger(__name__)


def shown_path(path: Path) -> tuple[str, str]:
    """The path as predictions.csv (UTF-8) can hold it, and a warning when a file name is not UTF-8: its
    undecodable bytes are written as \\x escapes."""
    text = str(path)
    try:
        text.encode("utf-8")
        return text, ""
    except UnicodeEncodeError:
        return os.fsencode(path).decode("utf-8", "backslashreplace"), "file name is not UTF-8 (shown with \\x escapes)"


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
        lines.append(f"  re-scored in fp32 (near an operating point): {rescored(predictor)['fp32_rescored']}")
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
                    **rescored(predictor),
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
