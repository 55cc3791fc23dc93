"""Preprocessing cache: every image decoded and resized once into a uint8 memory-mapped ``.npy`` array.

``data.cache=true`` makes the datamodule call :func:`cxr.data.cache_build.open_or_build` once per image list (all labelled images
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

This module holds the format: keys, file names, validity and reading. :mod:`cxr.data.cache_build` builds
caches, :mod:`cxr.data.cache_admin` lists and prunes them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cxr.artifacts import file_digest
from cxr.errors import UserError

log = logging.getLogger(__name__)
FORMAT_VERSION = 2  # 2: one grey plane + coloured exceptions, chunk keys (resume, incremental rebuild)
CHUNK = 256  # images per chunk: the unit of parallel work, of resuming and of incremental rebuilds


class CacheError(UserError, RuntimeError):
    """A cache file that does not match its metadata (stale, truncated, rewritten)."""


@dataclass(frozen=True)
class CacheSpec:
    """What a cache depends on besides the image files: size and resample filter; ``channels`` is the reader's."""

    image_size: int
    channels: int
    resample: str

    @classmethod
    def of(cls, preprocessing) -> CacheSpec:
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

    head = json.dumps(
        {"format": FORMAT_VERSION, "pillow": PIL.__version__, "size": spec.image_size, "resample": spec.resample},
        sort_keys=True,
    )
    lines = _stats([os.fspath(p) for p in paths])
    return [
        hashlib.sha256("\n".join([head, str(start), *lines[start : start + CHUNK]]).encode()).hexdigest()
        for start in range(0, len(lines), CHUNK)
    ]


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
                raise CacheError(
                    f"{self.array_path}: shape {self._array.shape} {self._array.dtype}, "
                    f"metadata says {self.stored_shape} uint8"
                )
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


def cache_files(cache_dir: Path, name: str) -> dict[str, Path]:
    return {
        "array": cache_dir / f"{name}.npy",
        "meta": cache_dir / f"{name}.json",
        "colour": cache_dir / f"{name}.colour.npy",
        "lock": cache_dir / f"{name}.lock",
        "part": cache_dir / f"{name}.part.npy",
        "progress": cache_dir / f"{name}.part-progress.json",
        "part_colour": cache_dir / f"{name}.part-colour",
    }


def read_valid(files: dict[str, Path], key: str | None) -> tuple[dict, str | None]:
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


def open_cache(
    paths: Sequence[str | os.PathLike], spec: CacheSpec, cache_dir: str | Path, key: str | None = None
) -> CachedImages | None:
    """The cache of ``paths`` if a valid one exists, else None (stale, incomplete and truncated ones too)."""
    files = cache_files(Path(cache_dir), cache_name(paths, spec))
    meta, reason = read_valid(files, key or content_key(paths, spec))
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


def verify_cache(cached: CachedImages) -> bool:
    """Full check of the array bytes against the SHA-256 recorded at build time (reads the whole file)."""
    return file_digest(cached.array_path) == cached.meta.get("sha256")
