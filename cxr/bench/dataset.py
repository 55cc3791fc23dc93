"""Dataset measures: download + verify against a local HTTP server, one-pass preparation img/s (with the projected
time for the 112,120-image release), epoch img/s from shards vs the cache vs PNGs, and LitData vs WebDataset."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from cxr.bench.core import Row, Sizes, interleaved, median
from cxr.bench.loading import PREPROCESSING, full_resolution_images

RELEASE_IMAGES = 112_120


def _links(paths: list[str], loops: int, folder: Path) -> list[str]:
    """``loops`` distinct names per image (symlinks), so that a list of N x loops files decodes every one."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for loop in range(loops):
        for path in paths:
            link = folder / f"{loop:03d}_{Path(path).name}"
            if not link.exists():
                link.symlink_to(Path(path).resolve())
            out.append(str(link))
    return out


def bench_download(sizes: Sizes, image_dir=None) -> list[Row]:
    """Archives of the 1024 px PNGs served by a local Range server, fetched, MD5-checked, extracted, counted."""
    from cxr.bench.range_server import RangeServer
    from cxr.data.download import download_release

    with tempfile.TemporaryDirectory(prefix="cxr-bench-") as tmp:
        tmp = Path(tmp)
        paths = full_resolution_images(image_dir, tmp / "png")
        files, rows = {}, []
        for i in range(3):
            buffer = io.BytesIO()
            chunk = paths[i::3]
            with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
                for path in chunk:
                    tar.add(path, arcname=f"images/{Path(path).name}")
            name = f"images_{i + 1:02d}.tar.gz"
            files[name] = buffer.getvalue()
            rows.append({"archive": name, "url": "", "md5": hashlib.md5(files[name]).hexdigest(), "images": len(chunk)})
        names = [Path(p).name for p in paths]
        files["Data_Entry_2017_v2020.csv"] = (
            "Image Index,Finding Labels,Patient ID\n"
            + "".join(f"{name},No Finding,{i}\n" for i, name in enumerate(names))
        ).encode()
        files["train_val_list.txt"] = "".join(f"{name}\n" for name in names[1:]).encode()
        files["test_list.txt"] = f"{names[0]}\n".encode()
        manifest = tmp / "manifest.csv"
        pd.DataFrame(rows).to_csv(manifest, index=False)
        metadata = ("Data_Entry_2017_v2020.csv", "train_val_list.txt", "test_list.txt")  # verified like the release's
        manifest.with_suffix(".sha256").write_text(
            "".join(f"{hashlib.sha256(files[name]).hexdigest()}  {name}\n" for name in metadata)
        )
        total = sum(len(files[r["archive"]]) for r in rows)
        times = []
        with RangeServer(files) as server:
            for rep in range(max(1, sizes.reps)):
                target = tmp / f"nih{rep}"
                started = time.perf_counter()
                download_release(target, manifest, server.url, jobs=3, progress=False, echo=lambda _: None)
                times.append(time.perf_counter() - started)
    seconds = median(times)
    n = sum(r["images"] for r in rows)
    return [
        Row(
            "download + verify + extract (local server)",
            "MB/s",
            None,
            total / 1e6 / seconds,
            note=f"{n} images in 3 archives, {total / 1e6:.1f} MB, 3 in parallel: {n / seconds:.0f} img/s; "
            "a real download is bound by the network instead",
            details={"bytes": total, "images": n, "seconds": seconds, "img_per_s": n / seconds},
        )
    ]


def bench_prepare(sizes: Sizes, image_dir=None) -> list[Row]:
    """python -m cxr.prepare's work: the 1024 px PNGs decoded + resized into a new cache, per worker count."""
    from cxr.data.cache_build import open_or_build

    loops = max(1, sizes.loader_loops)
    rates, seconds = {}, {}
    with tempfile.TemporaryDirectory(prefix="cxr-bench-") as tmp:
        tmp = Path(tmp)
        paths = _links(full_resolution_images(image_dir, tmp / "png"), loops, tmp / "links")
        for workers in sorted({1, min(2, os.cpu_count() or 1), os.cpu_count() or 1}):
            runs = []
            for rep in range(max(1, sizes.epoch_reps)):
                started = time.perf_counter()
                open_or_build(paths, PREPROCESSING, tmp / f"cache{workers}-{rep}", workers=workers)
                runs.append(time.perf_counter() - started)
            seconds[workers] = median(runs)
            rates[workers] = len(paths) / seconds[workers]
    best = max(rates, key=rates.get)
    hours = RELEASE_IMAGES / rates[best] / 3600
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return [
        Row(
            "preparation: decode + resize into the cache",
            "img/s",
            rates[1],
            rates[best],
            ratio=rates[best] / rates[1],
            note=f"baseline 1 process, fast {best} processes; projected for the {RELEASE_IMAGES:,}-image release: "
            f"{hours:.1f} h on this machine (load average {load:.1f})",
            details={
                "img_per_s_by_workers": rates,
                "seconds_by_workers": seconds,
                "images": len(paths),
                "projected_release_hours": hours,
                "load_average": load,
            },
        )
    ]


def _write_webdataset(folder: Path, cached, targets) -> None:
    import webdataset as wds

    folder.mkdir(parents=True, exist_ok=True)
    with wds.ShardWriter(str(folder / "shard-%06d.tar"), maxsize=64 * 2**20, verbose=0) as sink:
        for i in range(len(targets)):
            sink.write({"__key__": f"{i:08d}", "pixels.npy": np.array(cached.array[i]), "cls": int(targets[i])})


def bench_shards(sizes: Sizes, image_dir=None) -> list[Row]:
    """An epoch of the training loader (loader only, shuffled, batch 10) from LitData shards, from the cache and
    from the PNGs; and LitData vs WebDataset on the same images: write seconds, read img/s, size."""
    import torch
    from torch.utils.data import DataLoader

    from cxr.data.cache_build import open_or_build
    from cxr.data.dataset import ChestXrayDataset, Preprocessing, collate_batch
    from cxr.data.shards import ChestXrayShards, shard_loader, write_shards

    preprocessing = Preprocessing(**PREPROCESSING)
    with tempfile.TemporaryDirectory(prefix="cxr-bench-") as tmp:
        tmp = Path(tmp)
        sample = Path(image_dir) if image_dir else None
        paths = _links(full_resolution_images(sample, tmp / "png"), max(1, sizes.epoch_loops), tmp / "links")
        targets = np.arange(len(paths)) % 2
        table = pd.DataFrame({"path": paths, "image": [Path(p).name for p in paths], "target": targets})
        cached = open_or_build(paths, preprocessing, tmp / "cache")
        started = time.perf_counter()
        lit = write_shards(tmp / "litdata", cached, np.arange(len(paths)), table)
        lit_write = time.perf_counter() - started
        try:
            import webdataset  # noqa: F401  (only for the comparison row)
        except ImportError:
            webdataset = None
        started = time.perf_counter()
        if webdataset is not None:
            _write_webdataset(tmp / "wds", cached, targets)
        wds_write = time.perf_counter() - started
        size = {
            "litdata": sum(p.stat().st_size for p in lit.iterdir()),
            "webdataset": sum(p.stat().st_size for p in (tmp / "wds").iterdir()) if webdataset else None,
        }

        png = DataLoader(ChestXrayDataset(table, preprocessing), batch_size=10, shuffle=True, collate_fn=collate_batch)
        cache = DataLoader(
            ChestXrayDataset(table, preprocessing, source=cached), batch_size=10, shuffle=True, collate_fn=collate_batch
        )
        shards = shard_loader(ChestXrayShards(lit, preprocessing, seed=0), 10, 0, collate_batch)

        def webdataset_epoch():
            import webdataset as wds

            urls = sorted(str(p) for p in (tmp / "wds").glob("*.tar"))
            stream = (
                wds.WebDataset(urls, shardshuffle=False, empty_check=False)
                .decode()
                .shuffle(1000)
                .map(
                    lambda s: (
                        preprocessing.to_tensor(np.repeat(s["pixels.npy"], 3, axis=2)),
                        torch.tensor(float(s["cls"])),
                        int(s["__key__"]),
                    )
                )
            )
            return sum(len(b[0]) for b in DataLoader(stream, batch_size=10, collate_fn=collate_batch))

        def drain(loader):
            return sum(len(batch[0]) for batch in loader)

        candidates = {"png": lambda: drain(png), "cache": lambda: drain(cache), "litdata": lambda: drain(shards)}
        if webdataset is not None:
            candidates["webdataset"] = webdataset_epoch
        times = interleaved(candidates, sizes.epoch_reps, 1)
    n = len(paths)
    rate = {name: n / median(t) for name, t in times.items()}
    details = {
        "img_per_s": rate,
        "images": n,
        "write_s": {"litdata": lit_write, "webdataset": wds_write},
        "bytes": size,
    }
    return [
        Row(
            "epoch from shards vs PNGs (loader only)",
            "img/s",
            rate["png"],
            rate["litdata"],
            ratio=rate["litdata"] / rate["png"],
            details=details,
            note=f"cache {rate['cache']:.0f} img/s; 1024 px PNGs decoded per epoch vs 150 px shards",
        ),
        Row(
            "epoch from shards vs cache (loader only)",
            "img/s",
            rate["cache"],
            rate["litdata"],
            ratio=rate["litdata"] / rate["cache"],
            details=details,
        ),
        Row(
            "shard formats: WebDataset vs LitData (read)",
            "img/s",
            rate["webdataset"],
            rate["litdata"],
            ratio=rate["litdata"] / rate["webdataset"],
            details=details,
            note=f"write {wds_write:.1f} s vs {lit_write:.1f} s, {size['webdataset'] / 1e6:.1f} MB vs "
            f"{size['litdata'] / 1e6:.1f} MB ({n} images, 150 px grey plane)",
        )
        if webdataset is not None
        else Row(
            "shard formats: WebDataset vs LitData (read)",
            "img/s",
            None,
            rate["litdata"],
            note="skipped: webdataset is not installed (pip install -e '.[dev]')",
            details=details,
        ),
    ]
