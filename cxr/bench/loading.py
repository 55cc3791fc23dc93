"""Data measures: loader-only throughput and a full training epoch from disk, streaming vs the data.cache array."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cxr.bench.compute import stepper, train_paths
from cxr.bench.core import SHARED_DATA, Row, Sizes, interleaved, median, speedup

PREPROCESSING = {"channels": 3, "image_size": 150, "resample": "nearest", "pixel_divisor": 255.0}


def full_resolution_images(image_dir: str | Path | None, scratch: Path, n_synthetic: int = 8) -> list[str]:
    """The 1024x1024 PNGs of ``image_dir`` (default: the NIH sample's full-res/), or synthetic ones if absent."""
    folder = Path(image_dir) if image_dir else SHARED_DATA / "nih" / "full-res"
    found = sorted(str(p) for p in folder.glob("*.png")) if folder.is_dir() else []
    if found:
        return found
    from PIL import Image

    rng = np.random.default_rng(0)
    scratch.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n_synthetic):  # smooth gradient + noise: compresses like an X-ray more than pure noise does
        base = np.add.outer(np.arange(1024), np.arange(1024)) // 8 % 256
        pixels = (base + rng.integers(0, 24, (1024, 1024))).clip(0, 255).astype(np.uint8)
        paths.append(str(scratch / f"synthetic_{i:03d}.png"))
        Image.fromarray(pixels, mode="L").save(paths[-1])
    return paths


def _datasets(paths: list[str], loops: int, cache_dir: Path):
    """(streaming dataset, cached dataset, cache build seconds) over ``paths`` repeated ``loops`` times."""
    from cxr.data.cache_build import open_or_build
    from cxr.data.dataset import ChestXrayDataset, Preprocessing

    preprocessing = Preprocessing(**PREPROCESSING)
    table = pd.DataFrame({"path": paths * loops, "target": np.arange(len(paths) * loops) % 2})
    started = time.perf_counter()
    cached = open_or_build(paths, preprocessing, cache_dir)
    build = time.perf_counter() - started
    rows = np.tile(np.arange(len(paths)), loops)
    return (
        ChestXrayDataset(table, preprocessing),
        ChestXrayDataset(table, preprocessing, source=cached, source_rows=rows),
        build,
    )


def _loader(dataset, workers: int, shuffle: bool = False):
    from torch.utils.data import DataLoader

    from cxr.data.dataset import collate_batch

    return DataLoader(
        dataset,
        batch_size=10,
        shuffle=shuffle,
        num_workers=workers,
        persistent_workers=workers > 0,
        prefetch_factor=2 if workers else None,
        collate_fn=collate_batch,
    )  # as the datamodule's


def _drain(loader) -> int:
    return sum(len(batch[0]) for batch in loader)


def bench_loader(sizes: Sizes, image_dir=None, scratch: Path | None = None) -> list[Row]:
    """(3) loader-only img/s: decoding the full-resolution PNGs (0/1/2 workers) vs reading the cache."""
    with tempfile.TemporaryDirectory(prefix="cxr-bench-") as tmp:
        scratch = Path(scratch or tmp)
        paths = full_resolution_images(image_dir, scratch / "png")
        streaming, cached, build = _datasets(paths, sizes.loader_loops, scratch / "cache")
        loaders = {f"streaming, {w} worker(s)": _loader(streaming, w) for w in sizes.worker_counts}
        loaders["cached, 0 workers"] = _loader(cached, 0)
        times = interleaved(
            {name: (lambda l=l: _drain(l)) for name, l in loaders.items()}, sizes.reps, max(1, sizes.warmup)
        )
        del loaders
    n = len(streaming)
    rate = {name: n / median(t) for name, t in times.items()}
    best = max((k for k in rate if k.startswith("streaming")), key=rate.get)
    details = {
        "img_per_s": rate,
        "images_per_round": n,
        "files": len(paths),
        "cache_build_s": build,
        "cache_build_img_per_s": len(paths) / build if build else None,
        "source": "synthetic 1024x1024" if "synthetic" in paths[0] else str(Path(paths[0]).parent),
    }
    note = f"baseline = best streaming ({best}); cache built once in {build:.1f} s ({len(paths)} files)"
    return [
        Row(
            "loader only: streaming PNG vs cache",
            "img/s",
            rate[best],
            rate["cached, 0 workers"],
            ratio=speedup(times, "cached, 0 workers", best),
            details=details,
            note=note,
        )
    ]


def bench_epoch(sizes: Sizes, image_dir=None, scratch: Path | None = None) -> list[Row]:
    """(4) a training epoch reading from disk (streaming, 0/1/2 workers) and from the cache, as a fraction of the
    same steps on batches already in memory (compute-only). Default training path (conf as shipped)."""
    path = train_paths()["default"]
    with tempfile.TemporaryDirectory(prefix="cxr-bench-") as tmp:
        scratch = Path(scratch or tmp)
        paths = full_resolution_images(image_dir, scratch / "png")
        streaming, cached, _ = _datasets(paths, sizes.epoch_loops, scratch / "cache")
        batches = [
            (torch.stack([cached[i][0] for i in range(s, min(s + 10, len(cached)))]), cached.targets[s : s + 10])
            for s in range(0, len(cached), 10)
        ]
        step = stepper(path)
        loaders = {f"streaming, {w} worker(s)": _loader(streaming, w, shuffle=True) for w in sizes.worker_counts}
        loaders["cached, 0 workers"] = _loader(cached, 0, shuffle=True)

        def epoch(loader):
            for images, targets, _ in loader:
                step(images, targets)

        def compute_only():
            for images, targets in batches:
                step(images, targets)

        candidates = {"compute only": compute_only}
        candidates.update({name: (lambda l=l: epoch(l)) for name, l in loaders.items()})
        times = interleaved(candidates, sizes.epoch_reps, 1)
        del loaders
    compute = median(times["compute only"])
    fraction = {name: speedup(times, name, "compute only") for name in times}  # per round, then the median
    best = max((k for k in fraction if k.startswith("streaming")), key=fraction.get)
    n = len(streaming)
    details = {
        "fraction_of_compute_only": fraction,
        "epoch_s": {k: median(t) for k, t in times.items()},
        "images_per_epoch": n,
        "path": path.describe(),
    }
    bound = ""
    if "streaming, 0 worker(s)" in times:
        # decoding and training share the cores: with the decode time d (one core, from the 0-worker epoch) and
        # the step time c (all cores), no worker count beats c / (c + d / cores)
        cores = torch.get_num_threads()
        decode = max(median(times["streaming, 0 worker(s)"]) - compute, 0.0)
        details["bound_on_these_cores"] = compute / (compute + decode / cores)
        bound = (
            f"; bound on {cores} cores {details['bound_on_these_cores']:.2f} (decoding {1e3 * decode / n:.1f} "
            f"ms of one core per image)"
        )
    return [
        Row(
            "epoch from cache / compute-only",
            "img/s",
            n / compute,
            n / median(times["cached, 0 workers"]),
            ">= 0.9x",
            fraction["cached, 0 workers"] >= 0.9,
            fraction["cached, 0 workers"],
            details=details,
        ),
        Row(
            "epoch streaming / compute-only",
            "img/s",
            n / compute,
            n / median(times[best]),
            ">= 0.8x",
            fraction[best] >= 0.8,
            fraction[best],
            details=details,
            note="fraction by workers: "
            + ", ".join(f"{k.split(', ')[1]} {v:.2f}" for k, v in fraction.items() if k.startswith("stream"))
            + " (1024 px PNGs decoded)"
            + bound,
        ),
    ]
