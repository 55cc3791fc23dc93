"""DICOM files made from a real NIH sample PNG with pydicom, each with a fake patient's identity inside.

Every lossless variant displays (after modality LUT, window, MONOCHROME1 inversion) as the PNG's exact pixels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
    generate_uid,
)

from tests.conftest import NIH_SAMPLE

SOURCE_PNG = NIH_SAMPLE / "images" / "00000075_000.png"  # 256 x 256, spans 0-255
NARROW_PNG = NIH_SAMPLE / "images" / "00000013_003.png"  # 256 x 256, 0-211: stretching its min-max changes it
PATIENT_NAME, PATIENT_ID, PATIENT_BIRTH = "Doe^Janeidentifying", "PID-7731-SECRET", "19510203"


def source_pixels(path: Path = SOURCE_PNG) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("L"))


def _window(low: float, high: float) -> tuple[float, float]:
    """Window Center/Width whose linear ramp (PS3.3 C.11.2.1.2) maps exactly [low, high] onto the output range."""
    return low + (high - low) / 2 + 0.5, high - low + 1


def dataset(
    stored: np.ndarray,
    bits_stored: int,
    photometric: str = "MONOCHROME2",
    *,
    modality: str = "DX",
    view: str = "PA",
    rescale: tuple[float, float] | None = None,
    window: tuple[float, float] | None = None,
    frames: int = 1,
) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = PATIENT_NAME, PATIENT_ID, PATIENT_BIRTH
    ds.InstitutionName = "Hospital of Identifiable Patients"
    ds.Modality, ds.ViewPosition = modality, view
    array = np.stack([stored] * frames) if frames > 1 else stored
    ds.set_pixel_data(array, photometric, bits_stored)
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = [round(v, 4) for v in window]
    return ds


def save(ds: Dataset, path: Path, compress: str | None = None) -> Path:
    if compress is not None:
        ds.compress(compress, generate_instance_uid=False)
    ds.save_as(path, enforce_file_format=True)
    return path


def lossless_variants(png: np.ndarray) -> dict[str, Dataset]:
    """Datasets whose displayed image is exactly ``png`` (uint8), across bit depths, LUTs and photometrics."""
    p = png.astype(np.uint16)
    return {
        "mono2_8bit_window": dataset(png, 8, window=_window(0, 255)),
        "mono2_12bit_window": dataset(p * 16, 12, window=_window(0, 255 * 16)),
        "mono1_12bit_window": dataset(4080 - p * 16, 12, "MONOCHROME1", window=_window(0, 4080)),
        "mono2_16bit_rescale_window": dataset(
            p * 257, 16, rescale=(0.5, -1000.0), window=_window(-1000.0, 255 * 257 * 0.5 - 1000.0)
        ),
        "mono2_8bit_no_window": dataset(png, 8),  # no window: the Bits Stored range, 0-255 as stored
        "mono2_12bit_no_window": dataset(np.rint(png / 255 * 4095).astype(np.uint16), 12),
        "mono2_16bit_no_window": dataset(p * 257, 16),
        "mono1_16bit_no_window": dataset(65535 - p * 257, 16, "MONOCHROME1"),
        "mono2_16bit_signed_no_window": dataset((p.astype(np.int32) * 257 - 32768).astype(np.int16), 16),
        "mono2_12bit_voi_lut": _with_voi_lut(dataset(p * 16, 12, window=_window(0, 100))),  # the LUT wins
    }


def write_as_stored(folder: Path, png: np.ndarray) -> dict[str, Path]:
    """``png`` in 8-bit MONOCHROME2 DICOMs without a VOI window: explicit VR little endian, RLE, JPEG 2000."""
    folder.mkdir(parents=True, exist_ok=True)
    return {
        name: save(dataset(png, 8), folder / f"{name}.dcm", syntax)
        for name, syntax in (("explicit_le", None), ("rle", RLELossless), ("j2k", JPEG2000Lossless))
    }


def _with_voi_lut(ds: Dataset) -> Dataset:
    """A VOI LUT Sequence mapping stored 0-4095 onto 0-255 (entry i = i // 16), preferred to the window."""
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 16]
    item.LUTData = [min(i // 16, 255) for i in range(4096)]
    item["LUTData"].VR = "US"
    ds.VOILUTSequence = [item]
    return ds


def write_lossless_set(folder: Path, png: np.ndarray) -> dict[str, Path]:
    """Every variant uncompressed, plus RLE and JPEG 2000 lossless encodings (pydicom / pylibjpeg-openjpeg)."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, ds in lossless_variants(png).items():
        files[name] = save(ds, folder / f"{name}.dcm")
    for name in ("mono2_12bit_window", "mono1_12bit_window", "mono2_16bit_rescale_window"):
        files[f"{name}_rle"] = save(lossless_variants(png)[name], folder / f"{name}_rle.dcm", RLELossless)
        files[f"{name}_j2k"] = save(lossless_variants(png)[name], folder / f"{name}_j2k.dcm", JPEG2000Lossless)
    files["mono2_8bit_j2k"] = save(
        lossless_variants(png)["mono2_8bit_window"], folder / "mono2_8bit_j2k.dcm", JPEG2000Lossless
    )
    # Bits Stored respected: 12 bits stored in 16 with the 4 unused high bits set (garbage a reader must mask)
    ds = lossless_variants(png)["mono2_12bit_window"]
    ds.PixelData = ((png.astype(np.uint16) * 16) | np.uint16(0xF000)).astype("<u2").tobytes()
    files["mono2_12bit_high_bits_set"] = save(ds, folder / "mono2_12bit_high_bits_set.dcm")
    # no 128-byte preamble, no file meta (implicit VR little endian): recognised by content, read with force=True
    ds = lossless_variants(png)["mono2_12bit_window"]
    del ds.file_meta
    ds.preamble = None
    no_preamble = folder / "no_preamble_no_extension"
    pydicom.dcmwrite(no_preamble, ds, implicit_vr=True, little_endian=True)
    files["no_preamble"] = no_preamble
    return files


def write_broken_set(folder: Path, png: np.ndarray) -> dict[str, Path]:
    """A multi-frame object, an object without pixel data, a truncated file; a lateral CT with warnings."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {"multi_frame": save(dataset(png, 8, frames=3), folder / "multi_frame.dcm")}
    sr = dataset(png, 8)
    del sr.PixelData
    sr.Modality = "SR"
    sr.SOPClassUID = sr.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"  # Basic Text SR
    files["no_pixels"] = save(sr, folder / "report.dcm")
    whole = save(dataset(png.astype(np.uint16) * 16, 12, window=_window(0, 4080)), folder / "whole.dcm").read_bytes()
    (folder / "whole.dcm").unlink()
    truncated = folder / "truncated.dcm"
    truncated.write_bytes(whole[: len(whole) // 2])
    files["truncated"] = truncated
    files["invalid_values"] = invalid_values(folder / "invalid_values.dcm", png)
    files["lateral_ct"] = save(
        dataset(png, 8, modality="CT", view="LL", window=_window(0, 255)), folder / "lateral_ct.dcm"
    )
    return files


def invalid_values(path: Path, png: np.ndarray) -> Path:
    """A readable image whose identity fields break their VRs: pydicom's validation warnings would quote them."""
    from pydicom import config

    ds = dataset(png, 8, window=_window(0, 255))
    mode = config.settings.writing_validation_mode
    config.settings.writing_validation_mode = config.IGNORE
    try:
        ds.PatientBirthDate = f"{PATIENT_ID}-not-a-date"
        ds.PatientID = PATIENT_ID + "-" + "9" * 70  # longer than LO's 64 characters
        return save(ds, path)
    finally:
        config.settings.writing_validation_mode = mode
