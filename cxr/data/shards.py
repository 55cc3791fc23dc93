"""Streaming shards (``data.format=shards``): each split's prepared images written once with LitData.

Why LitData (measured on the NIH sample, ``python -m cxr.bench --only shards``; docs/data.md "Streaming
shards"): it is Lightning's own streaming format; its ``StreamingDataset`` splits the samples across DDP ranks
and DataLoader workers itself, reshuffles every epoch (``StreamingDataLoader`` sets the epoch), resumes mid-epoch
from ``StreamingDataLoader.state_dict()``, and reads from a local folder or object storage (``s3://``, ``gs://``)
alike; it also offers random access by index, which keeps the evaluation sets in table order. WebDataset
reads tar shards sequentially: splitting is per shard (ranks and workers need at least one shard each and get
uneven counts), and it has no mid-epoch resume.

Each sample is ``{"index": row in the split table, "image": file name, "target", "pixels", "colour"}`` (``target``:
0/1 for the binary task, the float32 multi-hot vector of the findings for ``task=multilabel``), the pixels taken from the preprocessing cache (:mod:`cxr.data.cache`, so every image is decoded once): one grey plane
``size x size x 1`` (RGB programs repeat it on reading; greyscale and RGB programs share the shards), and for the
rare coloured image its RGB decode in ``colour`` (empty otherwise).
A split's folder is named by the split, size, resize filter, count and a hash of the cache key, image names and
targets (and target columns); it is written to a temporary folder, then renamed and marked complete
(``cxr-shards.json``), so a half-written set of shards is never read.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from cxr.data.dataset import Preprocessing
from cxr.errors import ConfigError

log = logging.getLogger(__name__)
MARKER = "cxr-shards.json"
FORMAT_VERSION = 2  # 2: multi-hot targets for task=multilabel
CHUNK_BYTES = "64MB"  # LitData's recommended chunk size for object storage


def shard_targets(table: pd.DataFrame, target_columns: list[str] | None = None) -> np.ndarray:
    """The targets stored with the images: ``target`` (N,) or the ``target_columns`` (N, K) multi-hot."""
    if target_columns is None:
        return table["target"].to_numpy().astype(int)
    return table[list(target_columns)].to_numpy(dtype=np.float32)


def shard_name(split: str, table: pd.DataFrame, cache_key: str, spec, target_columns: list[str] | None = None) -> str:
    """The folder of a split's shards: split, size, filter, count, and a hash of the cache key, names and targets."""
    digest = hashlib.sha256(
        json.dumps(
            {
                "format": FORMAT_VERSION,
                "cache": cache_key,
                "images": table["image"].tolist(),
                "columns": target_columns,
                "targets": shard_targets(table, target_columns).tolist(),
            }
        ).encode()
    ).hexdigest()
    return f"{split}-{spec.image_size}px-{spec.resample}-{len(table)}-{digest[:16]}"


def _sample(i: int, cached, rows: np.ndarray, names: list[str], targets: np.ndarray) -> dict:
    """litdata.optimize's function: one sample from the cache (grey plane; RGB too for a coloured image)."""
    row = int(rows[i])
    colour = (
        np.array(cached.colour[cached.colour_rows[row]]) if row in cached.colour_rows else np.zeros((0, 0, 3), np.uint8)
    )
    target = np.asarray(targets[i], dtype=np.float32) if targets.ndim == 2 else int(targets[i])
    return {"index": i, "image": names[i], "target": target, "pixels": np.array(cached.array[row]), "colour": colour}


def write_shards(
    output_dir: str | Path,
    cached,
    rows,
    table: pd.DataFrame,
    workers: int = 1,
    chunk_bytes: str | int = CHUNK_BYTES,
    target_columns: list[str] | None = None,
) -> Path:
    """Write the images ``cached[rows]`` with the labels of ``table`` (same order) as LitData shards."""
    from litdata import optimize

    output_dir = Path(output_dir)
    tmp = output_dir.with_name(f"{output_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    started = time.perf_counter()
    fn = functools.partial(
        _sample,
        cached=cached,
        rows=np.asarray(rows, dtype=np.int64),
        names=table["image"].astype(str).tolist(),
        targets=shard_targets(table, target_columns),
    )
    optimize(
        fn=fn,
        inputs=list(range(len(table))),
        output_dir=str(tmp),
        chunk_bytes=chunk_bytes,
        num_workers=max(1, workers),
        keep_data_ordered=True,
        verbose=False,
        start_method="fork",
    )
    seconds = time.perf_counter() - started
    size = sum(p.stat().st_size for p in tmp.iterdir())
    (tmp / MARKER).write_text(
        json.dumps(
            {
                "format": FORMAT_VERSION,
                "n_images": len(table),
                "bytes": size,
                "write_seconds": round(seconds, 2),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            }
        )
    )
    shutil.rmtree(output_dir, ignore_errors=True)
    os.replace(tmp, output_dir)
    log.info("shards: %d images -> %s (%.1f MB) in %.1f s", len(table), output_dir, size / 1e6, seconds)
    return output_dir


# the LitData serializers of the samples cxr writes (ints, strings, numpy arrays); others, pickle first, are refused
OWN_SERIALIZERS = ("int", "float", "str", "bool", "numpy", "no_header_numpy")


class ShardFormatError(ConfigError):
    """A shard folder written with serializers cxr does not use (pickle: code would run on reading it)."""


def check_shard_index(folder: str | Path) -> None:
    """Refuse a shard folder whose LitData ``index.json`` names a serializer outside ``OWN_SERIALIZERS``, before
    LitData reads a sample."""
    index = Path(folder) / "index.json"
    try:
        formats = json.loads(index.read_text())["config"]["data_format"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ShardFormatError(
            f"{index}: not a readable LitData index ({type(error).__name__}); delete the folder and it is written again"
        ) from None
    foreign = [f for f in formats if not isinstance(f, str) or f.split(":", 1)[0] not in OWN_SERIALIZERS]
    if foreign:
        raise ShardFormatError(
            f"{index}: serializer(s) {', '.join(map(str, foreign))} are not cxr's own "
            f"({', '.join(OWN_SERIALIZERS)}); shards are read only as cxr writes them (delete "
            "the folder and it is written again)"
        )


def open_or_write_shards(
    shards_dir: str | Path,
    split: str,
    table: pd.DataFrame,
    cached,
    rows,
    spec,
    workers: int = 1,
    target_columns: list[str] | None = None,
) -> Path:
    """The shard folder of this split (written first when missing or incomplete)."""
    folder = Path(shards_dir) / shard_name(split, table, cached.meta["key"], spec, target_columns)
    try:
        marker = json.loads((folder / MARKER).read_text())
        if marker.get("format") == FORMAT_VERSION and marker.get("n_images") == len(table):
            check_shard_index(folder)
            return folder
    except (OSError, ValueError):
        pass
    folder.parent.mkdir(parents=True, exist_ok=True)
    return write_shards(folder, cached, rows, table, workers, target_columns=target_columns)


def _to_item(sample: dict, preprocessing: Preprocessing, transform=None):
    """A LitData sample -> ``(image tensor, target, index)``, as :class:`cxr.data.dataset.ChestXrayDataset`."""
    pixels = sample["pixels"]  # the grey plane (= load_image(channels=1))
    if preprocessing.channels == 3:
        pixels = sample["colour"] if sample["colour"].size else np.repeat(pixels, 3, axis=2)
    image = preprocessing.to_tensor(pixels)
    if transform is not None:
        image = transform(image)
    target = torch.as_tensor(np.asarray(sample["target"], dtype=np.float32))  # () binary, (K,) multi-label
    return image, target, int(sample["index"])


try:
    from litdata import StreamingDataset as _StreamingDataset
except ImportError:  # data.format=shards needs litdata (pip install -e ".[shards]"); everything else works without
    _StreamingDataset = object


class ChestXrayShards(_StreamingDataset):
    """The training split: a LitData ``StreamingDataset`` yielding ``(image, target, index)``, shuffled per epoch
    (with a ``StreamingDataLoader``) and split across DDP ranks and DataLoader workers by LitData.

    ``drop_last=None`` keeps LitData's default: False on one process (every image once per epoch); True under DDP
    (equal counts per rank, so no rank waits at the gradient all-reduce; the few images left over differ from
    epoch to epoch as the order is reshuffled). ``False`` gives every image exactly once per epoch on several
    ranks too, with counts per rank that may differ by up to a chunk.
    """

    def __init__(
        self,
        folder: str | Path,
        preprocessing: Preprocessing,
        transform=None,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool | None = None,
    ):
        if _StreamingDataset is object:
            raise ImportError("data.format=shards needs litdata: pip install litdata (or the cxr[shards] extra)")
        check_shard_index(folder)
        self._drop_last_setting = drop_last
        # LitData applies ``transform`` to every sample it reads: the dict becomes (image, target, index)
        super().__init__(
            str(folder),
            shuffle=shuffle,
            seed=seed,
            drop_last=drop_last,
            transform=functools.partial(_to_item, preprocessing=preprocessing, transform=transform),
        )
        self.preprocessing, self.augmentation = preprocessing, transform

    def detect_ranks(self) -> None:
        """Read the DDP world size and rank again. LitData reads them when the dataset is made, but the datamodule
        makes it before Lightning starts the process group (each rank would then think it is rank 0); the loader
        is made inside ``trainer.fit``, after that, and calls this (before any DataLoader worker starts)."""
        from litdata.utilities.env import _DistributedEnv

        self.distributed_env = _DistributedEnv.detect()
        if self._drop_last_setting is None:
            self.drop_last = self.distributed_env.world_size > 1


class IndexedShards(Dataset):
    """Map-style view of a split's shards in table order (evaluation sets: predictions follow ``rows(name)``)."""

    def __init__(self, folder: str | Path, preprocessing: Preprocessing, transform=None):
        self.folder, self.preprocessing, self.transform = str(folder), preprocessing, transform
        self._dataset = None
        self._length = json.loads((Path(folder) / MARKER).read_text())["n_images"]

    @property
    def dataset(self):
        if self._dataset is None:
            from litdata import StreamingDataset

            check_shard_index(self.folder)
            self._dataset = StreamingDataset(self.folder, shuffle=False)
        return self._dataset

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int):
        return _to_item(self.dataset[int(index)], self.preprocessing, self.transform)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_dataset": None}


def shard_loader(dataset, batch_size: int, num_workers: int = 0, collate_fn=None, pin_memory: bool = False):
    """A ``StreamingDataLoader`` (sets the epoch for reshuffling; ``state_dict`` for mid-epoch resume)."""
    from litdata import StreamingDataLoader

    if isinstance(dataset, ChestXrayShards):
        dataset.detect_ranks()
    return StreamingDataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=collate_fn,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
    )


SHARD_NAME = re.compile(r"^(train|val|test|external)-\d+px-[a-z]+-\d+-[0-9a-f]{16}$")  # as shard_name makes them


def is_cxr_shard_folder(folder: Path) -> bool:
    """A folder cxr made: named as :func:`shard_name` names them and holding cxr's marker file (never a link)."""
    return SHARD_NAME.match(folder.name) is not None and not folder.is_symlink() and (folder / MARKER).is_file()


def list_shards(shards_dir: str | Path) -> list[dict]:
    """Every folder under ``shards_dir``: name, images (None when incomplete), size on disk, and whether cxr made
    it (``ours``: only those are ever pruned)."""
    shards_dir = Path(shards_dir)
    found = []
    for folder in sorted(p for p in shards_dir.iterdir() if p.is_dir()) if shards_dir.is_dir() else []:
        try:
            images = json.loads((folder / MARKER).read_text()).get("n_images")
        except (OSError, ValueError):
            images = None
        found.append(
            {
                "name": folder.name,
                "images": images,
                "folder": folder,
                "ours": is_cxr_shard_folder(folder),
                "bytes": sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()),
            }
        )
    return found
