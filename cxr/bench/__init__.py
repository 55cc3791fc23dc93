"""CPU benchmark suite: ``python -m cxr.bench [--quick] [--out FILE.json]``.

Measures, in one run, with every figure the median of several interleaved repetitions after warm-up:

1. training step img/s of the thesis net (batch 10, RGB 150x150): fp32 eager baseline vs the default config
   and the fast path (``trainer=cpu_fast``);
2. inference img/s (batch 64): eager fp32 vs every backend of :mod:`cxr.inference`;
3. loader-only img/s: decoding the 1024x1024 PNGs of ``../shared/data/nih/full-res`` vs the ``data.cache`` array;
4. a training epoch from disk, streaming and cached, as a fraction of compute-only;
5. a plain PyTorch loop vs the Lightning Trainer (overhead %);
6. NIH scale: index and split the official 112,120-row CSV (seconds, peak RSS of a subprocess);
7. the thesis' own Keras model (``fit``, ``predict``) inside the rounds of 1. and 2. when TensorFlow is installed
   (``pip install -e ".[parity]"``), so that the ratios to Keras come from one run;
8. limits: the thesis net's FLOPs per image against the peak GFLOP/s of a large fp32 and bf16 matmul;
9. DenseNet-121 (224 px, 14 outputs) training and inference, fp32 vs the default and fast settings;
10. the dataset: download + verify + extract against a local HTTP server, preparation img/s (decode + resize into
    the cache) with the projected time for the whole release, an epoch from LitData shards vs the cache vs PNGs,
    and LitData vs WebDataset (write time, read img/s, size);
11. DDP: training img/s with 1 vs 2 CPU processes (gloo), per process and in total;
12. GPU: training img/s of the thesis net and DenseNet-121, fp32 vs bf16-mixed; DDP on every GPU present vs one;
    the service on a GPU (cxr.bench.gpu; each skipped without a CUDA GPU; ``scripts/gpu_check.sh`` runs them);
13. the service (``python -m cxr.serve``) under load: ``--serve-requests`` requests at concurrency 1, 8 and 32,
    mixed PNG and DICOM: throughput, p50/p95/p99 latency, errors, batch sizes, memory (cxr.bench.serving);
14. the pretrained sources' architectures (``--only backbones``): parameters, CPU training and inference img/s at
    their native size, peak memory (cxr.bench.backbones).

Prints a table (measure, baseline, fast, ratio, target, met) and writes JSON with machine facts, versions and
settings. Other processes on the machine slow every candidate alike (round-robin timing), so read ratios.
"""

from __future__ import annotations

import json
import logging
import time
import traceback
from pathlib import Path

from cxr.bench.core import FULL, QUICK, TINY, Row, Sizes, machine_info, table

log = logging.getLogger(__name__)
SECTIONS = (
    "train",
    "inference",
    "limits",
    "densenet",
    "loader",
    "epoch",
    "lightning",
    "nih",
    "download",
    "prepare",
    "shards",
    "ddp",
    "gpu",
    "gpu_ddp",
    "gpu_serve",
    "serve",
    "backbones",
)


def run(
    sizes: Sizes = FULL,
    out: str | Path | None = None,
    sections=SECTIONS,
    image_dir=None,
    shared=None,
    echo=print,
    serve_requests: int | None = None,
) -> dict:
    """Run the selected measures; return (and write to ``out``) the result document."""
    from cxr.bench import backbones, compute, dataset, distributed, gpu, limits, loading, scale, serving

    functions = {
        "train": lambda: compute.bench_train_step(sizes),
        "inference": lambda: compute.bench_inference(sizes),
        "loader": lambda: loading.bench_loader(sizes, image_dir),
        "epoch": lambda: loading.bench_epoch(sizes, image_dir),
        "lightning": lambda: compute.bench_lightning_overhead(sizes),
        "nih": lambda: scale.bench_nih_scale(sizes, shared),
        "limits": lambda: limits.bench_limits(sizes, rows),
        "densenet": lambda: compute.bench_densenet(sizes),
        "download": lambda: dataset.bench_download(sizes, image_dir),
        "prepare": lambda: dataset.bench_prepare(sizes, image_dir),
        "shards": lambda: dataset.bench_shards(sizes, image_dir),
        "ddp": lambda: distributed.bench_ddp(sizes),
        "gpu": lambda: distributed.bench_gpu(sizes),
        "gpu_ddp": lambda: gpu.bench_gpu_ddp(sizes),
        "gpu_serve": lambda: gpu.bench_gpu_serve(sizes, None, Path(shared) / "nih" / "images" if shared else None),
        "backbones": lambda: backbones.bench_backbones(sizes),
        "serve": lambda: serving.bench_serve(
            sizes, serve_requests, Path(shared) / "nih" / "images" if shared else None
        ),
    }
    started = time.time()
    machine = machine_info()
    rows: list[Row] = []
    errors: dict[str, str] = {}
    seconds: dict[str, float] = {}
    for name in sections:
        echo(f"[cxr.bench] {name} ...")
        t0 = time.perf_counter()
        try:
            rows += functions[name]()
        except Exception as error:  # one failing measure must not lose the others
            errors[name] = "".join(traceback.format_exception_only(type(error), error)).strip()
            log.debug("bench %s failed", name, exc_info=True)
            echo(traceback.format_exc())
        seconds[name] = round(time.perf_counter() - t0, 2)
    import os

    machine["load_average_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    document = {
        "machine": machine,
        "versions": machine["versions"],
        "settings": {
            "mode": sizes.name,
            **{k: v for k, v in vars(sizes).items() if k != "name"},
            "sections": list(sections),
            "statistic": "median of interleaved repetitions after warm-up",
        },
        "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
        "seconds": seconds,
        "rows": [row.as_dict() for row in rows],
        "errors": errors,
    }
    echo(table(rows))
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(document, indent=1, default=str))
        echo(f"[cxr.bench] results written to {out}")
    return document


__all__ = ["run", "FULL", "QUICK", "TINY", "SECTIONS"]
