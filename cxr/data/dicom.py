"""Read a DICOM X-ray as a radiologist's viewer shows it, as the 8-bit grey image the model saw in training.

pydicom decodes the pixel data (with the pylibjpeg plugins: JPEG baseline/extended/lossless, JPEG-LS, JPEG 2000,
RLE), keeping only the *Bits Stored* bits. Then, as a viewer does:

1. the modality LUT (*Rescale Slope/Intercept* or a Modality LUT Sequence): ``pydicom.pixels.apply_modality_lut``;
2. a value range mapped linearly onto 0-255, chosen by ``window`` (``dicom.window`` of predict.py):

   - ``voi`` (default): the file's VOI LUT (a VOI LUT Sequence, else the first *Window Center/Width*), applied with
     ``pydicom.pixels.apply_voi_lut``; its output range (for a window: pydicom's ``[y_min, y_max]``, the range of
     the stored values after the modality LUT; for a VOI LUT: the LUT's lowest and highest entries) is mapped onto
     0-255. A file without a VOI LUT or window (or with a malformed one: a warning) is read as ``stored``;
   - ``stored``: the range the *Bits Stored* can hold (0 to 2^BitsStored - 1; signed when *Pixel Representation*
     is 1), after the modality LUT: an 8-bit file is read exactly as stored, a 12-bit one as 0-4095 -> 0-255.
     Any VOI LUT or window in the file is ignored;
   - ``minmax``: the image's own minimum and maximum (after the modality LUT), stretched to 0-255, ignoring any
     VOI LUT or window (what some viewers show by default; it brightens an image that does not use its range);
3. ``MONOCHROME1`` (and a ``INVERSE`` *Presentation LUT Shape*) inverted, so that bone is bright as in
   ``MONOCHROME2`` and in the NIH PNGs.

An 8-bit PNG stored in a DICOM at any bit depth, with a window spanning its stored range, or without a window
at 8 bits (or scaled to fill 16 bits), comes back pixel for pixel (tests/test_dicom.py), so a lossless DICOM of a
PNG predicts what the PNG predicts. Nothing that identifies the patient is read into the result: only pixel and
acquisition attributes (modality, view position, photometric interpretation).
"""

from __future__ import annotations

import io
import logging
import os
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cxr.data.input_limits import PixelLimitError, check_dicom_header
from cxr.errors import UserError

PREAMBLE_LENGTH = 128
DICOM_EXTENSIONS = (".dcm", ".dicom", ".dic")
TRAINED_MODALITIES = ("CR", "DX")  # computed and digital radiography: what NIH ChestX-ray14 holds
LATERAL_VIEWS = ("LL", "RL", "LATERAL", "LAT", "LLD", "RLD")
# the codes a warning may echo (DICOM PS3.3 defined terms); any other value is shown as "unrecognised"
KNOWN_MODALITIES = (
    "CR",
    "DX",
    "CT",
    "MR",
    "US",
    "NM",
    "PT",
    "XA",
    "RF",
    "MG",
    "OT",
    "SC",
    "IO",
    "PX",
    "RG",
    "ES",
    "XC",
    "DOC",
    "SR",
    "PR",
    "KO",
    "SEG",
    "RTIMAGE",
    "OP",
    "OCT",
    "BMD",
    "DG",
    "ECG",
)
KNOWN_VIEWS = ("PA", "AP", "LL", "RL", "RLD", "LLD", "RLO", "LLO", "LATERAL", "LAT")
GREY = ("MONOCHROME1", "MONOCHROME2")
WINDOWS = ("voi", "stored", "minmax")  # how stored values become 0-255 (module docstring, dicom.window)
# the largest image read (rows x columns), for predict.py and the service alike: above any chest detector (43 cm at
# 100 um is 4300 x 4300) and bounding the decoded arrays (float64 while windowing: 8 bytes a pixel)
MAX_INPUT_PIXELS = 6000 * 6000
COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "YBR_PARTIAL_420", "PALETTE COLOR")


class DicomReadError(UserError, OSError):
    """A DICOM file that cannot be turned into an X-ray image; the message names the file and the reason."""


@dataclass
class DicomImage:
    """The displayed 8-bit grey pixels and the reasons to doubt them (never patient data)."""

    pixels: np.ndarray  # H x W uint8, bone bright
    warnings: list[str] = field(default_factory=list)


@contextmanager
def quiet_pydicom():
    """Silence pydicom's value validation while reading: its warnings quote element values (``Invalid value for VR
    DA: '<birth date>'``); whatever element a decoder touches, none may reach the console or the run's log."""
    from pydicom import config

    logger = logging.getLogger("pydicom")
    mode, level = config.settings.reading_validation_mode, logger.level
    config.settings.reading_validation_mode = config.IGNORE
    logger.setLevel(logging.CRITICAL + 1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        config.settings.reading_validation_mode = mode
        logger.setLevel(level)


def has_dicom_preamble(path: str | Path | bytes) -> bool:
    """Whether the file (or its bytes) holds 'DICM' after its 128-byte preamble (DICOM Part 10)."""
    if isinstance(path, (bytes, bytearray)):
        return bytes(path[PREAMBLE_LENGTH : PREAMBLE_LENGTH + 4]) == b"DICM"
    try:
        with open(path, "rb") as file:
            head = file.read(PREAMBLE_LENGTH + 4)
    except OSError:
        return False
    return head[PREAMBLE_LENGTH : PREAMBLE_LENGTH + 4] == b"DICM"


def looks_like_dicom(path: str | Path | bytes) -> bool:
    """'DICM' preamble, or a preamble-less data set that pydicom can parse (``force=True``) into known groups."""
    if has_dicom_preamble(path):
        return True
    try:
        import pydicom
    except ImportError:  # without pydicom only files with the preamble are recognised
        return False

    try:
        with quiet_pydicom():
            source = io.BytesIO(path) if isinstance(path, (bytes, bytearray)) else path
            dataset = pydicom.dcmread(
                source,
                force=True,
                stop_before_pixels=True,
                specific_tags=["SOPClassUID", "Modality", "Rows", "Columns", "PhotometricInterpretation"],
            )
            return any(tag.group in (0x0008, 0x0028) for tag in dataset.keys())
    except Exception:  # anything pydicom cannot parse is not a DICOM data set
        return False


def known_code(value, known: tuple[str, ...]) -> str:
    """A DICOM code string as a warning may show it: the code when ``known`` lists it, ``missing`` when empty, else
    ``unrecognised`` (free text from a file is never echoed)."""
    text = str(value or "").strip().upper()
    return text if text in known else "missing" if not text else "unrecognised"


def _frames(dataset) -> int:
    try:
        return int(dataset.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        return 1


def _describe(dataset) -> str:
    """What kind of object this is, from its SOP class (never from patient fields)."""
    sop = dataset.get("SOPClassUID")
    name = getattr(sop, "name", None) if sop else None
    name = name if name and name != str(sop) else None  # pydicom's name of a known class, never the file's text
    modality = dataset.get("Modality")
    parts = [p for p in (name, f"modality {known_code(modality, KNOWN_MODALITIES)}" if modality else None) if p]
    return ", ".join(parts) or "unknown SOP class"


def _lut_range(item) -> tuple[float, float]:
    """The lowest and highest entries of a LUT item (modality or VOI LUT Sequence)."""
    lut = np.asarray(item.LUTData if isinstance(item.LUTData, (list, tuple)) else [item.LUTData], dtype=float)
    return float(lut.min()), float(lut.max())


def _window_range(dataset) -> tuple[float, float] | None:
    """The output range ``apply_voi_lut`` maps into, or None when the data set has no VOI LUT or window."""
    from pydicom.pixels import apply_windowing

    if "VOILUTSequence" in dataset and len(dataset.VOILUTSequence):
        return _lut_range(dataset.VOILUTSequence[0])
    if "WindowCenter" in dataset and "WindowWidth" in dataset:
        ends = apply_windowing(np.array([-np.inf, np.inf]), dataset)  # pydicom's y_min and y_max
        return float(ends[0]), float(ends[1])
    return None


def _stored_range(dataset) -> tuple[float, float]:
    """The values the *Bits Stored* can hold (signed when *Pixel Representation* is 1), after the modality LUT."""
    from pydicom.pixels import apply_modality_lut

    if "ModalityLUTSequence" in dataset and len(dataset.ModalityLUTSequence):
        return _lut_range(dataset.ModalityLUTSequence[0])  # every stored value maps into the LUT's entries
    bits = int(dataset.get("BitsStored") or dataset.get("BitsAllocated") or 8)
    signed = int(dataset.get("PixelRepresentation") or 0) == 1
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    ends = apply_modality_lut(np.array([low, high], dtype=np.float64), dataset)  # linear: Rescale Slope/Intercept
    return float(min(ends)), float(max(ends))


def _set_transfer_syntax(dataset) -> None:
    """A data set without file meta (no preamble) is native: take the encoding pydicom found while reading it."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    meta = getattr(dataset, "file_meta", None)
    if meta is not None and "TransferSyntaxUID" in meta:
        return
    implicit, little = getattr(dataset, "original_encoding", (True, True))
    if meta is None:
        dataset.file_meta = meta = FileMetaDataset()
    meta.TransferSyntaxUID = (
        ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little else ExplicitVRBigEndian
    )


def check_window(window: str) -> str:
    """``window`` itself when it is one of WINDOWS; ValueError naming the choices otherwise."""
    if window not in WINDOWS:
        raise ValueError(
            f"dicom.window={window!r}: choose voi (the file's VOI LUT or window, else the stored "
            "range), stored (the Bits Stored range) or minmax (the image's own minimum and maximum)"
        )
    return window


def read_dicom(path: str | Path | bytes, window: str = "voi", name: str = "upload") -> DicomImage:
    """Decode ``path`` (a file, or a file's bytes that ``name`` labels in messages) into displayed 8-bit grey pixels,
    the values mapped to 0-255 as ``window`` says (module docstring); raise DicomReadError with the reason otherwise."""
    check_window(window)
    try:
        with quiet_pydicom():
            return _read_dicom(path, window, name)
    except ImportError as error:
        raise DicomReadError(
            f"{path}: reading DICOM needs pydicom>=3 and the pylibjpeg plugins (pip install -e '.[predict]')"
        ) from error


def _read_dicom(path: str | Path | bytes, window: str, name: str) -> DicomImage:
    import pydicom
    from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut

    if isinstance(path, (bytes, bytearray)):  # an upload, read in memory
        source, path = io.BytesIO(path), name
        if not source.getbuffer().nbytes:
            raise DicomReadError(f"{path}: zero-byte file")
    else:
        source = path = Path(path)
        if not path.is_file():
            raise DicomReadError(f"file not found: {path}")
        if path.stat().st_size == 0:
            raise DicomReadError(f"{path}: zero-byte file")
    try:
        check_dicom_header(pydicom.dcmread(source, force=True, stop_before_pixels=True))  # before reading pixels
        if hasattr(source, "seek"):
            source.seek(0)
        dataset = pydicom.dcmread(source, force=True)
    except PixelLimitError as error:
        raise DicomReadError(f"{path}: {error}") from None
    except Exception as error:  # InvalidDicomError, EOFError, struct.error, ... on a malformed header
        raise DicomReadError(f"{path}: not a readable DICOM file ({type(error).__name__}: {error})") from error
    _set_transfer_syntax(dataset)
    if not any(tag in dataset for tag in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise DicomReadError(f"{path}: DICOM object without pixel data ({_describe(dataset)}): not an image")
    if "FloatPixelData" in dataset or "DoubleFloatPixelData" in dataset:
        raise DicomReadError(f"{path}: floating-point pixel data ({_describe(dataset)}) is not a radiograph")
    frames = _frames(dataset)
    if frames > 1:
        raise DicomReadError(
            f"{path}: multi-frame DICOM ({frames} frames); the model reads single radiographs: "
            "export the frame you want as its own file"
        )
    rows, columns = int(dataset.get("Rows", 0) or 0), int(dataset.get("Columns", 0) or 0)
    if rows * columns > MAX_INPUT_PIXELS:
        raise DicomReadError(
            f"{path}: the image has {columns} x {rows} pixels, more than the limit of {MAX_INPUT_PIXELS:,}"
        )
    photometric = str(dataset.get("PhotometricInterpretation", "")).strip().upper()
    warnings: list[str] = []
    if photometric not in GREY + COLOUR:
        raise DicomReadError(
            f"{path}: photometric interpretation {photometric or 'missing'!r} cannot be mapped to a grey X-ray"
        )
    try:
        dataset.pixel_array_options(correct_unused_bits=True)  # keep only the Bits Stored bits
        pixels = dataset.pixel_array
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as error:  # truncated data, missing plugin, corrupt codestream; pylibjpeg-rle even
        # panics (pyo3's PanicException, a BaseException) on a corrupt RLE segment
        first = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        syntax = dataset.file_meta.get("TransferSyntaxUID")
        named = f"transfer syntax {getattr(syntax, 'name', syntax)}" if syntax else "unknown transfer syntax"
        raise DicomReadError(f"{path}: cannot decode the pixel data ({named}: {first})") from error
    if pixels.ndim not in (2, 3) or (pixels.ndim == 3 and pixels.shape[-1] not in (3, 4)):
        raise DicomReadError(f"{path}: pixel array of shape {pixels.shape} is not one image")

    if photometric in GREY:
        values = apply_modality_lut(pixels, dataset)
        value_range = _window_range(dataset) if window == "voi" else None
        if value_range is not None:
            if "VOILUTSequence" in dataset and values.dtype.kind == "f":
                values = np.rint(values).astype(np.int64)  # a LUT is indexed by integers
            try:
                values = apply_voi_lut(values, dataset, index=0, prefer_lut=True)
            except Exception as error:  # a malformed window (width < 1) or LUT: show the stored range instead
                warnings.append(f"VOI LUT/window not applied ({error}); the stored range shown")
                value_range = None
        values = values.astype(np.float64)
        if value_range is None:
            value_range = (float(values.min()), float(values.max())) if window == "minmax" else _stored_range(dataset)
        low, high = value_range
        scaled = (values - low) / (high - low) * 255.0 if high > low else np.zeros_like(values)
        inverse = str(dataset.get("PresentationLUTShape", "")).upper() == "INVERSE"
        if (photometric == "MONOCHROME1") != inverse:
            scaled = 255.0 - scaled
    else:
        warnings.append(f"photometric interpretation {photometric}: a colour image, converted to grey")
        rgb = apply_color_lut(pixels, dataset) if photometric == "PALETTE COLOR" else pixels
        rgb = rgb.astype(np.float64)[..., :3]
        if rgb.max() > 255:  # 16-bit colour (or palette): scale to 8 bits
            rgb = rgb / (2 ** int(dataset.get("BitsStored", 16)) - 1) * 255.0
        scaled = rgb @ np.array([0.299, 0.587, 0.114])  # ITU-R 601-2 luma, as Pillow's convert("L")
    out = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)

    modality = known_code(dataset.get("Modality"), KNOWN_MODALITIES)
    if modality not in TRAINED_MODALITIES:
        warnings.append(f"modality {modality}: the model was trained on chest radiographs (CR/DX)")
    view = known_code(dataset.get("ViewPosition"), KNOWN_VIEWS)
    if view in LATERAL_VIEWS:
        warnings.append(f"view position {view}: a lateral view; the model was trained on frontal (PA/AP) views")
    return DicomImage(pixels=out, warnings=warnings)


def is_dicom_name(path: str | Path) -> bool:
    return os.path.splitext(str(path))[1].lower() in DICOM_EXTENSIONS
