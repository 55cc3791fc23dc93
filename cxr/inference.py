"""Inference backends for evaluation and prediction: the fastest one that gives the same probabilities.

``predict_probabilities(model, loader, backend)`` streams a DataLoader of ``(images, target, index)`` batches
through the model and returns the class-1 probabilities in loader order (shape (N,); (N, K) for a model with K
outputs, one per finding). Batches are regrouped to
``batch_size`` images (64 by default; the training batch of 10 wastes time per call) and run under
``torch.inference_mode``. Backends:

- ``eager``: the plain reference (the loader's batches as they come, default memory format, fp32).
- ``torch``: fp32, channels_last inputs on CPU (convolutions and pooling in NHWC are faster there).
- ``torch_bf16``: ``torch`` under bfloat16 autocast; probabilities move by about 1e-3, so never chosen by
  ``auto``. Fast only on CPUs with native bf16 (AVX512-BF16 or AMX) and on GPUs.
- ``onnxruntime``: the model exported to ONNX (fp32) and run by ONNX Runtime on the CPU (optional dependency:
  ``pip install -e ".[fast]"``). The export is checked against ``torch`` on the first batch; a mismatch or a
  failed export falls back to ``torch`` with a warning.
- ``auto``: ``onnxruntime`` for a model on the CPU when it is installed, else ``torch``; both keep the
  probabilities of ``eager`` to about 1e-6 (tests/test_inference.py).
"""
from __future__ import annotations

import io
import logging
import warnings
import weakref
from typing import Iterable, Iterator

import numpy as np
import torch

log = logging.getLogger(__name__)
BACKENDS = ("auto", "eager", "torch", "torch_bf16", "onnxruntime")
DEFAULT_BATCH_SIZE = 64
ONNX_CHECK_TOLERANCE = 1e-4  # largest probability difference accepted between the ONNX export and torch
_SESSIONS: "weakref.WeakKeyDictionary[torch.nn.Module, tuple]" = weakref.WeakKeyDictionary()


def cpu_supports_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX), where bf16 autocast can pay off."""
    cpu = getattr(torch, "cpu", None)
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    try:
        return any(bool(getattr(cpu, name)()) for name in checks if hasattr(cpu, name))
    except Exception:  # pragma: no cover - private helpers that may change
        return False


def resolve_precision(precision, accelerator: str | None = "cpu"):
    """Lightning's ``trainer.precision``, with ``auto``: ``bf16-mixed`` on a CPU with native bfloat16, else
    ``32-true`` (on a GPU: ``16-mixed``). Any other value is returned unchanged (the switch to force one)."""
    if precision != "auto":
        return precision
    if accelerator in (None, "cpu"):
        chosen = "bf16-mixed" if cpu_supports_bf16() else "32-true"
    else:
        chosen = "16-mixed"
    log.info("trainer.precision=auto: %s", chosen)
    return chosen


def onnxruntime_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def _device(model: torch.nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def available_backends(model: torch.nn.Module | None = None) -> list[str]:
    """Backends that can run ``model`` here (``auto`` excluded)."""
    on_cpu = model is None or _device(model).type == "cpu"
    return ["eager", "torch", "torch_bf16"] + (["onnxruntime"] if on_cpu and onnxruntime_available() else [])


def choose_backend(model: torch.nn.Module, backend: str = "auto") -> str:
    """Resolve ``auto`` (and an unavailable ``onnxruntime``) to a concrete backend for ``model``."""
    if backend not in BACKENDS:
        raise ValueError(f"inference backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    if backend == "auto":
        return "onnxruntime" if "onnxruntime" in available_backends(model) else "torch"
    if backend == "onnxruntime" and "onnxruntime" not in available_backends(model):
        why = "the model is not on the CPU" if _device(model).type != "cpu" else "onnxruntime is not installed"
        log.warning("inference backend onnxruntime: %s (pip install -e '.[fast]'); using torch", why)
        return "torch"
    if backend == "torch_bf16" and _device(model).type == "cpu" and not cpu_supports_bf16():
        log.warning("inference backend torch_bf16: this CPU has no native bfloat16; it may be slower than torch")
    return backend


def _regroup(batches: Iterable, batch_size: int) -> Iterator[torch.Tensor]:
    """Images of ``(images, ...)`` batches, concatenated into chunks of ``batch_size`` (the last one smaller)."""
    pending, count = [], 0
    for batch in batches:
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        pending.append(images)
        count += len(images)
        while count >= batch_size:
            joined = torch.cat(pending) if len(pending) > 1 else pending[0]
            yield joined[:batch_size]
            rest = joined[batch_size:]
            pending, count = ([rest], len(rest)) if len(rest) else ([], 0)
    if count:
        yield torch.cat(pending) if len(pending) > 1 else pending[0]


def _torch_runner(model: torch.nn.Module, bf16: bool, channels_last: bool):
    device = _device(model)

    def run(images: torch.Tensor) -> np.ndarray:
        images = images.to(device)
        if channels_last and images.dim() == 4:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(images)
        return torch.sigmoid(logits.float()).cpu().numpy()

    return run


def _fingerprint(model: torch.nn.Module) -> tuple:
    """Changes whenever a parameter or buffer is replaced or updated in place (optimizer step, load_state_dict)."""
    return tuple((t.data_ptr(), t._version, tuple(t.shape)) for t in (*model.parameters(), *model.buffers()))


def export_onnx(model: torch.nn.Module, example: torch.Tensor) -> bytes:
    """The model as an ONNX graph (fp32, dynamic batch size), by the TorchScript exporter or else torch.export."""
    with torch.inference_mode(False):  # tracing needs ordinary tensors
        example = example[:1].to("cpu", torch.float32).clone().contiguous()
        return _export_onnx(model, example)


def _export_onnx(model: torch.nn.Module, example: torch.Tensor) -> bytes:
    errors = []
    for dynamo in (False, True):
        buffer = io.BytesIO()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if dynamo:
                    torch.onnx.export(model, (example,), buffer, input_names=["images"], output_names=["logits"],
                                      dynamic_shapes=({0: torch.export.Dim("batch")},), dynamo=True)
                else:
                    torch.onnx.export(model, (example,), buffer, input_names=["images"], output_names=["logits"],
                                      dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
                                      opset_version=17, dynamo=False)
            return buffer.getvalue()
        except Exception as error:  # an exporter missing in this torch, or a model it cannot trace
            errors.append(f"{'dynamo' if dynamo else 'torchscript'}: {type(error).__name__}: {error}")
    raise RuntimeError("ONNX export failed (" + "; ".join(e.splitlines()[0] for e in errors) + ")")


def onnx_session(model: torch.nn.Module, example: torch.Tensor, threads: int | None = None):
    """An ONNX Runtime session for ``model`` (cached while its weights are unchanged)."""
    import onnxruntime as ort

    fingerprint = _fingerprint(model)
    cached = _SESSIONS.get(model)
    if cached is not None and cached[0] == fingerprint and cached[1] == tuple(example.shape[1:]):
        return cached[2]
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    # no spinning between operators, as OMP_WAIT_POLICY=PASSIVE for torch (cxr/__init__.py): on shared cores
    # spinning threads take the time slices the computing ones need
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(export_onnx(model, example), options, providers=["CPUExecutionProvider"])
    _SESSIONS[model] = (fingerprint, tuple(example.shape[1:]), session)
    return session


def _onnx_runner(model: torch.nn.Module, example: torch.Tensor):
    session = onnx_session(model, example)
    name = session.get_inputs()[0].name

    def run(images: torch.Tensor) -> np.ndarray:
        array = np.ascontiguousarray(images.detach().cpu().numpy(), dtype=np.float32)
        logits = session.run(None, {name: array})[0].reshape(len(array), -1)
        logits = logits[:, 0] if logits.shape[1] == 1 else logits  # as the torch runner: (N,) or (N, K)
        return (1.0 / (1.0 + np.exp(-logits.astype(np.float64)))).astype(np.float32)

    return run


def predict_probabilities(model: torch.nn.Module, loader: Iterable, backend: str = "auto",
                          batch_size: int | None = DEFAULT_BATCH_SIZE) -> np.ndarray:
    """Probability of class 1 for every image of ``loader``, in loader order (float32 array)."""
    backend = choose_backend(model, backend)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            if backend == "eager":
                chunks: Iterable = (b[0] if isinstance(b, (tuple, list)) else b for b in loader)
                run = _torch_runner(model, bf16=False, channels_last=False)
            else:
                chunks = _regroup(loader, batch_size or DEFAULT_BATCH_SIZE)
                run = _torch_runner(model, bf16=backend == "torch_bf16", channels_last=_device(model).type == "cpu")
            outputs = []
            for images in chunks:
                if backend == "onnxruntime" and not outputs:
                    run = _checked_onnx_runner(model, images, run)
                outputs.append(np.asarray(run(images), dtype=np.float32).reshape(len(images), -1))
    finally:
        model.train(was_training)
    if not outputs:
        return np.empty(0, dtype=np.float32)
    probabilities = np.concatenate(outputs)
    return probabilities[:, 0] if probabilities.shape[1] == 1 else probabilities  # (N,) binary, (N, K) multi-label


def _checked_onnx_runner(model: torch.nn.Module, images: torch.Tensor, torch_run):
    """The ONNX Runtime runner if it reproduces torch on ``images`` (first batch), else ``torch_run``.

    The check runs once per exported model: a cached session (same weights, same input shape) is trusted.
    """
    cached = _SESSIONS.get(model)
    if cached is not None and cached[0] == _fingerprint(model) and cached[1] == tuple(images.shape[1:]):
        return _onnx_runner(model, images)
    try:
        run = _onnx_runner(model, images)
        difference = float(np.abs(run(images) - torch_run(images)).max())
    except Exception as error:  # export or session failure: keep going with torch
        log.warning("inference backend onnxruntime unavailable for this model (%s); using torch", error)
        return torch_run
    if not difference <= ONNX_CHECK_TOLERANCE:
        log.warning("ONNX Runtime differs from torch by %.2g (> %g) on the first batch; using torch", difference,
                    ONNX_CHECK_TOLERANCE)
        _SESSIONS.pop(model, None)
        return torch_run
    return run
