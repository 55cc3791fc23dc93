"""Tests for cxr.data.images (decoding, indexing) and cxr.data.table.attach_image_paths."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxr.data.images import ImageIndexError, ImageReadError, index_images, load_image
from cxr.data.labels import read_labels
from cxr.data.table import attach_image_paths
from tests.conftest import NIH_SAMPLE, require_real_data

RNG_SEED = 0


def save(image: Image.Image, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def noise(shape, seed=RNG_SEED) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


# --- load_image ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode, shape", [("L", (40, 30)), ("RGB", (40, 30, 3)), ("RGBA", (40, 30, 4))])
@pytest.mark.parametrize("channels", [1, 3])
def test_output_shape_and_dtype(tmp_path, mode, shape, channels):
    path = save(Image.fromarray(noise(shape), mode=mode), tmp_path / f"{mode}.png")
    array = load_image(path, channels=channels)
    assert array.shape == (150, 150, channels)
    assert array.dtype == np.uint8


def test_grey_image_to_three_channels_repeats_the_grey(tmp_path):
    grey = noise((20, 20))
    path = save(Image.fromarray(grey, mode="L"), tmp_path / "g.png")
    array = load_image(path, channels=3, size=20)
    assert (array == grey[:, :, None]).all()
    assert (load_image(path, channels=1, size=20)[:, :, 0] == grey).all()


def test_rgba_alpha_is_dropped(tmp_path):
    pixels = np.zeros((10, 10, 4), dtype=np.uint8)
    pixels[..., 0], pixels[..., 1], pixels[..., 2] = 10, 20, 30
    pixels[..., 3] = 0  # fully transparent: the colour must survive, not be blended to black or white
    pixels[:5, :, 3] = 255
    path = save(Image.fromarray(pixels, mode="RGBA"), tmp_path / "a.png")
    array = load_image(path, channels=3, size=10)
    assert array.shape == (10, 10, 3)
    assert (array == np.array([10, 20, 30], dtype=np.uint8)).all()


def test_16bit_grey_png_is_scaled_not_clipped(tmp_path):
    values = np.zeros((4, 4), dtype=np.uint16)
    values[:, :2] = 65535
    values[:2, 2:] = 32896
    values[2:, 2:] = 1000
    path = save(Image.fromarray(np.array(values, dtype=np.uint16)), tmp_path / "sixteen.png")
    with Image.open(path) as reopened:  # the PNG really is 16-bit and round-trips
        assert reopened.mode.startswith("I")
        assert (np.asarray(reopened) == values).all()
    array = load_image(path, channels=1, size=4)[:, :, 0]
    assert (array[:, :2] == 255).all()
    assert np.abs(array[:2, 2:].astype(int) - 128).max() <= 1
    assert (array[2:, 2:] == 4).all()  # 1000 / 257 = 3.9; clipping would give 255
    big = load_image(path, channels=3)  # and at the default size, resized
    assert big.shape == (150, 150, 3) and big.max() == 255 and big.min() > 0


def test_one_pixel_image_loads_and_resizes(tmp_path):
    path = save(Image.new("L", (1, 1), color=77), tmp_path / "one.png")
    for channels in (1, 3):
        array = load_image(path, channels=channels)
        assert array.shape == (150, 150, channels)
        assert (array == 77).all()


@pytest.mark.parametrize("transparency", [False, True])
def test_palette_image(tmp_path, transparency):
    image = Image.new("P", (8, 8))
    image.putpalette([255, 0, 0, 0, 0, 255] + [0] * (256 * 3 - 6))
    image.putdata([0] * 32 + [1] * 32)  # top half index 0 (red), bottom half index 1 (blue)
    if transparency:
        image.info["transparency"] = 1
    path = tmp_path / "p.png"
    image.save(path, **({"transparency": 1} if transparency else {}))
    with Image.open(path) as reopened:
        assert reopened.mode == "P"
    array = load_image(path, channels=3, size=8)
    assert (array[:4] == [255, 0, 0]).all() and (array[4:] == [0, 0, 255]).all()
    grey = load_image(path, channels=1, size=8)[:, :, 0]
    assert (grey[:4] == 76).all() and (grey[4:] == 29).all()  # ITU-R 601-2 luma of pure red and blue


def test_resize_then_convert_like_pil_by_hand(tmp_path):
    path = save(Image.fromarray(noise((37, 53, 3)), mode="RGB"), tmp_path / "rgb.png")
    with Image.open(path) as image:
        by_hand_nearest = np.asarray(image.resize((150, 150), Image.Resampling.NEAREST).convert("L"))
        by_hand_bicubic = np.asarray(image.resize((150, 150), Image.Resampling.BICUBIC).convert("L"))
        convert_first_bicubic = np.asarray(image.convert("L").resize((150, 150), Image.Resampling.BICUBIC))
    assert (load_image(path, channels=1, resample="nearest")[:, :, 0] == by_hand_nearest).all()
    ours = load_image(path, channels=1, resample="bicubic")[:, :, 0]
    assert (ours == by_hand_bicubic).all()
    assert (ours != convert_first_bicubic).any()  # the order matters for an interpolating filter


def test_bad_arguments(tmp_path):
    path = save(Image.new("L", (4, 4)), tmp_path / "x.png")
    with pytest.raises(ValueError, match="channels must be 1"):
        load_image(path, channels=2)
    with pytest.raises(ValueError, match="unknown resample 'cubic'"):
        load_image(path, resample="cubic")


def test_zero_byte_file(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(ImageReadError, match=re.escape(str(path)) + r".*zero-byte"):
        load_image(path)


def test_truncated_png(tmp_path):
    path = save(Image.fromarray(noise((64, 64)), mode="L"), tmp_path / "cut.png")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match=re.escape(str(path))) as raised:
        load_image(path)
    assert "zero-byte" not in str(raised.value)


def test_text_file_named_png(tmp_path):
    path = tmp_path / "x.png"
    path.write_text("this is not an image\n")
    with pytest.raises(ImageReadError, match=r"cannot read image " + re.escape(str(path))):
        load_image(path)


def test_missing_file(tmp_path):
    path = tmp_path / "absent.png"
    with pytest.raises(ImageReadError, match=r"image file not found: " + re.escape(str(path))):
        load_image(path)


# --- index_images -------------------------------------------------------------------------------------------------
def tiny(path):
    return save(Image.new("L", (2, 2)), path)


def test_index_flat_folder(tmp_path):
    a, b = tiny(tmp_path / "a.png"), tmp_path / "b.jpg"
    Image.new("RGB", (2, 2)).save(b)
    (tmp_path / "notes.txt").write_text("x")
    assert index_images(tmp_path) == {"a.png": a, "b.jpg": b}


def test_index_nih_release_layout(tmp_path):
    a = tiny(tmp_path / "images_001" / "images" / "a.png")
    b = tiny(tmp_path / "images_002" / "images" / "b.png")
    tiny(tmp_path / "full-res" / "c.png")  # not an images* folder: not indexed
    tiny(tmp_path / "images_002" / "thumbs" / "d.png")  # below images*, but itself not images*
    assert index_images(tmp_path) == {"a.png": a, "b.png": b}


def test_index_duplicate_name_names_both_paths(tmp_path):
    first = tiny(tmp_path / "images_001" / "images" / "a.png")
    second = tiny(tmp_path / "images_002" / "images" / "a.png")
    with pytest.raises(ImageIndexError, match=r"'a\.png' is found twice") as raised:
        index_images(tmp_path)
    assert str(first) in str(raised.value) and str(second) in str(raised.value)


def test_index_missing_root(tmp_path):
    root = tmp_path / "nowhere"
    with pytest.raises(ImageIndexError, match=r"image folder not found: " + re.escape(str(root))):
        index_images(root)


# --- attach_image_paths -------------------------------------------------------------------------------------------
@pytest.fixture
def labelled(tmp_path):
    """Ten labelled images, of which only the first three are on disk."""
    names = [f"{i:08d}_000.png" for i in range(10)]
    rows = "".join(f"{name},{'No Finding' if i % 2 else 'Mass'},{i}\n" for i, name in enumerate(names))
    labels = tmp_path / "labels.csv"
    labels.write_text("Image Index,Finding Labels,Patient ID\n" + rows)
    root = tmp_path / "images"
    for name in names[:3]:
        tiny(root / name)
    return read_labels(labels), root, labels, names


def test_attach_missing_error(labelled):
    table, root, labels, names = labelled
    with pytest.raises(ImageIndexError) as raised:
        attach_image_paths(table, root, missing="error", labels=labels)
    message = str(raised.value)
    assert "7 of 10 images" in message and str(labels) in message and str(root) in message
    assert f"first: {', '.join(names[3:8])})" in message
    assert names[8] not in message
    assert "data.missing=drop" in message


def test_attach_missing_drop(labelled):
    table, root, labels, names = labelled
    present, dropped = attach_image_paths(table, root, missing="drop", labels=labels)
    assert present["image"].tolist() == names[:3]
    assert present["path"].tolist() == [str(root / name) for name in names[:3]]
    assert list(present.columns) == list(table.columns) + ["path"]
    assert dropped["image"].tolist() == names[3:]
    assert list(dropped.columns) == ["image", "patient_id", "finding_labels"]
    assert dropped["patient_id"].tolist() == list(range(3, 10))


def test_attach_all_present(labelled):
    table, root, labels, names = labelled
    present, dropped = attach_image_paths(table.head(3), root)
    assert len(present) == 3 and dropped.empty


def test_attach_unknown_policy(labelled):
    table, root, _, _ = labelled
    with pytest.raises(ValueError, match="data.missing='skip'"):
        attach_image_paths(table, root, missing="skip")


# --- the real NIH sample ------------------------------------------------------------------------------------------
@pytest.mark.real_data
def test_real_images_all_load():
    require_real_data(NIH_SAMPLE)
    paths = sorted((NIH_SAMPLE / "images").glob("*.png"))
    assert len(paths) == 963
    for path in paths:
        assert load_image(path, channels=1).shape == (150, 150, 1)
        assert load_image(path, channels=3).shape == (150, 150, 3)


@pytest.mark.real_data
def test_real_full_resolution_images_load():
    require_real_data(NIH_SAMPLE)
    paths = sorted((NIH_SAMPLE / "full-res").glob("*.png"))
    assert len(paths) == 48
    for path in paths:
        with Image.open(path) as image:
            assert image.size == (1024, 1024)
        array = load_image(path, channels=3)
        assert array.shape == (150, 150, 3) and array.dtype == np.uint8 and array.max() > array.min()
    assert load_image(paths[0], channels=1).shape == (150, 150, 1)


@pytest.mark.real_data
def test_real_labels_match_images():
    """index_images over the sample root finds images/ but not full-res/ (which repeats names)."""
    require_real_data(NIH_SAMPLE)
    table = read_labels(NIH_SAMPLE / "labels.csv")
    present, dropped = attach_image_paths(table, NIH_SAMPLE, missing="error")
    assert len(present) == len(table) == 963 and dropped.empty
    assert all("/images/" in path for path in present["path"])
    full_res = read_labels(NIH_SAMPLE / "full-res" / "labels.csv")
    assert len(full_res) == 48
    assert pd.Series(full_res["image"]).isin(table["image"]).all()
