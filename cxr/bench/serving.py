"""The service under load: ``python -m cxr.bench --only serve [--serve-requests N]``.

Starts ``python -m cxr.serve`` on loopback (the thesis network in a checkpoint, default settings), then sends
``N`` requests at each concurrency (1, 8, 32) with a real HTTP client (httpx), alternating real NIH PNGs and DICOMs
made from them, and reports throughput, p50/p95/p99 latency, errors, the batch sizes the service reached, and the
memory of all its processes (PSS, so that pages shared by forked processes count once): the peak, and the growth
from after the warm-up to the end. The client runs on the same cores as the service.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from cxr.bench.core import SHARED_DATA, Row, Sizes

CONCURRENCY = (1, 8, 32)
DEFAULT_REQUESTS = 2000
WARMUP_REQUESTS = 500


def _checkpoint(path: Path) -> Path:
    """The thesis network (random weights, RGB 150 px as the thesis) as a checkpoint the service loads."""
    import torch

    from cxr.bench.compute import ADAM, NET
    from cxr.models.classifier import BinaryClassifier

    torch.manual_seed(0)
    preprocessing = {"channels": 3, "image_size": 150, "resample": "nearest", "pixel_divisor": 255.0}
    model = BinaryClassifier(net=NET, optimizer=ADAM, preprocessing=preprocessing, program="A")
    hparams = json.loads(json.dumps(dict(model.hparams)))  # plain values: loadable weights-only
    torch.save({"hyper_parameters": hparams, "state_dict": model.state_dict(), "epoch": 0}, path)
    return path


def _uploads(image_dir: Path, n: int = 40) -> list[tuple[str, bytes]]:
    """Real NIH PNGs and, for every other one, the same pixels as an uncompressed DICOM (no patient fields)."""
    import pydicom
    from PIL import Image
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian, generate_uid

    paths = sorted(image_dir.glob("*.png"))[:n]
    if not paths:
        raise FileNotFoundError(f"no PNG in {image_dir}")
    uploads = []
    for i, path in enumerate(paths):
        data = path.read_bytes()
        if i % 2:
            pixels = np.asarray(Image.open(io.BytesIO(data)).convert("L"))
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = (
                DigitalXRayImageStorageForPresentation,
                generate_uid(),
            )
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds = Dataset()
            ds.file_meta, ds.Modality, ds.ViewPosition = meta, "DX", "PA"
            ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
            ds.set_pixel_data(pixels, "MONOCHROME2", 8)
            buffer = io.BytesIO()
            pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
            uploads.append(("dicom", buffer.getvalue()))
        else:
            uploads.append(("png", data))
    return uploads


def _tree(pid: int) -> list[int]:
    found, stack = [], [pid]
    while stack:
        current = stack.pop()
        found.append(current)
        try:
            for task in os.listdir(f"/proc/{current}/task"):
                stack += [int(c) for c in Path(f"/proc/{current}/task/{task}/children").read_text().split()]
        except OSError:
            pass
    return found


def memory_mb(pid: int) -> float:
    """PSS of a process and its descendants (MB): shared pages divided among the processes that share them."""
    total = 0
    for member in _tree(pid):
        try:
            for line in Path(f"/proc/{member}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


class MemorySampler(threading.Thread):
    """Samples ``memory_mb(pid)`` every ``interval`` seconds; ``peak`` is the largest sample."""

    def __init__(self, pid: int, interval: float = 0.25):
        super().__init__(daemon=True)
        self.pid, self.interval, self.peak, self._stop_event = pid, interval, 0.0, threading.Event()

    def run(self):
        while not self._stop_event.wait(self.interval):
            self.peak = max(self.peak, memory_mb(self.pid))

    def stop(self):
        self._stop_event.set()
        self.join()


# The client drops a connection idle for this long, well before the service's keep_alive (75 s, conf/serve.yaml)
# closes it: a request sent on a connection the server is closing at that moment is reset (httpx ReadError).
CLIENT_KEEPALIVE_S = 5.0


async def _load(url: str, uploads, n: int, concurrency: int) -> dict:
    """``n`` requests by ``concurrency`` clients sharing one connection pool. A request whose connection fails
    (httpx.TransportError) is sent once more on a fresh one (/predict has no side effect) and counted in
    ``retries``; ``errors`` counts the requests that still failed, and every non-200 answer."""
    import httpx

    latencies, batch_sizes, errors, retries = [], [], [], []
    last_used: dict[int, float] = {}  # connection -> when its previous answer ended
    idle_gaps: list[float] = []  # seconds a connection sat idle before it was reused
    counter = iter(range(n))
    limits = httpx.Limits(
        max_connections=concurrency, max_keepalive_connections=concurrency, keepalive_expiry=CLIENT_KEEPALIVE_S
    )

    async def post(client, data):
        started = time.perf_counter()
        response = await client.post(url, content=data)
        stream = id(response.extensions.get("network_stream"))
        if stream in last_used:
            idle_gaps.append(started - last_used[stream])
        last_used[stream] = time.perf_counter()
        return response

    async def client_loop(client):
        for i in counter:
            kind, data = uploads[i % len(uploads)]
            started = time.perf_counter()
            try:
                try:
                    response = await post(client, data)
                except httpx.TransportError as error:
                    retries.append(f"{kind}: {type(error).__name__}: {error}")
                    response = await post(client, data)
                if response.status_code == 200:
                    batch_sizes.append(response.json()["batch_size"])
                else:
                    errors.append(f"{response.status_code} {response.text[:200]}")
            except httpx.HTTPError as error:
                errors.append(f"{type(error).__name__}: {error}")
            latencies.append(time.perf_counter() - started)

    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        started = time.perf_counter()
        await asyncio.gather(*[client_loop(client) for _ in range(concurrency)])
        seconds = time.perf_counter() - started
    ms = np.array(latencies) * 1000
    sizes = np.array(batch_sizes or [0])
    return {
        "requests": n,
        "concurrency": concurrency,
        "seconds": seconds,
        "throughput": n / seconds,
        "p50_ms": float(np.percentile(ms, 50)),
        "p95_ms": float(np.percentile(ms, 95)),
        "p99_ms": float(np.percentile(ms, 99)),
        "errors": len(errors),
        "first_errors": errors[:3],
        "retries": len(retries),
        "first_retries": retries[:3],
        "connections": len(last_used),
        "idle_gap_max_s": max(idle_gaps, default=0.0),
        "batch_size_max": int(sizes.max()),
        "batch_size_mean": float(sizes.mean()),
        "batch_size_counts": {int(k): int(v) for k, v in zip(*np.unique(sizes, return_counts=True))},
    }


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_service(ckpt: Path, folder: Path, overrides=(), timeout: float = 300) -> tuple[subprocess.Popen, str]:
    """``python -m cxr.serve ckpt_path=<ckpt> port=<free>`` in ``folder``; returns it once /ready answers."""
    import httpx

    port = _free_port()
    log = open(folder / "service.log", "ab")
    process = subprocess.Popen(
        [sys.executable, "-m", "cxr.serve", f"ckpt_path={ckpt}", f"port={port}", *overrides],
        cwd=folder,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"the service exited with {process.returncode}: {(folder / 'service.log').read_text()[-2000:]}"
            )
        try:
            if httpx.get(url + "/ready", timeout=2).status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    process.kill()
    raise RuntimeError(f"the service was not ready within {timeout:.0f} s")


def stop_service(process: subprocess.Popen) -> int:
    process.terminate()  # SIGTERM: the graceful shutdown
    try:
        return process.wait(90)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


def bench_serve(sizes: Sizes, requests: int | None = None, image_dir=None, overrides=()) -> list[Row]:
    """(13) the service under a bounded load at concurrency 1, 8 and 32 (``overrides``: of conf/serve.yaml)."""
    n = requests or (20 if sizes.name == "tiny" else DEFAULT_REQUESTS)
    image_dir = Path(image_dir) if image_dir else SHARED_DATA / "nih" / "images"
    uploads = _uploads(image_dir)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="cxr-bench-serve-") as folder:
        folder = Path(folder)
        process, url = start_service(_checkpoint(folder / "thesis.ckpt"), folder, overrides)
        try:
            started_mb = memory_mb(process.pid)
            sampler = MemorySampler(process.pid)
            sampler.start()
            # at the highest concurrency: the batch sizes (and ONNX Runtime's memory arena for them) it reaches
            warmup = asyncio.run(_load(url + "/predict", uploads, min(WARMUP_REQUESTS, n), max(CONCURRENCY)))
            warm_mb = memory_mb(process.pid)
            results = {c: asyncio.run(_load(url + "/predict", uploads, n, c)) for c in CONCURRENCY}
            end_mb = memory_mb(process.pid)
            sampler.stop()
        finally:
            status = stop_service(process)
    details = {
        "requests_per_level": n,
        "uploads": f"{len(uploads)} NIH PNGs, every other one as DICOM",
        "levels": results,
        "warmup": warmup,
        "memory_mb": {"started": started_mb, "after_warmup": warm_mb, "end": end_mb, "peak": sampler.peak},
        "exit_status": status,
        "service": "python -m cxr.serve, default settings (thesis net, RGB 150 px)",
        "overrides": list(overrides),
        "client_keepalive_s": CLIENT_KEEPALIVE_S,
    }
    for c, r in results.items():
        rows.append(
            Row(
                f"serve /predict, concurrency {c}",
                "req/s",
                None,
                r["throughput"],
                "0 errors, 0 retries",
                r["errors"] == 0 and r["retries"] == 0,
                details=details,
                note=(
                    f"p50 {r['p50_ms']:.0f} ms, p95 {r['p95_ms']:.0f} ms, p99 {r['p99_ms']:.0f} ms; "
                    f"{r['errors']} errors and {r['retries']} retries of {n}; {r['connections']} connections, "
                    f"longest idle {r['idle_gap_max_s']:.2f} s; batch sizes mean {r['batch_size_mean']:.1f}, "
                    f"max {r['batch_size_max']}"
                ),
            )
        )
    growth = 100.0 * (end_mb / warm_mb - 1.0)
    rows.append(
        Row(
            "serve memory (PSS of its processes), after warm-up -> end",
            "MB",
            warm_mb,
            end_mb,
            "growth <= 5%",
            growth <= 5.0,
            details=details,
            note=f"peak {sampler.peak:.0f} MB; {growth:+.1f}% over {n * len(CONCURRENCY)} requests; "
            f"graceful stop exit status {status}",
        )
    )
    return rows
