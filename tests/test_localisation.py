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
    cfg = make_cfg(["debug=fdr", "evaluation.bootstrap.n_resamples=50", f"evaluation.localisation.boxes={boxes}"])
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


def test_cam_page_draws_the_box_a_colour_bar_and_the_models_validation_auroc(tmp_path):
    """An input named in the box list gets the box outlined (white) and a caption; the page carries the colour bar
    and the quality sentence it is given."""
    import torch
    from PIL import Image

    from cxr.data.dataset import Preprocessing
    from cxr.data.inputs import collect_inputs
    from cxr.evaluation.gradcam import write_cam_report
    from cxr.jobs.predict import predict_rows
    from cxr.jobs.predictor import Predictor

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()
    )
    net = torch.nn.Sequential(net, torch.nn.Linear(4, 2)).eval()
    predictor = Predictor(Preprocessing(channels=1, image_size=32), ["Mass", "Nodule"], [0.5, 0.5], "given", "torch")
    predictor.model = net
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for name in ("boxed.png", "plain.png"):
        Image.fromarray((np.random.default_rng(0).random((64, 64)) * 255).astype(np.uint8)).save(inputs / name)
    frame = predict_rows(predictor, collect_inputs(str(inputs))[0], progress=False)
    boxes = _box(256, 256, 512, 512, finding="Mass", image="boxed.png")
    write_cam_report(predictor, frame, tmp_path / "out", size=64, boxes=boxes, quality="Validation AUROC 0.512.")

    page = (tmp_path / "out" / "cam.html").read_text()
    assert page.count("NIH box (Mass, white)") == 1  # the Mass map of boxed.png only
    assert "linear-gradient(to right, rgb(0,0,128) 0.0%" in page and "Validation AUROC 0.512." in page
    boxed = np.asarray(Image.open(next((tmp_path / "out" / "cam").glob("*boxed_Mass.png"))))
    assert (boxed[16, 16:48] == 255).all() and (boxed[16:48, 16] == 255).all()  # the outline at 64 / 1024 scale
    plain = np.asarray(Image.open(next((tmp_path / "out" / "cam").glob("*plain_Mass.png"))))
    assert not (plain[16, 16:48] == 255).all()


def test_the_cam_page_says_when_the_model_is_near_chance(tmp_path):
    from cxr.evaluation.cam_context import model_quality

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    ckpt = run / "checkpoints" / "best.ckpt"
    metrics = {"checkpoint": "checkpoints/best.ckpt", "checkpoint_choice": "best", "validation": {"auroc_best": 0.58}}
    (run / "metrics.json").write_text(json.dumps(metrics))
    sentence, near = model_quality(ckpt, run, ["finding"])
    assert near and "0.580" in sentence and "Near chance" in sentence

    # saved validation predictions: AUROC with its patient CI; 30 patients, perfectly ranked
    labels = np.repeat([0, 1], 15)
    pd.DataFrame({"patient": range(30), "label": labels, "probability": labels * 0.5 + 0.2}).to_csv(
        run / "predictions_val.csv", index=False
    )
    sentence, near = model_quality(ckpt, run, ["finding"])
    assert not near and "1.000 [1.000, 1.000]" in sentence

    sentence, near = model_quality(run / "checkpoints" / "other.ckpt", run, ["finding"])
    assert near and "not for this checkpoint" in sentence
    sentence, near = model_quality(tmp_path / "lone.ckpt", tmp_path, ["finding"])
    assert near and "unknown" in sentence


def test_checklist_fills_what_the_run_has_and_leaves_the_rest_not_computed():
    """Rows read metrics.json defensively: keys other evaluations add fill them when present."""
    from omegaconf import OmegaConf

    from cxr.evaluation.checklist import checklist_lines, checklist_rows

    cfg = OmegaConf.create(
        {"data": {"name": "nih", "root": "images", "labels": "l.csv", "split": {"method": "official"}}}
    )
    bare = {row[0]: row[2] for row in checklist_rows(cfg, {})}
    assert bare["Calibration"] == "not computed" and bare["Subgroups (fairness)"] == "not computed"
    assert bare["Performance with CIs"] == "not computed"
    assert "NLP" in bare["Reference standard"] and "2097-2106" in bare["Data source and dates"]
    assert "patient overlap not recorded" in bare["Split (by patient)"]

    metrics = {
        "split": {"test": {"images": 10, "patients": 7}, "patients_in_several_splits": 0},
        "test": {
            "auroc": 0.71,
            "ci": {"auroc": {"ci_low": 0.6, "ci_high": 0.8}},
            "n": 10,
            "n_patients": 7,
            "calibration": {
                "ece": {"value": 0.05, "ci_low": 0.02, "ci_high": 0.09},
                "brier": 0.2,
                "n_bins": 10,
                "temperature": {"any_finding": 0.467},
            },
            "subgroups": {"sex": {"M": {"auroc": 0.7}, "F": {"auroc": 0.6}}},
            "subgroup_gaps": {  # as cxr.evaluation.subgroups.subgroup_gaps writes it
                "sex": {"largest_gap": {"value": 0.1, "ci_low": 0.0, "ci_high": 0.3, "worst": "F", "small_n": True}}
            },
        },
    }
    filled = {row[0]: row[2] for row in checklist_rows(cfg, metrics)}
    assert filled["Calibration"] == "test: ECE 0.050 [0.020, 0.090], brier 0.200, temperature any_finding 0.47"
    assert "largest sex gap 0.100 [0.000, 0.300] (n<10) (worst: F)" in filled["Subgroups (fairness)"]
    assert "AUROC 0.710 [0.600, 0.800] (n = 10, 7 patients)" in filled["Performance with CIs"]
    assert "no patient in more than one split" in filled["Split (by patient)"]
    assert any(line.startswith("- [ ] Ethics approval") for line in checklist_lines(cfg, metrics))


def test_a_pointing_game_of_all_misses_gets_an_exact_interval_not_zero_width():
    from cxr.evaluation.localisation import summarise

    per_box = pd.DataFrame(
        {"finding": "Nodule", "patient": range(13), "pointing_game": 0.0, "heat_inside": 0.1, "iou": 0.0}
    ).assign(box_share=0.05, flat=0)
    scored = summarise(per_box, {"n_resamples": 100, "seed": 0})["all"]["pointing_game"]
    assert scored["ci_low"] == 0.0 and scored["ci_high"] == pytest.approx(1 - 0.025 ** (1 / 13))  # 0.247
    assert scored["ci_method"] == "exact"
