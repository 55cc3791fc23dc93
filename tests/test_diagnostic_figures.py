"""Tests for the diagnostic figures in cxr.evaluation.figures: ROC / PR, calibration, probability histograms,
ROC overlay of several runs."""

import matplotlib.image
import numpy as np
import pytest
from matplotlib.container import BarContainer

from cxr.evaluation.curves import calibration_bins, expected_calibration_error
from cxr.evaluation.figures import (
    calibration_figure,
    probability_histogram_figure,
    roc_overlay_figure,
    roc_pr_figure,
    save_figure,
)
from cxr.evaluation.metrics import auroc, binary_metrics

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
OPERATING_POINTS = {"default": 0.5, "youden": 0.43, "sens90": 0.2}


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    labels = (rng.random(400) < 0.3).astype(int)
    probabilities = 1 / (1 + np.exp(-(rng.normal(0, 1.2, 400) + 1.6 * labels - 0.6)))
    return labels, probabilities


def _legend_texts(ax):
    legend = ax.get_legend()
    return [text.get_text() for text in legend.get_texts()] if legend else []


def _line(ax, label):
    (line,) = [line for line in ax.get_lines() if line.get_label() == label]
    return line


def _assert_png(figure, path):
    saved = save_figure(figure, path)
    assert saved.read_bytes()[:8] == PNG_SIGNATURE
    assert matplotlib.image.imread(saved).std() > 0


def test_roc_pr_figure_panels_legends_and_operating_points(data, tmp_path):
    labels, probabilities = data
    figure = roc_pr_figure(labels, probabilities, OPERATING_POINTS, title="demo")
    roc_ax, pr_ax = figure.axes
    assert figure._suptitle.get_text() == "demo"
    assert roc_ax.get_xlabel().startswith("false positive rate") and roc_ax.get_ylabel().startswith("true positive")
    assert pr_ax.get_xlabel().startswith("recall") and pr_ax.get_ylabel().startswith("precision")
    point_labels = ["default (t=0.50)", "youden (t=0.43)", "sens90 (t=0.20)"]
    roc_legend, pr_legend = _legend_texts(roc_ax), _legend_texts(pr_ax)
    assert roc_legend == ["chance", f"ROC (AUROC = {auroc(labels, probabilities):.3f})"] + point_labels
    assert pr_legend[0] == f"prevalence = {np.mean(labels):.2f}" and pr_legend[1].startswith("PR (AP = 0.")
    assert pr_legend[2:] == point_labels
    np.testing.assert_allclose(_line(roc_ax, "chance").get_xydata(), [[0, 0], [1, 1]])
    assert _line(pr_ax, pr_legend[0]).get_ydata()[0] == pytest.approx(np.mean(labels))
    markers = [_line(roc_ax, label).get_marker() for label in point_labels]
    assert len(set(markers)) == 3
    for label, threshold in zip(point_labels, OPERATING_POINTS.values()):
        metrics = binary_metrics(labels, probabilities, threshold)
        fpr, tpr = _line(roc_ax, label).get_xydata()[0]
        assert tpr == pytest.approx(metrics["accuracy_class1"]) and fpr == pytest.approx(1 - metrics["accuracy_class0"])
        recall, precision = _line(pr_ax, label).get_xydata()[0]
        assert recall == pytest.approx(tpr) and precision == pytest.approx(metrics["ppv"])
        assert _line(pr_ax, label).get_marker() == _line(roc_ax, label).get_marker()
    _assert_png(figure, tmp_path / "roc_pr.png")


def test_roc_pr_figure_threshold_formatting_and_empty_operating_point(data):
    labels, probabilities = data
    figure = roc_pr_figure(labels, probabilities, {"never": 0.9995, "always": 0.0})
    roc_ax, pr_ax = figure.axes
    assert _legend_texts(roc_ax)[2:] == ["never (t=0.9995)", "always (t=0.00)"]
    assert _legend_texts(pr_ax)[2:] == ["never (t=0.9995)", "always (t=0.00)"]
    assert np.isnan(_line(pr_ax, "never (t=0.9995)").get_ydata()[0])  # nothing predicted positive: no precision
    np.testing.assert_allclose(_line(roc_ax, "always (t=0.00)").get_xydata(), [[1, 1]])


def test_roc_pr_figure_single_class(tmp_path):
    figure = roc_pr_figure([1, 1, 1], [0.2, 0.5, 0.9], {"default": 0.5})
    assert all(not ax.get_lines() for ax in figure.axes)
    assert [text.get_text() for ax in figure.axes for text in ax.texts] == ["needs both classes"] * 2
    _assert_png(figure, tmp_path / "single.png")


def test_calibration_figure_diagonal_points_bars_and_ece(data, tmp_path):
    labels, probabilities = data
    figure = calibration_figure(labels, probabilities, n_bins=8, title="calibration")
    ax, count_ax = figure.axes
    assert ax.get_title() == "calibration"
    assert ax.get_ylabel() == "observed rate of Finding"
    assert count_ax.get_xlabel() == "mean predicted probability of Finding" and count_ax.get_ylabel() == "count"
    np.testing.assert_allclose(_line(ax, "perfectly calibrated").get_xydata(), [[0, 0], [1, 1]])
    ece = expected_calibration_error(labels, probabilities, 8)
    model = _line(ax, f"model (ECE = {ece:.3f})")
    bins = calibration_bins(labels, probabilities, 8)
    filled = bins[bins["count"] > 0]
    np.testing.assert_allclose(model.get_xdata(), filled["mean_probability"])
    np.testing.assert_allclose(model.get_ydata(), filled["observed_rate"])
    assert model.get_marker() == "o"
    assert "model (ECE = " in " ".join(_legend_texts(ax))
    (bars,) = count_ax.containers
    assert [patch.get_height() for patch in bars] == bins["count"].tolist()
    assert bars.patches[0].get_alpha() < 1  # light bars
    _assert_png(figure, tmp_path / "calibration.png")


def test_calibration_figure_without_samples():
    figure = calibration_figure([], [])
    assert "no sample" in [text.get_text() for text in figure.axes[0].texts]
    assert _legend_texts(figure.axes[0]) == ["perfectly calibrated"]


def test_probability_histogram_two_classes_same_bins_and_thresholds(data, tmp_path):
    labels, probabilities = data
    figure = probability_histogram_figure(labels, probabilities, OPERATING_POINTS, title="histogram")
    (ax,) = figure.axes
    assert ax.get_title() == "histogram"
    assert ax.get_xlabel() == "predicted probability of Finding" and ax.get_ylabel() == "share of the true class"
    containers = [c for c in ax.containers if isinstance(c, BarContainer)]
    assert len(containers) == 2
    lefts = [[patch.get_x() for patch in container] for container in containers]
    assert lefts[0] == lefts[1] and len(lefts[0]) == 20
    np.testing.assert_allclose(lefts[0], np.arange(20) / 20, atol=1e-12)
    for container in containers:
        assert sum(patch.get_height() for patch in container) == pytest.approx(1.0)
        assert 0 < container.patches[0].get_alpha() < 1
    n0, n1 = int((labels == 0).sum()), int((labels == 1).sum())
    assert _legend_texts(ax) == [
        f"No Finding (n={n0})",
        f"Finding (n={n1})",
        "default (t=0.50)",
        "youden (t=0.43)",
        "sens90 (t=0.20)",
    ]
    assert [_line(ax, label).get_xdata()[0] for label in _legend_texts(ax)[2:]] == [0.5, 0.43, 0.2]
    _assert_png(figure, tmp_path / "histogram.png")


def test_probability_histogram_collapsed_model_and_missing_class():
    figure = probability_histogram_figure([0, 1, 0, 1, 0], [0.31, 0.312, 0.305, 0.33, 0.32])
    heights = [[patch.get_height() for patch in container] for container in figure.axes[0].containers]
    assert all(max(row) == pytest.approx(1.0) and np.argmax(row) == 6 for row in heights)  # all in [0.30, 0.35)
    figure = probability_histogram_figure([0, 0], [0.2, 0.8])
    assert len(figure.axes[0].containers) == 2
    assert _legend_texts(figure.axes[0]) == ["No Finding (n=2)", "Finding (n=0)"]


def test_roc_overlay_figure(data, tmp_path):
    labels, probabilities = data
    noisy = np.clip(probabilities + np.random.default_rng(1).normal(0, 0.2, probabilities.size), 0, 1)
    runs = {"run A": (labels, probabilities), "run B": (labels, noisy), "broken": ([0, 0], [0.1, 0.2])}
    figure = roc_overlay_figure(runs, title="comparison")
    (ax,) = figure.axes
    assert ax.get_title() == "comparison" and ax.get_xlabel().startswith("false positive rate")
    assert _legend_texts(ax) == [
        "chance",
        f"run A (AUROC = {auroc(labels, probabilities):.3f})",
        f"run B (AUROC = {auroc(labels, noisy):.3f})",
        "broken (AUROC n/a)",
    ]
    line_a = _line(ax, _legend_texts(ax)[1])
    assert line_a.get_xdata()[0] == 0 and line_a.get_xdata()[-1] == 1
    assert len(_line(ax, "broken (AUROC n/a)").get_xdata()) == 0
    _assert_png(figure, tmp_path / "overlay.png")
    empty = roc_overlay_figure({})
    assert "no runs" in [text.get_text() for text in empty.axes[0].texts]
