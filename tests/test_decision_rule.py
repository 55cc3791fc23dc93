"""One decision rule everywhere: p > threshold is class 1, so a tie (p exactly 0.5, what an untrained or dead network
outputs) is class 0, in the training metrics (torchmetrics), evaluation, bootstrap, operating points, figures and
the comparison report, as Keras' predict_classes ((p > 0.5).astype('int32'))."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cxr.evaluation.bootstrap import patient_bootstrap
from cxr.evaluation.figures import _operating_point
from cxr.evaluation.metrics import binary_metrics, predicted_class
from cxr.evaluation.subgroups import subgroup_metrics
from cxr.evaluation.thresholds import choose_threshold, sensitivity_threshold, youden_threshold

LABELS = np.array([0, 1, 0, 1, 1, 0])
DEAD = np.full(6, 0.5)  # a network whose logit is 0 for every image


def keras_predict_classes(probabilities) -> np.ndarray:
    """Keras 2.x Sequential.predict_classes for one sigmoid output."""
    return (np.asarray(probabilities) > 0.5).astype("int32")


def test_the_rule_is_strictly_greater():
    probabilities = [0.0, 0.4999999, 0.5, 0.5000001, 1.0]
    assert predicted_class(probabilities).tolist() == [0, 0, 0, 1, 1]
    assert predicted_class(probabilities).tolist() == keras_predict_classes(probabilities).tolist()
    assert predicted_class([0.3, 0.7], threshold=0.7).tolist() == [0, 0]


def test_evaluation_metrics_count_a_tie_as_class_0():
    metrics = binary_metrics(LABELS, DEAD)
    assert metrics["confusion_matrix"] == [[3, 0], [3, 0]]
    assert metrics["accuracy_class0"] == 1.0 and metrics["accuracy_class1"] == 0.0
    assert metrics["predicted_class1_share"] == 0.0


def test_training_metrics_agree_with_the_evaluation_on_the_tie():
    from cxr.models.classifier import binary_metrics as training_metrics

    probabilities = np.array([0.5, 0.5, 0.5, 0.9, 0.2, 0.5])
    collection = training_metrics("train/")
    collection.update(torch.tensor(probabilities, dtype=torch.float32), torch.tensor(LABELS))
    trained = {key: float(value) for key, value in collection.compute().items()}
    evaluated = binary_metrics(LABELS, probabilities)
    assert trained["train/acc"] == pytest.approx(evaluated["accuracy"])
    assert trained["train/acc_class0"] == pytest.approx(evaluated["accuracy_class0"]) == 1.0
    assert trained["train/acc_class1"] == pytest.approx(evaluated["accuracy_class1"]) == pytest.approx(1 / 3)


def test_a_zero_logit_is_class_0_in_training():
    from cxr.models.classifier import BinaryClassifier

    model = BinaryClassifier(
        net={"_target_": "cxr.models.thesis_cnn.ThesisCNN", "in_channels": 1, "image_size": 48},
        optimizer={"_target_": "torch.optim.Adam"},
    )
    for layer in (model.net.classifier[-1],):  # the output layer answers 0 whatever the input: p = 0.5
        torch.nn.init.zeros_(layer.weight)
    images, targets = torch.rand(4, 1, 48, 48), torch.tensor([0.0, 1.0, 1.0, 0.0])
    assert torch.equal(model.predict_step((images, targets, None), 0), torch.full((4,), 0.5))
    model.train_metrics.update(model.predict_step((images, targets, None), 0), targets.long())
    computed = model.train_metrics.compute()
    assert float(computed["train/acc_class0"]) == 1.0 and float(computed["train/acc_class1"]) == 0.0


def test_bootstrap_counts_a_tie_as_class_0():
    result = patient_bootstrap(LABELS, DEAD, patients=np.arange(6), n_resamples=30)
    assert result["accuracy_class0"]["value"] == 1.0 and result["accuracy_class1"]["value"] == 0.0
    assert result["accuracy_class1"]["ci_high"] == 0.0  # no resample calls a tie class 1


def test_subgroups_count_a_tie_as_class_0():
    import pandas as pd

    groups = pd.DataFrame({"sex": ["F", "F", "F", "M", "M", "M"]})
    result = subgroup_metrics(LABELS, DEAD, groups, min_size=1)
    assert all(group["accuracy_class1"] in (0.0, None) for group in result["sex"].values())


def test_operating_points_use_the_same_rule_as_the_metrics():
    # candidates for p > t: 0.0 (all class 1), 0.2, 0.5, 0.8; J: 0, .5, .5, 0 -> tie 0.2 / 0.5, 0.5 closest to 0.5
    labels, probabilities = [0, 0, 1, 1], [0.2, 0.5, 0.5, 0.8]
    threshold = youden_threshold(labels, probabilities)
    assert threshold == 0.5
    at_threshold = binary_metrics(labels, probabilities, threshold)
    assert (at_threshold["accuracy_class0"], at_threshold["accuracy_class1"]) == (1.0, 0.5)  # the 0.5s are class 0
    full_sensitivity = sensitivity_threshold(labels, probabilities, 1.0)
    assert full_sensitivity == 0.2 and binary_metrics(labels, probabilities, full_sensitivity)["accuracy_class1"] == 1
    assert choose_threshold(labels, DEAD[:4], "fixed") == 0.5


def test_figures_mark_the_operating_point_of_the_same_rule():
    fpr, tpr, precision = _operating_point(LABELS.astype(bool), DEAD, 0.5)
    assert (fpr, tpr) == (0.0, 0.0) and np.isnan(precision)
    fpr, tpr, _ = _operating_point(LABELS.astype(bool), np.where(LABELS == 1, 0.5000001, 0.5), 0.5)
    assert (fpr, tpr) == (0.0, 1.0)


def test_the_comparison_report_flags_a_dead_network_as_one_class(tmp_path):
    from cxr.evaluation.report import compare
    from tests.test_report import LABELS as REPORT_LABELS
    from tests.test_report import write_run

    write_run(tmp_path / "runs" / "dead", "A", 1, np.full(len(REPORT_LABELS), 0.5))
    saved = json.loads((tmp_path / "runs" / "dead" / "metrics.json").read_text())["test"]
    assert saved["accuracy_class0"] == 1.0 and saved["accuracy_class1"] == 0.0
    report = compare([tmp_path / "runs"], out=tmp_path / "report", n_resamples=20)
    markdown = (report.directory / "report.md").read_text()
    assert "One class only at threshold 0.5 (a class accuracy of 0%): dead" in markdown
