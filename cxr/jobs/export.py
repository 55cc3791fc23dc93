"""Export a checkpoint for use without cxr: ``python export.py ckpt_path=<.ckpt> format=onnx|torchscript``.

The exported graph takes ``images`` (N x C x H x W float32, prepared as in training; N dynamic) and returns
``probabilities`` (N x K, sigmoid of the logits, in the order of ``output_names``). The preprocessing, output names,
operating-point thresholds (and where they came from), task and program are embedded: as ONNX ``metadata_props``
(``cxr.<key>``, JSON values; what ``predict.py ckpt_path=<.onnx>`` reads) or as the TorchScript extra file
``cxr.json``. At export time the file is run on real images and compared with the PyTorch model; the largest
probability difference is printed and stored in ``<export>.parity.json``; above ``parity_tolerance`` the export fails.
"""

from __future__ import annotations

import io
import json
import logging
import warnings
from pathlib import Path

import numpy as np
import torch

from cxr.data.inputs import collect_inputs, prepare_input
from cxr.errors import PredictError
from cxr.jobs.checkpoint_run import run_directory, run_images
from cxr.jobs.predictor import ONNX_METADATA_PREFIX, operating_points, output_names

log = logging.getLogger(__name__)
FORMATS = {"onnx": ".onnx", "torchscript": ".pt"}
TORCHSCRIPT_METADATA = "cxr.json"


class Probabilities(torch.nn.Module):
    """The classifier with a sigmoid, as ``(N, K)`` probabilities whatever the model's logit shape; with the run's
    temperature scaling, sigmoid(logit / T) per output."""

    def __init__(self, model: torch.nn.Module, n_outputs: int, temperatures: list[float] | None = None):
        super().__init__()
        self.model, self.n_outputs = model, n_outputs
        self.register_buffer("temperatures", torch.tensor(temperatures or [1.0] * n_outputs, dtype=torch.float32))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.model(images).float().reshape(images.shape[0], self.n_outputs)
        return torch.sigmoid(logits / self.temperatures)


def graph_module(model: torch.nn.Module, n_outputs: int, temperatures: list[float] | None = None) -> Probabilities:
    """What is exported: the model's network (``model.net``) with a sigmoid.

    The LightningModule's forward may hold Python-level shape logic (``len(images)``) that tracing and torch.export
    freeze to the example's batch size; the network alone keeps the batch dynamic. The parity check compares the
    export with the checkpoint's own forward, so a difference between the two is caught.
    """
    net = getattr(model, "net", None)
    return Probabilities(net if isinstance(net, torch.nn.Module) else model, n_outputs, temperatures).eval()


def parity_images(ckpt_path: str | Path, preprocessing, inputs=None, limit: int = 64) -> tuple[torch.Tensor, str]:
    """Real images for the parity check: ``inputs`` if given, else the run's own test images (splits.csv)."""
    if inputs:
        paths, _ = collect_inputs(inputs)
        described = f"{len(paths[:limit])} of the given parity_inputs"
    else:
        try:
            paths, described = run_images(ckpt_path, limit)
        except PredictError as error:
            raise PredictError(
                f"parity check: {error}; give parity_inputs=<folder|glob|list> of real images"
            ) from error
    tensors = []
    for path in paths[:limit]:
        try:
            tensors.append(prepare_input(path, preprocessing)[0])
        except (OSError, ValueError) as error:
            log.warning("parity check: %s skipped (%s)", path, error)
    if not tensors:
        raise PredictError("parity check: no readable image; give parity_inputs=<folder|glob|list> of real images")
    return torch.stack(tensors), described


def metadata(
    model, ckpt_path, thresholds: list[float], threshold_source: str, temperatures: list[float] | None = None
) -> dict:
    hparams = model.hparams
    scaled = bool(temperatures) and any(t != 1.0 for t in temperatures)
    return {
        "format_version": 1,
        "preprocessing": dict(hparams.get("preprocessing") or {}),
        "output_names": output_names(hparams),
        "thresholds": thresholds,
        "threshold_source": threshold_source,
        "task": hparams.get("task", "binary"),
        "program": hparams.get("program"),
        "checkpoint": Path(ckpt_path).name,
        "input": "images: N x C x H x W float32, prepared as preprocessing",
        "output": "probabilities: N x K (sigmoid"
        + (" of logit / temperature" if scaled else "")
        + "), columns in output_names order",
        "calibration": "temperature scaling fitted on val" if scaled else "none",
        "temperatures": list(temperatures) if scaled else None,
        "decision": "class 1 when probability > threshold",
        "intended_use": "research model, not a medical device",
    }


def export_onnx(wrapper: torch.nn.Module, example: torch.Tensor, path: Path, meta: dict) -> Path:
    """torch.onnx.export with the dynamo exporter (dynamic batch), metadata as ``cxr.*`` metadata_props."""
    import onnx

    for name in ("onnxscript", "onnx_ir"):  # the exporter's per-pass INFO lines
        logging.getLogger(name).setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            wrapper,
            (example,),
            dynamo=True,
            input_names=["images"],
            output_names=["probabilities"],
            dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),
        )
    proto = program.model_proto
    onnx.helper.set_model_props(proto, {ONNX_METADATA_PREFIX + k: json.dumps(v) for k, v in meta.items()})
    onnx.checker.check_model(proto)
    buffer = io.BytesIO()
    onnx.save(proto, buffer)
    path.write_bytes(buffer.getvalue())
    return path


def export_torchscript(wrapper: torch.nn.Module, example: torch.Tensor, path: Path, meta: dict) -> Path:
    model = wrapper.model
    scripting = getattr(model, "_jit_is_scripting", None)
    try:
        if scripting is not None:  # as LightningModule.to_torchscript: its `trainer` property must not raise
            model._jit_is_scripting = True
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(wrapper, example, check_trace=False)
    finally:
        if scripting is not None:
            model._jit_is_scripting = scripting
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated in favour of torch.export
        torch.jit.save(traced, str(path), _extra_files={TORCHSCRIPT_METADATA: json.dumps(meta)})
    return path


def run_export(path: Path, fmt: str, images: torch.Tensor) -> np.ndarray:
    """Probabilities of the exported file on ``images`` (ONNX Runtime, or torch.jit.load)."""
    if fmt == "onnx":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return session.run(None, {"images": images.numpy().astype(np.float32)})[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated in favour of torch.export
        loaded = torch.jit.load(str(path), map_location="cpu")
    with torch.inference_mode():
        return loaded(images).numpy()


def export(cfg) -> dict:
    """The job behind export.py; returns the parity report (also written beside the export)."""
    from cxr.artifacts import write_json
    from cxr.data.dataset import Preprocessing
    from cxr.models.checkpoints import load_classifier

    fmt = str(cfg.format)
    if fmt not in FORMATS:
        raise PredictError(f"format={fmt!r}: choose onnx or torchscript")
    model, _ = load_classifier(cfg.ckpt_path)
    model.eval()
    names = output_names(model.hparams)
    thresholds, source = operating_points(cfg.ckpt_path, names)
    from cxr.evaluation.calibration import read_temperatures

    temperatures, _ = read_temperatures(cfg.ckpt_path, run_directory(cfg.ckpt_path), names)
    meta = metadata(model, cfg.ckpt_path, thresholds, source, temperatures)
    preprocessing = Preprocessing(
        **{k: v for k, v in meta["preprocessing"].items() if k in Preprocessing.__dataclass_fields__}
    )
    images, described = parity_images(
        cfg.ckpt_path, preprocessing, cfg.get("parity_inputs"), int(cfg.get("parity_n", 64))
    )
    wrapper = graph_module(model, len(names), temperatures)
    output = Path(cfg.output) if cfg.get("output") else Path(cfg.paths.output_dir) / f"model{FORMATS[fmt]}"
    output.parent.mkdir(parents=True, exist_ok=True)
    (export_onnx if fmt == "onnx" else export_torchscript)(wrapper, images[:2], output, meta)

    with torch.inference_mode():
        reference = Probabilities(model, len(names), temperatures).eval()(images).numpy()
    try:
        exported = run_export(output, fmt, images)
    except Exception as error:  # e.g. a batch size frozen at export time
        raise PredictError(
            f"{output}: the export does not run on {len(images)} images at once "
            f"({type(error).__name__}: {str(error).splitlines()[0]})"
        ) from error
    delta = float(np.abs(exported - reference).max())
    tolerance = float(cfg.get("parity_tolerance", 1e-4))
    report = {
        "export": str(output.resolve()),
        "format": fmt,
        "checkpoint": str(Path(cfg.ckpt_path).resolve()),
        "output_names": names,
        "thresholds": thresholds,
        "threshold_source": source,
        "parity": {
            "images": described,
            "n": int(len(images)),
            "max_abs_delta_p": delta,
            "tolerance": tolerance,
            "passed": delta <= tolerance,
            "reference": "the PyTorch model, fp32 eager, on the same prepared images",
        },
        "decisions_changed": int(((exported > np.array(thresholds)) != (reference > np.array(thresholds))).sum()),
    }
    write_json(output.with_name(output.name + ".parity.json"), report)
    print(
        f"exported {fmt}: {output} ({output.stat().st_size / 1e6:.1f} MB); parity on {described}: "
        f"max |delta p| = {delta:.2e} (tolerance {tolerance:g}), decisions changed: {report['decisions_changed']}"
    )
    if not report["parity"]["passed"]:
        raise PredictError(f"{output}: the export differs from the checkpoint by {delta:.2e} > {tolerance:g}")
    return report
