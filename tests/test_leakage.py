"""Leakage between sets (cxr.data.leakage), held-out external sets (data.exclude) and the one labelled table
that the data check and the DataModule share (cxr.data.table)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from cxr.data.datamodule import ChestXrayDataModule
from cxr.data.leakage import LeakageError, find_overlaps, judge
from cxr.data.table import build_sets
from tests.conftest import NIH_SAMPLE, require_real_data

PREPROCESSING = {"channels": 1, "image_size": 32, "pixel_divisor": 255.0}
ALLOW_DEFAULT = {"test_patients": "auto", "external_images": False, "external_patients": False}


def table(images, patients):
    return pd.DataFrame({"image": images, "patient_id": pd.array(patients, dtype="Int64")})


def test_overlaps_count_test_patients_and_external_images_and_patients():
    main = table(["a", "b", "c", "d", "e", "f"], [1, 1, 2, 3, 4, 4])
    split = pd.Series(["train", "test", "train", "val", "test", "test"])
    external = table(["c", "x", "y"], [2, 3, 9])
    overlaps = find_overlaps(main, split, external)
    assert overlaps["test_patients"] == {"count": 1, "of": 2, "first": [1]}  # patient 1: train a, test b
    assert overlaps["external_images"] == {"count": 1, "of": 3, "first": ["c"]}  # c is a training image
    assert overlaps["external_patients"] == {"count": 2, "of": 3, "first": [2, 3]}  # 2 (train), 3 (val)


def test_without_patient_ids_only_image_overlap_is_measured():
    main = pd.DataFrame({"image": ["a", "b"], "patient_id": pd.array([None, None], dtype="Int64")})
    overlaps = find_overlaps(main, pd.Series(["train", "test"]), table(["a"], [1]))
    assert set(overlaps) == {"external_images"} and overlaps["external_images"]["count"] == 1


def test_refusal_is_one_line_with_counts_first_offenders_and_the_override():
    overlaps = {
        "test_patients": {"count": 3, "of": 10, "first": [4, 5, 6]},
        "external_images": {"count": 2, "of": 8, "first": ["x.png", "y.png"]},
        "external_patients": {"count": 0, "of": 8, "first": []},
    }
    record, refusal = judge(overlaps, ALLOW_DEFAULT, "patient")
    assert "\n" not in refusal
    assert "3 of 10 test patients also have images in train/val (first: 4, 5, 6)" in refusal
    assert "2 of 8 external images are also in train/val (first: x.png, y.png)" in refusal
    assert "data.exclude=external_patients" in refusal
    assert "data.allow_overlap.test_patients=true data.allow_overlap.external_images=true" in refusal
    assert record["external_patients"] == {"count": 0, "of": 8, "first": [], "allowed": False}

    # split=thesis: its image-level split shares patients by design; allowed (auto) and recorded
    record, refusal = judge({"test_patients": overlaps["test_patients"]}, ALLOW_DEFAULT, "thesis")
    assert refusal is None and record["test_patients"]["allowed"] and record["test_patients"]["count"] == 3
    assert judge({"test_patients": overlaps["test_patients"]}, ALLOW_DEFAULT, "file")[1] is None  # evaluate.py
    _, refusal = judge({"test_patients": overlaps["test_patients"]}, {"test_patients": False}, "thesis")
    assert refusal.startswith("leakage between sets (split=thesis): 3 of 10 test patients")
    record, refusal = judge(overlaps, {**ALLOW_DEFAULT, "external_images": True, "test_patients": True}, "patient")
    assert refusal is None and record["external_images"]["allowed"]
    with pytest.raises(ValueError, match="data.allow_overlap.external_images='yes'"):
        judge(overlaps, {**ALLOW_DEFAULT, "external_images": "yes"}, "patient")


@pytest.fixture
def external_copy(demo_root, tmp_path) -> dict:
    """An external set made of the demo's first 12 labelled images (so most are in train/val)."""
    labels = tmp_path / "external.csv"
    lines = (demo_root / "Data_Entry_demo.csv").read_text().splitlines()
    labels.write_text("\n".join(lines[:13]) + "\n")
    return {"labels": str(labels), "root": str(demo_root)}


def datamodule(demo_root, external, split="thesis", **settings) -> ChestXrayDataModule:
    return ChestXrayDataModule(
        str(demo_root / "Data_Entry_demo.csv"),
        str(demo_root),
        {"method": split, "train": 0.6, "val": 0.2, "seed": 100},
        PREPROCESSING,
        external=external,
        **settings,
    )


def test_datamodule_refuses_an_external_set_that_overlaps_training(demo_root, external_copy):
    with pytest.raises(LeakageError, match=r"of 12 external images are also in train/val \(first: 0000000"):
        datamodule(demo_root, external_copy, allow_overlap=ALLOW_DEFAULT).setup("fit")


def test_exclude_holds_the_external_patients_out_of_every_split(demo_root, external_copy):
    dm = datamodule(demo_root, external_copy, split="patient", allow_overlap=ALLOW_DEFAULT, exclude="external_patients")
    dm.setup("fit")
    external_patients = set(dm.external_table["patient_id"])
    assert not external_patients & set(dm.table["patient_id"])
    assert dm.leakage["excluded_images"] >= 12 and dm.leakage["excluded_patients"] == len(external_patients)
    assert {k: dm.leakage[k]["count"] for k in ("test_patients", "external_images", "external_patients")} == {
        "test_patients": 0,
        "external_images": 0,
        "external_patients": 0,
    }


def test_allowed_overlap_is_recorded(demo_root, external_copy):
    dm = datamodule(
        demo_root, external_copy, allow_overlap={**ALLOW_DEFAULT, "external_images": True, "external_patients": True}
    )
    dm.setup("fit")
    assert dm.leakage["external_images"]["count"] > 0 and dm.leakage["external_images"]["allowed"]
    assert dm.leakage["test_patients"]["allowed"] and dm.leakage["exclude"] is None


def test_patient_split_refuses_test_patients_in_training(demo_root):
    """A patient-level split whose test list shares patients with train/val (e.g. a hand-made test list)."""
    sets = build_sets(demo_root / "Data_Entry_demo.csv", demo_root)
    present = sets["main"].present
    split = pd.Series("train", index=present.index)
    split[present["patient_id"] == present["patient_id"].iloc[0]] = "test"
    split.iloc[0] = "train"  # the same patient also trains
    _, refusal = judge(find_overlaps(present, split), ALLOW_DEFAULT, "official")
    assert refusal and "1 of 1 test patients" in refusal


def test_the_check_and_the_datamodule_read_index_split_and_judge_leakage_once(make_cfg, monkeypatch):
    """The data step (cxr.data.table.labelled_data) runs once per run: the data check reports on its result and the
    DataModule trains on it."""
    import cxr.data.images as images_module
    import cxr.data.labels as labels_module
    import cxr.data.leakage as leakage_module
    import cxr.data.splits as splits_module
    import cxr.data.table as table_module
    import cxr.data.validation as validation_module
    from cxr.jobs.train import train

    calls = {"read_labels": 0, "index_images": 0, "make_split": 0, "find_overlaps": 0}

    def counted(name, function):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return function(*args, **kwargs)

        return wrapper

    read, index = counted("read_labels", labels_module.read_labels), counted("index_images", images_module.index_images)
    split = counted("make_split", splits_module.make_split)
    monkeypatch.setattr(table_module, "find_overlaps", counted("find_overlaps", leakage_module.find_overlaps))
    for module in (table_module, validation_module):  # every module that could read or index on its own
        monkeypatch.setattr(module, "read_labels", read, raising=False)
        monkeypatch.setattr(module, "index_images", index, raising=False)
        monkeypatch.setattr(module, "make_split", split, raising=False)
    cfg = make_cfg(["debug=fdr", "~logger", "data_check=true"])
    metrics = train(cfg)
    assert calls == {"read_labels": 1, "index_images": 1, "make_split": 1, "find_overlaps": 1}
    assert metrics["leakage"]["test_patients"]["allowed"]  # split=thesis shares patients, recorded
    output_dir = Path(cfg.paths.output_dir)
    splits = pd.read_csv(output_dir / "splits.csv")
    shared = set(splits.loc[splits["split"] == "test", "patient"]) & set(
        splits.loc[splits["split"].isin(["train", "val"]), "patient"]
    )
    saved = json.loads((output_dir / "metrics.json").read_text())["leakage"]["test_patients"]
    assert saved["count"] == len(shared) > 0 and saved["first"] == sorted(shared)[:5]


@pytest.mark.real_data
def test_nih_sample_preset_external_set_is_unseen(make_cfg):
    """thesis_nih_sample: the 48 full-res originals are copies of labelled images; their patients are held out."""
    require_real_data(NIH_SAMPLE)
    from hydra.utils import instantiate

    cfg = make_cfg(["experiment=thesis_nih_sample", "program=C"])
    assert cfg.data.exclude == "external_patients"
    dm = instantiate(cfg.data)
    dm.setup("fit")
    assert len(dm.table) == 963 - 48 and dm.leakage["excluded_patients"] == 48
    from cxr.jobs.check import run_check

    report = run_check(cfg, data=dm.labelled_data())
    assert report.facts["unlabelled_files"] == 0 and report.get("excluded").message.startswith(
        "held out of labels.csv (data.exclude): 48 images of 48 patients"
    )
    assert dm.leakage["external_images"]["count"] == dm.leakage["external_patients"]["count"] == 0
    assert dm.leakage["test_patients"]["allowed"] and dm.leakage["test_patients"]["count"] > 0  # split=thesis

    cfg = make_cfg(["experiment=thesis_nih_sample", "program=C", "data.exclude=null"])
    with pytest.raises(LeakageError, match=r"external images are also in train/val"):
        instantiate(cfg.data).setup("fit")
