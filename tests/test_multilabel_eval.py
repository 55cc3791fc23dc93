"""Multi-label task, the evaluation: per-finding average precision and bootstrap CIs, paired differences, the
any-finding score and thresholds, compare.py over multi-label runs, and ten-crop test-time averaging."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from cxr.evaluation.multilabel import (
    _AveragePrecisionTable,
    any_finding_score,
    finding_thresholds,
    multilabel_bootstrap,
    paired_multilabel_difference,
)
from cxr.models.classifier import Classifier
from tests.multilabel_fixtures import ADAM, FINDINGS3, SMALL_CNN


# ------------------------------------------------------------------------------------------------ evaluation
def test_average_precision_table_matches_scikit_learn():
    from sklearn.metrics import average_precision_score

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    scores = np.round(rng.random(200) + 0.3 * labels, 2)  # ties included
    table = _AveragePrecisionTable(labels, scores)
    for indices in (np.arange(200), rng.integers(0, 200, 200)):
        assert table(indices) == pytest.approx(average_precision_score(labels[indices], scores[indices]))


def test_multilabel_bootstrap_per_finding_and_mean_auroc():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, (120, 3))
    labels[:, 2] = 0  # a finding absent from the set: no AUROC, left out of the mean
    probabilities = np.clip(0.35 * labels + rng.random((120, 3)) * 0.7, 0, 1)
    patients = np.repeat(np.arange(40), 3)
    result = multilabel_bootstrap(labels, probabilities, patients, FINDINGS3, n_resamples=200)
    from cxr.evaluation.metrics import auroc

    for j, finding in enumerate(FINDINGS3[:2]):
        entry = result["findings"][finding]
        assert entry["auroc"]["value"] == pytest.approx(auroc(labels[:, j], probabilities[:, j]))
        # fixed data and resampling seeds (rng 1, seed 0), so this cannot fail by chance: the intervals are about
        # 0.2 wide on 40 patients, the values well inside them; any seed would do, this one is reproducible
        assert entry["auroc"]["ci_low"] < entry["auroc"]["value"] < entry["auroc"]["ci_high"]
        assert entry["average_precision"]["ci_low"] < entry["average_precision"]["value"]
    assert result["findings"]["Mass"]["auroc"]["value"] is None and result["mean_auroc"]["n_findings"] == 2
    assert result["mean_auroc"]["value"] == pytest.approx(
        np.mean([result["findings"][f]["auroc"]["value"] for f in FINDINGS3[:2]])
    )
    assert result["n_patients"] == 40


def test_paired_multilabel_difference_of_a_run_with_itself_is_zero_and_detects_a_better_run():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 2, (150, 2))
    good = np.clip(0.5 * labels + 0.5 * rng.random((150, 2)), 0, 1)
    poor = rng.random((150, 2))
    patients = np.arange(150) // 2
    same = paired_multilabel_difference(labels, good, good, patients, ["A", "B"], n_resamples=100)
    assert same["mean_auroc"]["difference"] == 0 and same["mean_auroc"]["ci_low"] == same["mean_auroc"]["ci_high"] == 0
    better = paired_multilabel_difference(labels, good, poor, patients, ["A", "B"], n_resamples=200)
    assert better["mean_auroc"]["ci_low"] > 0 and better["findings"]["A"]["ci_low"] > 0


def test_any_finding_score_rules_and_per_finding_thresholds():
    p = np.array([[0.1, 0.5], [0.2, 0.2]])
    assert any_finding_score(p, "max").tolist() == [0.5, 0.2]
    assert any_finding_score(p, "noisy_or") == pytest.approx([1 - 0.9 * 0.5, 1 - 0.8 * 0.8])
    with pytest.raises(ValueError, match="any_finding"):
        any_finding_score(p, "mean")
    from cxr.evaluation.multilabel import at_threshold

    labels = np.array([[0, 1], [0, 0], [0, 1], [0, 0]])
    probabilities = np.array([[0.1, 0.9], [0.2, 0.1], [0.3, 0.8], [0.4, 0.2]])
    thresholds = finding_thresholds(labels, probabilities, ["A", "B"])
    assert thresholds["A"] is None and 0.2 <= thresholds["B"] < 0.8  # p > threshold means the finding
    point = at_threshold(labels[:, 1], probabilities[:, 1], thresholds["B"])
    assert point["sensitivity"] == point["specificity"] == 1.0


# ------------------------------------------------------------------------------------------------ compare.py
def _fake_run(directory: Path, program: str, labels, probabilities, findings=None):
    """A run directory as train.py writes it (metrics.json, config.yaml, predictions_test.csv), binary or multi."""
    from cxr.evaluation.metrics import binary_metrics

    directory.mkdir(parents=True)
    n = len(labels)
    images, patients = [f"{i:08d}_000.png" for i in range(n)], np.arange(n) // 2
    binary = labels.max(axis=1) if findings else labels
    score = any_finding_score(probabilities) if findings else probabilities
    frame = pd.DataFrame({"image": images, "patient": patients, "label": binary, "probability": score})
    metrics = {"test": binary_metrics(binary, score)}
    if findings:
        for j, f in enumerate(findings):
            frame[f"label_{f}"], frame[f"probability_{f}"] = labels[:, j], probabilities[:, j]
        scored = multilabel_bootstrap(labels, probabilities, patients, findings, n_resamples=50)
        metrics["test"].update(findings=scored["findings"], mean_auroc=scored["mean_auroc"], any_finding="max")
    frame.to_csv(directory / "predictions_test.csv", index=False)
    (directory / "metrics.json").write_text(json.dumps({"program": program, **metrics}))
    (directory / "config.yaml").write_text(f"seed: 1\nprogram:\n  name: {program}\n")


def test_compare_pairs_multilabel_runs_per_finding_and_against_a_binary_run(tmp_path):
    from cxr.evaluation.report import compare

    rng = np.random.default_rng(4)
    labels = rng.integers(0, 2, (80, 2))
    _fake_run(
        tmp_path / "runs" / "ml_good",
        "A",
        labels,
        np.clip(0.5 * labels + 0.5 * rng.random((80, 2)), 0, 1),
        ["Effusion", "Mass"],
    )
    _fake_run(tmp_path / "runs" / "ml_poor", "A", labels, rng.random((80, 2)), ["Effusion", "Mass"])
    _fake_run(tmp_path / "runs" / "binary_D", "D", labels.max(axis=1), rng.random(80))
    report = compare([tmp_path / "runs"], out=tmp_path / "report", n_resamples=100)
    text = (tmp_path / "report" / "report.md").read_text()
    assert "Multi-label runs: AUROC per finding" in text and "Paired multi-label differences" in text
    section = text.split("Paired multi-label differences")[1]
    multi_rows = [line for line in section.splitlines() if line.startswith("| ml_good | ml_poor | ")]
    assert {row.split(" | ")[2] for row in multi_rows} == {
        "mean AUROC (2 findings with >= 5 positive patients)",
        "Effusion",
        "Mass",
    }
    assert {(p["run_a"], p["run_b"]) for p in report.pairs} >= {("binary_D", "ml_good"), ("binary_D", "ml_poor")}


# ------------------------------------------------------------------------------------------------ ten-crop
def test_ten_crop_crops_the_image_resized_to_256_over_224_not_the_upsampled_input(make_cfg):
    """CheXNet's ten-crop: each image read from its file at 256/224 of the training size (37 px for 32), ten crops of
    the training size, probabilities averaged; not ten crops of an upsampled copy of the training-size input."""
    from hydra.utils import instantiate
    from torchvision.transforms.v2 import functional as TF

    from cxr.evaluation.ten_crop import TenCrop, ten_crop_loader, ten_crop_size

    assert ten_crop_size(224) == 256
    cfg = make_cfg(["task=multilabel", "program=D", "program.preprocessing.image_size=32"])
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    torch.manual_seed(0)
    model = Classifier(net={**SMALL_CNN, "image_size": 32}, optimizer=ADAM, task="multilabel", findings=FINDINGS3)
    model.eval()
    larger, _, _ = next(iter(ten_crop_loader(datamodule, "test", batch_size=4)))
    small, _, _ = next(iter(datamodule.eval_dataloader("test")))
    assert larger.shape[-2:] == (37, 37) and small.shape[-2:] == (32, 32)
    upsampled = torch.nn.functional.interpolate(small[:4], size=37, mode="bilinear", align_corners=False)
    assert (larger - upsampled).abs().max() > 0.05  # the file resized, not the 32 px input enlarged
    with torch.no_grad():
        probabilities = torch.sigmoid(TenCrop(model, 32)(larger))
        expected = torch.stack([torch.sigmoid(model(crop)) for crop in TF.ten_crop(larger, [32, 32])]).mean(dim=0)
    assert probabilities.shape == (4, 3) and torch.allclose(probabilities, expected, atol=1e-5)
    # evaluation.ten_crop=true: the evaluation runner scores these crops
    from cxr.evaluation.runner import predictions_frame

    frame = predictions_frame(model, datamodule, "test", {"ten_crop": True, "inference_backend": "torch"})
    scored = frame[[f"probability_{f}" for f in FINDINGS3]].to_numpy()[:4]
    assert np.allclose(scored, probabilities.numpy(), atol=1e-5)
