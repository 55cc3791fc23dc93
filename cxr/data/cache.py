"""Preprocessing cache: every image decoded and resized once into a uint8 memory-mapped ``.npy`` array.

``data.cache=true`` makes the datamodule call :func:`open_or_build` once per image list (all labelled images
of the label file, so every split and every program with the same preprocessing share one cache; the external
set gets its own). The cache holds exactly what :func:`cxr.data.images.load_image` returns (``N x size x size x
channels`` uint8); normalisation (``pixel_divisor``, mean/std) and augmentation stay on the fly.

Key: SHA-256 of the image paths (in order), image size, channels, resample filter, every file's size and
mtime, the Pillow version and the cache format. A cache is read only when its metadata JSON holds the same key
and the array file still has the size and mtime recorded when it was written; anything else (an image edited,
added or removed, another size, a truncated or rewritten array, a build killed half way) is rebuilt, never
read. Builds write to temporary files and rename them into place (array first, then metadata), under a lock
file so that concurrent runs build once.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import multiprocessing
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from cxr.data import images as _images

log = logging.getLogger(__name__)
FORMAT_VERSION = 1
PROGRESS_SECONDS = 10.0   # interval between progress log lines while building
POOL_MIN_IMAGES = 64      # smaller lists are decoded in this process (a pool costs more than it saves)


class CacheError(RuntimeError):
    """A cache file that does not match its metadata (stale, truncated, rewritten)."""


@dataclass(frozen=True)
class CacheSpec:
    """What a cache depends on besides the image files: size, channels, resample filter."""
    image_size: int
    channels: int
    resample: str

    @classmethod
    def of(cls, preprocessing) -> "CacheSpec":
        get = preprocessing.get if isinstance(preprocessing, dict) else lambda k: getattr(preprocessing, k)
        return cls(int(get("image_size")), int(get("channels")), str(get("resample")))

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.image_size, self.image_size, self.channels)


def content_key(paths: Sequence[str | os.PathLike], spec: CacheSpec) -> str:
    """SHA-256 over the preprocessing, the Pillow version and every path with its file size and mtime."""
    import PIL

    digest = hashlib.sha256()
    digest.update(json.dumps({"format": FORMAT_VERSION, "pillow": PIL.__version__, "size": spec.image_size,
                              "channels": spec.channels, "resample": spec.resample, "n": len(paths)},
                             sort_keys=True).encode())
    for path in paths:
        stat = os.stat(path)  # follows symlinks: the image's own size and mtime
        digest.update(f"\n{os.fspath(path)}\t{stat.st_size}\t{stat.st_mtime_ns}".encode())
    return digest.hexdigest()


def cache_name(paths: Sequence[str | os.PathLike], spec: CacheSpec) -> str:
    """The file stem for this image list and preprocessing: one cache per list, rebuilt in place on change."""
    listing = hashlib.sha256("\n".join(os.fspath(p) for p in paths).encode()).hexdigest()[:16]
    return f"images-{spec.image_size}px-{spec.channels}ch-{spec.resample}-{len(paths)}-{listing}"


class CachedImages:
    """A read-only view of a built cache: ``images[i]`` is the uint8 array of the i-th path.

    Picklable without its data (DataLoader workers reopen the memory map), and safe across ``fork``.
    """

    def __init__(self, array_path: str | Path, meta: dict):
        self.array_path, self.meta = Path(array_path), meta
        self.shape = tuple(meta["shape"])
        self._array: np.ndarray | None = None

    @property
    def array(self) -> np.ndarray:
        if self._array is None:
            self._array = np.load(self.array_path, mmap_mode="r")
            if self._array.shape != self.shape or self._array.dtype != np.uint8:
                raise CacheError(f"{self.array_path}: shape {self._array.shape} {self._array.dtype}, "
                                 f"metadata says {self.shape} uint8")
        return self._array

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: int) -> np.ndarray:
        return np.array(self.array[index])  # a writable copy, as load_image returns

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_array": None}


def _files(cache_dir: Path, name: str) -> tuple[Path, Path, Path]:
    return cache_dir / f"{name}.npy", cache_dir / f"{name}.json", cache_dir / f"{name}.lock"


def open_cache(paths: Sequence[str | os.PathLike], spec: CacheSpec, cache_dir: str | Path,
               key: str | None = None) -> CachedImages | None:
    """The cache of ``paths`` if a valid one exists, else None (stale, incomplete and truncated ones too)."""
    array_path, meta_path, _ = _files(Path(cache_dir), cache_name(paths, spec))
    key = key or content_key(paths, spec)
    try:
        meta = json.loads(meta_path.read_text())
        stat = array_path.stat()
    except (OSError, ValueError):
        return None
    reason = None
    if meta.get("key") != key:
        reason = "the images or the preprocessing changed"
    elif stat.st_size != meta.get("file_size") or stat.st_mtime_ns != meta.get("file_mtime_ns"):
        reason = "the array file was modified or truncated after it was written"
    if reason:
        log.info("cache %s is stale (%s): rebuilding", array_path.name, reason)
        return None
    cached = CachedImages(array_path, meta)
    try:
        cached.array  # header, shape and dtype checked now rather than in a DataLoader worker
    except (OSError, ValueError, CacheError) as error:
        log.warning("cache %s is unreadable (%s): rebuilding", array_path.name, error)
        return None
    return cached


def open_or_build(paths: Sequence[str | os.PathLike], preprocessing, cache_dir: str | Path,
                  workers: int | None = None) -> CachedImages:
    """Open the valid cache of ``paths`` under ``cache_dir``, building it first when needed."""
    spec = CacheSpec.of(preprocessing)
    paths = [os.fspath(p) for p in paths]
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    key = content_key(paths, spec)
    cached = open_cache(paths, spec, cache_dir, key)
    if cached is not None:
        log.info("cache: %d images read from %s", len(cached), cached.array_path)
        return cached
    with _lock(_files(cache_dir, cache_name(paths, spec))[2]):
        cached = open_cache(paths, spec, cache_dir, key)  # another process may have built it meanwhile
        if cached is None:
            build_cache(paths, spec, cache_dir, key, workers)
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


def _decode_range(job: tuple) -> int:
    """Worker: decode paths[start:stop] into rows start:stop of the temporary array file."""
    array_path, paths, start, spec = job
    array = np.load(array_path, mmap_mode="r+")
    for offset, path in enumerate(paths):
        array[start + offset] = _images.load_image(path, channels=spec.channels, size=spec.image_size,
                                                   resample=spec.resample)
    array.flush()
    del array
    return len(paths)


def build_cache(paths: Sequence[str], spec: CacheSpec, cache_dir: Path, key: str,
                workers: int | None = None) -> Path:
    """Decode every image into ``<name>.npy`` (in parallel) and write ``<name>.json``; returns the array path."""
    array_path, meta_path, _ = _files(cache_dir, cache_name(paths, spec))
    tmp_array = array_path.with_name(f"{array_path.stem}.tmp-{os.getpid()}.npy")
    tmp_meta = meta_path.with_name(f"{meta_path.stem}.tmp-{os.getpid()}.json")
    meta_path.unlink(missing_ok=True)  # a half-replaced cache must never look valid
    n = len(paths)
    workers = max(1, min(workers or os.cpu_count() or 1, n // 16 or 1))
    log.info("cache: decoding %d images to %s (%dx%d, %d channel(s), %s) with %d process(es)", n,
             array_path, spec.image_size, spec.image_size, spec.channels, spec.resample, workers)
    started = time.perf_counter()
    try:
        array = np.lib.format.open_memmap(tmp_array, mode="w+", dtype=np.uint8, shape=(n, *spec.shape))
        del array
        chunk = max(1, min(256, -(-n // (workers * 8))))
        jobs = [(str(tmp_array), paths[i:i + chunk], i, spec) for i in range(0, n, chunk)]
        done, last_log = 0, started
        if workers == 1 or n < POOL_MIN_IMAGES:
            results = map(_decode_range, jobs)
            pool = contextlib.nullcontext()
        else:
            pool = multiprocessing.get_context().Pool(workers)
            results = pool.imap_unordered(_decode_range, jobs)
        with pool:
            for count in results:
                done += count
                now = time.perf_counter()
                if now - last_log >= PROGRESS_SECONDS or done == n:
                    rate = done / max(now - started, 1e-9)
                    log.info("cache: %d/%d images (%.0f%%), %.0f img/s, %.0f s left", done, n, 100 * done / n,
                             rate, (n - done) / rate if rate else 0)
                    last_log = now
        with open(tmp_array, "rb+") as handle:
            os.fsync(handle.fileno())
        stat = tmp_array.stat()
        meta = {"key": key, "format": FORMAT_VERSION, "shape": [n, *spec.shape], "dtype": "uint8",
                "image_size": spec.image_size, "channels": spec.channels, "resample": spec.resample,
                "n_images": n, "file_size": stat.st_size, "file_mtime_ns": stat.st_mtime_ns,
                "sha256": _file_sha256(tmp_array), "first_image": paths[0] if paths else None,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "build_seconds": round(time.perf_counter() - started, 2)}
        os.replace(tmp_array, array_path)  # array first: without a matching JSON it is never read
        tmp_meta.write_text(json.dumps(meta, indent=1))
        os.replace(tmp_meta, meta_path)
    finally:
        tmp_array.unlink(missing_ok=True)
        tmp_meta.unlink(missing_ok=True)
    log.info("cache: %d images in %.1f s -> %s (%.1f MB)", n, time.perf_counter() - started, array_path,
             array_path.stat().st_size / 1e6)
    return array_path


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_cache(cached: CachedImages) -> bool:
    """Full check of the array bytes against the SHA-256 recorded at build time (reads the whole file)."""
    return _file_sha256(cached.array_path) == cached.meta.get("sha256")
