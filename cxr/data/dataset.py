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
    """

    channels: int = 3
    image_size: int = 150
    resample: str = "nearest"
    pixel_divisor: float = 255.0

    def to_tensor(self, pixels: np.ndarray) -> torch.Tensor:
        """uint8 HxWxC -> float32 CxHxW divided by ``pixel_divisor``."""
        tensor = torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1))).float()
        return tensor / self.pixel_divisor if self.pixel_divisor != 1 else tensor


class ChestXrayDataset(Dataset):
    """Rows of a label table with a ``path`` column; items are ``(image, target, row_index)``."""

    def __init__(self, table: pd.DataFrame, preprocessing: Preprocessing, transform=None):
        self.transform = transform  # applied to the float tensor (augmentation of the training split)
        self.paths = table["path"].astype(str).tolist()
        self.targets = torch.tensor(table["target"].to_numpy(), dtype=torch.float32)
        self.preprocessing = preprocessing

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        p = self.preprocessing
        pixels = load_image(self.paths[index], channels=p.channels, size=p.image_size, resample=p.resample)
        image = p.to_tensor(pixels)
        if self.transform is not None:
            image = self.transform(image)
        return image, self.targets[index], index


def augmentation_transform(degrees: float = 0.0, translate: float = 0.0, scale=(1.0, 1.0),
                           horizontal_flip: bool = False):
    """Random affine (rotation in degrees, shift as a fraction of the size, zoom range) and optional flip."""
    from torchvision.transforms import v2

    steps = [v2.RandomAffine(degrees=degrees, translate=(translate, translate) if translate else None,
                             scale=tuple(scale) if scale else None)]
    if horizontal_flip:
        steps.append(v2.RandomHorizontalFlip())
    return v2.Compose(steps)
