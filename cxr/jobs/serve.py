"""The service behind ``python -m cxr.serve ckpt_path=<.ckpt | .onnx> [host=127.0.0.1 port=8000]``.

Endpoints: ``POST /predict`` (a PNG, JPEG or DICOM upload: the raw file as the body, or multipart ``file=``) answers
JSON: the probability per output, the decision at the model's operating point and where that point came from,
warnings, the model's name, version and SHA-256, and the preprocessing used. ``POST /cam``: the Grad-CAM overlay PNG
per output (checkpoints only). ``GET /`` a web page; ``GET /health`` (the process answers), ``GET /ready`` (the
model workers are up), ``GET /metrics`` (Prometheus). Requests are batched dynamically (``max_batch_size``,
``batch_timeout``) and run by ONNX Runtime by default (``backend=torch`` selectable), as ``predict.py`` runs them:
same loading, decoding, limits and preprocessing (cxr.predict, cxr.data.inputs).

Built on LitServe (Lightning's serving library: the batching loop, worker processes, /ready). Measured on the
project's shared 2-core machine with a no-op model: LitServe answered 70-111 requests/s at concurrency 1-8 and a
hand-written FastAPI + uvicorn batcher 48-92, within the noise of a shared machine, so no reason to write our own;
LitServe's batching worker polls its request queue every millisecond: about 13% of one core while idle
(docs/serving.md).

Uploads are read into memory and never written to disk (multipart bodies are parsed in memory, not by Starlette's
form parser, which spools parts above 1 MiB to a temporary file). No DICOM patient field is read into a response or
a log. SIGTERM or Ctrl-C: the HTTP server stops accepting, finishes the requests in flight, then the workers stop.
"""

# no `from __future__ import annotations`: LitServe builds the FastAPI route from decode_request's annotation
import base64
import hashlib
import io
import logging
import os
import signal
import tempfile
import time
from pathlib import Path
from typing import Annotated

import numpy as np
import torch

from cxr.jobs.serve_http import MetricsMiddleware, Service, Upload, read_upload, service_metrics, use_service

try:  # the optional dependencies of ``.[serve]``
    from fastapi import Depends
    from litserve import LitAPI
except ImportError:  # pragma: no cover - serve() says what to install
    LitAPI = object

    def Depends(dependency):
        return dependency


log = logging.getLogger(__name__)
PAGE = Path(__file__).resolve().parents[1] / "web" / "index.html"
INTENDED_USE = "research model, not a medical device"


# ---------------------------------------------------------------------------------------------- the model
def _ignore_interrupts() -> None:
    """Workers ignore Ctrl-C (the terminal sends it to every process): the main process stops them after the HTTP
    server has answered the requests in flight."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _litserve():
    import litserve

    return litserve


def model_card(ckpt_path: str | Path, predictor) -> dict:
    """Name, version and SHA-256 of the model file, its outputs and operating points (no path of the machine)."""
    import cxr
    from cxr.jobs.checkpoint_run import run_directory

    path = Path(ckpt_path)
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    details = predictor.details or {}
    program, task = details.get("program"), details.get("task", "binary")
    name = f"{run_directory(path).name}/{path.name}"
    if path.suffix.lower() == ".onnx":
        version = (
            f"ONNX export of {details.get('checkpoint', '?')} (cxr metadata format {details.get('format_version')})"
        )
    else:
        version = f"cxr {cxr.__version__} checkpoint" + (f", epoch {details['epoch']}" if "epoch" in details else "")
    return {
        "name": name,
        "version": version,
        "sha256": digest.hexdigest(),
        "file": path.name,
        "program": program,
        "task": task,
        "outputs": list(predictor.names),
        "thresholds": dict(zip(predictor.names, predictor.thresholds)),
        "operating_point": predictor.threshold_source,
        "backend": predictor.backend,
        "intended_use": INTENDED_USE,
    }


class _ModelAPI(LitAPI):
    """A model worker of the service (a LitServe worker process): loads the model itself (and the run's validation
    images that calibrate int8, cxr.jobs.int8); uploads stay in memory."""

    def __init__(self, settings: dict, api_path: str, max_batch_size: int, batch_timeout: float):
        super().__init__(max_batch_size=max_batch_size, batch_timeout=batch_timeout, api_path=api_path)
        self.settings = settings

    def _load(self, device: str, backend: str):
        from cxr.jobs.predictor import load_predictor

        _ignore_interrupts()
        device = "cpu" if device in ("cpu", None) else device
        self.predictor = load_predictor(self.settings["ckpt_path"], backend, self.settings.get("threshold"), device)
        inference = self.predictor.details.get("inference") or {}
        self.model = {**self.settings["model"], "backend": self.predictor.backend, "inference": inference.get("reason")}
        self.endpoint = self.api_path
        self.metrics = service_metrics()

    def decode_request(self, request: Annotated[Upload, Depends(read_upload)]):
        return request

    def batch(self, inputs):
        return list(inputs)

    def unbatch(self, output):
        return output

    def _images(self, uploads) -> "torch.Tensor":
        to_tensor = self.predictor.preprocessing.to_tensor
        return torch.stack([to_tensor(u.pixels) for u in uploads])

    def _observe(self, n: int, seconds: float) -> None:
        self.metrics["batch"].labels(self.endpoint).observe(n)
        self.metrics["inference"].labels(self.endpoint).observe(seconds)

    def _outputs(self, probabilities) -> list[dict]:
        p = self.predictor
        return [
            {
                "name": name,
                "probability": float(probabilities[k]),
                "decision": int(probabilities[k] > p.thresholds[k]),
                "threshold": p.thresholds[k],
            }
            for k, name in enumerate(p.names)
        ]

    def _answer(self, upload: Upload, probabilities, batch_size: int) -> dict:
        return {
            "outputs": self._outputs(probabilities),
            "operating_point": self.model["operating_point"],
            "decision_rule": "decision 1 when probability > threshold",
            "input": {"format": upload.format, "photometric": upload.photometric},
            "warnings": upload.warnings,
            "model": self.model,
            "preprocessing": dict(self.predictor.preprocessing.__dict__),
            "batch_size": batch_size,
        }


class PredictAPI(_ModelAPI):
    """POST /predict: probabilities and decisions, batched."""

    def setup(self, device):
        self._load(device, self.settings.get("backend", "auto"))
        p = self.predictor.preprocessing
        shape = (max(1, int(self.max_batch_size)), p.channels, p.image_size, p.image_size)
        warm = torch.from_numpy(np.random.default_rng(0).random(shape, dtype=np.float32))
        # before /ready: the ONNX export and its check against torch, and the largest batch the worker will run,
        # so that ONNX Runtime's memory arena reaches its final size now instead of growing under load
        self.predictor.probabilities(warm)

    def predict(self, uploads):
        started = time.perf_counter()
        probabilities = self.predictor.probabilities(self._images(uploads))
        self._observe(len(uploads), time.perf_counter() - started)
        return [(u, row, len(uploads)) for u, row in zip(uploads, probabilities)]

    def encode_response(self, output):
        upload, probabilities, batch_size = output
        return self._answer(upload, probabilities, batch_size)


class CamAPI(_ModelAPI):
    """POST /cam: the Grad-CAM overlay PNG per output (the PyTorch model), batched."""

    def setup(self, device):
        self._load(device, "torch")

    def predict(self, uploads):
        from cxr.evaluation.gradcam import cam_maps

        started = time.perf_counter()
        images = self._images(uploads)
        probabilities = self.predictor.probabilities(images)
        maps = cam_maps(
            self.predictor.model, images.to(next(self.predictor.model.parameters()).device), len(self.predictor.names)
        )
        self._observe(len(uploads), time.perf_counter() - started)
        return [(u, p, m, len(uploads)) for u, p, m in zip(uploads, probabilities, maps)]

    def encode_response(self, output):
        from PIL import Image
        from starlette.responses import Response

        from cxr.evaluation.gradcam import overlay

        upload, probabilities, maps, batch_size = output
        names = self.predictor.names
        pngs = {}
        for k, name in enumerate(names):
            if upload.output in (None, name):
                buffer = io.BytesIO()
                Image.fromarray(overlay(upload.display, maps[k])).save(buffer, format="PNG")
                pngs[name] = buffer.getvalue()
        if upload.output is not None:
            return Response(content=pngs[upload.output], media_type="image/png")
        answer = self._answer(upload, probabilities, batch_size)
        for item in answer["outputs"]:
            item["cam_png"] = base64.b64encode(pngs[item["name"]]).decode("ascii")
        answer["cam"] = "Grad-CAM of the last convolution for each output's logit, over the image as prepared"
        return answer


# -------------------------------------------------------------------------------------------------- the app
def build_server(cfg, model: dict):
    """The LitServer with /predict (and /cam for a checkpoint), the page, /health, /ready and /metrics."""
    from fastapi import HTTPException
    from fastapi.responses import HTMLResponse, PlainTextResponse, Response

    ls = _litserve()
    settings = {
        "ckpt_path": str(Path(cfg.ckpt_path).resolve()),
        "backend": str(cfg.backend),
        "model": model,
        "threshold": None
        if cfg.get("threshold") is None
        else (list(cfg.threshold) if not isinstance(cfg.threshold, (int, float)) else float(cfg.threshold)),
    }
    apis = [PredictAPI(settings, "/predict", int(cfg.max_batch_size), float(cfg.batch_timeout))]
    with_cam = bool(cfg.cam) and Path(cfg.ckpt_path).suffix.lower() != ".onnx"
    if with_cam:
        apis.append(CamAPI(settings, "/cam", int(cfg.cam_max_batch_size), float(cfg.batch_timeout)))
    accelerator = "cuda" if str(cfg.device).startswith("cuda") or (cfg.device == "auto" and _cuda()) else "cpu"
    server = ls.LitServer(
        apis,
        accelerator=accelerator,
        devices=1,
        workers_per_device=1,
        timeout=float(cfg.request_timeout),
        healthcheck_path="/ready",
        model_metadata={k: model[k] for k in ("name", "version", "sha256", "outputs")},
    )
    app = server.app
    app.router.routes = [r for r in app.router.routes if getattr(r, "path", None) != "/"]  # LitServe's plain "/"
    page = PAGE.read_text(encoding="utf-8")

    @app.get("/", response_class=HTMLResponse)
    async def index():
        return page

    @app.get("/health")
    async def health():
        return PlainTextResponse("ok")

    @app.get("/metrics")
    async def metrics():
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    if not with_cam:

        @app.post("/cam")
        async def no_cam():
            why = (
                "Grad-CAM needs a checkpoint (.ckpt): this service runs an ONNX file"
                if cfg.cam
                else "Grad-CAM is switched off (cam=false)"
            )
            raise HTTPException(501, why + ".")

    app.add_middleware(MetricsMiddleware)
    return server


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def serve(cfg) -> int:
    """The job behind ``python -m cxr.serve``: load the model's description, start the workers, serve until
    SIGTERM/Ctrl-C; returns the exit status."""
    from cxr.errors import PredictError
    from cxr.jobs.predictor import load_predictor

    try:
        _litserve()
    except ImportError as error:
        raise PredictError("serving needs LitServe and prometheus-client: pip install -e '.[serve]'") from error
    host, port = str(cfg.host), int(cfg.port)
    if host not in ("127.0.0.1", "0.0.0.0", "::"):
        raise PredictError(f"host={host}: choose 127.0.0.1 (this machine only), 0.0.0.0 or ::")
    if not 1024 <= port <= 65535:
        raise PredictError(f"port={port}: choose a port from 1024 to 65535")
    # the description only (preprocessing, outputs, thresholds); the workers load the model themselves
    predictor = load_predictor(cfg.ckpt_path, "torch", cfg.get("threshold"), "cpu")
    model = model_card(cfg.ckpt_path, predictor)
    max_upload = int(float(cfg.max_upload_mb) * 2**20)
    from cxr.data.inputs import MAX_INPUT_BYTES

    use_service(
        Service(
            predictor.preprocessing,
            model,
            min(max_upload, MAX_INPUT_BYTES),
            int(cfg.cam_size),
            max(1, int(cfg.decode_threads)),
        )
    )
    del predictor
    with tempfile.TemporaryDirectory(prefix="cxr-serve-metrics-") as metrics_dir:
        # before prometheus_client is imported in any process of the service (it picks its storage on import)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
        server = build_server(cfg, model)

        main_pid = os.getpid()

        def stop(signum, frame):  # SIGTERM as Ctrl-C: LitServer.run's graceful shutdown (in the main process; the
            if os.getpid() == main_pid:  # forked HTTP process inherits this after uvicorn's own graceful stop)
                raise KeyboardInterrupt
            raise SystemExit(0)

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        server.uvicorn_graceful_timeout = int(cfg.graceful_timeout)
        print(
            f"serving {model['name']} ({', '.join(model['outputs'])}; backend {cfg.backend}) on "
            f"http://{host}:{port}/ - Ctrl-C stops",
            flush=True,
        )
        server.run(
            host=host,
            port=port,
            num_api_servers=1,
            generate_client_file=False,
            log_level=str(cfg.log_level),
            timeout_keep_alive=int(cfg.get("keep_alive", 75)),
        )
    print("stopped", flush=True)
    return 0
