"""The inputs of ``predict.py``: the files a user names (files, folders, globs, .txt/.csv lists) expanded into
images, each recognised as PNG, JPEG or DICOM by its content and prepared exactly as training prepared its images."""
from __future__ import annotations

import csv
import glob
import io
import os
from pathlib import Path

import torch
from PIL import Image

from cxr.data.dataset import Preprocessing
from cxr.data.dicom import DicomReadError, has_dicom_preamble, is_dicom_name, looks_like_dicom, read_dicom
from cxr.data.images import IMAGE_EXTENSIONS, ImageReadError, load_image, prepare_image
from cxr.data.input_limits import check_image_header, walk_once
from cxr.errors import PredictError

PNG_MAGIC, JPEG_MAGIC = b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff"
LIST_EXTENSIONS = (".txt", ".csv")


def sniff_format(path: str | Path) -> str | None:
    """``png``, ``jpeg`` or ``dicom`` by the file's first bytes, else by its extension; None if neither fits."""
    try:
        with open(path, "rb") as file:
            head = file.read(132)
    except OSError:
        head = b""
    if head.startswith(PNG_MAGIC):
        return "png"
    if head.startswith(JPEG_MAGIC):
        return "jpeg"
    if head[128:132] == b"DICM":
        return "dicom"
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
            if (suffix in IMAGE_EXTENSIONS or is_dicom_name(path) or has_dicom_preamble(path)
                    or (not suffix and looks_like_dicom(path))):  # other files only when their content is DICOM
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
        entries = [r[column] for r in rows[1 if looks_like_header else 0:] if len(r) > column]
    else:
        entries = text.splitlines()
    entries = [e.strip() for e in entries if e.strip() and not e.strip().startswith("#")]
    return [Path(e) if os.path.isabs(e) else path.parent / e for e in entries]


def collect_inputs(spec) -> tuple[list[Path], int]:
    """Expand ``inputs`` (one or several files, folders, globs, .txt/.csv lists) into files; and the skipped count."""
    items = [spec] if isinstance(spec, (str, Path)) else list(spec or [])
    if not items:
        raise PredictError("inputs: give a file, folder, glob or .txt/.csv list of images")
    paths: list[Path] = []
    skipped = 0
    for item in items:
        item = str(item)
        path = Path(item).expanduser()
        if path.is_dir():
            found, n_skipped = _walk(path)
            paths += found
            skipped += n_skipped
        elif path.is_file() and path.suffix.lower() in LIST_EXTENSIONS and sniff_format(path) is None:
            paths += _read_list(path)
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


def read_grey(path: str | Path, dicom_window: str = "voi") -> tuple[Image.Image, str, list[str]]:
    """The decoded image (PIL), its format, and warnings; a DICOM's values mapped to 0-255 as ``dicom_window`` says
    (cxr.data.dicom). Raises ImageReadError/DicomReadError."""
    path = Path(path)
    if not path.exists():
        raise ImageReadError(f"file not found: {path}")
    kind = sniff_format(path)
    if kind == "dicom":
        dicom = read_dicom(path, dicom_window)
        return Image.fromarray(dicom.pixels, mode="L"), kind, dicom.warnings
    if kind is None:
        raise ImageReadError(f"{path}: not a PNG, JPEG or DICOM file")
    try:
        with Image.open(path) as image:
            check_image_header(image)
            image.load()
            return image.copy(), kind, []
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        size_note = " (zero-byte file)" if path.stat().st_size == 0 else ""
        raise ImageReadError(f"cannot read image {path}{size_note}: {error}") from error


def prepare_input(path: str | Path, preprocessing: Preprocessing,
                  dicom_window: str = "voi") -> tuple[torch.Tensor, str, list[str]]:
    """One input as the network's tensor, exactly as training prepared its images (cxr.data.images)."""
    p = preprocessing
    kind = sniff_format(path)
    if kind in ("png", "jpeg"):  # the training reader itself
        pixels = load_image(path, channels=p.channels, size=p.image_size, resample=p.resample)
        return p.to_tensor(pixels), kind, []
    image, kind, warnings = read_grey(path, dicom_window)
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
        return {"index": index, "image": None, "format": sniff_format(path) if path.exists() else "",
                "warning": "", "error": message.removeprefix(f"{path}: ")}
