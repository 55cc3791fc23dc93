"""The inputs of ``predict.py`` and of the service (``python -m cxr.serve``): the files a user names (files, folders,
globs, ``@list.txt`` / ``@list.csv`` lists) expanded into images, or an upload's bytes, each recognised as PNG, JPEG or
DICOM by its content, checked against the size limits and prepared exactly as training prepared its images."""

from __future__ import annotations

import csv
import glob
import io
import os
from pathlib import Path

import torch
from PIL import Image

from cxr.data.dataset import Preprocessing
from cxr.data.dicom import (
    MAX_INPUT_PIXELS,
    DicomReadError,
    has_dicom_preamble,
    is_dicom_name,
    looks_like_dicom,
    read_dicom,
)
from cxr.data.images import IMAGE_EXTENSIONS, ImageReadError, prepare_image
from cxr.data.input_limits import check_image_header, walk_once
from cxr.errors import PredictError

PNG_MAGIC, JPEG_MAGIC = b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff"
LIST_EXTENSIONS = (".txt", ".csv")
LIST_PREFIX = "@"  # inputs=@list.txt: a file of image paths; a list is never guessed from its name
MAX_INPUT_BYTES = 64 * 2**20  # the largest file read: an uncompressed 16-bit 4300 x 4300 DICOM is 37 MB
Source = str | Path | bytes  # a file, or a file's bytes (an upload, never written to disk)


def _head(source: Source, length: int = 132) -> bytes:
    if isinstance(source, (bytes, bytearray)):
        return bytes(source[:length])
    try:
        with open(source, "rb") as file:
            return file.read(length)
    except OSError:
        return b""


def sniff_format(path: Source) -> str | None:
    """``png``, ``jpeg`` or ``dicom`` by the file's first bytes, else by its extension; None if neither fits."""
    head = _head(path)
    if head.startswith(PNG_MAGIC):
        return "png"
    if head.startswith(JPEG_MAGIC):
        return "jpeg"
    if head[128:132] == b"DICM":
        return "dicom"
    if isinstance(path, (bytes, bytearray)):  # an upload has no name to go by
        return "dicom" if head and looks_like_dicom(path) else None
    suffix = Path(path).suffix.lower()
    if suffix == ".png":
        return "png"
    if suffix in (".jpg", ".jpeg"):
        return "jpeg"
    if is_dicom_name(path):
        return "dicom"
    if head and looks_like_dicom(path):
        return "dicom"  # DICOM without the 128-byte preamble (read with pydicom's force=True)
    return None


def _walk(folder: Path) -> tuple[list[Path], int]:
    found, skipped = [], 0
    for root, dirs, files in walk_once(folder):  # a link loop (a -> .) is entered once
        dirs.sort()
        for name in sorted(files):
            path = Path(root) / name
            if name.startswith("."):
                continue
            suffix = path.suffix.lower()
            if (
                suffix in IMAGE_EXTENSIONS
                or is_dicom_name(path)
                or has_dicom_preamble(path)
                or (not suffix and looks_like_dicom(path))
            ):  # other files only when their content is DICOM
                found.append(path)
                continue
            skipped += 1
    return found, skipped


def _read_list(path: Path) -> list[Path]:
    """Paths from a text file (one per line) or a CSV (column ``path``, else the first); relative to the list."""
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() == ".csv":
        rows = list(csv.reader(io.StringIO(text)))
        if not rows:
            return []
        header = [h.strip().lower() for h in rows[0]]
        column = header.index("path") if "path" in header else 0
        looks_like_header = "path" in header or not Path(rows[0][0]).suffix
        entries = [r[column] for r in rows[1 if looks_like_header else 0 :] if len(r) > column]
    else:
        entries = text.splitlines()
    entries = [e.strip() for e in entries if e.strip() and not e.strip().startswith("#")]
    return [Path(e) if os.path.isabs(e) else path.parent / e for e in entries]


def collect_inputs(spec) -> tuple[list[Path], int]:
    """Expand ``inputs`` (one or several files, folders, globs, ``@`` lists) into files; and the skipped count."""
    items = [spec] if isinstance(spec, (str, Path)) else list(spec or [])
    if not items:
        raise PredictError("inputs: give a file, folder, glob or @list.txt of images")
    paths: list[Path] = []
    skipped = 0
    for item in items:
        item = str(item)
        path = Path(item).expanduser()
        if item.startswith(LIST_PREFIX):
            listed = Path(item[len(LIST_PREFIX) :]).expanduser()
            if not listed.is_file():
                raise PredictError(f"inputs={item}: list file not found: {listed}")
            try:
                paths += _read_list(listed)
            except UnicodeDecodeError:
                raise PredictError(
                    f"inputs={item}: not a text file of image paths (one per line, or a CSV with a column 'path')"
                ) from None
        elif path.is_dir():
            found, n_skipped = _walk(path)
            paths += found
            skipped += n_skipped
        elif path.is_file() and path.suffix.lower() in LIST_EXTENSIONS and sniff_format(path) is None:
            raise PredictError(
                f"inputs={item}: not an image (PNG, JPEG or DICOM); to read it as a list of image "
                f"paths, give inputs={LIST_PREFIX}{item}"
            )
        elif any(c in item for c in "*?["):
            matches = sorted(glob.glob(item, recursive=True))
            if not matches:
                raise PredictError(f"inputs: the pattern {item!r} matches no file")
            for match in map(Path, matches):
                if match.is_dir():
                    found, n_skipped = _walk(match)
                    paths += found
                    skipped += n_skipped
                else:
                    paths.append(match)
        else:
            paths.append(path)  # a missing file gets its row with the error
    unique = list(dict.fromkeys(Path(os.path.abspath(p)) for p in paths))
    if not unique:
        raise PredictError(f"inputs: no PNG, JPEG or DICOM file found in {', '.join(map(str, items))}")
    return unique, skipped


def _check_pixels(size: tuple[int, int], label) -> None:
    if size[0] * size[1] > MAX_INPUT_PIXELS:
        raise ImageReadError(
            f"{label}: the image has {size[0]} x {size[1]} pixels, more than the limit of {MAX_INPUT_PIXELS:,}"
        )


def read_grey(path: Source, dicom_window: str = "voi", name: str = "upload") -> tuple[Image.Image, str, list[str]]:
    """The decoded image (PIL), its format, and warnings, from a file or a file's bytes (``name`` labels their
    messages); a DICOM's values mapped to 0-255 as ``dicom_window`` says (cxr.data.dicom). Raises ImageReadError/DicomReadError, also above MAX_INPUT_BYTES or MAX_INPUT_PIXELS."""
    in_memory = isinstance(path, (bytes, bytearray))
    if not in_memory:
        path = Path(path)
        if not path.exists():
            raise ImageReadError(f"file not found: {path}")
    label = name if in_memory else path
    size = len(path) if in_memory else path.stat().st_size
    if size > MAX_INPUT_BYTES:
        raise ImageReadError(f"{label}: {size / 2**20:.1f} MiB, more than the limit of {MAX_INPUT_BYTES // 2**20} MiB")
    kind = sniff_format(path)
    if kind == "dicom":
        dicom = read_dicom(path, dicom_window, name)
        return Image.fromarray(dicom.pixels, mode="L"), kind, dicom.warnings
    if kind is None:
        raise ImageReadError(f"{label}: not a PNG, JPEG or DICOM file")
    try:
        if in_memory:  # nothing to close: no copy needed
            image = Image.open(io.BytesIO(path))
            check_image_header(image)  # the header's claim in bytes, before decoding (cxr.data.input_limits)
            _check_pixels(image.size, label)
            image.load()
            return image, kind, []
        with Image.open(path) as image:  # the training reader's steps (cxr.data.images.load_image)
            check_image_header(image)
            _check_pixels(image.size, label)
            image.load()
            return image.copy(), kind, []
    except ImageReadError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        size_note = " (zero-byte file)" if size == 0 else ""
        raise ImageReadError(f"cannot read image {label}{size_note}: {error}") from error


def prepare_input(
    path: Source, preprocessing: Preprocessing, dicom_window: str = "voi", name: str = "upload"
) -> tuple[torch.Tensor, str, list[str]]:
    """One input (a file or its bytes) as the network's tensor, exactly as training prepared its images: decoded,
    then ``prepare_image`` as ``cxr.data.images.load_image`` does."""
    p = preprocessing
    image, kind, warnings = read_grey(path, dicom_window, name)
    pixels = prepare_image(image, channels=p.channels, size=p.image_size, resample=p.resample)
    return p.to_tensor(pixels), kind, warnings


class InputImages(torch.utils.data.Dataset):
    """Items ``{"index", "image" (or None), "format", "warning", "error"}``: a broken file never stops a batch."""

    def __init__(self, paths: list[Path], preprocessing: Preprocessing, dicom_window: str = "voi"):
        self.paths, self.preprocessing, self.dicom_window = paths, preprocessing, dicom_window

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict:
        path = self.paths[index]
        try:
            image, kind, warnings = prepare_input(path, self.preprocessing, self.dicom_window)
            return {"index": index, "image": image, "format": kind, "warning": "; ".join(warnings), "error": ""}
        except (ImageReadError, DicomReadError, OSError, ValueError) as error:
            message = str(error)
        except Exception as error:  # a malformed file can make a decoder fail in any way: one row, not the run
            message = f"cannot read {path}: {type(error).__name__}: {error}"
        message = "".join(c if c.isprintable() else "?" for c in (message.splitlines() or [""])[0])
        return {
            "index": index,
            "image": None,
            "format": sniff_format(path) if path.exists() else "",
            "warning": "",
            "error": message.removeprefix(f"{path}: "),
        }
