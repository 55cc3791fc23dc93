"""What an input file may make cxr do: the pixels an image header claims are checked against a limit before
anything is decoded (a small compressed file can claim gigabytes), and folders are walked without following a
link twice (``a -> .`` would walk for ever). docs/security.md.

The limit is ``CXR_MAX_PIXEL_BYTES`` (environment, in bytes; default 128 MiB: an 8192 x 8192 16-bit image, over
three times the largest radiograph detector, 43 cm at 0.1 mm = 4300 x 4300 pixels at 16 bits, 37 MB).
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_MAX_PIXEL_BYTES = 128 * 2**20
# bytes per pixel of Pillow's modes once decoded (anything else: 4)
_MODE_BYTES = {
    "1": 1,
    "L": 1,
    "P": 1,
    "LA": 2,
    "PA": 2,
    "La": 2,
    "I;16": 2,
    "I;16B": 2,
    "I;16L": 2,
    "I;16N": 2,
    "RGB": 3,
    "YCbCr": 3,
    "LAB": 3,
    "HSV": 3,
}


class PixelLimitError(ValueError):
    """An image whose header claims more decoded bytes than the limit; the message names the size and the limit."""


def max_pixel_bytes() -> int:
    """The limit in bytes: ``CXR_MAX_PIXEL_BYTES`` when set (a positive integer), else the default."""
    value = os.environ.get("CXR_MAX_PIXEL_BYTES", "")
    try:
        limit = int(value) if value.strip() else DEFAULT_MAX_PIXEL_BYTES
    except ValueError:
        raise PixelLimitError(f"CXR_MAX_PIXEL_BYTES={value!r}: give a number of bytes") from None
    if limit < 1:
        raise PixelLimitError(f"CXR_MAX_PIXEL_BYTES={value!r}: give a positive number of bytes")
    return limit


def check_pixel_budget(columns: int, rows: int, bytes_per_pixel: float, frames: int = 1) -> None:
    """Refuse ``rows x columns x bytes (x frames)`` above the limit, before decoding."""
    claimed = int(columns) * int(rows) * float(bytes_per_pixel) * max(1, int(frames))
    limit = max_pixel_bytes()
    if claimed > limit or columns < 0 or rows < 0:
        raise PixelLimitError(
            f"{columns} x {rows} pixels x {bytes_per_pixel:g} bytes"
            f"{f' x {frames} frames' if frames > 1 else ''} = {claimed / 2**20:,.0f} MiB decoded, "
            f"above the limit of {limit / 2**20:,.0f} MiB (CXR_MAX_PIXEL_BYTES); not decoded"
        )


def check_image_header(image) -> None:
    """A lazily opened Pillow image (size and mode come from its header; nothing is decoded yet)."""
    width, height = image.size
    check_pixel_budget(width, height, _MODE_BYTES.get(image.mode, 4), getattr(image, "n_frames", 1) or 1)


def check_dicom_header(dataset) -> None:
    """A DICOM data set read without its pixel data (``stop_before_pixels=True``): Rows, Columns, Samples per
    Pixel, Bits Allocated and Number of Frames claim the decoded size."""

    def number(keyword: str, default: int) -> int:
        try:
            return int(dataset.get(keyword, default) or default)
        except (TypeError, ValueError):
            return default

    bits = number("BitsAllocated", 16)
    check_pixel_budget(
        number("Columns", 0),
        number("Rows", 0),
        number("SamplesPerPixel", 1) * max(1, -(-bits // 8)),
        number("NumberOfFrames", 1),
    )


def walk_once(folder: str | Path):
    """``os.walk(folder, followlinks=True)`` that enters each real folder once: a link loop (``a -> .``) or two
    links to one folder are not followed again."""
    seen: set[tuple[int, int]] = set()
    for root, dirs, files in os.walk(folder, followlinks=True):
        try:
            info = os.stat(root)
        except OSError:
            dirs[:] = []
            continue
        if (info.st_dev, info.st_ino) in seen:
            dirs[:] = []
            continue
        seen.add((info.st_dev, info.st_ino))
        yield root, dirs, files
