"""The real label files torchxrayvision's wheel ships, and tiny synthetic images in each release's own format."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from tests.conftest import import_or_skip


def xrv_data() -> Path:
    """torchxrayvision's data/ folder (the label files of PadChest, VinDr-CXR's competition, RSNA, Open-i)."""
    xrv = import_or_skip("torchxrayvision")
    return Path(os.path.dirname(xrv.__file__)) / "data"


def png16(path: Path, seed: int = 0, size: int = 24) -> None:
    """A 16-bit grey PNG (PadChest's format) spanning most of 0-65535."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 65535, (size, size), dtype=np.uint16)
    Image.fromarray(pixels).save(path)  # Pillow writes uint16 arrays as I;16 PNGs


def png8(path: Path, seed: int = 0, size: int = 24) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size, size), dtype=np.uint8)).save(path)


def dicom(path: Path, view: str = "PA", sex: str = "F", age: str = "061Y", seed: int = 0, size: int = 24) -> None:
    """A 12-bit MONOCHROME2 DX radiograph as the VinDr-CXR and RSNA releases store them."""
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.ViewPosition, ds.PatientSex, ds.PatientAge = "DX", view, sex, age
    ds.Rows = ds.Columns = size
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = np.random.default_rng(seed).integers(0, 4095, (size, size), dtype=np.uint16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
