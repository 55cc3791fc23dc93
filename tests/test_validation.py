"""The dataset validation pass: every problem class on tiny datasets, the command line, and the real NIH sample."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra.core.global_hydra import GlobalHydra
from PIL import Image

from cxr.data.validation import ValidationReport, validate
from cxr.jobs.check import run_check
from tests.conftest import NIH_SAMPLE, REPO, compose_config, require_real_data

HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]"
)
SPLIT = {"method": "thesis", "seed": 100, "train": 0.5, "val": 0.25}


def name(i: int) -> str:
    return f"{i // 2 + 1:08d}_{i % 2:03d}.png"


def write_labels(path: Path, names: list[str], findings: list[str] | None = None, header: str = HEADER) -> Path:
    """A label CSV in the 2020 NIH layout (two images per patient)."""
    findings = findings or ["No Finding" if i % 2 else "Effusion" for i in range(len(names))]
    rows = [
        f"{n},{f},{i % 2},{i // 2 + 1},50,M,PA,2500,2048,0.143,0.143" for i, (n, f) in enumerate(zip(names, findings))
    ]
    path.write_text(header + "\n" + "".join(row + "\n" for row in rows))
    return path


def write_png(path: Path, mode: str = "L", size: tuple[int, int] = (16, 16), seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    if mode == "I;16":
        Image.fromarray(rng.integers(0, 65535, size[::-1], dtype=np.uint16)).save(path)
    else:
        shape = size[::-1] + ((len(mode),) if len(mode) > 1 else ())
        Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)).save(path)
    return path


def dataset(tmp_path: Path, n: int = 8) -> tuple[Path, Path, list[str]]:
    """n labelled 16x16 grey PNGs under tmp_path/images; return (labels, root, names)."""
    root = tmp_path / "images"
    names = [name(i) for i in range(n)]
    for i, image in enumerate(names):
        write_png(root / image, seed=i)
    return write_labels(tmp_path / "labels.csv", names), root, names


def check(labels, root, split=SPLIT, missing="error") -> ValidationReport:
    report = validate(labels, root, split, missing=missing, workers=2)
    print("\n".join(report.lines()))
    return report


def levels(report: ValidationReport) -> dict[str, str]:
    return {f.kind: f.level for f in report.findings if f.level != "INFO"}


def test_clean_dataset_is_ok(tmp_path):
    labels, root, _ = dataset(tmp_path)
    report = check(labels, root)
    assert report.ok and levels(report) == {}
    assert report.get("rows").message == "rows: 8 in labels.csv, 4 patient ids, class-1 (finding) share 0.500"
    assert report.get("images").message == f"images: 8 of 8 listed in labels.csv found under {root}"
    assert str(report.get("modes_sizes")) == "INFO image modes and sizes: L 16x16: 8"
    assert str(report.get("split")) == (
        "INFO split=thesis: train 4 images / 3 patients, val 2 images / 2 patients, test 2 images / 2 patients"
    )
    assert report.get("overlap").message.startswith("patients in more than one split: ")
    assert report.lines()[-1] == "OK: training can start (0 error(s), 0 warning(s))"


def test_missing_image_is_an_error(tmp_path):
    labels, root, names = dataset(tmp_path)
    (root / names[3]).unlink()
    report = check(labels, root)
    assert not report.ok
    assert str(report.get("missing")) == (
        f"ERROR missing images: 1 of 8 images listed in labels.csv are not under {root} (first: {names[3]}); "
        "fix data.root, or skip them with data.missing=drop"
    )
    assert report.lines()[-1].startswith("FAILED")


def test_missing_image_with_drop_is_a_warning(tmp_path):
    labels, root, names = dataset(tmp_path)
    (root / names[3]).unlink()
    report = check(labels, root, missing="drop")
    assert report.ok
    assert report.get("missing").level == "WARNING"
    assert "data.missing=drop: training skips them" in report.get("missing").message
    assert sum(report.facts["split"][s]["images"] for s in ("train", "val", "test")) == 7  # the 7 left


def test_zero_byte_file(tmp_path):
    labels, root, names = dataset(tmp_path)
    (root / names[1]).write_bytes(b"")
    report = check(labels, root)
    assert not report.ok
    assert str(report.get("zero_byte")) == f"ERROR zero-byte images: 1 of 8 found are empty files (first: {names[1]})"


def test_truncated_png(tmp_path):
    labels, root, names = dataset(tmp_path)
    path = write_png(root / names[2], size=(64, 64))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    report = check(labels, root)
    assert not report.ok and levels(report) == {"truncated": "ERROR"}
    assert str(report.get("truncated")) == (
        f"ERROR truncated images: 1 of 8 found end before their image data does (first: {names[2]}); "
        f"cannot read image {path}: image file is truncated"
    )


def test_not_an_image_with_png_name(tmp_path):
    labels, root, names = dataset(tmp_path)
    (root / names[4]).write_text("not an image\n")
    report = check(labels, root)
    assert not report.ok and levels(report) == {"unreadable": "ERROR"}
    assert str(report.get("unreadable")) == (
        f"ERROR unreadable images: 1 of 8 found cannot be decoded (first: {names[4]}); "
        f"cannot read image {root / names[4]}: cannot identify image file '{root / names[4]}'"
    )


@pytest.mark.parametrize(
    "mode, size, shown",
    [
        ("RGBA", (16, 16), ("RGBA 16x16: 1",)),
        ("I;16", (16, 16), ("I;16 16x16: 1", "I 16x16: 1")),
        ("L", (1, 1), ("L 1x1: 1",)),
    ],
)
def test_unusual_but_readable_images_are_facts(tmp_path, mode, size, shown):
    labels, root, names = dataset(tmp_path)
    write_png(root / names[0], mode=mode, size=size)
    report = check(labels, root)
    assert report.ok and levels(report) == {}
    message = report.get("modes_sizes").message
    assert message.startswith("image modes and sizes: L 16x16: 7, ") and message.endswith(shown)


@pytest.mark.parametrize(
    "make, expected",
    [
        (
            lambda p: write_labels(p, [name(0)], header=HEADER.replace("Finding Labels", "Diagnosis")),
            "missing required column 'Finding Labels'",
        ),
        (lambda p: write_labels(p, [name(0), name(1)], ["Effusion", "Flu"]), "line 3: unknown finding 'Flu'"),
        (lambda p: write_labels(p, [name(0), name(1), name(0)]), f"image '{name(0)}' is listed 2 times (lines 2, 4)"),
        (lambda p: write_labels(p, [name(0), "../x.png"]), "line 3: image name '../x.png' has a path component"),
        (lambda p: write_labels(p, [name(0), "/tmp/x.png"]), "line 3: image name '/tmp/x.png' has a path component"),
    ],
)
def test_unusable_label_file_is_one_error(tmp_path, make, expected):
    _, root, _ = dataset(tmp_path)
    labels = make(tmp_path / "bad.csv")
    report = check(labels, root)
    assert not report.ok
    assert [(f.level, f.kind) for f in report.findings] == [("ERROR", "label_file")]
    assert report.findings[0].message.startswith(f"label file: {labels}: ")
    assert expected in report.findings[0].message


def test_same_image_name_twice_on_disk(tmp_path):
    labels, root, names = dataset(tmp_path)
    write_png(root / "images_002" / names[0])
    report = check(labels, root)
    assert not report.ok and levels(report) == {"image_index": "ERROR"}
    assert f"image name '{names[0]}' is found twice under {root}" in report.get("image_index").message
    assert report.get("split").level == "INFO"  # the split is still checked, on the label rows


def test_vocabulary_warnings(tmp_path):
    labels, root, names = dataset(tmp_path)
    text = labels.read_text().splitlines()
    text[1] = text[1].replace(",50,M,PA,", ",150,X,LL,")
    labels.write_text("\n".join(text) + "\n")
    report = check(labels, root)
    assert report.ok
    assert str(report.get("vocabulary.sex")) == f"WARNING sex outside M/F: 1 of 8 rows (first: {names[0]}: 'X')"
    assert str(report.get("vocabulary.view_position")) == (
        f"WARNING view_position outside PA/AP: 1 of 8 rows (first: {names[0]}: 'LL')"
    )
    assert (
        str(report.get("vocabulary.age")) == f"WARNING ages outside 0-120 years: 1 of 8 rows (first: {names[0]}: 150)"
    )


def test_all_images_missing_with_drop_leaves_nothing_to_split(tmp_path):
    labels, root, names = dataset(tmp_path)
    for image in names:
        (root / image).unlink()
    report = check(labels, root, missing="drop")
    assert not report.ok
    assert levels(report) == {"missing": "WARNING", "split": "ERROR"}
    assert str(report.get("split")) == f"ERROR split: no labelled image is left to split (none was found under {root})"


def test_empty_validation_split(tmp_path):
    labels, root, _ = dataset(tmp_path)
    report = check(labels, root, split={**SPLIT, "val": 0})
    assert not report.ok
    assert str(report.get("split")) == "ERROR split=thesis left the val split empty (8 labelled images)"


def test_empty_test_split_is_a_warning(tmp_path):
    labels, root, _ = dataset(tmp_path)
    report = check(labels, root, split={**SPLIT, "train": 6, "val": 2})
    assert report.ok
    assert str(report.get("empty_test")) == "WARNING split=thesis: the test split is empty (nothing to evaluate)"


def test_split_sizes_larger_than_the_data(tmp_path):
    labels, root, _ = dataset(tmp_path)
    report = check(labels, root, split={**SPLIT, "train": 3000, "val": 500})
    assert not report.ok
    assert report.get("split").message.startswith(
        "split sizes train=3000 + val=500 (3500 images) exceed the 8 labelled images"
    )


def test_split_settings_the_method_does_not_take(tmp_path):
    labels, root, _ = dataset(tmp_path)
    report = check(
        labels,
        root,
        split={"method": "official", "train": 5, "val": 0.1, "train_val_list": "a.txt", "test_list": "b.txt"},
    )
    assert not report.ok
    assert "settings do not fit this method" in report.get("split").message and "'train'" in report.get("split").message


def test_patient_split_without_patient_ids(tmp_path):
    root = tmp_path / "images"
    names = [name(i) for i in range(8)]
    for image in names:
        write_png(root / image)
    labels = tmp_path / "thesis.csv"
    labels.write_text("".join(f"{image},No Finding\n" for image in names))
    report = check(labels, root, split={"method": "patient", "seed": 1, "train": 0.5, "val": 0.25})
    assert not report.ok
    assert "needs a patient id for every image" in report.get("split").message
    assert report.get("rows").message.startswith("rows: 8 in thesis.csv, no patient ids")


def test_all_problem_classes_in_one_run(tmp_path):
    labels, root, names = dataset(tmp_path)
    (root / names[0]).unlink()
    (root / names[1]).write_bytes(b"")
    truncated = write_png(root / names[2], size=(64, 64))
    truncated.write_bytes(truncated.read_bytes()[:200])
    report = check(labels, root)
    assert not report.ok
    assert levels(report) == {"missing": "ERROR", "zero_byte": "ERROR", "truncated": "ERROR"}
    assert len([line for line in report.lines() if line.startswith("ERROR")]) == 3
    assert report.get("modes_sizes").message == "image modes and sizes: L 16x16: 5"


def test_without_labels_or_root_each_missing_key_is_named_alone(tmp_path):
    report = validate(None, tmp_path, SPLIT)
    assert not report.ok and report.get("settings").message.startswith("data.labels is not set: give the label file")
    assert "data.root" not in report.get("settings").message
    report = validate(tmp_path / "labels.csv", None, SPLIT)
    assert report.get("settings").message.startswith("data.root is not set: give the image folder")
    assert "data.labels" not in report.get("settings").message
    assert validate(None, "", SPLIT).get("settings").message.startswith("data.labels and data.root are not set")


def test_run_check_on_the_demo_config(make_cfg):
    report = run_check(make_cfg(["data.missing=drop"]), workers=2)
    assert report.ok, report.lines()
    assert report.facts["images_missing"] == 0 and report.get("split").level == "INFO"


def test_run_check_validates_the_external_set(tmp_path, demo_root):
    labels, root, names = dataset(tmp_path / "external")
    (root / names[0]).unlink()
    cfg = compose_config(
        "train",
        [
            f"data.root={demo_root}",
            f"data.labels={demo_root}/Data_Entry_demo.csv",
            "data.demo.n_patients=40",
            "data.demo.images_per_patient=[1,4]",
            "data.demo.image_size=96",
            f"data.external.root={root}",
            f"data.external.labels={labels}",
        ],
        tmp_path / "run",
    )
    GlobalHydra.instance().clear()
    report = run_check(cfg, workers=2)
    assert not report.ok and levels(report) == {"external.missing": "ERROR"}
    assert report.get("external.missing").message.startswith(
        "external: missing images: 1 of 8 images listed in labels.csv"
    )
    assert report.get("external.split") is None  # the external set is not split


def run_cli(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-m", "cxr.check", "data=nih", f"paths.log_dir={tmp_path}/outputs", *overrides],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    print(result.stdout, result.stderr)
    assert not (tmp_path / "outputs").exists() and not (REPO / "check.log").exists()  # no run directory
    return result


@pytest.mark.slow
def test_command_line_fails_on_a_bad_dataset_and_passes_a_clean_one(tmp_path):
    labels, root, names = dataset(tmp_path / "bad")
    (root / names[5]).unlink()
    bad = run_cli(tmp_path, f"data.root={root}", f"data.labels={labels}", "data.split.train=0.5", "data.split.val=0.25")
    assert bad.returncode == 1
    assert (
        f"ERROR missing images: 1 of 8 images listed in labels.csv are not under {root} (first: {names[5]})"
        in bad.stdout
    )
    assert bad.stdout.strip().splitlines()[-1].startswith("FAILED")

    labels, root, _ = dataset(tmp_path / "clean")
    clean = run_cli(
        tmp_path, f"data.root={root}", f"data.labels={labels}", "data.split.train=0.5", "data.split.val=0.25"
    )
    assert clean.returncode == 0
    assert "INFO image modes and sizes: L 16x16: 8" in clean.stdout and "ERROR" not in clean.stdout


@pytest.mark.real_data
def test_real_nih_sample_validates(tmp_path):
    require_real_data(NIH_SAMPLE)
    report = validate(
        NIH_SAMPLE / "labels.csv",
        NIH_SAMPLE,
        {**SPLIT, "train": 4606, "val": 500, "scale": True, "pool": 5606, "seed": 100},
        workers=None,
    )
    print("\n".join(report.lines()))
    assert report.ok and levels(report) == {}
    assert report.facts["rows"] == report.facts["images_found"] == 963 and report.facts["patients"] == 566
    assert report.facts["modes"] == {"L": 963}
    assert report.facts["sizes"] == {"64x64": 535, "256x256": 428}
    assert report.get("modes_sizes").message == "image modes and sizes: L 64x64: 535, L 256x256: 428"
    assert report.facts["split"]["train"]["images"] == round(4606 / 5606 * 963)

    external = validate(NIH_SAMPLE / "full-res" / "labels.csv", NIH_SAMPLE / "full-res")
    assert external.ok and external.facts["modes_sizes"] == {"L 1024x1024": 48}


# --- remembering a passed check (data_check_cache) ------------------------------------------------------------------
def cached_check(labels, root, cache_dir) -> ValidationReport:
    return validate(labels, root, SPLIT, workers=1, cache_dir=cache_dir)


def test_an_unchanged_dataset_is_not_decoded_again(tmp_path):
    labels, root, names = dataset(tmp_path)
    cache = tmp_path / "check-cache"
    first = cached_check(labels, root, cache)
    assert first.ok and first.facts["images_decoded"] == 8 and first.facts["images_remembered"] == 0
    second = cached_check(labels, root, cache)
    assert second.ok and second.facts["images_decoded"] == 0 and second.facts["images_remembered"] == 8
    assert second.facts["modes_sizes"] == first.facts["modes_sizes"] == {"L 16x16": 8}  # remembered, not lost
    assert validate(labels, root, SPLIT, workers=1).facts["images_decoded"] == 8  # no cache_dir: decode all


def test_a_changed_or_added_image_is_decoded_again(tmp_path):
    labels, root, names = dataset(tmp_path)
    cache = tmp_path / "check-cache"
    cached_check(labels, root, cache)
    info = (root / names[2]).stat()
    os.utime(root / names[2], ns=(info.st_atime_ns, info.st_mtime_ns + 1_000_000_000))  # touched
    write_png(root / names[5], size=(20, 20), seed=99)  # replaced
    report = cached_check(labels, root, cache)
    assert report.facts["images_decoded"] == 2 and report.facts["modes_sizes"] == {"L 16x16": 7, "L 20x20": 1}

    write_png(root / "00000009_000.png", seed=9)  # added, and labelled
    write_labels(labels, names + ["00000009_000.png"])
    report = cached_check(labels, root, cache)
    assert report.facts["images_decoded"] == 1 and report.facts["images_remembered"] == 8


def test_a_broken_image_is_never_remembered(tmp_path):
    labels, root, names = dataset(tmp_path)
    cache = tmp_path / "check-cache"
    victim = root / names[1]
    victim.write_bytes(victim.read_bytes()[:40])
    for _ in range(2):
        report = cached_check(labels, root, cache)
        errors = [f.message for f in report.findings if f.level == "ERROR"]
        assert len(errors) == 1 and names[1] in errors[0]
    assert report.facts["images_decoded"] == 1  # the 7 good ones are remembered, the broken one is re-read


def test_a_damaged_cache_file_means_decoding_everything(tmp_path):
    labels, root, _ = dataset(tmp_path)
    cache = tmp_path / "check-cache"
    cached_check(labels, root, cache)
    (saved,) = cache.glob("decoded-*.csv")
    saved.write_text("garbage,\n\x00\x01")
    report = cached_check(labels, root, cache)
    assert report.ok and report.facts["images_decoded"] == 8
