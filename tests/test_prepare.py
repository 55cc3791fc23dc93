"""python -m cxr.prepare: one pass over the configured dataset into the cache (and shards), reused afterwards;
caches listed and pruned; bad input in one line."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from cxr.jobs.prepare import list_or_prune, prepare
from tests.conftest import NIH_SAMPLE, REPO, require_real_data


def test_prepare_builds_once_then_training_reads_it(make_cfg, tmp_path, monkeypatch):
    from hydra.utils import instantiate

    from cxr.data import dataset as dataset_module  # imported before the patch: undo restores its own load_image
    from cxr.data import images as images_module

    cfg = make_cfg([f"data.cache_dir={tmp_path / 'cache'}"])
    lines = []
    first = prepare(cfg, workers=1, progress=False, echo=lines.append)
    n = first["labelled"]["images"]
    assert first["labelled"]["decoded_now"] == n > 0 and first["labelled"]["img_per_s"] > 0
    assert lines[0].startswith(f"labelled: {n} images, 150x150 nearest")
    assert prepare(cfg, workers=1, progress=False, echo=lines.append)["labelled"]["decoded_now"] == 0

    def fail(*args, **kwargs):
        raise AssertionError("decoded although prepared")

    monkeypatch.setattr(images_module, "load_image", fail)
    monkeypatch.setattr(dataset_module, "load_image", fail)
    datamodule = instantiate(
        make_cfg(["data.cache=true", f"data.cache_dir={tmp_path / 'cache'}", "program=B"]).data
    )  # another program with the same size and filter
    datamodule.setup("fit")
    assert len(datamodule.datasets["train"][0][0]) == 1


def test_list_marks_what_is_in_use_and_prune_deletes_the_rest(make_cfg, tmp_path):
    dirs = [f"data.cache_dir={tmp_path / 'cache'}", f"data.shards_dir={tmp_path / 'shards'}"]
    cfg = make_cfg(dirs)
    prepare(cfg, progress=False, shards=True, echo=lambda _: None)
    other = make_cfg([*dirs, "program=D"])  # bilinear: another cache, other shards
    prepare(other, progress=False, shards=True, echo=lambda _: None)
    lines = []
    listed = list_or_prune(cfg, prune=False, echo=lines.append)
    assert len(listed) == 2 + 6 and sum("[in use]" in line for line in lines) == 1 + 3
    assert sum("bilinear" in line and "[prunable]" in line for line in lines) == 1 + 3
    deleted = list_or_prune(cfg, prune=True, echo=lines.append)
    assert sorted(e["name"] for e in deleted) == sorted(e["name"] for e in listed if "bilinear" in e["name"])
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 1
    assert all("nearest" in p.name for p in (tmp_path / "shards").iterdir())
    assert len(list((tmp_path / "shards").iterdir())) == 3


def run_cli(tmp_path, *args):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "cxr.prepare", f"paths.log_dir={tmp_path}/outputs", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
def test_command_line_reports_bad_input_in_one_line_and_writes_no_run_directory(tmp_path):
    result = run_cli(
        tmp_path,
        "data=nih",
        f"data.root={tmp_path}/nowhere",
        f"data.labels={tmp_path}/none.csv",
        f"data.cache_dir={tmp_path}/cache",
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("cxr.prepare: ")
    assert f"{tmp_path}/none.csv" in result.stderr
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "cache").exists()


@pytest.mark.slow
@pytest.mark.real_data
def test_prepare_the_real_sample_with_shards(tmp_path):
    require_real_data(NIH_SAMPLE)
    result = run_cli(
        tmp_path,
        "experiment=thesis_nih_sample",
        "program=C",
        f"data.cache_dir={tmp_path}/cache",
        f"data.shards_dir={tmp_path}/shards",
        "--shards",
        "--workers=2",
    )
    print(result.stdout, result.stderr[-3000:])
    assert result.returncode == 0
    # the preset holds the external set's patients out (data.exclude): 915 of the 963 labelled images are split,
    # and those are the images training caches
    assert "labelled: 915 images, 150x150 nearest" in result.stdout and "915 decoded in" in result.stdout
    assert "external: 48 images" in result.stdout
    for split in ("train", "val", "test", "external"):
        assert f"shards {split}: " in result.stdout
    array = np.load(next((tmp_path / "cache").glob("images-150px-nearest-915-*.npy")), mmap_mode="r")
    assert array.shape == (915, 150, 150, 1)  # one channel stored for the RGB program C
    assert not list((tmp_path / "cache").glob("images-*-963-*.npy"))  # no cache of images training never reads
