"""Calibration (ECE, MCE, Brier with patient-bootstrap CIs; temperature scaling carried into predict.py and export),
subgroup CIs and gaps, small-n marks and Holm-adjusted p-values."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from cxr.evaluation.calibration import (
    apply_temperature,
    calibration_scores,
    calibration_with_ci,
    fit_temperature,
    logit,
    read_temperatures,
    weighted_scores,
)
from cxr.evaluation.model_card import _performance
from cxr.evaluation.multiple_testing import holm
from cxr.evaluation.report import compare
from cxr.evaluation.small_n import class_patients, mark, patient_counts
from cxr.evaluation.subgroups import age_band_labels, subgroup_columns, subgroup_gaps, subgroup_metrics
from tests.conftest import DEMO_OVERRIDES, compose_config


# ------------------------------------------------------------------------------------------------ scores
def test_ece_mce_brier_by_hand_and_torchmetrics_agree_with_the_resampling_code():
    # bins of 0.5: [0.2, 0.2 | 0.8, 0.8] with labels [0, 1 | 1, 1]: gaps |0.5-0.2|=0.3 and |1-0.8|=0.2
    labels, probabilities = np.array([0, 1, 1, 1.0]), np.array([0.2, 0.2, 0.8, 0.8])
    scores = calibration_scores(labels, probabilities, n_bins=2)
    assert scores["ece"] == pytest.approx(0.5 * 0.3 + 0.5 * 0.2)
    assert scores["mce"] == pytest.approx(0.3)
    assert scores["brier"] == pytest.approx((0.04 + 0.64 + 0.04 + 0.04) / 4)
    rng = np.random.default_rng(0)
    labels, probabilities = (rng.random(300) < 0.4).astype(float), rng.random(300)
    probabilities[:3] = [0.0, 1.0, 0.5]  # edges: 1.0 has its own bin in torchmetrics
    for weights in (np.ones(300), rng.integers(0, 3, 300).astype(float)):
        expected = calibration_scores(
            np.repeat(labels, weights.astype(int)), np.repeat(probabilities, weights.astype(int))
        )
        got = weighted_scores(labels, probabilities, weights, 10)
        assert got == pytest.approx([expected["ece"], expected["mce"], expected["brier"]], abs=1e-12)


def test_calibration_intervals_resample_patients_and_flag_small_n():
    rng = np.random.default_rng(1)
    patients = np.repeat(np.arange(60), 3)
    labels = np.repeat(rng.random(60) < 0.5, 3).astype(int)
    probabilities = np.clip(labels * 0.3 + rng.random(180) * 0.7, 0, 1)
    result = calibration_with_ci(labels, probabilities, patients, 10, {"n_resamples": 200, "seed": 0})
    assert result == calibration_with_ci(labels, probabilities, patients, 10, {"n_resamples": 200, "seed": 0})
    for score in ("ece", "mce", "brier"):
        ci = result["ci"][score]
        assert ci["value"] == result[score] and ci["ci_low"] < ci["ci_high"]
    assert result["small_n"] is False
    few = calibration_with_ci(labels[:15], probabilities[:15], patients[:15], 10, {"n_resamples": 20})
    assert few["small_n"] is True and few["n_patients_class0"] + few["n_patients_class1"] == 5


def test_temperature_scaling_recovers_a_known_overconfidence():
    rng = np.random.default_rng(2)
    logits = rng.normal(0, 2, 20000)
    labels = (rng.random(20000) < 1 / (1 + np.exp(-logits))).astype(int)
    overconfident = 1 / (1 + np.exp(-2 * logits))  # logits twice too large: T = 2 undoes it
    temperature = fit_temperature(labels, overconfident)
    assert temperature == pytest.approx(2.0, rel=0.05)
    calibrated = apply_temperature(overconfident, temperature)
    assert calibration_scores(labels, calibrated)["ece"] < calibration_scores(labels, overconfident)["ece"] / 3
    with pytest.raises(ValueError, match="both classes"):
        fit_temperature([1, 1, 1], [0.2, 0.5, 0.9])


# ---------------------------------------------------------------------------------------------- small n, Holm
def test_small_n_counts_patients_not_images():
    labels = [1] * 22 + [0] * 30
    patients = [1] * 11 + [2] * 11 + list(range(100, 130))  # 22 positive images of 2 patients
    assert class_patients(labels, patients) == (30, 2)
    assert patient_counts(labels, patients)["small_n"] is True
    assert mark("0.700", {"small_n": True}) == "0.700 (n<10)" and mark("0.700", {"small_n": False}) == "0.700"


def test_holm_against_a_hand_checked_example():
    # sorted 0.005 x4 = 0.02, 0.01 x3 = 0.03, 0.03 x2 = 0.06, 0.04 x1 = 0.04 -> raised to 0.06 (monotone)
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, None, 0.4]) == [0.8, None, 0.8]  # m = 2; 0.4 x2 = 0.8, 0.5 x1 raised to 0.8
    assert holm([0.9, 0.8]) == [1.0, 1.0] and holm([]) == []


# ------------------------------------------------------------------------------------------------ subgroups
def test_subgroup_cis_largest_gap_and_worst_group():
    rng = np.random.default_rng(3)
    n = 400
    patients = np.arange(n) // 2
    labels = np.repeat(rng.random(n // 2) < 0.5, 2).astype(int)
    sex = np.where(patients % 2 == 0, "F", "M")
    # F: well ranked; M: noise
    probabilities = np.where(sex == "F", 0.3 * labels + 0.7 * rng.random(n), rng.random(n))
    groups = pd.DataFrame({"sex": sex})
    bootstrap = {"n_resamples": 300, "seed": 0}
    metrics = subgroup_metrics(labels, probabilities, groups, 0.5, 5, patients, bootstrap)
    f, m = metrics["sex"]["F"], metrics["sex"]["M"]
    assert f["ci"]["auroc"]["ci_low"] > m["ci"]["auroc"]["ci_high"]  # clearly apart at these sizes
    assert f["small_n"] is False and f["n_patients_class0"] + f["n_patients_class1"] == 100
    gaps = subgroup_gaps(labels, probabilities, patients, groups, metrics, bootstrap)["sex"]
    assert gaps["largest_gap"]["best"] == "F" and gaps["largest_gap"]["worst"] == "M"
    assert gaps["largest_gap"]["value"] == pytest.approx(f["auroc"] - m["auroc"])
    assert gaps["largest_gap"]["ci_low"] > 0 and gaps["worst_group"]["group"] == "M"
    assert gaps["worst_group"]["ci_low"] == m["ci"]["auroc"]["ci_low"]


def test_age_bands_come_from_the_config_and_a_dataset_column_is_a_subgroup():
    assert age_band_labels([0, 18, 40, 60, 80]) == ["<18", "18-39", "40-59", "60-79", "80+"]
    rows = pd.DataFrame(
        {
            "image": ["a", "b", "c"],
            "view_position": ["PA", "AP", "PA"],
            "sex": ["F", "M", "F"],
            "age_years": [10, 50, 70],
            "dataset": ["nih", "chexpert", "nih"],
        }
    )
    columns = subgroup_columns(rows, age_bands=[0, 65])
    assert columns["age_band"].tolist() == ["<65", "<65", "65+"] and columns["dataset"].tolist()[1] == "chexpert"
    with pytest.raises(ValueError, match="age_bands"):
        age_band_labels([40, 18])


def test_model_card_marks_expert_agreement_on_one_image():
    metrics = {"auroc": 0.7, "n": 50, "ci": {}, "expert_labels": {"n": 1, "agreement_nih_vs_expert": 1.0}}
    text = "\n".join(_performance("test", metrics))
    assert "(Google 2019, n = 1 (n<10);" in text and "agreement 1.000 (both on fewer than 10 patients)." in text


# ---------------------------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def calibrated_run(demo_root, tmp_path_factory) -> Path:
    """Program D, one epoch on the demo data, with temperature scaling (about 20 s on 2 cores)."""
    from cxr.jobs.train import train

    run = tmp_path_factory.mktemp("calibrated") / "run"
    cfg = compose_config(
        "train",
        DEMO_OVERRIDES(demo_root)
        + [
            "program=D",
            "trainer.max_epochs=1",
            "logger=csv",
            "evaluation.bootstrap.n_resamples=50",
            "evaluation.calibration=temperature",
        ],
        run,
    )
    train(cfg)
    return run


def _test_images(run: Path) -> tuple[list[Path], pd.DataFrame]:
    from cxr.data.images import index_images

    config = OmegaConf.load(run / "config.yaml")
    found = index_images(config.data.root)
    predictions = pd.read_csv(run / "predictions_test.csv", dtype={"image": str})
    return [found[name] for name in predictions["image"]], predictions


def test_temperature_is_fitted_on_val_reported_before_and_after_and_written(calibrated_run):
    metrics = json.loads((calibrated_run / "metrics.json").read_text())
    top = metrics["calibration"]
    assert top["method"] == "temperature" and top["fitted_on"] == "val"
    temperature = top["temperature"]["finding"]
    assert temperature > 0 and temperature != 1.0
    assert {"before_scaling", "ece", "mce", "brier"} <= set(top["val"])
    test = metrics["test"]
    block = test["calibration"]
    assert block["temperature"] == top["temperature"] and set(block["before_scaling"]["ci"]) == {"ece", "mce", "brier"}
    assert "small_n" in test and "n_patients_class1" in test
    assert all("ci" in m and "small_n" in m for values in test["subgroups"].values() for m in values.values())
    card = (calibrated_run / "model_card.md").read_text()
    assert "temperature scaling fitted on validation, T = finding" in card
    assert "| temperature-scaled (n<10) |" in card and "| model's own (n<10) |" in card  # demo: 7 test patients
    # the operating point was chosen on the calibrated validation probabilities: the run's probabilities are scaled
    paths, predictions = _test_images(calibrated_run)
    assert len(paths) == len(predictions) > 0


def test_predict_and_export_give_the_calibrated_probabilities(calibrated_run, tmp_path):
    from cxr.jobs.export import export
    from cxr.jobs.predict import predict_rows
    from cxr.jobs.predictor import load_predictor, onnx_metadata

    metrics = json.loads((calibrated_run / "metrics.json").read_text())
    ckpt = calibrated_run / metrics["checkpoint"]
    paths, predictions = _test_images(calibrated_run)
    expected = predictions["probability"].to_numpy()
    predictor = load_predictor(ckpt, backend="eager", device="cpu")
    assert predictor.temperatures == [pytest.approx(metrics["calibration"]["temperature"]["finding"])]
    got = predict_rows(predictor, paths, progress=False)["probability_finding"].to_numpy()
    # compared as logits: a one-epoch demo model may need a large T, which puts every probability near 0.5
    assert np.ptp(logit(expected)) > 1e-4
    np.testing.assert_allclose(logit(got), logit(expected), rtol=1e-3, atol=1e-6)
    unscaled = load_predictor(ckpt, backend="eager", device="cpu")
    unscaled.temperatures = None
    raw = predict_rows(unscaled, paths, progress=False)["probability_finding"].to_numpy()
    assert not np.allclose(logit(raw), logit(expected), rtol=1e-3)

    cfg = OmegaConf.create(
        {"ckpt_path": str(ckpt), "format": "onnx", "output": str(tmp_path / "model.onnx"), "paths": {}, "parity_n": 8}
    )
    export(cfg)
    meta = onnx_metadata(tmp_path / "model.onnx")
    assert meta["temperatures"] == [pytest.approx(metrics["calibration"]["temperature"]["finding"])]
    onnx_predictor = load_predictor(tmp_path / "model.onnx")
    exported = predict_rows(onnx_predictor, paths, progress=False)["probability_finding"].to_numpy()
    np.testing.assert_allclose(logit(exported), logit(expected), rtol=1e-3, atol=1e-6)


def test_another_checkpoint_of_the_run_is_not_scaled(calibrated_run, tmp_path):
    other = tmp_path / "checkpoints" / "other.ckpt"
    other.parent.mkdir()
    shutil.copy(calibrated_run / "metrics.json", tmp_path / "metrics.json")
    values, why = read_temperatures(other, tmp_path, ["finding"])
    assert values == [1.0] and "not other.ckpt" in why


def test_compare_shows_calibration_subgroup_gaps_and_holm(calibrated_run, tmp_path):
    second = tmp_path / "second"
    shutil.copytree(calibrated_run, second, ignore=shutil.ignore_patterns("checkpoints"))
    frame = pd.read_csv(second / "predictions_test.csv", dtype={"image": str})
    frame["probability"] = 1 - frame["probability"]
    frame.to_csv(second / "predictions_test.csv", index=False)
    metrics = json.loads((second / "metrics.json").read_text())
    metrics["run_name"] = "reversed"
    (second / "metrics.json").write_text(json.dumps(metrics))
    report = compare([calibrated_run, second], out=tmp_path / "report", n_resamples=30)
    markdown = (report.directory / "report.md").read_text()
    assert "| p | p (Holm) |" in markdown and "Holm's step-down" in markdown
    assert "## Calibration (test)" in markdown and "| temperature-scaled (n<10) |" in markdown
    assert "## Subgroup AUROC (test)" in markdown and "patients class 0 / 1" in markdown
    assert report.pairs[0]["p_holm"] == pytest.approx(report.pairs[0]["p_value"])  # one pair: m = 1
    assert torch.isfinite(torch.tensor(report.pairs[0]["difference"]))
