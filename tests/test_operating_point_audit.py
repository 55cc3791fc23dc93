"""Every operating point comes from validation, and a run directory proves it: predictions_val.csv beside the test
predictions, per-finding thresholds only where validation has enough positive patients (else the fixed one,
listed), the any-finding label over the model's own findings, and evaluate.py returning no test figure."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from cxr.evaluation import runner
from cxr.evaluation.thresholds import choose_threshold
from cxr.jobs.train import train

SETTINGS = {"bootstrap": {"n_resamples": 50, "seed": 0, "level": 0.95}}


def _rows(n: int) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "image": [f"{i:05d}.png" for i in range(n)],
            "patient_id": np.arange(n) // 2,  # two images per patient
            "view_position": "PA",
            "sex": "F",
            "age_years": 50,
        }
    )


def _separated(negatives: tuple[float, float], positives: tuple[float, float], n: int = 40) -> tuple:
    """Labels (the first half of the patients negative) and probabilities separated at a known point."""
    labels = np.r_[np.zeros(n // 2, int), np.ones(n // 2, int)]
    probabilities = np.r_[np.linspace(*negatives, n // 2), np.linspace(*positives, n // 2)]
    return labels, probabilities


class _Data:
    """A datamodule stand-in: the label rows of val and test (the predictions come from the patched frame)."""

    def rows(self, name: str) -> pd.DataFrame:
        return _rows(40)

    def eval_set_names(self) -> list[str]:
        return ["test"]


class _MultilabelModel(torch.nn.Module):
    hparams = {"task": "multilabel", "findings": ["Effusion", "Mass"]}


def _frame(name: str) -> pd.DataFrame:
    """Validation separates at 0.25, test at 0.65 (a Youden threshold on test would be 0.65); Mass has one positive
    patient (two images) in validation."""
    labels, probabilities = (
        _separated((0.05, 0.25), (0.35, 0.95)) if name == "val" else _separated((0.05, 0.65), (0.75, 0.95))
    )
    mass = np.zeros(40, int)
    mass[[-2, -1] if name == "val" else slice(24, 40)] = 1  # within Effusion's positives: the any-finding label
    frame = _rows(40).rename(columns={"patient_id": "patient"})[["image", "patient"]]
    return frame.assign(
        label=labels,
        probability=probabilities,
        label_Effusion=labels,
        label_Mass=mass,
        probability_Effusion=probabilities,
        probability_Mass=np.linspace(0.0, 0.2, 40) + 0.5 * mass,
    )


def test_thresholds_come_from_the_validation_predictions_not_the_test_set(monkeypatch, tmp_path):
    monkeypatch.setattr(runner, "predictions_frame", lambda model, datamodule, name, settings=None: _frame(name))
    test = runner.evaluate_sets(_MultilabelModel(), _Data(), tmp_path, SETTINGS)["test"]
    val, on_test = _frame("val"), _frame("test")
    saved = pd.read_csv(tmp_path / "predictions_val.csv")
    assert list(saved.columns) == list(pd.read_csv(tmp_path / "predictions_test.csv").columns)
    assert np.allclose(saved["probability_Effusion"], val["probability_Effusion"])
    # the binary (any-finding) operating point and the per-finding one: validation's, which test's would not be
    assert test["operating_point"]["threshold"] == choose_threshold(saved["label"], saved["probability"]) == 0.25
    assert choose_threshold(on_test["label"], on_test["probability"]) == pytest.approx(0.65)
    effusion = test["findings"]["Effusion"]["operating_point"]
    assert effusion["threshold"] == 0.25 and effusion["chosen_on"] == "youden on val"
    # Mass: one positive patient in validation (< 5, the default) keeps the fixed threshold, and says so
    audit = test["finding_thresholds"]
    assert audit["min_positive_patients"] == 5 and audit["fell_back"] == ["Mass"]
    assert audit["positives_val"]["Mass"] == {"images": 2, "patients": 1}
    assert audit["positives_val"]["Effusion"] == {"images": 20, "patients": 10}
    mass = test["findings"]["Mass"]
    assert mass["operating_point"]["threshold"] == 0.5 and mass["operating_point"]["chosen_on"].startswith("fixed")
    # positives counted by image and by patient in metrics.json and the findings table
    assert (mass["n_positive"], mass["n_positive_patients"]) == (16, 8)
    table = pd.read_csv(tmp_path / "findings_test.csv").set_index("finding")
    assert table.loc["Mass", "positives (images / patients)"] == "16 / 8"
    assert "fixed" in table.loc["Mass", "threshold (val)"]
    # a minimum of one positive patient lets validation choose Mass's threshold too
    one = {**SETTINGS, "operating_point": {"method": "youden", "min_positive_patients": 1}}
    test = runner.evaluate_sets(_MultilabelModel(), _Data(), tmp_path / "one", one)["test"]
    assert test["finding_thresholds"]["fell_back"] == [] and test["findings"]["Mass"]["operating_point"]["threshold"]


@pytest.mark.slow
def test_a_trained_runs_operating_point_is_recomputed_from_its_predictions_val_csv(make_cfg):
    cfg = make_cfg(
        ["program=D", "trainer.max_epochs=1", "~logger", "data_check=false"]
    )  # B's 1-epoch outputs are all 0
    train(cfg)
    run = Path(cfg.paths.output_dir)
    metrics = json.loads((run / "metrics.json").read_text())
    val, test = pd.read_csv(run / "predictions_val.csv"), pd.read_csv(run / "predictions_test.csv")
    assert list(val.columns) == list(test.columns) and len(val) == metrics["split"]["val"]["images"]
    assert set(val["image"]) == set(pd.read_csv(run / "splits.csv").query("split == 'val'")["image"])
    op = metrics["test"]["operating_point"]
    assert op["chosen_on"] == "youden on val"
    # (the CSV keeps 8 significant digits)
    assert op["threshold"] == pytest.approx(choose_threshold(val["label"], val["probability"], "youden"), rel=1e-7)
    # Youden's candidates are the probabilities of the set it runs on: a validation image's, none of the test set's
    assert np.isclose(val["probability"], op["threshold"], rtol=1e-7, atol=0).any()
    assert not np.isclose(test["probability"], op["threshold"], rtol=1e-7, atol=0).any()


def test_the_any_finding_label_uses_only_the_models_findings(monkeypatch):
    """An image whose only finding (Hernia) the model does not predict is negative for its any-finding score."""
    rows = _rows(3).assign(
        target=[1, 1, 0], Effusion=[1, 0, 0], Mass=[0, 0, 0], Hernia=[0, 1, 0]
    )  # image 2: Hernia only

    class Data:
        def rows(self, name):
            return rows

        def eval_dataloader(self, name):
            return None

    monkeypatch.setattr(runner.inference, "predict_probabilities", lambda *args, **kwargs: np.full(6, 0.5))
    frame = runner.predictions_frame(_MultilabelModel(), Data(), "test")
    assert frame["label"].tolist() == [1, 0, 0]


def test_evaluate_returns_a_validation_figure_never_the_test_auroc(monkeypatch, make_cfg, tmp_path):
    from omegaconf import open_dict

    import cxr.jobs.evaluate as job
    from cxr.cli import _evaluate_app

    cfg = make_cfg([f"ckpt_path={tmp_path / 'x.ckpt'}"], config_name="evaluate")
    with open_dict(cfg):
        del cfg["hydra"]  # as the task function receives it
    monkeypatch.setattr(job, "evaluation_config", lambda cfg: cfg)
    monkeypatch.setattr(job, "evaluate", lambda cfg: {"test": {"auroc": 0.9}, "validation": {"auroc": 0.6}})
    assert _evaluate_app(cfg) == 0.6
    monkeypatch.setattr(job, "evaluate", lambda cfg: {"test": {"auroc": 0.9}, "validation": None})
    assert _evaluate_app(cfg) is None
