"""int8 inference by default, where it agrees with fp32: ``predict.py`` and the service (``backend=auto``).

The int8 model's activation ranges are calibrated on the checkpoint's own validation images (the first
``CALIBRATION_IMAGES`` of its run's ``splits.csv``, found under the run's ``data.root`` and read as predict.py
reads its inputs), never on the images being predicted: an image's answer must not depend on which other images
came with it. int8 is chosen when its largest probability difference from fp32 on those images is at most
``INT8_AGREEMENT``; the predictor then re-scores in fp32 every image within ``INT8_DECISION_MARGIN`` of an
operating point. Without the run's data (a checkpoint copied elsewhere, a moved data folder) the model runs in
fp32 ONNX Runtime and the log says why.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from cxr import inference

log = logging.getLogger(__name__)


@dataclass
class Int8Choice:
    backend: str  # onnxruntime_int8 or the fp32 backend kept
    reason: str  # one line for the log and the answers
    agreement: float | None = None  # max |p_int8 - p_fp32| on the calibration images
    calibration_images: int = 0

    def summary(self) -> dict:
        return {
            "backend": self.backend,
            "reason": self.reason,
            "int8_max_abs_difference_vs_fp32": self.agreement,
            "int8_calibration_images": self.calibration_images,
            "int8_agreement_limit": inference.INT8_AGREEMENT,
            "fp32_rescored_within": inference.INT8_DECISION_MARGIN if self.backend == "onnxruntime_int8" else None,
        }


def validation_images(ckpt_path: str | Path, preprocessing, count: int = inference.CALIBRATION_IMAGES):
    """The first ``count`` validation images of the checkpoint's run, read and prepared as predict.py reads its
    inputs ((N, C, H, W) tensor), or None and why not."""
    from cxr.data.inputs import prepare_input
    from cxr.jobs.checkpoint_run import run_images

    try:
        paths, _ = run_images(ckpt_path, count, "val")
    except Exception as error:  # no run directory, its data moved or missing: fp32 instead
        # the full message (paths) in the log only: the reason reaches the service's answers
        log.info("int8 calibration: %s", (str(error).splitlines() or [""])[0][:300])
        return None, f"the run's validation images are not readable here ({type(error).__name__}; see the log)"
    images = []
    for path in paths:
        try:
            images.append(prepare_input(path, preprocessing)[0])
        except (OSError, ValueError) as error:
            log.warning("int8 calibration: %s skipped (%s)", path, error)
    if not images:
        return None, "the run's validation images are not found here"
    return torch.stack(images), f"{len(images)} validation images of the run"  # no server path in answers


def choose(model: torch.nn.Module, ckpt_path: str | Path, preprocessing, backend: str) -> Int8Choice:
    """The backend ``predict.py`` and the service run ``model`` with: ``auto`` is int8 where it agrees with fp32
    on the run's validation images (else fp32 ONNX Runtime, or torch); ``onnxruntime_int8`` asked for explicitly
    is calibrated on them too when they are readable (else on the first batch predicted, as before)."""
    # the fp32 backend kept when int8 is not used (for an explicit onnxruntime_int8 too: never int8 again)
    fp32 = inference.choose_backend(model, "auto" if backend in ("auto", "onnxruntime_int8") else backend)
    if backend not in ("auto", "onnxruntime_int8") or "onnxruntime_int8" not in inference.available_backends(model):
        return Int8Choice(fp32, f"{fp32} (asked: {backend})")
    images, source = validation_images(ckpt_path, preprocessing)
    if images is None:
        if backend == "onnxruntime_int8":
            return Int8Choice(backend, f"int8 calibrated on the first batch predicted ({source})")
        return Int8Choice(fp32, f"{fp32}: int8 not used, {source}")
    try:
        agreement = inference.int8_agreement(model, images)
    except Exception as error:  # export or quantization failure
        return Int8Choice(fp32, f"{fp32}: int8 unavailable for this model ({type(error).__name__}: {error})")
    if backend == "auto" and not agreement <= inference.INT8_AGREEMENT:
        return Int8Choice(
            fp32,
            f"{fp32}: int8 differs from fp32 by {agreement:.2g} (> {inference.INT8_AGREEMENT}) on {source}",
            agreement,
            len(images),
        )
    return Int8Choice(
        "onnxruntime_int8",
        f"onnxruntime_int8: calibrated on {source}; largest difference from fp32 there {agreement:.1e}; "
        f"images within {inference.INT8_DECISION_MARGIN} of an operating point re-scored in fp32",
        agreement,
        len(images),
    )
