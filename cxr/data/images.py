"""Find image files under a data root and decode them the way the thesis did (resize, then convert).

NIH ships 8-bit grey PNGs, a few RGBA ones and some 16-bit grey ones; all come out as 8-bit ``L`` or ``RGB``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile

from cxr.data.input_limits import check_image_header, walk_once
from cxr.errors import UserError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
COLOR_MODES = {1: "L", 3: "RGB"}
RESAMPLING = {
    # Pillow < 7 (the thesis, 2018) resized with NEAREST by default; Pillow >= 7 with BICUBIC.
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
}
ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated download must fail, never load half black


class ImageReadError(UserError, OSError):
    """An image file that cannot be decoded; the message names the file."""


class ImageIndexError(UserError, ValueError):
    """The image folder does not match the label file (missing or ambiguous files)."""


def index_images(root: str | Path) -> dict[str, Path]:
    """Map each image file name to its path, walking ``root`` once.

    Files directly in ``root`` (a flat folder) and in subfolders named ``images*`` (the NIH release layout
    ``images_001/images/...`` to ``images_012/images/...``) are indexed; other subfolders are not.
    """
    root = Path(root)
    if not root.is_dir():
        raise ImageIndexError(f"image folder not found: {root} (set data.root to the folder that holds the images)")
    found: dict[str, Path] = {}
    for folder, subfolders, files in walk_once(root):
        relative = Path(folder).relative_to(root)
        subfolders[:] = sorted(d for d in subfolders if d.lower().startswith("images"))
        if relative.parts and not all(part.lower().startswith("images") for part in relative.parts):
            continue
        for name in files:
            if not name.lower().endswith(IMAGE_EXTENSIONS):
                continue
            path = Path(folder) / name
            if name in found:
                raise ImageIndexError(f"image name {name!r} is found twice under {root}: {found[name]} and {path}")
            found[name] = path
    return found


def _to_8bit(image: Image.Image) -> Image.Image:
    """Bring 16/32-bit grey, float, palette and bilevel images to an 8-bit mode Pillow can resize."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16-bit PNGs: scale the full 0-65535 range to 0-255 (Image.convert('L') would clip at 255)
        values = np.asarray(image, dtype=np.float64)
        return Image.fromarray(np.clip(np.rint(values / 257.0), 0, 255).astype(np.uint8), mode="L")
    if image.mode == "F":
        values = np.asarray(image, dtype=np.float64)
        return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), mode="L")
    if image.mode == "P":
        return image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode == "1":
        return image.convert("L")
    return image


def load_image(path: str | Path, channels: int = 3, size: int = 150, resample: str = "nearest") -> np.ndarray:
    """Decode one image to a ``size x size x channels`` uint8 array (resize first, then convert, as the thesis)."""
    if channels not in COLOR_MODES:
        raise ValueError(f"channels must be 1 (greyscale) or 3 (RGB), got {channels}")
    if resample not in RESAMPLING:
        raise ValueError(f"unknown resample {resample!r}; choose one of {', '.join(RESAMPLING)}")
    if str(path).lower().endswith(DICOM_SUFFIXES):  # VinDr-CXR, RSNA: through the project's DICOM reader
        return _load_dicom(path, channels, size, resample)
    try:
        with Image.open(path) as image:
            check_image_header(image)  # the header's claim, before decoding (cxr.data.input_limits)
            image.load()
            array = prepare_image(image, channels, size, resample)
    except FileNotFoundError as error:
        raise ImageReadError(f"image file not found: {path}") from error
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        size_note = " (zero-byte file)" if os.path.exists(path) and os.path.getsize(path) == 0 else ""
        raise ImageReadError(f"cannot read image {path}{size_note}: {error}") from error
    return array


DICOM_SUFFIXES = (".dcm", ".dicom")


def _load_dicom(path, channels: int, size: int, resample: str) -> np.ndarray:
    """A DICOM file as training input: cxr.data.dicom's windowed 8-bit pixels (as predict.py reads DICOM), then
    the same resize and conversion as a PNG."""
    return prepare_image(Image.fromarray(dicom_pixels(path), mode="L"), channels, size, resample)


def dicom_pixels(path) -> np.ndarray:
    """The H x W uint8 pixels of a DICOM file, windowed by cxr.data.dicom (ImageReadError naming the file)."""
    from cxr.data.dicom import read_dicom  # imported here: cxr.data.dicom uses prepare_image of this module

    try:
        pixels = read_dicom(path, name=str(path)).pixels
    except FileNotFoundError as error:
        raise ImageReadError(f"image file not found: {path}") from error
    except (UserError, OSError, ValueError) as error:
        raise ImageReadError(f"cannot read DICOM image {path}: {error}") from error
    return pixels


def prepare_image(image: Image.Image, channels: int = 3, size: int = 150, resample: str = "nearest") -> np.ndarray:
    """A decoded image as the network's ``size x size x channels`` uint8 input (resize first, then convert).

    Shared by ``load_image`` (PNG/JPEG) and prediction from DICOM (cxr.data.dicom), so both prepare alike.
    """
    image = _to_8bit(image)
    image = image.resize((size, size), RESAMPLING[resample])
    image = image.convert(COLOR_MODES[channels])
    array = np.array(image, dtype=np.uint8)  # a writable copy (torch.from_numpy wants one)
    return array if channels == 3 else array[:, :, None]
