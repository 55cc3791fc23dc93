"""Ten-crop evaluation as CheXNet did it: each image resized to 256/224 of the training size from the original file
(256 px for 224 px training), its four corner and centre crops of the training size and their mirror images, the
probabilities averaged. The crops come from the larger image, not from an upsampled copy of the 224 px input."""

from __future__ import annotations

import dataclasses

import torch
from torch.utils.data import DataLoader

from cxr.data.dataset import ChestXrayDataset, collate_batch

RESIZE_RATIO = 256 / 224  # CheXNet: Resize(256), TenCrop(224)


def ten_crop_size(image_size: int) -> int:
    """The size an image is resized to before its ten crops of ``image_size``: 256 for 224."""
    return round(image_size * RESIZE_RATIO)


def ten_crop_loader(datamodule, name: str, batch_size: int = 16) -> DataLoader:
    """The set ``name`` read from its image files at ``ten_crop_size`` of the training size, in table order (the
    datamodule's loaders give the training size; a cache or shards hold only that)."""
    preprocessing = dataclasses.replace(
        datamodule.preprocessing, image_size=ten_crop_size(datamodule.preprocessing.image_size)
    )
    dataset = ChestXrayDataset(datamodule.rows(name), preprocessing, target_columns=datamodule.target_columns)
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_batch)


class TenCrop(torch.nn.Module):
    """The model on ten crops of ``crop_size`` of each (larger) input image, their probabilities averaged; returns
    the logit of the mean probability."""

    def __init__(self, model: torch.nn.Module, crop_size: int):
        super().__init__()
        self.model, self.crop_size = model, int(crop_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        from torchvision.transforms.v2 import functional as TF

        crops = torch.cat(TF.ten_crop(images, [self.crop_size, self.crop_size]))  # (10 N, C, crop, crop), crop-major
        probabilities = torch.sigmoid(self.model(crops).float()).reshape(10, len(images), -1).mean(dim=0)
        logits = torch.logit(probabilities, eps=1e-7)
        return logits.squeeze(1) if probabilities.shape[1] == 1 else logits
