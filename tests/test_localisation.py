"""Heat-map localisation against NIH's boxes (cxr/evaluation/localisation.py): the measures on synthetic maps with
known boxes, the shipped box list, and a training run on the demo data with a box file naming its images."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from cxr.evaluation.localisation import (
    BoxFileError,
    bootstrap_means,
    box_mask,
    box_scores,
    read_boxes,
)


def _box(x, y, w, h, finding="Mass", image="a.png") -> pd.DataFrame:
    return pd.DataFrame({"image": [image], "finding": [finding], "x": [x], "y": [y], "w": [w], "h": [h]})


def test_the_shipped_box_list_is_nihs_984_boxes_with_the_label_files_names():
    boxes = read_boxes("nih2017")
    assert len(boxes) == 984 and boxes["image"].nunique() == 880
    assert boxes["finding"].value_counts().to_dict() == {
        "Atelectasis": 180,
        "Effusion": 153,
        "Cardiomegaly": 146,
        "Infiltration": 123,  # "Infiltrate" in the box list
        "Pneumonia": 120,
        "Pneumothorax": 98,
        "Mass": 85,
        "Nodule": 79,
    }
    assert (boxes[["x", "y"]] >= 0).all().all() and ((boxes["x"] + boxes["w"]) <= 1024).all()


def test_boxes_scale_from_1024_pixels_to_the_model_input():
    mask = box_mask(_box(512, 256, 256, 128), size=64, reference_size=1024)
    rows, columns = np.nonzero(mask)
    assert (rows.min(), rows.max(), columns.min(), columns.max()) == (16, 23, 32, 47)
    assert mask.sum() == 8 * 16
    assert box_mask(_box(0, 0, 2, 2), size=64, reference_size=1024).sum() == 1  # a tiny box keeps one pixel


def test_measures_on_maps_with_known_answers():
    mask = np.zeros((32, 32), dtype=bool)
    mask[8:16, 8:24] = True  # 128 pixels, an eighth of the image
    inside = mask.astype(float)
    scores = box_scores(inside, mask, 0.5)
    assert scores == {"pointing_game": 1.0, "heat_inside": 1.0, "iou": 1.0, "box_share": 0.125, "flat": 0}

    left_half = np.zeros((32, 32))
    left_half[8:16, 8:16] = 1.0
    assert box_scores(left_half, mask, 0.5)["iou"] == pytest.approx(0.5)

    elsewhere = np.zeros((32, 32))
    elsewhere[24:32, 0:8] = 1.0
    elsewhere[10, 10] = 0.4  # some heat inside, below the IoU threshold
    scores = box_scores(elsewhere, mask, 0.5)
    assert scores["pointing_game"] == 0.0 and scores["iou"] == 0.0
    assert scores["heat_inside"] == pytest.approx(0.4 / 64.4)

    yy, xx = np.mgrid[0:32, 0:32]
    blob = np.exp(-((yy - 12) ** 2 + (xx - 20) ** 2) / 20.0)  # peak inside, heat spilling out
    scores = box_scores(blob, mask, 0.5)
    assert scores["pointing_game"] == 1.0 and 0.0 < scores["heat_inside"] < 1.0 and 0.0 < scores["iou"] < 1.0

    flat = box_scores(np.zeros((32, 32)), mask, 0.5)  # no gradient: no maximum to point with
    assert flat == {"pointing_game": 0.0, "heat_inside": 0.125, "iou": 0.0, "box_share": 0.125, "flat": 1}


def test_bootstrap_resamples_patients_not_boxes():
    # 2 patients: one with 9 hits, one with 9 misses. Resampling patients gives means 0, 0.5 or 1 only.
    values = pd.DataFrame({"pointing_game": [1.0] * 9 + [0.0] * 9})
    patients = ["p1"] * 9 + ["p2"] * 9
    result = bootstrap_means(values, patients, n_resamples=200, seed=0)["pointing_game"]
    assert result["value"] == 0.5
    assert (result["ci_low"], result["ci_high"]) == (0.0, 1.0)
    # 18 patients of one box each: the interval is narrower
    narrow = bootstrap_means(values, [f"p{i}" for i in range(18)], n_resamples=200, seed=0)["pointing_game"]
    assert 0.0 < narrow["ci_low"] < 0.5 < narrow["ci_high"] < 1.0


def test_a_bad_box_file_is_one_clear_error(tmp_path):
    bad = tmp_path / "boxes.csv"
    bad.write_text("Image Index,Finding Label,Bbox [x,y,w,h]\na.png,Mass,1,2,3,4\nb.png,Mass,1,two,3,4\n")
    with pytest.raises(BoxFileError, match=r"boxes.csv: row 3: .*numeric"):
        read_boxes(bad)
    with pytest.raises(BoxFileError, match="file not found"):
        read_boxes(tmp_path / "missing.csv")
    assert read_boxes(None) is None


def test_a_run_scores_its_boxed_test_images(make_cfg, demo_root, tmp_path):
    """Every demo image gets a whole-image "Mass" box and a corner "Nodule" box: the whole-image box is hit by every
    map that has a maximum, and holds all its heat; the run's metrics.json, per-box CSV, model card and compare.py
    report carry the tables."""
    from cxr.evaluation.report import compare
    from cxr.jobs.train import train

    images = pd.read_csv(demo_root / "Data_Entry_demo.csv")["Image Index"]
    boxes = tmp_path / "boxes.csv"
    pd.concat(
        [
            pd.DataFrame({"Image Index": images, "Finding Label": "Mass", "Bbox [x": 0, "y": 0, "w": 1024, "h]": 1024}),
            pd.DataFrame({"Image Index": images, "Finding Label": "Nodule", "Bbox [x": 0, "y": 0, "w": 256, "h]": 256}),
        ]
    ).to_csv(boxes, index=False)
    cfg = make_cfg(
        ["trainer.max_epochs=1", "evaluation.bootstrap.n_resamples=50", f"evaluation.localisation.boxes={boxes}"]
    )
    train(cfg)
    run = tmp_path / "run1"
    metrics = json.loads((run / "metrics.json").read_text())
    localisation = metrics["test"]["localisation"]
    per_box = pd.read_csv(run / "localisation_test.csv")
    n_test = len(pd.read_csv(run / "predictions_test.csv"))
    assert localisation["all"]["n_boxes"] == len(per_box) == 2 * n_test
    whole, corner = localisation["findings"]["Mass"], localisation["findings"]["Nodule"]
    flat_share = per_box[per_box["finding"] == "Mass"]["flat"].mean()
    assert whole["pointing_game"]["value"] == pytest.approx(1.0 - flat_share)
    assert whole["chance"] == 1.0 and corner["chance"] == pytest.approx(1 / 16, abs=0.005)  # whole pixels
    assert whole["heat_inside"]["value"] == pytest.approx(1.0)
    assert corner["pointing_game"]["ci_low"] <= corner["pointing_game"]["ci_high"]

    card = (run / "model_card.md").read_text()
    assert "### Localisation on the test set" in card and "| Nodule |" in card
    report = compare([run], out=tmp_path / "compare", n_resamples=20)
    assert "## Heat-map localisation (test)" in (report.directory / "report.md").read_text()
