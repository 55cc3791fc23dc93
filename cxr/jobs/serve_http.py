"""The HTTP side of the service (``python -m cxr.serve``): reading an upload (raw or multipart, in memory, within the
size limit, decoded as ``predict.py`` decodes a file), the Prometheus metrics and their middleware.

Runs in the service's HTTP process (forked from the main one after :func:`use_service`); never writes an upload to
disk and reads no DICOM patient field into an answer or a log."""

# no `from __future__ import annotations`: FastAPI resolves read_upload's annotation at run time
import io
import time
from dataclasses import dataclass, field

import numpy as np

try:  # the optional dependencies of ``.[serve]``; FastAPI resolves read_upload's annotation by this name
    from fastapi import Request
except ImportError:  # pragma: no cover - serve() says what to install
    Request = object

ROUTES = ("/", "/predict", "/cam", "/health", "/ready", "/metrics")
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)

# Set in the main process before the HTTP server process is forked from it (read by read_upload there).
_SERVICE: "Service | None" = None


@dataclass
class Service:
    """What the HTTP process needs to read uploads, and what every answer says about the model."""

    preprocessing: object  # cxr.data.dataset.Preprocessing
    model: dict  # name, version, sha256, file, backend, outputs, thresholds, ...
    max_upload_bytes: int
    cam_size: int
    decode_threads: int
    limiter: object = None  # anyio.CapacityLimiter, made in the HTTP process


@dataclass
class Upload:
    """A decoded upload as it travels to the model worker: prepared pixels, never the file nor its header."""

    pixels: np.ndarray  # H x W x C uint8, prepared as in training
    format: str
    warnings: list = field(default_factory=list)
    photometric: str | None = None
    display: np.ndarray | None = None  # cam_size x cam_size grey, for the Grad-CAM overlay
    output: str | None = None  # /cam?output=<name>: that overlay as image/png


class UploadError(Exception):
    """A bad upload: an HTTP status and one sentence for the client."""

    def __init__(self, status: int, sentence: str):
        super().__init__(sentence)
        self.status, self.sentence = status, sentence


def use_service(service: Service) -> None:
    """The service every upload is read for (set before the HTTP process is forked)."""
    global _SERVICE
    _SERVICE = service


# ----------------------------------------------------------------------------------------- reading uploads
def sentence(message: str) -> str:
    """A reader's error (``upload: ...``, ``cannot read image upload: ...``) as one sentence about the upload."""
    text = (message.splitlines() or [""])[0].removeprefix("upload: ")
    text = text.replace("cannot read image upload", "cannot read the image")
    text = "".join(c if c.isprintable() else "?" for c in text).strip()
    text = text[:1].upper() + text[1:]
    return text if text.endswith(".") else text + "."


def file_part(body: bytes, content_type: str) -> bytes:
    """The first file of a ``multipart/form-data`` body (else its first part), parsed in memory."""
    from python_multipart.multipart import MultipartParser, parse_options_header

    _, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if not boundary:
        raise UploadError(400, "The multipart body has no boundary: send the file as multipart/form-data or raw.")
    parts: list[dict] = []
    header = {"name": b"", "value": b""}

    def on_part_begin():
        parts.append({"headers": {}, "data": bytearray()})

    def on_header_field(data, start, end):
        header["name"] += data[start:end]

    def on_header_value(data, start, end):
        header["value"] += data[start:end]

    def on_header_end():
        parts[-1]["headers"][header["name"].lower()] = header["value"]
        header.update(name=b"", value=b"")

    def on_part_data(data, start, end):
        parts[-1]["data"] += data[start:end]

    parser = MultipartParser(
        boundary,
        callbacks={
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_part_data": on_part_data,
        },
    )
    try:
        parser.write(body)
        parser.finalize()
    except Exception as error:  # python_multipart.exceptions.MultipartParseError and friends
        raise UploadError(400, f"The multipart body cannot be parsed ({type(error).__name__}).") from None
    if not parts:
        raise UploadError(400, "The multipart body holds no file: send it as the form field 'file'.")
    files = [p for p in parts if b"filename=" in p["headers"].get(b"content-disposition", b"")]
    return bytes((files or parts)[0]["data"])


def decode_upload(data: bytes, service: Service, display: bool) -> Upload:
    """Decode and prepare an upload exactly as predict.py prepares a file (cxr.data.inputs.read_grey)."""
    from cxr.data.dicom import DicomReadError
    from cxr.data.images import ImageReadError, prepare_image
    from cxr.data.inputs import read_grey, sniff_format

    if not data:
        raise UploadError(400, "The upload is empty: send a PNG, JPEG or DICOM file.")
    if sniff_format(data) is None:
        raise UploadError(415, "The upload is not a PNG, JPEG or DICOM image.")
    p = service.preprocessing
    try:
        image, kind, warnings = read_grey(data)
    except (ImageReadError, DicomReadError) as error:
        text = str(error)
        status = 413 if "more than the limit" in text else 422
        raise UploadError(status, sentence(text)) from None
    except Exception as error:  # a malformed file can make a decoder fail in any way
        raise UploadError(422, f"The image cannot be decoded ({type(error).__name__}).") from None
    pixels = prepare_image(image, channels=p.channels, size=p.image_size, resample=p.resample)
    grey = None
    if display:
        grey = prepare_image(image, channels=1, size=service.cam_size, resample=p.resample)[:, :, 0]
    photometric = _photometric(data) if kind == "dicom" else None
    if kind != "dicom":
        warnings = [*warnings, f"{kind.upper()} without a DICOM header: view position and modality not checked"]
    return Upload(pixels, kind, list(warnings), photometric, grey)


def _photometric(data: bytes) -> str | None:
    """How a DICOM's grey values were shown: its Photometric Interpretation (nothing else of its header)."""
    import pydicom

    from cxr.data.dicom import quiet_pydicom

    try:
        with quiet_pydicom():
            value = (
                str(
                    pydicom.dcmread(
                        io.BytesIO(data),
                        force=True,
                        stop_before_pixels=True,
                        specific_tags=["PhotometricInterpretation"],
                    ).get("PhotometricInterpretation", "")
                )
                .strip()
                .upper()
            )
    except Exception:  # it was decoded already; the attribute is only informative
        return None
    notes = {
        "MONOCHROME1": "MONOCHROME1, inverted so that bone is bright",
        "MONOCHROME2": "MONOCHROME2, shown as stored",
    }
    return notes.get(value, f"{value}, converted to grey" if value else None)


async def read_upload(request: Request) -> Upload:
    """The FastAPI dependency of /predict and /cam: the body (raw or multipart) within the size limit, decoded in a
    bounded thread pool of the HTTP process; a bad upload is a 4xx with one sentence."""
    import anyio
    from fastapi import HTTPException

    service = _SERVICE
    limit = service.max_upload_bytes
    slack = 64 * 1024  # multipart boundaries and headers
    try:
        declared = int(request.headers.get("content-length") or 0)
    except ValueError:
        declared = 0
    too_large = (
        f"The upload is larger than the limit of {limit / 2**20:.0f} MiB: send a single radiograph "
        "(PNG, JPEG or DICOM)."
    )
    if declared > limit + slack:
        raise HTTPException(413, too_large)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit + slack:
            raise HTTPException(413, too_large)
    content_type = request.headers.get("content-type", "")
    try:
        data = file_part(bytes(body), content_type) if content_type.startswith("multipart/") else bytes(body)
        del body
        if len(data) > limit:
            raise UploadError(413, too_large)
        if service.limiter is None:
            service.limiter = anyio.CapacityLimiter(service.decode_threads)
        upload = await anyio.to_thread.run_sync(
            decode_upload, data, service, request.url.path == "/cam", limiter=service.limiter
        )
    except UploadError as error:
        raise HTTPException(error.status, error.sentence) from None
    upload.output = request.query_params.get("output")
    if upload.output is not None and upload.output not in service.model["outputs"]:
        raise HTTPException(
            404, f"No output named {upload.output!r}: this model has {', '.join(service.model['outputs'])}."
        )
    return upload


# --------------------------------------------------------------------------------------------------- metrics
def service_metrics():
    """The Prometheus metrics of this process (multiprocess mode: PROMETHEUS_MULTIPROC_DIR is set by main)."""
    from prometheus_client import Counter, Gauge, Histogram

    global _METRICS
    if _METRICS is None:
        _METRICS = {
            "requests": Counter("cxr_serve_requests", "HTTP requests answered", ["endpoint", "status"]),
            "errors": Counter("cxr_serve_errors", "HTTP requests answered with a 4xx or 5xx", ["endpoint", "status"]),
            "latency": Histogram(
                "cxr_serve_request_seconds",
                "Time from request to answer",
                ["endpoint"],
                buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            ),
            "in_flight": Gauge(
                "cxr_serve_requests_in_flight", "Requests being answered", ["endpoint"], multiprocess_mode="livesum"
            ),
            "batch": Histogram("cxr_serve_batch_size", "Requests per model call", ["endpoint"], buckets=BATCH_BUCKETS),
            "inference": Histogram(
                "cxr_serve_inference_seconds",
                "Model time per batch",
                ["endpoint"],
                buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            ),
        }
    return _METRICS


_METRICS = None


class MetricsMiddleware:
    """ASGI middleware: requests, errors, latency and requests in flight per endpoint."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        endpoint = scope["path"] if scope["path"] in ROUTES else "other"
        metrics, started, status = service_metrics(), time.perf_counter(), {"code": 500}

        async def send_status(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        metrics["in_flight"].labels(endpoint).inc()
        try:
            await self.app(scope, receive, send_status)
        finally:
            metrics["in_flight"].labels(endpoint).dec()
            code = str(status["code"])
            metrics["requests"].labels(endpoint, code).inc()
            if status["code"] >= 400:
                metrics["errors"].labels(endpoint, code).inc()
            metrics["latency"].labels(endpoint).observe(time.perf_counter() - started)
