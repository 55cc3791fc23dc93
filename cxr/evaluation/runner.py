"""Evaluate a trained classifier on the test split and the external set, and write the run's outputs.

For each set: ``predictions_<set>.csv``; metrics at the fixed threshold and at an operating point chosen on the
validation split, each with patient-bootstrap confidence intervals; calibration; metrics against expert labels
and per subgroup; confusion matrices, ROC/PR, calibration and probability-histogram figures (PNG, and
TensorBoard when in use).
"""
from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import torch

from cxr import inference
from cxr.artifacts import write_csv
from cxr.evaluation.bootstrap import patient_bootstrap
from cxr.evaluation.curves import average_precision, expected_calibration_error
from cxr.evaluation.expert_labels import read_google2019_labels
from cxr.evaluation.figures import (calibration_figure, confusion_matrix_figure, probability_histogram_figure,
                                    roc_pr_figure, save_figure)
from cxr.evaluation.metrics import binary_metrics
from cxr.evaluation.subgroups import subgroup_columns, subgroup_metrics
from cxr.evaluation.thresholds import choose_threshold

log = logging.getLogger(__name__)
DEFAULTS = {"threshold": 0.5, "operating_point": {"method": "youden", "target_sensitivity": None},
            "bootstrap": {"n_resamples": 1000, "seed": 0, "level": 0.95}, "calibration_bins": 10,
            "expert_labels": None, "subgroups": {"side_tables": [], "min_size": 5},
            "inference_backend": "auto", "inference_batch_size": 64}


def predictions_frame(model: torch.nn.Module, datamodule, name: str, settings: dict | None = None) -> pd.DataFrame:
    rows, settings = datamodule.rows(name), {**DEFAULTS, **(settings or {})}
    probabilities = inference.predict_probabilities(model, datamodule.eval_dataloader(name),
                                                    settings["inference_backend"], settings["inference_batch_size"])
    return pd.DataFrame({"image": rows["image"], "patient": rows["patient_id"], "label": rows["target"],
                         "probability": probabilities})


def operating_threshold(model, datamodule, settings: dict) -> tuple[float, str]:
    """The threshold of ``settings.operating_point``, chosen on the validation split."""
    method = settings["operating_point"]["method"]
    if method == "fixed":
        return float(settings["threshold"]), "fixed"
    validation = predictions_frame(model, datamodule, "val", settings)
    try:
        threshold = choose_threshold(validation["label"], validation["probability"], method,
                                     settings["operating_point"].get("target_sensitivity"))
    except ValueError as error:
        log.warning("operating point not chosen (%s); using %s", error, settings["threshold"])
        return float(settings["threshold"]), "fixed"
    return float(threshold), f"{method} on val"


def score(labels, probabilities, patients, threshold: float, bootstrap: dict) -> dict:
    """Metrics at ``threshold`` with patient-bootstrap confidence intervals under ``ci``."""
    metrics = binary_metrics(labels, probabilities, threshold)
    metrics["ci"] = patient_bootstrap(labels, probabilities, patients, threshold=threshold, **bootstrap)
    return metrics


def evaluate_sets(model: torch.nn.Module, datamodule, output_dir: str | Path, settings: dict | None = None,
                  writer=None, step: int = 0) -> dict[str, dict]:
    """Predict, score and draw every evaluation set of ``datamodule``; return ``{set: metrics}``."""
    settings = {**DEFAULTS, **(settings or {})}
    output_dir = Path(output_dir)
    operating_point, chosen_on = operating_threshold(model, datamodule, settings)
    expert = read_google2019_labels(settings["expert_labels"]) if settings.get("expert_labels") else None
    results: dict[str, dict] = {}
    for name in datamodule.eval_set_names():
        predictions = predictions_frame(model, datamodule, name, settings)
        write_csv(output_dir / f"predictions_{name}.csv", predictions)
        labels, probabilities = predictions["label"].to_numpy(), predictions["probability"].to_numpy()
        patients = predictions["patient"]
        metrics = score(labels, probabilities, patients, settings["threshold"], settings["bootstrap"])
        metrics["n_patients"] = int(patients.nunique()) if patients.notna().all() else None
        metrics["average_precision"] = average_precision(labels, probabilities)
        metrics["calibration"] = {"ece": expected_calibration_error(labels, probabilities,
                                                                    settings["calibration_bins"]),
                                  "n_bins": settings["calibration_bins"]}
        op = score(labels, probabilities, patients, operating_point, settings["bootstrap"])
        metrics["operating_point"] = {"chosen_on": chosen_on, **op}
        if expert is not None:
            metrics["expert_labels"] = _expert_scores(predictions, expert, settings)
        groups = subgroup_columns(datamodule.rows(name), settings["subgroups"].get("side_tables"))
        metrics["subgroups"] = subgroup_metrics(labels, probabilities, groups, settings["threshold"],
                                                settings["subgroups"].get("min_size", 1))
        results[name] = metrics
        log.info("%s: n=%d AUROC=%s [%s, %s] accuracy=%.3f class0=%s class1=%s | at %s=%.3f: class0=%s class1=%s",
                 name, metrics["n"], _fmt(metrics["auroc"]), _fmt(metrics["ci"]["auroc"]["ci_low"]),
                 _fmt(metrics["ci"]["auroc"]["ci_high"]), metrics["accuracy"], _fmt(metrics["accuracy_class0"]),
                 _fmt(metrics["accuracy_class1"]), chosen_on, operating_point, _fmt(op["accuracy_class0"]),
                 _fmt(op["accuracy_class1"]))
        _draw(name, metrics, labels, probabilities, {"0.5": settings["threshold"], chosen_on: operating_point},
              output_dir, writer, step)
    return results


def _expert_scores(predictions: pd.DataFrame, expert: pd.DataFrame, settings: dict) -> dict:
    joined = predictions.merge(expert[["image", "expert_target"]], on="image", how="inner")
    result = {"n": int(len(joined)),
              "definition": "abnormal = any of fracture, pneumothorax, airspace opacity, nodule or mass (Google 2019)"}
    if len(joined):
        result["agreement_nih_vs_expert"] = float((joined["label"] == joined["expert_target"]).mean())
        result.update(score(joined["expert_target"], joined["probability"], joined["patient"],
                            settings["threshold"], settings["bootstrap"]))
    return result


def _draw(name: str, metrics: dict, labels, probabilities, thresholds: dict, output_dir: Path, writer,
          step: int) -> None:
    figures = {}
    for normalize, suffix in ((False, ""), (True, "_normalized")):
        title = f"{name}: {'normalized ' if normalize else ''}confusion matrix (threshold {metrics['threshold']})"
        figures[f"confusion_matrix_{name}{suffix}"] = confusion_matrix_figure(
            metrics["confusion_matrix"], normalize=normalize, title=title)
    if metrics["auroc"] is not None:
        figures[f"roc_pr_{name}"] = roc_pr_figure(labels, probabilities, thresholds, title=name)
    figures[f"calibration_{name}"] = calibration_figure(labels, probabilities, title=name)
    figures[f"probabilities_{name}"] = probability_histogram_figure(labels, probabilities, thresholds, title=name)
    for file_name, figure in figures.items():
        save_figure(figure, output_dir / f"{file_name}.png")
        if writer is not None:
            writer.add_figure(f"{name}/{file_name.removesuffix('_' + name).replace(f'_{name}_', '_')}", figure,
                              global_step=step)
    if writer is not None:
        for key in ("accuracy", "accuracy_class0", "accuracy_class1", "balanced_accuracy", "auroc"):
            if metrics[key] is not None:
                writer.add_scalar(f"{name}/{key}", metrics[key], global_step=step)


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"
