"""Building the preprocessing cache (its format: :mod:`cxr.data.cache`): decode the images in parallel into a
partial array, resume an interrupted build, copy the chunks that did not change, and rename the result into place
under a lock so that concurrent runs build once."""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
import os
import shutil
import signal
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cxr.artifacts import file_digest
from cxr.data import cache  # cache.CHUNK is read where it is used: tests make the chunks smaller
from cxr.data import images as _images
from cxr.data.cache import (
    FORMAT_VERSION,
    CachedImages,
    CacheError,
    CacheSpec,
    cache_files,
    cache_name,
    chunk_keys,
    content_key,
    open_cache,
    read_valid,
)

log = logging.getLogger(__name__)
PROGRESS_SECONDS = 10.0  # interval between progress log lines while building
POOL_MIN_IMAGES = 64  # smaller lists are decoded in this process (a pool costs more than it saves)
GREY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")  # decode to grey by construction


def open_or_build(
    paths: Sequence[str | os.PathLike],
    preprocessing,
    cache_dir: str | Path,
    workers: int | None = None,
    progress: bool = False,
) -> CachedImages:
    """Open the valid cache of ``paths`` under ``cache_dir``, building (or finishing) it first when needed."""
    spec = CacheSpec.of(preprocessing)
    paths = [os.fspath(p) for p in paths]
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    chunks = chunk_keys(paths, spec)
    key = content_key(paths, spec, chunks)
    cached = open_cache(paths, spec, cache_dir, key)
    if cached is not None:
        log.info("cache: %d images read from %s", len(cached), cached.array_path)
        return cached
    with _lock(cache_files(cache_dir, cache_name(paths, spec))["lock"]):
        cached = open_cache(paths, spec, cache_dir, key)  # another process may have built it meanwhile
        if cached is None:
            build_cache(paths, spec, cache_dir, key, workers, chunks=chunks, progress=progress)
            cached = open_cache(paths, spec, cache_dir, key)
    if cached is None:
        raise CacheError(f"the cache under {cache_dir} could not be read back after building it")
    return cached


@contextlib.contextmanager
def _lock(path: Path):
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock (temporary names still keep concurrent builds apart)
        yield
        return
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def decode_grey_plane(path: str, spec: CacheSpec) -> tuple[np.ndarray, np.ndarray | None]:
    """(grey plane ``size x size x 1`` = ``load_image(channels=1)``, the RGB decode if it is not grey, else None).

    Grey source modes are decoded once; other modes (RGB, RGBA, palette) are decoded as RGB, kept as one plane when
    the three channels are equal (Pillow's L conversion of a grey RGB pixel is that value), else decoded as L too.
    """
    from PIL import Image

    try:
        with Image.open(path) as image:
            mode = image.mode
    except OSError:
        mode = None  # load_image reports the error with the file name
    if mode in GREY_MODES or mode is None:
        return _images.load_image(path, channels=1, size=spec.image_size, resample=spec.resample), None
    rgb = _images.load_image(path, channels=3, size=spec.image_size, resample=spec.resample)
    if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2]):
        return rgb[..., :1], None
    return _images.load_image(path, channels=1, size=spec.image_size, resample=spec.resample), rgb


def _decode_range(job: tuple) -> tuple[int, int, dict]:
    """Worker: decode paths[start:stop] into rows start:stop of the partial array file."""
    array_path, paths, start, spec = job
    array = np.load(array_path, mmap_mode="r+")
    colour = {}
    for offset, path in enumerate(paths):
        plane, rgb = decode_grey_plane(path, spec)
        array[start + offset] = plane
        if rgb is not None:
            colour[start + offset] = rgb
    array.flush()
    del array
    return start, len(paths), colour


def _write_json(path: Path, document: dict) -> None:
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(document, indent=1))
    os.replace(tmp, path)


def _start_partial(files: dict[str, Path], n: int, spec: CacheSpec, key: str, chunks: list[str]) -> dict[int, str]:
    """Open (or create) the partial array; return {chunk start: chunk key} of the chunks it already holds, from an
    interrupted build of this list or copied from the previous cache where the chunk is unchanged."""
    shape = (n, *spec.stored_shape)
    progress = {}
    try:
        state = json.loads(files["progress"].read_text())
        part = np.load(files["part"], mmap_mode="r")
        if tuple(part.shape) == shape and part.dtype == np.uint8:
            progress = {
                int(s): k
                for s, k in state.get("chunks", {}).items()
                if int(s) % cache.CHUNK == 0
                and int(s) // cache.CHUNK < len(chunks)
                and chunks[int(s) // cache.CHUNK] == k
            }
        del part
    except (OSError, ValueError):
        pass
    if not progress:
        files["part"].unlink(missing_ok=True)
        shutil.rmtree(files["part_colour"], ignore_errors=True)
        np.lib.format.open_memmap(files["part"], mode="w+", dtype=np.uint8, shape=shape).flush()
    files["part_colour"].mkdir(exist_ok=True)
    for stale in files["part_colour"].glob("*.npy"):  # colour rows of chunks that will be decoded again
        if int(stale.stem) // cache.CHUNK * cache.CHUNK not in progress:
            stale.unlink()
    resumed = len(progress)
    # a previous complete cache of this list: copy its chunks whose key is unchanged (only stale parts are decoded)
    old_meta, reason = read_valid(files, None)
    old_chunks = old_meta.get("chunk_keys", []) if reason is None and old_meta.get("shape") == list(shape) else []
    reuse = [
        i
        for i, k in enumerate(chunks)
        if i < len(old_chunks) and old_chunks[i] == k and i * cache.CHUNK not in progress
    ]
    if reuse:
        old = CachedImages(files["array"], old_meta, 3)
        part = np.load(files["part"], mmap_mode="r+")
        for i in reuse:
            rows = slice(i * cache.CHUNK, min(n, (i + 1) * cache.CHUNK))
            part[rows] = old.array[rows]
            for row in range(rows.start, rows.stop):
                if row in old.colour_rows:
                    np.save(files["part_colour"] / f"{row}.npy", old[row])
            progress[i * cache.CHUNK] = chunks[i]
        part.flush()
        del part, old
    if resumed or reuse:
        log.info(
            "cache: %d of %d chunks already decoded (%d from an interrupted build, %d unchanged in the previous cache)",
            len(progress),
            len(chunks),
            resumed,
            len(reuse),
        )
    _write_json(files["progress"], {"key": key, "chunks": {str(s): k for s, k in progress.items()}})
    return progress


def build_cache(
    paths: Sequence[str],
    spec: CacheSpec,
    cache_dir: Path,
    key: str,
    workers: int | None = None,
    chunks: list[str] | None = None,
    progress: bool = False,
) -> Path:
    """Decode every image not yet decoded into ``<name>.part.npy`` (in parallel), then rename it to ``<name>.npy``
    and write ``<name>.json``; returns the array path. ``progress`` shows a tqdm bar with the ETA."""
    files = cache_files(cache_dir, cache_name(paths, spec))
    chunks = chunk_keys(paths, spec) if chunks is None else chunks
    n = len(paths)
    done = _start_partial(files, n, spec, key, chunks)
    jobs = [
        (str(files["part"]), paths[s : s + cache.CHUNK], s, spec) for s in range(0, n, cache.CHUNK) if s not in done
    ]
    todo = sum(len(job[1]) for job in jobs)
    workers = max(1, min(workers or os.cpu_count() or 1, len(jobs) or 1))
    log.info(
        "cache: decoding %d of %d images to %s (%dx%d, %s) with %d process(es)",
        todo,
        n,
        files["array"],
        spec.image_size,
        spec.image_size,
        spec.resample,
        workers,
    )
    started = time.perf_counter()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n, initial=n - todo, unit="img", desc="prepare", smoothing=0.1)
    decoded, last_log = 0, started
    if workers == 1 or todo < POOL_MIN_IMAGES:
        results, pool = map(_decode_range, jobs), contextlib.nullcontext()
    else:
        # the workers end on the pool's SIGTERM even where the job ignores it (submitit's handler, inherited by fork)
        pool = multiprocessing.get_context().Pool(workers, signal.signal, (signal.SIGTERM, signal.SIG_DFL))
        results = pool.imap_unordered(_decode_range, jobs)
    try:
        with pool:
            for start, count, colour in results:
                for row, rgb in colour.items():
                    np.save(files["part_colour"] / f"{row}.npy", rgb)
                done[start] = chunks[start // cache.CHUNK]
                _write_json(files["progress"], {"key": key, "chunks": {str(s): k for s, k in done.items()}})
                decoded += count
                if bar is not None:
                    bar.update(count)
                now = time.perf_counter()
                if now - last_log >= PROGRESS_SECONDS or decoded == todo:
                    rate = decoded / max(now - started, 1e-9)
                    log.info(
                        "cache: %d/%d images (%.0f%%), %.0f img/s, %.0f s left",
                        n - todo + decoded,
                        n,
                        100 * (n - todo + decoded) / max(n, 1),
                        rate,
                        (todo - decoded) / rate if rate else 0,
                    )
                    last_log = now
    finally:
        if bar is not None:
            bar.close()
    _finish(files, paths, spec, key, chunks, round(time.perf_counter() - started, 2), todo)
    log.info(
        "cache: %d images in %.1f s -> %s (%.1f MB)",
        todo,
        time.perf_counter() - started,
        files["array"],
        files["array"].stat().st_size / 1e6,
    )
    return files["array"]


def _finish(
    files: dict[str, Path],
    paths: Sequence[str],
    spec: CacheSpec,
    key: str,
    chunks: list[str],
    seconds: float,
    decoded: int,
) -> None:
    """Partial files -> the cache: colour rows gathered, array fsynced, renamed, metadata written last."""
    n = len(paths)
    rows = sorted(int(p.stem) for p in files["part_colour"].glob("*.npy"))
    colour_size = None
    if rows:
        colour = np.stack([np.load(files["part_colour"] / f"{row}.npy") for row in rows])
        tmp = files["colour"].with_name(files["colour"].stem + f".tmp-{os.getpid()}.npy")
        np.save(tmp, colour)
        os.replace(tmp, files["colour"])
        colour_size = files["colour"].stat().st_size
    with open(files["part"], "rb+") as handle:
        os.fsync(handle.fileno())
    files["meta"].unlink(missing_ok=True)  # from here the old cache must never look valid
    os.replace(files["part"], files["array"])  # array first: without a matching JSON it is never read
    stat = files["array"].stat()
    meta = {
        "key": key,
        "format": FORMAT_VERSION,
        "shape": [n, *spec.stored_shape],
        "dtype": "uint8",
        "image_size": spec.image_size,
        "resample": spec.resample,
        "n_images": n,
        "file_size": stat.st_size,
        "file_mtime_ns": stat.st_mtime_ns,
        "sha256": file_digest(files["array"]),
        "colour_rows": rows,
        "colour_file_size": colour_size,
        "chunk_keys": chunks,
        "first_image": paths[0] if paths else None,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "build_seconds": seconds,
        "images_decoded": decoded,
    }
    _write_json(files["meta"], meta)
    if not rows:
        files["colour"].unlink(missing_ok=True)
    files["progress"].unlink(missing_ok=True)
    shutil.rmtree(files["part_colour"], ignore_errors=True)
