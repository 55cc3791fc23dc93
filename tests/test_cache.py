"""data.cache: decoded once, reused without decoding, rebuilt on any change, identical to on-the-fly decoding,
and a stale, truncated or half-built cache is never read."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from PIL import Image

from cxr.data import cache as cache_module
from cxr.data import cache_build
from cxr.data import images as images_module
from cxr.data.cache import CacheSpec, open_cache, verify_cache
from cxr.data.cache_build import open_or_build
from cxr.data.dataset import ChestXrayDataset, Preprocessing

RGB = Preprocessing(channels=3, image_size=32, resample="nearest")


def _write_images(folder: Path, n: int = 6, seed: int = 0) -> list[str]:
    """Grey, RGB, RGBA and 16-bit PNGs of assorted sizes (the modes NIH ships)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        h, w = 40 + 7 * i, 50 + 3 * i
        kind = i % 4
        if kind == 0:
            image = Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8), mode="L")
        elif kind == 1:
            image = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), mode="RGB")
        elif kind == 2:
            image = Image.fromarray(rng.integers(0, 256, (h, w, 4), dtype=np.uint8), mode="RGBA")
        else:
            image = Image.fromarray(rng.integers(0, 65536, (h, w), dtype=np.uint16))
        paths.append(str(folder / f"img_{i:03d}.png"))
        image.save(paths[-1])
    return paths


@pytest.fixture
def pngs(tmp_path) -> list[str]:
    return _write_images(tmp_path / "png")


class _Decodes(dict):
    """``counter["n"]``: distinct (image, size) decodes since the last ``counter["n"] = 0`` (a coloured image is
    decoded as RGB and as L, which counts once); ``counter["paths"]``: which images."""

    def __setitem__(self, key, value):
        super().__setitem__(key, value)
        if key == "n" and value == 0:
            super().__setitem__("paths", set())
            super().__setitem__("seen", set())


@pytest.fixture
def decode_counter(monkeypatch):
    """Counts the images decoded through cxr.data.images.load_image (as the cache does)."""
    calls = _Decodes()
    calls["n"] = 0
    real = images_module.load_image

    def counting(path, *args, **kwargs):
        if (path, kwargs.get("size")) not in calls["seen"]:
            calls["seen"].add((path, kwargs.get("size")))
            calls["paths"].add(path)
            dict.__setitem__(calls, "n", calls["n"] + 1)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(images_module, "load_image", counting)
    return calls


def _forbid_decoding(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("an image was decoded although the cache is valid")

    monkeypatch.setattr(images_module, "load_image", fail)
    monkeypatch.setattr("cxr.data.dataset.load_image", fail)


@pytest.mark.parametrize("channels,resample", [(3, "nearest"), (1, "nearest"), (3, "bilinear"), (1, "lanczos")])
def test_cached_pixels_are_identical_to_decoding_on_the_fly(tmp_path, pngs, channels, resample):
    preprocessing = Preprocessing(channels=channels, image_size=24, resample=resample)
    cached = open_or_build(pngs, preprocessing, tmp_path / "cache")
    assert len(cached) == len(pngs) and cached.shape == (len(pngs), 24, 24, channels)
    assert cached.array.shape == (len(pngs), 24, 24, 1)  # one grey plane stored, whatever the reader's channels
    for i, path in enumerate(pngs):
        expected = images_module.load_image(path, channels=channels, size=24, resample=resample)
        assert cached[i].dtype == np.uint8 and np.array_equal(cached[i], expected)
    assert verify_cache(cached)


def test_built_once_then_reused_without_decoding(tmp_path, pngs, decode_counter, monkeypatch):
    first = open_or_build(pngs, RGB, tmp_path / "cache")
    assert decode_counter["n"] == len(pngs)
    _forbid_decoding(monkeypatch)
    second = open_or_build(pngs, RGB, tmp_path / "cache")
    assert second.array_path == first.array_path
    assert np.array_equal(np.asarray(second.array), np.asarray(first.array))
    assert sorted(p.name.split(".", 1)[1] for p in (tmp_path / "cache").iterdir()) == [
        "colour.npy",
        "json",
        "lock",
        "npy",
    ]  # _write_images makes coloured RGB and RGBA images


def test_only_the_chunk_of_a_changed_image_is_decoded_again(tmp_path, pngs, decode_counter, monkeypatch):
    monkeypatch.setattr(cache_module, "CHUNK", 2)
    open_or_build(pngs, RGB, tmp_path / "cache")
    Image.fromarray(np.full((60, 60), 200, dtype=np.uint8), mode="L").save(pngs[2])
    stat = os.stat(pngs[2])
    os.utime(pngs[2], ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # also on coarse-mtime filesystems
    decode_counter["n"] = 0
    rebuilt = open_or_build(pngs, RGB, tmp_path / "cache")
    assert decode_counter["paths"] == {pngs[2], pngs[3]}  # the chunk holding the changed image, nothing else
    assert (rebuilt[2] == 200).all() and verify_cache(rebuilt)
    for i, path in enumerate(pngs):
        assert np.array_equal(rebuilt[i], images_module.load_image(path, channels=3, size=32))


def test_rebuilt_when_the_image_list_or_size_change_and_shared_across_channels(tmp_path, pngs, decode_counter):
    cache_dir = tmp_path / "cache"
    base = open_or_build(pngs, RGB, cache_dir)
    decode_counter["n"] = 0
    grey = open_or_build(pngs, Preprocessing(channels=1, image_size=32), cache_dir)
    assert decode_counter["n"] == 0 and grey.array_path == base.array_path  # B reads A's and C's cache
    other_size = open_or_build(pngs, Preprocessing(channels=3, image_size=16), cache_dir)
    fewer = open_or_build(pngs[:-1], RGB, cache_dir)
    assert decode_counter["n"] == 2 * len(pngs) - 1
    assert len({base.array_path, other_size.array_path, fewer.array_path}) == 3
    assert other_size.shape == (len(pngs), 16, 16, 3) and grey.shape == (len(pngs), 32, 32, 1)
    for i, path in enumerate(pngs):
        assert np.array_equal(grey[i], images_module.load_image(path, channels=1, size=32))
    # normalisation is not part of the key: another divisor reuses the same pixels
    decode_counter["n"] = 0
    assert (
        open_or_build(pngs, Preprocessing(channels=3, image_size=32, pixel_divisor=1.0), cache_dir).array_path
        == base.array_path
    )
    assert decode_counter["n"] == 0


def test_grey_images_take_one_plane_and_only_coloured_ones_keep_rgb(tmp_path, pngs):
    cached = open_or_build(pngs, RGB, tmp_path / "cache")
    modes = [Image.open(p).mode for p in pngs]
    assert sorted(cached.colour_rows) == [i for i, m in enumerate(modes) if m in ("RGB", "RGBA")]
    grey_rgb = tmp_path / "grey_rgb.png"  # an RGB file whose channels are equal is stored as one plane
    Image.fromarray(np.repeat(np.arange(2500, dtype=np.uint8).reshape(50, 50, 1), 3, axis=2), "RGB").save(grey_rgb)
    again = open_or_build([*pngs, str(grey_rgb)], RGB, tmp_path / "cache")
    assert len(pngs) not in again.colour_rows
    assert np.array_equal(again[len(pngs)], images_module.load_image(grey_rgb, channels=3, size=32))
    size = again.array_path.stat().st_size
    assert size < (len(pngs) + 1) * 32 * 32 * 3 // 2  # not three copies


@pytest.mark.parametrize("damage", ["truncate", "rewrite", "stale_key", "no_metadata", "garbage_metadata"])
def test_a_damaged_or_stale_cache_is_never_read(tmp_path, pngs, decode_counter, damage):
    cached = open_or_build(pngs, RGB, tmp_path / "cache")
    meta_path = cached.array_path.with_suffix(".json")
    if damage == "truncate":
        os.truncate(cached.array_path, cached.array_path.stat().st_size - 100)
    elif damage == "rewrite":  # same size, other bytes: the mtime recorded at build time no longer matches
        data = bytearray(cached.array_path.read_bytes())
        data[-1] ^= 0xFF
        stat = cached.array_path.stat()
        cached.array_path.write_bytes(bytes(data))
        os.utime(cached.array_path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    elif damage == "stale_key":
        meta = json.loads(meta_path.read_text())
        meta_path.write_text(json.dumps({**meta, "key": "0" * 64, "chunk_keys": ["0" * 64] * len(meta["chunk_keys"])}))
    elif damage == "no_metadata":
        meta_path.unlink()
    else:
        meta_path.write_text("{not json")
    spec = CacheSpec.of(RGB)
    assert open_cache(pngs, spec, tmp_path / "cache") is None
    decode_counter["n"] = 0
    rebuilt = open_or_build(pngs, RGB, tmp_path / "cache")
    assert decode_counter["n"] == len(pngs) and verify_cache(rebuilt)
    for i, path in enumerate(pngs):
        assert np.array_equal(rebuilt[i], images_module.load_image(path, channels=3, size=32))


def test_a_failed_build_leaves_nothing_that_looks_valid_and_resumes(tmp_path, pngs, monkeypatch, decode_counter):
    monkeypatch.setattr(cache_module, "CHUNK", 2)
    cache_dir = tmp_path / "cache"
    open_or_build(pngs, RGB, cache_dir)
    for path in pngs:  # every chunk is stale: a full rebuild is due
        os.utime(path, ns=(0, 10**18))
    real = images_module.load_image

    def fail_on_fifth(path, *args, **kwargs):
        if path == pngs[4]:
            raise images_module.ImageReadError(f"cannot read image {path}")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(images_module, "load_image", fail_on_fifth)
    with pytest.raises(images_module.ImageReadError):
        open_or_build(pngs, RGB, cache_dir)
    assert open_cache(pngs, CacheSpec.of(RGB), cache_dir) is None
    assert not list(cache_dir.glob("*tmp*"))
    progress = json.loads(next(cache_dir.glob("*.part-progress.json")).read_text())
    assert sorted(progress["chunks"]) == ["0", "2"]  # chunks before the failure are kept for the next run
    monkeypatch.setattr(images_module, "load_image", real)
    decode_counter["n"] = 0
    monkeypatch.setattr(
        images_module, "load_image", lambda path, *a, **k: (decode_counter["paths"].add(path), real(path, *a, **k))[1]
    )
    resumed = open_or_build(pngs, RGB, cache_dir)
    assert decode_counter["paths"] == {pngs[4], pngs[5]}  # only the chunk that had failed
    for i, path in enumerate(pngs):
        assert np.array_equal(resumed[i], real(path, channels=3, size=32))
    assert verify_cache(resumed) and not list(cache_dir.glob("*.part*"))


def test_list_and_prune(tmp_path, pngs):
    from cxr.data.cache_admin import list_caches, prune_caches

    cache_dir = tmp_path / "cache"
    kept = open_or_build(pngs, RGB, cache_dir)
    open_or_build(pngs[:3], RGB, cache_dir)
    listed = list_caches(cache_dir)
    assert sorted((e["state"], e["images"]) for e in listed) == [("complete", 3), ("complete", 6)]
    assert all(e["bytes"] > 0 for e in listed)
    deleted = prune_caches(cache_dir, keep=[kept.array_path.stem])
    assert [e["images"] for e in deleted] == [3]
    assert [e["name"] for e in list_caches(cache_dir)] == [kept.array_path.stem]
    assert np.array_equal(open_or_build(pngs, RGB, cache_dir)[0], kept[0])


def test_parallel_build_matches_serial_decoding(tmp_path):
    paths = _write_images(tmp_path / "many", n=cache_build.POOL_MIN_IMAGES + 6, seed=1)
    cached = open_or_build(paths, RGB, tmp_path / "cache", workers=2)
    for i in (0, 1, 2, 3, 37, len(paths) - 1):
        assert np.array_equal(cached[i], images_module.load_image(paths[i], channels=3, size=32))
    assert cached.meta["n_images"] == len(paths) and verify_cache(cached)


def test_cached_images_pickle_without_their_pixels(tmp_path, pngs):
    cached = open_or_build(pngs, RGB, tmp_path / "cache")
    cached.array  # opened
    restored = pickle.loads(pickle.dumps(cached))
    assert len(pickle.dumps(cached)) < 10_000
    assert np.array_equal(restored[1], cached[1])


def test_dataset_reads_the_cache_in_its_own_row_order(tmp_path, pngs, monkeypatch):
    import pandas as pd

    cached = open_or_build(pngs, RGB, tmp_path / "cache")
    table = pd.DataFrame({"path": [pngs[4], pngs[1]], "target": [1, 0]})
    streaming = ChestXrayDataset(table, RGB)
    expected = [streaming[i] for i in range(2)]
    _forbid_decoding(monkeypatch)
    from_cache = ChestXrayDataset(table, RGB, source=cached, source_rows=[4, 1])
    for i in range(2):
        assert torch.equal(from_cache[i][0], expected[i][0]) and from_cache[i][1:] == expected[i][1:]
    with pytest.raises(ValueError, match="cache rows"):
        ChestXrayDataset(table, RGB, source=cached, source_rows=[4])


def test_to_tensor_equals_torch_arithmetic_for_every_pixel_value():
    pixels = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, axis=2)
    for p in (
        Preprocessing(pixel_divisor=255.0),
        Preprocessing(pixel_divisor=1.0),
        Preprocessing(pixel_divisor=255.0, mean=0.485, std=0.229)
        if "mean" in Preprocessing.__dataclass_fields__
        else Preprocessing(pixel_divisor=3.0),
    ):
        expected = torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1))).float()
        if p.pixel_divisor != 1:
            expected = expected / p.pixel_divisor
        if getattr(p, "mean", 0) != 0 or getattr(p, "std", 1) != 1:
            expected = (expected - p.mean) / p.std
        got = p.to_tensor(pixels)
        assert got.dtype == torch.float32 and got.is_contiguous() and torch.equal(got, expected)


def _datamodule(make_cfg, tmp_path, *overrides):
    cfg = make_cfg(["data.cache=true", f"data.cache_dir={tmp_path / 'shared_cache'}", *overrides])
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    return datamodule


def test_datamodule_cache_matches_streaming_and_is_shared_by_programs(make_cfg, tmp_path, monkeypatch):
    cached = _datamodule(make_cfg, tmp_path, "program=A")
    streaming = instantiate(make_cfg(["program=A"]).data)
    streaming.setup("fit")
    for name in ("train", "val", "test"):
        a, b = cached.datasets[name], streaming.datasets[name]
        assert a.source is not None and b.source is None and len(a) == len(b)
        for i in range(0, len(a), max(1, len(a) // 7)):
            assert torch.equal(a[i][0], b[i][0]) and a[i][1] == b[i][1]
    _forbid_decoding(monkeypatch)
    again = _datamodule(make_cfg, tmp_path, "program=C")  # other split sizes, same preprocessing: same cache
    assert again.datasets["train"].source.array_path == cached.datasets["train"].source.array_path
    assert len(list((tmp_path / "shared_cache").glob("*.npy"))) == 1
    monkeypatch.undo()  # decode program C's images on the fly to compare with what its cached rows give
    streaming_c = instantiate(make_cfg(["program=C"]).data)
    streaming_c.setup("fit")
    assert len(again.datasets["train"]) > len(cached.datasets["train"])  # C trains on more images than A
    for name in ("train", "val", "test"):
        a, b = again.datasets[name], streaming_c.datasets[name]
        assert len(a) == len(b) > 0
        for i in (0, len(a) // 2, len(a) - 1):  # C's rows of the shared cache are C's images, not A's
            assert torch.equal(a[i][0], b[i][0]) and a[i][1] == b[i][1]


def test_cache_config_defaults(make_cfg):
    cfg = make_cfg([])
    assert cfg.data.cache is False
    assert cfg.data.cache_dir == f"{cfg.paths.data_dir}/cache"


def test_collate_batch_equals_default_collate(tmp_path, pngs):
    import pandas as pd
    from torch.utils.data import DataLoader, default_collate

    from cxr.data.dataset import collate_batch

    dataset = ChestXrayDataset(pd.DataFrame({"path": pngs, "target": [0, 1] * 3}), RGB)
    items = [dataset[i] for i in range(len(dataset))]
    ours, theirs = collate_batch(items), default_collate(items)
    assert len(ours) == len(theirs) == 3
    for a, b in zip(ours, theirs):
        assert torch.equal(a, b) and a.dtype == b.dtype
    assert ours[0].is_contiguous()
    in_worker = next(iter(DataLoader(dataset, batch_size=6, num_workers=1, collate_fn=collate_batch)))
    assert all(torch.equal(a, b) for a, b in zip(in_worker, theirs))
