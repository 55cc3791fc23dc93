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
- ``onnxruntime_int8``: the ONNX export with its convolutions quantized to int8 after training (static:
  per-channel int8 weights, uint8 activations whose ranges are measured on ``calibration`` images, by default the
  first batch predicted), run by ONNX Runtime's integer kernels (VNNI where the CPU has it); the dense layers stay
  fp32. 1.5-2.6x ``onnxruntime`` on this project's CPUs; probabilities move by about 1e-3 on trained networks
  (up to 5e-2 seen on others), and it is checked on the first batch (more than ``INT8_CHECK_TOLERANCE`` from
  torch: it falls back to ``torch`` with a warning).
- ``auto``: ``onnxruntime`` for a model on the CPU when it is installed, else ``torch``; both keep the
  probabilities of ``eager`` to about 1e-6 (tests/test_inference.py). This is what evaluation uses: reported
  metrics are those of the trained network. ``predict.py`` and the service go further by default
  (cxr.jobs.int8): int8 where ``int8_agreement`` on the run's validation images is within ``INT8_AGREEMENT``,
  with the images near an operating point re-scored in fp32 (``near_threshold``).
"""

from __future__ import annotations

import io
import logging
import warnings
import weakref
from collections.abc import Iterable, Iterator

import numpy as np
import torch

log = logging.getLogger(__name__)
BACKENDS = ("auto", "eager", "torch", "torch_bf16", "onnxruntime", "onnxruntime_int8")
DEFAULT_BATCH_SIZE = 64
ONNX_CHECK_TOLERANCE = 1e-4  # largest probability difference accepted between the ONNX export and torch
INT8_CHECK_TOLERANCE = 0.1  # ... between the int8 model and torch on the first batch (a broken quantization)
CALIBRATION_IMAGES = 128  # images whose activations set the int8 ranges
INT8_MIN_CONV_INPUTS = 64  # a convolution with fewer inputs per output (in channels x kernel area) stays fp32
# predict.py and the service use int8 by default only where it agrees with fp32: on the run's validation images
# the largest probability difference must be at most INT8_AGREEMENT (measured on real NIH images with program D
# trained on the NIH sample: 6.3e-4 after 3 epochs, 2.0e-3 after 6), and an image whose int8 probability lies within INT8_DECISION_MARGIN of an operating
# point (twice the accepted difference) is re-scored in fp32, so that int8 never turns a decision around
INT8_AGREEMENT = 0.0025
INT8_DECISION_MARGIN = 2 * INT8_AGREEMENT
_SESSIONS: weakref.WeakKeyDictionary[torch.nn.Module, tuple] = weakref.WeakKeyDictionary()
_INT8_SESSIONS: weakref.WeakKeyDictionary[torch.nn.Module, tuple] = weakref.WeakKeyDictionary()


def cpu_supports_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX), where bf16 autocast can pay off."""
    cpu = getattr(torch, "cpu", None)
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    try:
        return any(bool(getattr(cpu, name)()) for name in checks if hasattr(cpu, name))
    except Exception:  # pragma: no cover - private helpers that may change
        return False


def gpu_supports_bf16() -> bool:
    """Whether the CUDA GPU computes bfloat16 natively (compute capability 8.0+: A100, H100, RTX 30xx/40xx)."""
    try:
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:  # older torch without including_emulation
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())


def resolve_precision(precision, accelerator: str | None = "cpu"):
    """Lightning's ``trainer.precision``, with ``auto``: ``bf16-mixed`` on a CPU with native bfloat16, else
    ``32-true``; on a GPU ``bf16-mixed`` where it computes bfloat16 natively, else ``16-mixed`` (fp16 autocast with
    Lightning's gradient scaler). ``accelerator=auto`` means the GPU when one is visible. Any other value is
    returned unchanged (the switch to force one)."""
    if precision != "auto":
        return precision
    if accelerator == "auto":
        accelerator = "gpu" if torch.cuda.is_available() else "cpu"
    if accelerator in (None, "cpu"):
        chosen = "bf16-mixed" if cpu_supports_bf16() else "32-true"
    else:
        chosen = "bf16-mixed" if gpu_supports_bf16() else "16-mixed"
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
    onnx = ["onnxruntime", "onnxruntime_int8"] if on_cpu and onnxruntime_available() else []
    return ["eager", "torch", "torch_bf16"] + onnx


def choose_backend(model: torch.nn.Module, backend: str = "auto") -> str:
    """Resolve ``auto`` (and an unavailable ``onnxruntime``) to a concrete backend for ``model``."""
    if backend not in BACKENDS:
        raise ValueError(f"inference backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    if backend == "auto":
        return "onnxruntime" if "onnxruntime" in available_backends(model) else "torch"
    if backend.startswith("onnxruntime") and backend not in available_backends(model):
        why = "the model is not on the CPU" if _device(model).type != "cpu" else "onnxruntime is not installed"
        log.warning("inference backend %s: %s (pip install -e '.[fast]'); using torch", backend, why)
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

    run.backend = "torch_bf16" if bf16 else "torch"
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
                    torch.onnx.export(
                        model,
                        (example,),
                        buffer,
                        input_names=["images"],
                        output_names=["logits"],
                        dynamic_shapes=({0: torch.export.Dim("batch")},),
                        dynamo=True,
                    )
                else:
                    torch.onnx.export(
                        model,
                        (example,),
                        buffer,
                        input_names=["images"],
                        output_names=["logits"],
                        dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
                        opset_version=17,
                        dynamo=False,
                    )
            return buffer.getvalue()
        except Exception as error:  # an exporter missing in this torch, or a model it cannot trace
            errors.append(f"{'dynamo' if dynamo else 'torchscript'}: {type(error).__name__}: {error}")
    raise RuntimeError("ONNX export failed (" + "; ".join(e.splitlines()[0] for e in errors) + ")")


def onnx_session(model: torch.nn.Module, example: torch.Tensor, threads: int | None = None):
    """An ONNX Runtime session for ``model`` (cached while its weights are unchanged)."""
    return _cached(_SESSIONS, model, example, lambda: _session(export_onnx(model, example), threads))


def _valid(sessions: weakref.WeakKeyDictionary, model: torch.nn.Module, example: torch.Tensor):
    """``sessions[model]`` if the model's weights and the input shape are those it was made for, else None."""
    cached = sessions.get(model)
    if cached is not None and cached[:2] == (_fingerprint(model), tuple(example.shape[1:])):
        return cached[2]
    return None


def _cached(sessions: weakref.WeakKeyDictionary, model: torch.nn.Module, example: torch.Tensor, make):
    """The valid session of ``sessions`` for ``model``, else a new ``make()`` (kept there)."""
    session = _valid(sessions, model, example)
    if session is None:
        key = (_fingerprint(model), tuple(example.shape[1:]))  # the weights the session is made from
        session = make()
        sessions[model] = (*key, session)
    return session


def _session(graph: bytes, threads: int | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    # no spinning between operators (torch's threads spin briefly, cxr/__init__.py): on shared cores
    # spinning threads take the time slices the computing ones need
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])


def quantize_int8(graph: bytes, calibration: np.ndarray) -> bytes:
    """``graph`` (fp32 ONNX) with its convolutions quantized to int8 by ONNX Runtime's post-training static
    quantization, the activation ranges (min/max) measured on ``calibration`` (N, C, H, W float32 images).

    Measured on program D's network on 835 real NIH images (2-core EPYC with AVX512-VNNI, batch 64): QOperator
    format (QLinearConv) ran 2.6x fp32 ONNX Runtime, QDQ 1.6x. Only the convolutions are quantized: with the dense
    layers in int8 the logits took about 200 distinct values (ties that cost AUROC), and quantizing the pooling and
    the ReLU after it (this network pools first) gave wrong probabilities (max |p - p_fp32| 0.7; ONNX Runtime 1.32).
    Convolutions only: max |p - p_fp32| 0.05, AUROC 0.7696 vs 0.7716. A convolution with fewer than
    ``INT8_MIN_CONV_INPUTS`` inputs per output (the first one, on the image's 1-3 channels: 9-27) stays fp32: its
    integer GEMM is too short to pay for itself. Measured on the thesis net (batch 64, 2 cores of an AMX Xeon):
    int8 with it 807 img/s, without it 912 (fp32 478); it took a third of the int8 time for 7% of the work."""
    import tempfile
    from pathlib import Path

    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self, name: str):
            self.batches = iter([{name: calibration[i : i + 32]} for i in range(0, len(calibration), 32)])

        def get_next(self):
            return next(self.batches, None)

    model = onnx.load_from_string(graph)
    name = model.graph.input[0].name
    weights = {tensor.name: tuple(tensor.dims) for tensor in model.graph.initializer}
    short = [  # convolutions whose weight (out, in, kh, kw) gives fewer than INT8_MIN_CONV_INPUTS inputs per output
        node.name
        for node in model.graph.node
        if node.op_type == "Conv"
        and len(weights.get(node.input[1], ())) == 4
        and int(np.prod(weights[node.input[1]][1:])) < INT8_MIN_CONV_INPUTS
    ]
    with tempfile.TemporaryDirectory() as folder:
        source, target = Path(folder) / "fp32.onnx", Path(folder) / "int8.onnx"
        source.write_bytes(graph)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantize_static(
                source,
                target,
                Reader(name),
                quant_format=QuantFormat.QOperator,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                op_types_to_quantize=["Conv"],
                nodes_to_exclude=short,
            )
        return target.read_bytes()


def int8_session(model: torch.nn.Module, example: torch.Tensor, calibration: np.ndarray):
    """An int8 ONNX Runtime session for ``model`` (cached while its weights are unchanged: the first calibration
    sticks)."""
    return _cached(
        _INT8_SESSIONS, model, example, lambda: _session(quantize_int8(export_onnx(model, example), calibration))
    )


def int8_agreement(model: torch.nn.Module, calibration: torch.Tensor) -> float:
    """Calibrate ``model``'s int8 session on ``calibration`` (N, C, H, W images; it stays cached for
    ``predict_probabilities``) and return the largest probability difference from fp32 torch on those images."""
    model.eval()
    images = calibration[:CALIBRATION_IMAGES].detach().to("cpu", torch.float32)
    array = np.ascontiguousarray(images.numpy(), dtype=np.float32)
    with torch.inference_mode():
        session = int8_session(model, images, array)
        int8 = _onnx_runner(model, images, session, "onnxruntime_int8")
        fp32 = _torch_runner(model, bf16=False, channels_last=True)
        chunks = [images[i : i + DEFAULT_BATCH_SIZE] for i in range(0, len(images), DEFAULT_BATCH_SIZE)]
        return max(float(np.abs(int8(chunk) - fp32(chunk)).max()) for chunk in chunks)


def near_threshold(probabilities: np.ndarray, thresholds) -> np.ndarray:
    """Rows of ``probabilities`` ((N,) or (N, K)) with a value within ``INT8_DECISION_MARGIN`` of its output's
    threshold: the images int8 might decide otherwise than fp32."""
    values = np.asarray(probabilities, dtype=np.float64).reshape(len(probabilities), -1)
    close = np.abs(values - np.asarray(thresholds, dtype=np.float64).reshape(1, -1)) <= INT8_DECISION_MARGIN
    return close.any(axis=1)


def _onnx_runner(model: torch.nn.Module, example: torch.Tensor, session=None, backend: str = "onnxruntime"):
    session = session or onnx_session(model, example)
    name = session.get_inputs()[0].name

    def run(images: torch.Tensor) -> np.ndarray:
        array = np.ascontiguousarray(images.detach().cpu().numpy(), dtype=np.float32)
        logits = session.run(None, {name: array})[0].reshape(len(array), -1)
        logits = logits[:, 0] if logits.shape[1] == 1 else logits  # as the torch runner: (N,) or (N, K)
        return (1.0 / (1.0 + np.exp(-logits.astype(np.float64)))).astype(np.float32)

    run.backend = backend
    return run


def predict_probabilities(
    model: torch.nn.Module,
    loader: Iterable,
    backend: str = "auto",
    batch_size: int | None = DEFAULT_BATCH_SIZE,
    calibration: Iterable | None = None,
) -> np.ndarray:
    """Probability of class 1 for every image of ``loader``, in loader order (float32 array). ``calibration``
    (batches like ``loader``'s; ``onnxruntime_int8`` only): the images whose activations set the int8 ranges, the
    first ``CALIBRATION_IMAGES`` of them; by default the first batch of ``loader``."""
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
                if backend == "onnxruntime_int8" and not outputs:
                    run = _checked_int8_runner(model, images, run, calibration)
                outputs.append(np.asarray(run(images), dtype=np.float32).reshape(len(images), -1))
    finally:
        model.train(was_training)
    if not outputs:
        return np.empty(0, dtype=np.float32)
    # the backend that scored the images (a failed ONNX check falls back to torch): tests assert it
    ran = "eager" if backend == "eager" else run.backend
    log.info("inference: %d images scored by %s (asked: %s)", sum(map(len, outputs)), ran, backend)
    probabilities = np.concatenate(outputs)
    return probabilities[:, 0] if probabilities.shape[1] == 1 else probabilities  # (N,) binary, (N, K) multi-label


def _checked_onnx_runner(model: torch.nn.Module, images: torch.Tensor, torch_run):
    """The ONNX Runtime runner if it reproduces torch on ``images`` (first batch), else ``torch_run``."""
    return _checked(
        model,
        images,
        torch_run,
        "onnxruntime",
        "ONNX Runtime",
        _SESSIONS,
        ONNX_CHECK_TOLERANCE,
        lambda: onnx_session(model, images),
    )


def _checked_int8_runner(model: torch.nn.Module, images: torch.Tensor, torch_run, calibration: Iterable | None):
    """The int8 runner, calibrated on ``calibration`` (else ``images``), if it stays within
    ``INT8_CHECK_TOLERANCE`` of torch on ``images``; else ``torch_run``."""

    def make():
        chosen = images if calibration is None else next(_regroup(calibration, CALIBRATION_IMAGES), images)
        log.info("onnxruntime_int8: calibrating the int8 ranges on %d images", len(chosen))
        array = np.ascontiguousarray(chosen[:CALIBRATION_IMAGES].detach().cpu().numpy(), dtype=np.float32)
        return int8_session(model, images, array)

    return _checked(
        model, images, torch_run, "onnxruntime_int8", "int8 ONNX Runtime", _INT8_SESSIONS, INT8_CHECK_TOLERANCE, make
    )


def _checked(
    model: torch.nn.Module,
    images: torch.Tensor,
    torch_run,
    backend: str,
    label: str,
    sessions: weakref.WeakKeyDictionary,
    tolerance: float,
    make_session,
):
    """The runner of the session ``make_session()`` makes (and caches in ``sessions``) if its probabilities stay
    within ``tolerance`` of torch's on ``images`` (the first batch), else ``torch_run`` with a warning. The check
    runs once per session: a cached one (same weights, same input shape) is trusted."""
    session = _valid(sessions, model, images)
    if session is not None:
        return _onnx_runner(model, images, session, backend)
    try:
        run = _onnx_runner(model, images, make_session(), backend)
        difference = float(np.abs(run(images) - torch_run(images)).max())
    except Exception as error:  # export, quantization or session failure: keep going with torch
        log.warning("inference backend %s unavailable for this model (%s); using torch", backend, error)
        return torch_run
    if not difference <= tolerance:
        log.warning(
            "%s differs from torch by %.2g (> %g) on the first batch; using torch", label, difference, tolerance
        )
        sessions.pop(model, None)
        return torch_run
    log.info("%s: largest probability difference from torch on the first batch %.2g", backend, difference)
    return run
