"""Tests for cxr.evaluation.figures (thesis Appendix A/B figures)."""

import subprocess
import sys
import warnings
from pathlib import Path

import matplotlib.image
import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_rgba

from cxr.evaluation.figures import confusion_matrix_figure, save_figure, training_curves_figure

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _cell_texts(figure):
    return [text.get_text() for text in figure.axes[0].texts]


def test_confusion_matrix_counts_labels_and_colours():
    figure = confusion_matrix_figure([[50, 10], [5, 35]], title="Test set")
    ax = figure.axes[0]
    assert len(figure.axes) == 2  # matrix + colorbar
    assert _cell_texts(figure) == ["50", "10", "5", "35"]
    assert ax.get_title() == "Test set"
    assert ax.get_xlabel() == "Predicted label" and ax.get_ylabel() == "True label"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["No Finding", "Finding"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["No Finding", "Finding"]
    assert all(t.get_rotation() == 45 for t in ax.get_xticklabels())
    assert ax.images[0].get_cmap().name == "Blues"
    # threshold = 50 / 1.3 = 38.46: only the 50 cell is dark enough for white text
    colours = [to_rgba(text.get_color()) for text in ax.texts]
    assert colours == [to_rgba("white")] + [to_rgba("black")] * 3


def test_confusion_matrix_normalised_rows_and_zero_row():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        figure = confusion_matrix_figure(np.array([[3, 1], [0, 0]]), normalize=True)
    texts = _cell_texts(figure)
    assert texts == ["0.75", "0.25", "0.00", "0.00"]
    assert all("nan" not in text for text in texts)
    assert float(texts[0]) + float(texts[1]) == pytest.approx(1.0)
    values = figure.axes[0].images[0].get_array()
    np.testing.assert_allclose(np.asarray(values), [[0.75, 0.25], [0.0, 0.0]])


def test_confusion_matrix_normalised_two_decimals():
    texts = _cell_texts(confusion_matrix_figure([[2, 1], [1, 2]], normalize=True))
    assert texts == ["0.67", "0.33", "0.33", "0.67"]
    assert all(len(text.split(".")[1]) == 2 for text in texts)


def test_confusion_matrix_rejects_wrong_shape():
    with pytest.raises(ValueError):
        confusion_matrix_figure([[1, 2, 3], [4, 5, 6]])


def test_save_figure_writes_valid_png_without_leftovers(tmp_path):
    target = tmp_path / "nested" / "folder" / "cm.png"
    returned = save_figure(confusion_matrix_figure([[50, 10], [5, 35]]), target)
    assert returned == target and target.is_file()
    assert target.read_bytes()[:8] == PNG_SIGNATURE
    pixels = matplotlib.image.imread(target)
    height, width = pixels.shape[:2]
    # 5.5 x 5 inches at 100 dpi, give or take the tight bounding box
    assert 300 < width <= 650 and 300 < height <= 600
    assert pixels.std() > 0  # not a blank image
    assert [p.name for p in target.parent.iterdir()] == ["cm.png"]
    # overwriting an existing file also works and leaves nothing behind
    save_figure(training_curves_figure(pd.DataFrame()), target)
    assert [p.name for p in target.parent.iterdir()] == ["cm.png"]
    assert matplotlib.image.imread(target).shape[:2] != (height, width)


def _line_labels(ax):
    return [line.get_label() for line in ax.get_lines()]


def test_training_curves_full_history():
    history = pd.DataFrame(
        {
            "epoch": [1, 2, 3],
            "train/acc": [0.6, 0.7, 0.8],
            "val/acc": [0.55, 0.65, 0.7],
            "train/loss": [0.9, 0.6, 0.4],
            "val/loss": [1.0, 0.8, 0.7],
            "train/auroc": [np.nan, np.nan, np.nan],
            "val/auroc": [0.6, 0.8, 0.75],
        }
    )
    figure = training_curves_figure(
        history, title="D-seed2: training curves", scored_epoch=2, scored_by="best by val/auroc"
    )
    acc_ax, loss_ax, auroc_ax = figure.axes
    scored = "scored: epoch 2 (best by val/auroc)"
    assert _line_labels(acc_ax) == _line_labels(loss_ax) == ["train", "validation", scored]
    assert _line_labels(auroc_ax) == ["validation", scored]  # train AUROC not logged: no line
    assert acc_ax.get_xlabel() == loss_ax.get_xlabel() == auroc_ax.get_xlabel() == "epoch"
    assert auroc_ax.get_title() == "model AUROC" and figure._suptitle.get_text() == "D-seed2: training curves"
    assert all(ax.get_legend() is not None for ax in figure.axes)
    np.testing.assert_allclose(loss_ax.get_lines()[1].get_ydata(), [1.0, 0.8, 0.7])
    np.testing.assert_allclose(acc_ax.get_lines()[0].get_xdata(), [1, 2, 3])
    np.testing.assert_allclose(auroc_ax.get_lines()[1].get_xdata(), [2, 2])  # the vertical line at the scored epoch
    assert all(float(tick).is_integer() for tick in acc_ax.get_xticks())


def test_training_curves_missing_columns_and_nan(tmp_path):
    history = pd.DataFrame({"epoch": [1, 2, 3], "train/loss": [0.9, np.nan, 0.5], "val/acc": [np.nan] * 3})
    figure = training_curves_figure(history, scored_epoch=3)
    acc_ax, loss_ax, auroc_ax = figure.axes
    assert _line_labels(acc_ax) == _line_labels(auroc_ax) == []  # no scored-epoch line on an empty panel
    assert "no data" in [text.get_text() for text in acc_ax.texts + auroc_ax.texts]
    assert _line_labels(loss_ax) == ["train", "scored: epoch 3"]
    np.testing.assert_allclose(loss_ax.get_lines()[0].get_xdata(), [1, 3])
    np.testing.assert_allclose(loss_ax.get_lines()[0].get_ydata(), [0.9, 0.5])
    assert save_figure(figure, tmp_path / "curves.png").read_bytes()[:8] == PNG_SIGNATURE


@pytest.mark.parametrize("history", [pd.DataFrame(), pd.DataFrame(columns=["epoch", "train/acc"]), None])
def test_training_curves_empty_history(history, tmp_path):
    figure = training_curves_figure(history)
    texts = [text.get_text() for ax in figure.axes for text in ax.texts]
    assert texts == ["no completed epoch"]
    assert all(not ax.get_lines() for ax in figure.axes)
    assert save_figure(figure, tmp_path / "empty.png").stat().st_size > 0


def test_module_does_not_import_pyplot():
    code = "import sys, cxr.evaluation.figures; assert 'matplotlib.pyplot' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])
