"""Tests of the synthetic NIH-layout demo dataset generator."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxr.data import demo
from cxr.data.demo import DEMO_VERSION, ensure_demo_dataset
from cxr.data.labels import read_labels

HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]"
)
FINDINGS = {
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Effusion",
    "Emphysema",
    "Fibrosis",
    "Hernia",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pleural_Thickening",
    "Pneumonia",
    "Pneumothorax",
}
SMALL = dict(n_patients=12, image_size=48)


def rows_of(csv: Path) -> list[list[str]]:
    lines = csv.read_text().splitlines()
    assert lines[0] == HEADER
    return [line.split(",") for line in lines[1:]]


def images_of(root: Path) -> dict[str, Path]:
    return {p.name: p for p in root.glob("images_00[12]/images/*.png")}


def pixels(root: Path) -> dict[str, np.ndarray]:
    return {name: np.array(Image.open(path)) for name, path in sorted(images_of(root).items())}


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    return ensure_demo_dataset(tmp_path_factory.mktemp("demo") / "nih_demo", **SMALL)


def test_csv_follows_official_layout(small):
    assert small.name == "Data_Entry_demo.csv"
    rows = rows_of(small)
    assert all(len(row) == 11 for row in rows)
    per_patient: dict[int, list[int]] = {}
    for name, labels, followup, patient, age, gender, view, width, height, sx, sy in rows:
        assert name == f"{int(patient):08d}_{int(followup):03d}.png"
        per_patient.setdefault(int(patient), []).append(int(followup))
        assert 18 <= int(age) <= 90 and gender in {"M", "F"} and view in {"PA", "AP"}
        assert int(width) > 0 and int(height) > 0 and float(sx) > 0 and float(sy) > 0
        if labels != "No Finding":
            names = labels.split("|")
            assert set(names) <= FINDINGS and len(set(names)) == len(names)
    assert sorted(per_patient) == list(range(1, 13))
    assert all(f == list(range(len(f))) and 1 <= len(f) <= 6 for f in per_patient.values())
    assert max(map(len, per_patient.values())) >= 3  # several images per patient
    assert {r[1] == "No Finding" for r in rows} == {True, False}  # both classes
    table = read_labels(small)  # the framework's own reader accepts it
    assert len(table) == len(rows) and 0 < table["target"].mean() < 1


def test_every_listed_image_is_an_8bit_png_in_the_nih_layout(small):
    found = images_of(small.parent)
    names = [row[0] for row in rows_of(small)]
    assert sorted(found) == sorted(names)
    assert {p.parent.parent.name for p in found.values()} == {"images_001", "images_002"}
    for path in found.values():
        with Image.open(path) as image:
            assert image.format == "PNG" and image.mode == "L" and image.size == (48, 48)


def test_same_seed_same_data_other_seed_other_data(tmp_path, small):
    again = ensure_demo_dataset(tmp_path / "a", **SMALL)
    assert again.read_bytes() == small.read_bytes()
    first, second = pixels(small.parent), pixels(again.parent)
    assert first.keys() == second.keys() and all(np.array_equal(first[k], second[k]) for k in first)
    other = ensure_demo_dataset(tmp_path / "b", seed=1, **SMALL)
    assert other.read_bytes() != small.read_bytes()
    third = pixels(other.parent)
    assert any(not np.array_equal(first[k], third[k]) for k in first.keys() & third.keys())


def test_generates_once_and_regenerates_when_arguments_change(tmp_path, monkeypatch):
    root = tmp_path / "cache" / "nih_demo"  # parent folders are created
    csv = ensure_demo_dataset(root, **SMALL)
    stamp = json.loads((root / ".complete").read_text())
    assert stamp["version"] == DEMO_VERSION and stamp["n_patients"] == 12
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*")}

    def fail(*args, **kwargs):
        raise AssertionError("regenerated a complete dataset")

    with monkeypatch.context() as patch:
        patch.setattr(demo, "_draw", fail)
        assert ensure_demo_dataset(root, **SMALL) == csv
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == before

    ensure_demo_dataset(root, n_patients=12, image_size=32)
    assert json.loads((root / ".complete").read_text())["image_size"] == 32
    assert all(Image.open(p).size == (32, 32) for p in images_of(root).values())
    assert sorted(p.name for p in root.parent.iterdir()) == ["nih_demo"]  # no temporary folders left


def test_incomplete_dataset_is_rebuilt_and_foreign_folder_is_kept(tmp_path):
    root = tmp_path / "nih_demo"
    ensure_demo_dataset(root, **SMALL)
    (root / ".complete").unlink()  # looks like an interrupted build
    ensure_demo_dataset(root, **SMALL)
    assert (root / ".complete").is_file()

    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        ensure_demo_dataset(foreign, **SMALL)
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_findings_are_visible_in_the_lungs(tmp_path):
    """The brightest smoothed spot inside the lung fields separates the classes (AUROC well above chance)."""
    csv = ensure_demo_dataset(tmp_path / "d", n_patients=40, image_size=128)
    images = images_of(csv.parent)
    y, x = np.mgrid[-1:1:128j, -1:1:128j]
    lungs = ((np.abs(x) - 0.34) / 0.24) ** 2 + ((y + 0.02) / 0.52) ** 2 < 0.6**2  # central part of both lungs
    scores, sick = [], []
    for row in rows_of(csv):
        image = np.array(Image.open(images[row[0]]), dtype=float)
        smooth = sum(np.roll(image, (i, j), (0, 1)) for i in range(-2, 3) for j in range(-2, 3)) / 25
        scores.append(smooth[lungs].max() - np.median(smooth[lungs]))
        sick.append(row[1] != "No Finding")
    scores, sick = np.array(scores), np.array(sick)
    ranks = np.argsort(np.argsort(scores)) + 1
    auroc = (ranks[sick].sum() - sick.sum() * (sick.sum() + 1) / 2) / (sick.sum() * (~sick).sum())
    assert scores[sick].mean() > scores[~sick].mean()
    assert auroc > 0.7, auroc  # unrelated labels would give about 0.5 (sd ~0.05 here)
