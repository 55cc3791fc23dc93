"""A torch Dataset that opens, resizes and scales chest X-rays on the fly (nothing is preloaded)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from cxr.data.images import load_image


@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes network input: channels (1 = L, 3 = RGB), size, resampling, and pixel divisor.

    ``pixel_divisor=255`` gives inputs in [0, 1] (thesis programs A, C); ``1`` keeps raw 0-255 (program B).
    ``mean`` and ``std`` then standardise: ``(pixels / pixel_divisor - mean) / std`` (0 and 1: unchanged); a
    list gives one value per channel (ImageNet normalisation: mean [0.485, 0.456, 0.406], std [0.229, 0.224, 0.225]).
    """

    channels: int = 3
    image_size: int = 150
    resample: str = "nearest"
    pixel_divisor: float = 255.0
    mean: float | tuple = 0.0
    std: float | tuple = 1.0

    def __post_init__(self):
        for key in ("mean", "std"):  # per-channel lists as tuples (hashable, frozen)
            value = getattr(self, key)
            if isinstance(value, (list, tuple)) or hasattr(value, "__len__"):
                value = tuple(float(v) for v in value)
                if len(value) not in (1, self.channels):
                    raise ValueError(f"preprocessing.{key} has {len(value)} values for {self.channels} channel(s)")
                object.__setattr__(self, key, value[0] if len(value) == 1 else value)

    def to_tensor(self, pixels: np.ndarray) -> torch.Tensor:
        """uint8 HxWxC -> float32 CxHxW, scaled and standardised."""
        # In numpy, single-threaded: the same float32 values as torch's ops (tests/test_cache.py), without torch's
        # intra-op threads, which cost milliseconds per image when another process holds the other cores.
        array = np.array(pixels.transpose(2, 0, 1), dtype=np.float32, order="C")  # always a copy
        if self.pixel_divisor != 1:
            np.divide(array, np.float32(self.pixel_divisor), out=array)
        if isinstance(self.mean, tuple) or isinstance(self.std, tuple):  # per channel
            shape = (-1, 1, 1)
            np.subtract(array, np.asarray(self.mean, dtype=np.float32).reshape(shape), out=array)
            np.divide(array, np.asarray(self.std, dtype=np.float32).reshape(shape), out=array)
        elif self.mean != 0 or self.std != 1:
            np.subtract(array, np.float32(self.mean), out=array)
            np.divide(array, np.float32(self.std), out=array)
        return torch.from_numpy(array)


class ChestXrayDataset(Dataset):
    """Rows of a label table with a ``path`` column; items are ``(image, target, row_index)``.

    ``target_columns``: None for the binary ``target`` (a scalar per image), or the finding columns of a multi-label
    task (a 0/1 vector per image, in that order)."""

    def __init__(
        self,
        table: pd.DataFrame,
        preprocessing: Preprocessing,
        transform=None,
        source=None,
        source_rows=None,
        target_columns: list[str] | None = None,
    ):
        self.transform = transform  # applied to the float tensor (augmentation of the training split)
        self.paths = table["path"].astype(str).tolist()
        targets = table["target"] if target_columns is None else table[list(target_columns)]
        self.targets = torch.tensor(targets.to_numpy(dtype=np.float32), dtype=torch.float32)
        self.preprocessing = preprocessing
        # data.cache: pre-decoded uint8 images (cxr.data.cache.CachedImages); item i is source[source_rows[i]]
        self.source = source
        self.source_rows = (
            None
            if source is None
            else np.asarray(range(len(self.paths)) if source_rows is None else source_rows, dtype=np.int64)
        )
        if self.source_rows is not None and len(self.source_rows) != len(self.paths):
            raise ValueError(f"{len(self.source_rows)} cache rows for {len(self.paths)} images")

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        p = self.preprocessing
        if self.source is not None:
            pixels = self.source[int(self.source_rows[index])]
        else:
            pixels = load_image(self.paths[index], channels=p.channels, size=p.image_size, resample=p.resample)
        image = p.to_tensor(pixels)
        if self.transform is not None:
            image = self.transform(image)
        return image, self.targets[index], index


def collate_batch(items):
    """``default_collate`` of ``(image, target, index)`` items, with the images stacked by numpy in the main process.

    ``torch.stack`` spreads a batch-sized copy over torch's intra-op threads, which costs milliseconds per batch
    when another process holds the other cores (python -m cxr.bench); numpy copies in one thread. The result is
    identical. In DataLoader workers (one thread each) ``default_collate`` runs as is (it stacks into shared memory).
    """
    from torch.utils.data import default_collate, get_worker_info

    first = items[0][0] if items else None
    if get_worker_info() is not None or not all(
        type(item[0]) is torch.Tensor
        and item[0].shape == first.shape
        and item[0].dtype == first.dtype
        and item[0].device.type == "cpu"
        and not item[0].requires_grad
        for item in items
    ):
        return default_collate(items)
    images = torch.from_numpy(np.stack([item[0].numpy() for item in items]))
    return [images, *default_collate([tuple(item[1:]) for item in items])]


def augmentation_transform(
    degrees: float = 0.0, translate: float = 0.0, scale=(1.0, 1.0), horizontal_flip: bool = False
):
    """Random affine (rotation in degrees, shift as a fraction of the size, zoom range) and optional flip."""
    from torchvision.transforms import v2

    identity = not degrees and not translate and (not scale or tuple(scale) == (1.0, 1.0))
    steps = (
        []
        if identity
        else [
            v2.RandomAffine(
                degrees=degrees,
                translate=(translate, translate) if translate else None,
                scale=tuple(scale) if scale else None,
            )
        ]
    )
    if horizontal_flip:
        steps.append(v2.RandomHorizontalFlip())
    return v2.Compose(steps)
