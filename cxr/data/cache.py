"""Preprocessing cache: every image decoded and resized once into a uint8 memory-mapped ``.npy`` array.

``data.cache=true`` makes the datamodule call :func:`open_or_build` once per image list (all labelled images
of the label file, so every split and every program with the same size and resize filter share one cache; the
external set gets its own). ``python -m cxr.prepare`` builds it ahead of training with a progress bar.

One channel is stored once: X-rays are grey, and an RGB program's input is that grey plane copied three times,
so the array holds ``N x size x size x 1`` and RGB readers repeat it on the fly. The rare image whose RGB decode
is really coloured keeps its RGB pixels in ``<name>.colour.npy``; so a read returns exactly what
:func:`cxr.data.images.load_image` returns for the reader's channels, and greyscale (B) and RGB (A, C) programs
share one cache. Normalisation (``pixel_divisor``, mean/std) and augmentation stay on the fly.

Key: SHA-256 over fixed chunks of :data:`CHUNK` images, each chunk keyed by its paths (in order) with every
file's size and mtime, the image size, resize filter, Pillow version and cache format. A cache is read only when
its metadata JSON holds the same key and the array file still has the size and mtime recorded when it was
written; anything else is rebuilt, never read. Builds are resumable and incremental: decoded chunks go to
``<name>.part.npy`` with their keys in ``<name>.part-progress.json``, so a killed build continues where it
stopped, and a rebuild copies every chunk whose key is unchanged from the previous cache, decoding only the stale
ones. The finished array is renamed into place (array first, then metadata) under a lock file so that concurrent
runs build once.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from cxr.data import images as _images

log = logging.getLogger(__name__)
FORMAT_VERSION = 2        # 2: one grey plane + coloured exceptions, chunk keys (resume, incremental rebuild)
CHUNK = 256               # images per chunk: the unit of parallel work, of resuming and of incremental rebuilds
PROGRESS_SECONDS = 10.0   # interval between progress log lines while building
POOL_MIN_IMAGES = 64      # smaller lists are decoded in this process (a pool costs more than it saves)
GREY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")  # decode to grey by construction


class CacheError(RuntimeError):
    """A cache file that does not match its metadata (stale, truncated, rewritten)."""


@dataclass(frozen=True)
class CacheSpec:
    """What a cache depends on besides the image files: size and resample filter; ``channels`` is the reader's."""
    image_size: int
    channels: int
    resample: str

    @classmethod
    def of(cls, preprocessing) -> "CacheSpec":
        get = preprocessing.get if isinstance(preprocessing, dict) else lambda k: getattr(preprocessing, k)
        return cls(int(get("image_size")), int(get("channels")), str(get("resample")))

    @property
    def shape(self) -> tuple[int, int, int]:
        """What a read returns per image."""
        return (self.image_size, self.image_size, self.channels)

    @property
    def stored_shape(self) -> tuple[int, int, int]:
        return (self.image_size, self.image_size, 1)


def _stats(paths: Sequence[str]) -> list[str]:
    lines = []
    for path in paths:
        stat = os.stat(path)  # follows symlinks: the image's own size and mtime
        lines.append(f"{os.fspath(path)}\t{stat.st_size}\t{stat.st_mtime_ns}")
    return lines


def chunk_keys(paths: Sequence[str | os.PathLike], spec: CacheSpec) -> list[str]:
    """One SHA-256 per chunk of :data:`CHUNK` images: preprocessing, Pillow version, paths, sizes and mtimes."""
    import PIL

    head = json.dumps({"format": FORMAT_VERSION, "pillow": PIL.__version__, "size": spec.image_size,
                       "resample": spec.resample}, sort_keys=True)
    lines = _stats([os.fspath(p) for p in paths])
    return [hashlib.sha256("\n".join([head, str(start), *lines[start:start + CHUNK]]).encode()).hexdigest()
            for start in range(0, len(lines), CHUNK)]


def content_key(paths: Sequence[str | os.PathLike], spec: CacheSpec, chunks: list[str] | None = None) -> str:
    """SHA-256 over the number of images and every chunk key."""
    chunks = chunk_keys(paths, spec) if chunks is None else chunks
    return hashlib.sha256("\n".join([str(len(paths)), *chunks]).encode()).hexdigest()


def cache_name(paths: Sequence[str | os.PathLike], spec: CacheSpec) -> str:
    """The file stem for this image list and preprocessing: one cache per list, rebuilt in place on change."""
    listing = hashlib.sha256("\n".join(os.fspath(p) for p in paths).encode()).hexdigest()[:16]
    return f"images-{spec.image_size}px-{spec.resample}-{len(paths)}-{listing}"


class CachedImages:
    """A read-only view of a built cache: ``images[i]`` is the uint8 ``size x size x channels`` array of the
    i-th path. Picklable without its data (DataLoader workers reopen the memory map), and safe across ``fork``."""

    def __init__(self, array_path: str | Path, meta: dict, channels: int = 1):
        self.array_path, self.meta, self.channels = Path(array_path), meta, int(channels)
        self.stored_shape = tuple(meta["shape"])
        self.shape = (*self.stored_shape[:3], self.channels)
        self.colour_rows = {int(row): i for i, row in enumerate(meta.get("colour_rows", []))}
        self._array: np.ndarray | None = None
        self._colour: np.ndarray | None = None

    @property
    def colour_path(self) -> Path:
        return self.array_path.with_name(self.array_path.stem + ".colour.npy")

    @property
    def array(self) -> np.ndarray:
        """The stored grey planes, ``N x size x size x 1``."""
        if self._array is None:
            self._array = np.load(self.array_path, mmap_mode="r")
            if self._array.shape != self.stored_shape or self._array.dtype != np.uint8:
                raise CacheError(f"{self.array_path}: shape {self._array.shape} {self._array.dtype}, "
                                 f"metadata says {self.stored_shape} uint8")
        return self._array

    @property
    def colour(self) -> np.ndarray:
        if self._colour is None:
            self._colour = np.load(self.colour_path, mmap_mode="r")
            if self._colour.shape != (len(self.colour_rows), *self.stored_shape[1:3], 3):
                raise CacheError(f"{self.colour_path}: shape {self._colour.shape} does not match the metadata")
        return self._colour

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: int) -> np.ndarray:
        index = int(index)
        if self.channels == 3:
            if index in self.colour_rows:
                return np.array(self.colour[self.colour_rows[index]])
            return np.repeat(self.array[index], 3, axis=2)  # a new writable array, as load_image returns
        return np.array(self.array[index])

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_array": None, "_colour": None}


def _files(cache_dir: Path, name: str) -> dict[str, Path]:
    return {"array": cache_dir / f"{name}.npy", "meta": cache_dir / f"{name}.json",
            "colour": cache_dir / f"{name}.colour.npy", "lock": cache_dir / f"{name}.lock",
            "part": cache_dir / f"{name}.part.npy", "progress": cache_dir / f"{name}.part-progress.json",
            "part_colour": cache_dir / f"{name}.part-colour"}


def _read_valid(files: dict[str, Path], key: str | None) -> tuple[dict, str | None]:
    """(metadata, reason it cannot be read or None). ``key=None`` checks the files, not the key."""
    try:
        meta = json.loads(files["meta"].read_text())
        stat = files["array"].stat()
    except (OSError, ValueError):
        return {}, "no cache"
    if meta.get("format") != FORMAT_VERSION:
        return meta, f"format {meta.get('format')} (this version writes {FORMAT_VERSION})"
    if key is not None and meta.get("key") != key:
        return meta, "the images or the preprocessing changed"
    if stat.st_size != meta.get("file_size") or stat.st_mtime_ns != meta.get("file_mtime_ns"):
        return meta, "the array file was modified or truncated after it was written"
    if meta.get("colour_rows"):
        try:
            if files["colour"].stat().st_size != meta.get("colour_file_size"):
                return meta, "the colour file was modified or truncated"
        except OSError:
            return meta, "the colour file is missing"
    return meta, None


def open_cache(paths: Sequence[str | os.PathLike], spec: CacheSpec, cache_dir: str | Path,
               key: str | None = None) -> CachedImages | None:
    """The cache of ``paths`` if a valid one exists, else None (stale, incomplete and truncated ones too)."""
    files = _files(Path(cache_dir), cache_name(paths, spec))
    meta, reason = _read_valid(files, key or content_key(paths, spec))
    if reason:
        if reason != "no cache":
            log.info("cache %s is stale (%s): rebuilding", files["array"].name, reason)
        return None
    cached = CachedImages(files["array"], meta, spec.channels)
    try:
        cached.array  # header, shape and dtype checked now rather than in a DataLoader worker
        if cached.colour_rows:
            cached.colour
    except (OSError, ValueError, CacheError) as error:
        log.warning("cache %s is unreadable (%s): rebuilding", files["array"].name, error)
        return None
    return cached


def open_or_build(paths: Sequence[str | os.PathLike], preprocessing, cache_dir: str | Path,
                  workers: int | None = None, progress: bool = False) -> CachedImages:
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
    with _lock(_files(cache_dir, cache_name(paths, spec))["lock"]):
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
            progress = {int(s): k for s, k in state.get("chunks", {}).items()
                        if int(s) % CHUNK == 0 and int(s) // CHUNK < len(chunks) and chunks[int(s) // CHUNK] == k}
        del part
    except (OSError, ValueError):
        pass
    if not progress:
        files["part"].unlink(missing_ok=True)
        shutil.rmtree(files["part_colour"], ignore_errors=True)
        np.lib.format.open_memmap(files["part"], mode="w+", dtype=np.uint8, shape=shape).flush()
    files["part_colour"].mkdir(exist_ok=True)
    for stale in files["part_colour"].glob("*.npy"):  # colour rows of chunks that will be decoded again
        if int(stale.stem) // CHUNK * CHUNK not in progress:
            stale.unlink()
    resumed = len(progress)
    # a previous complete cache of this list: copy its chunks whose key is unchanged (only stale parts are decoded)
    old_meta, reason = _read_valid(files, None)
    old_chunks = old_meta.get("chunk_keys", []) if reason is None and old_meta.get("shape") == list(shape) else []
    reuse = [i for i, k in enumerate(chunks) if i < len(old_chunks) and old_chunks[i] == k and i * CHUNK not in progress]
    if reuse:
        old = CachedImages(files["array"], old_meta, 3)
        part = np.load(files["part"], mmap_mode="r+")
        for i in reuse:
            rows = slice(i * CHUNK, min(n, (i + 1) * CHUNK))
            part[rows] = old.array[rows]
            for row in range(rows.start, rows.stop):
                if row in old.colour_rows:
                    np.save(files["part_colour"] / f"{row}.npy", old[row])
            progress[i * CHUNK] = chunks[i]
        part.flush()
        del part, old
    if resumed or reuse:
        log.info("cache: %d of %d chunks already decoded (%d from an interrupted build, %d unchanged in the "
                 "previous cache)", len(progress), len(chunks), resumed, len(reuse))
    _write_json(files["progress"], {"key": key, "chunks": {str(s): k for s, k in progress.items()}})
    return progress


def build_cache(paths: Sequence[str], spec: CacheSpec, cache_dir: Path, key: str,
                workers: int | None = None, chunks: list[str] | None = None, progress: bool = False) -> Path:
    """Decode every image not yet decoded into ``<name>.part.npy`` (in parallel), then rename it to ``<name>.npy``
    and write ``<name>.json``; returns the array path. ``progress`` shows a tqdm bar with the ETA."""
    files = _files(cache_dir, cache_name(paths, spec))
    chunks = chunk_keys(paths, spec) if chunks is None else chunks
    n = len(paths)
    done = _start_partial(files, n, spec, key, chunks)
    jobs = [(str(files["part"]), paths[s:s + CHUNK], s, spec) for s in range(0, n, CHUNK) if s not in done]
    todo = sum(len(job[1]) for job in jobs)
    workers = max(1, min(workers or os.cpu_count() or 1, len(jobs) or 1))
    log.info("cache: decoding %d of %d images to %s (%dx%d, %s) with %d process(es)", todo, n, files["array"],
             spec.image_size, spec.image_size, spec.resample, workers)
    started = time.perf_counter()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n, initial=n - todo, unit="img", desc="prepare", smoothing=0.1)
    decoded, last_log = 0, started
    if workers == 1 or todo < POOL_MIN_IMAGES:
        results, pool = map(_decode_range, jobs), contextlib.nullcontext()
    else:
        pool = multiprocessing.get_context().Pool(workers)
        results = pool.imap_unordered(_decode_range, jobs)
    try:
        with pool:
            for start, count, colour in results:
                for row, rgb in colour.items():
                    np.save(files["part_colour"] / f"{row}.npy", rgb)
                done[start] = chunks[start // CHUNK]
                _write_json(files["progress"], {"key": key, "chunks": {str(s): k for s, k in done.items()}})
                decoded += count
                if bar is not None:
                    bar.update(count)
                now = time.perf_counter()
                if now - last_log >= PROGRESS_SECONDS or decoded == todo:
                    rate = decoded / max(now - started, 1e-9)
                    log.info("cache: %d/%d images (%.0f%%), %.0f img/s, %.0f s left", n - todo + decoded, n,
                             100 * (n - todo + decoded) / max(n, 1), rate, (todo - decoded) / rate if rate else 0)
                    last_log = now
    finally:
        if bar is not None:
            bar.close()
    _finish(files, paths, spec, key, chunks, round(time.perf_counter() - started, 2), todo)
    log.info("cache: %d images in %.1f s -> %s (%.1f MB)", todo, time.perf_counter() - started, files["array"],
             files["array"].stat().st_size / 1e6)
    return files["array"]


def _finish(files: dict[str, Path], paths: Sequence[str], spec: CacheSpec, key: str, chunks: list[str],
            seconds: float, decoded: int) -> None:
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
    meta = {"key": key, "format": FORMAT_VERSION, "shape": [n, *spec.stored_shape], "dtype": "uint8",
            "image_size": spec.image_size, "resample": spec.resample, "n_images": n,
            "file_size": stat.st_size, "file_mtime_ns": stat.st_mtime_ns, "sha256": _file_sha256(files["array"]),
            "colour_rows": rows, "colour_file_size": colour_size, "chunk_keys": chunks,
            "first_image": paths[0] if paths else None, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "build_seconds": seconds, "images_decoded": decoded}
    _write_json(files["meta"], meta)
    if not rows:
        files["colour"].unlink(missing_ok=True)
    files["progress"].unlink(missing_ok=True)
    shutil.rmtree(files["part_colour"], ignore_errors=True)


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_cache(cached: CachedImages) -> bool:
    """Full check of the array bytes against the SHA-256 recorded at build time (reads the whole file)."""
    return _file_sha256(cached.array_path) == cached.meta.get("sha256")


def list_caches(cache_dir: str | Path) -> list[dict]:
    """Every cache (finished or partial) under ``cache_dir``: name, state, images, size on disk, creation time."""
    cache_dir = Path(cache_dir)
    if not cache_dir.is_dir():
        return []
    names = {p.name.split(".", 1)[0] for p in cache_dir.iterdir() if p.name.startswith("images-")}
    found = []
    for name in sorted(names):
        files = _files(cache_dir, name)
        meta, reason = _read_valid(files, None)
        on_disk = [p for p in cache_dir.iterdir() if p.name.split(".", 1)[0] == name]
        size = sum(p.stat().st_size if p.is_file() else sum(q.stat().st_size for q in p.iterdir())
                   for p in on_disk)
        state = "complete" if reason is None else "partial" if files["progress"].exists() else f"invalid ({reason})"
        found.append({"name": name, "state": state, "images": meta.get("n_images"), "bytes": size,
                      "created": meta.get("created"), "first_image": meta.get("first_image"), "files": on_disk})
    return found


def prune_caches(cache_dir: str | Path, keep: Sequence[str] = ()) -> list[dict]:
    """Delete every cache under ``cache_dir`` whose name is not in ``keep``; returns what was deleted."""
    deleted = [entry for entry in list_caches(cache_dir) if entry["name"] not in set(keep)]
    for entry in deleted:
        for path in entry["files"]:
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    return deleted
