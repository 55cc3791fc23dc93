"""DICOM reading (cxr.data.dicom): fixtures made from a real NIH PNG, and pydicom's own bundled test files."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("pydicom", reason="pip install -e '.[predict]'")

from pydicom.data import get_testdata_file  # noqa: E402

from cxr.data.dicom import DicomReadError, has_dicom_preamble, looks_like_dicom, read_dicom
from cxr.data.inputs import sniff_format
from tests.conftest import require_real_data
from tests.dicom_fixtures import NARROW_PNG, source_pixels, write_as_stored, write_broken_set, write_lossless_set


@pytest.fixture(scope="module")
def png():
    require_real_data()
    return source_pixels()


@pytest.fixture(scope="module")
def lossless(png, tmp_path_factory):
    return write_lossless_set(tmp_path_factory.mktemp("dicom") / "lossless", png)


@pytest.fixture(scope="module")
def broken(png, tmp_path_factory):
    return write_broken_set(tmp_path_factory.mktemp("dicom") / "broken", png)


@pytest.mark.real_data
def test_every_lossless_encoding_shows_the_png_pixels_exactly(png, lossless):
    """MONOCHROME1/2, 8/12/16 bits, rescale + window, VOI LUT, no window (unsigned and signed), RLE, JPEG 2000,
    unused high bits, no preamble."""
    assert len(lossless) >= 19
    for name, path in lossless.items():
        image = read_dicom(path)
        assert image.pixels.dtype == np.uint8 and image.pixels.shape == png.shape, name
        difference = np.abs(image.pixels.astype(int) - png).max()
        assert np.array_equal(image.pixels, png), f"{name}: max difference {difference}"
        assert image.warnings == [], name


@pytest.mark.real_data
def test_compressed_fixtures_really_are_compressed(lossless):
    import pydicom
    from pydicom.uid import JPEG2000Lossless, RLELossless

    assert pydicom.dcmread(lossless["mono2_12bit_window_rle"]).file_meta.TransferSyntaxUID == RLELossless
    assert pydicom.dcmread(lossless["mono1_12bit_window_j2k"]).file_meta.TransferSyntaxUID == JPEG2000Lossless
    assert lossless["mono2_12bit_window_j2k"].stat().st_size < lossless["mono2_12bit_window"].stat().st_size


@pytest.mark.real_data
def test_broken_and_unusual_dicoms_are_refused_or_warned(broken):
    with pytest.raises(DicomReadError, match="multi-frame DICOM \\(3 frames\\)"):
        read_dicom(broken["multi_frame"])
    with pytest.raises(DicomReadError, match="without pixel data \\(Basic Text SR Storage, modality SR\\)"):
        read_dicom(broken["no_pixels"])
    with pytest.raises(DicomReadError, match="cannot decode the pixel data"):
        read_dicom(broken["truncated"])
    warnings = read_dicom(broken["lateral_ct"]).warnings
    assert any("modality CT" in w for w in warnings) and any("view position LL" in w for w in warnings)


@pytest.mark.real_data
def test_dicom_is_recognised_by_content(lossless, tmp_path):
    assert has_dicom_preamble(lossless["mono2_8bit_window"]) and not has_dicom_preamble(lossless["no_preamble"])
    assert looks_like_dicom(lossless["no_preamble"]) and sniff_format(lossless["no_preamble"]) == "dicom"
    renamed = tmp_path / "scan.png"  # a DICOM with a misleading extension
    renamed.write_bytes(lossless["mono2_8bit_window"].read_bytes())
    assert sniff_format(renamed) == "dicom"
    text = tmp_path / "notes"
    text.write_text("not an image\n")
    assert not looks_like_dicom(text) and sniff_format(text) is None


def test_pydicom_bundled_lossless_encodings_agree():
    """pydicom's MR_small in RLE, JPEG 2000 lossless, JPEG-LS lossless, big endian, implicit VR: one image."""
    reference = read_dicom(get_testdata_file("MR_small.dcm"))
    assert reference.pixels.std() > 10 and any("modality MR" in w for w in reference.warnings)
    for name in (
        "MR_small_RLE.dcm",
        "MR_small_jp2klossless.dcm",
        "MR_small_jpeg_ls_lossless.dcm",
        "MR_small_bigendian.dcm",
        "MR_small_implicit.dcm",
    ):
        assert np.array_equal(read_dicom(get_testdata_file(name)).pixels, reference.pixels), name


@pytest.mark.parametrize(
    "name, expected",
    [
        ("JPGExtended.dcm", "modality NM"),  # 12-bit JPEG extended (lossy), one frame
        ("693_J2KI.dcm", "modality CT"),  # JPEG 2000 (lossy), 14 bits, window
        ("examples_palette.dcm", "PALETTE COLOR"),  # colour: converted to grey with a warning
        ("SC_rgb_jpeg_dcmtk.dcm", "YBR_FULL"),  # JPEG baseline, YBR colour
        ("SC_rgb_jpeg_gdcm.dcm", "RGB"),  # JPEG lossless (process 14), colour
    ],
)
def test_pydicom_bundled_compressed_files_decode(name, expected):
    image = read_dicom(get_testdata_file(name))
    assert image.pixels.dtype == np.uint8 and image.pixels.ndim == 2 and image.pixels.std() > 1
    assert any(expected in w for w in image.warnings), image.warnings


@pytest.mark.parametrize(
    "name, message",
    [
        ("SC_rgb_rle_2frame.dcm", "multi-frame"),
        ("rtplan.dcm", "without pixel data"),
        ("MR_truncated.dcm", "cannot decode the pixel data"),
        ("waveform_ecg.dcm", "without pixel data"),
    ],
)
def test_pydicom_bundled_non_images_are_refused(name, message):
    with pytest.raises(DicomReadError, match=message):
        read_dicom(get_testdata_file(name))


def test_monochrome1_without_window_is_inverted(tmp_path):
    """MONOCHROME1 without a window: 0..4095 of 12 bits stored shown as 255..0 (voi, stored); with minmax the
    darkest stored value is white and the brightest black."""
    from tests.dicom_fixtures import dataset, save

    stored = np.tile(np.linspace(100, 3000, 32).astype(np.uint16), (8, 1))
    path = save(dataset(stored, 12, "MONOCHROME1"), tmp_path / "m1.dcm")
    as_stored = np.rint(255 - stored / 4095 * 255).astype(np.uint8)
    assert np.array_equal(read_dicom(path).pixels, as_stored)
    assert np.array_equal(read_dicom(path, "stored").pixels, as_stored)
    shown = read_dicom(path, "minmax").pixels
    assert shown[0, 0] == 255 and shown[0, -1] == 0 and np.all(np.diff(shown[0].astype(int)) <= 0)


@pytest.mark.real_data
def test_an_8bit_dicom_without_window_is_read_as_stored(tmp_path):
    """A real PNG that does not span 0-255 (0-211), stored at 8 bits without a VOI window, uncompressed, RLE and
    JPEG 2000: the PNG's pixels by default and with dicom.window=stored; minmax stretches them to 0-255."""
    require_real_data()
    png = source_pixels(NARROW_PNG)
    assert png.max() < 255  # otherwise min-max stretching would change nothing
    for name, path in write_as_stored(tmp_path, png).items():
        assert np.array_equal(read_dicom(path).pixels, png), name
        assert np.array_equal(read_dicom(path, "stored").pixels, png), name
        stretched = read_dicom(path, "minmax").pixels
        assert stretched.min() == 0 and stretched.max() == 255, name


@pytest.mark.real_data
def test_window_choice_voi_stored_minmax(png, tmp_path):
    """A narrow window (50-150) is applied by voi only; stored and minmax ignore it; an unknown choice is refused."""
    from tests.dicom_fixtures import _window, dataset, save

    path = save(dataset(png, 8, window=_window(50, 150)), tmp_path / "narrow_window.dcm")
    windowed = np.clip((png.astype(float) - 50) / 100 * 255, 0, 255)  # up to rounding of the half steps
    assert np.abs(read_dicom(path).pixels - windowed).max() <= 0.5 + 1e-6
    assert np.array_equal(read_dicom(path, "stored").pixels, png)
    assert np.array_equal(read_dicom(path, "minmax").pixels, png)  # this PNG spans 0-255
    with pytest.raises(ValueError, match="dicom.window='auto': choose voi"):
        read_dicom(path, "auto")


def test_corrupted_dicoms_never_stop_a_run(tmp_path):
    """Random bytes changed in uncompressed, RLE and JPEG 2000 files (some also cut short): every file gives an
    image or a one-line error; nothing escapes (pylibjpeg-rle even panics on some corrupt RLE segments)."""
    from pydicom.uid import JPEG2000Lossless, RLELossless

    from cxr.data.dataset import Preprocessing
    from cxr.data.inputs import InputImages
    from tests.dicom_fixtures import _window, dataset, save

    rng = np.random.default_rng(0)
    stored = (rng.random((32, 32)) * 4080).astype(np.uint16)
    originals = [
        save(dataset(stored, 12, window=_window(0, 4080)), tmp_path / f"{i}.dcm", syntax).read_bytes()
        for i, syntax in enumerate((None, RLELossless, JPEG2000Lossless))
    ]
    paths = []
    for i in range(150):
        data = bytearray(originals[i % 3])
        for _ in range(int(rng.integers(1, 6))):
            data[int(rng.integers(128, len(data)))] = int(rng.integers(0, 256))
        if i % 7 == 0:
            data = data[: int(rng.integers(132, len(data)))]
        paths.append(tmp_path / f"corrupt{i}.dcm")
        paths[-1].write_bytes(bytes(data))
    items = [item for item in (InputImages(paths, Preprocessing(channels=1))[i] for i in range(len(paths)))]
    failed = [item for item in items if item["image"] is None]
    assert all(item["error"] and "\n" not in item["error"] and item["error"].isprintable() for item in failed)
    assert 0 < len(failed) < len(items)
