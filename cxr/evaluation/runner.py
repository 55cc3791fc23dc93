"""Evaluate a trained classifier on the test split and the external set, and write the run's outputs.

For each set: ``predictions_<set>.csv``, ``confusion_matrix_<set>.png`` and ``..._normalized.png``, the
metrics of ``metrics.json`` and, when TensorBoard is in use, the same figures and scalars there.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from cxr.artifacts import write_csv
from cxr.evaluation.figures import confusion_matrix_figure, save_figure
from cxr.evaluation.metrics import binary_metrics

log = logging.getLogger(__name__)


@torch.inference_mode()
def predict_probabilities(model: torch.nn.Module, loader: DataLoader) -> np.ndarray:
    """Probability of class 1 ('finding') for every image of ``loader``, in loader order."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    outputs = [torch.sigmoid(model(images.to(device)).float()).cpu() for images, _, _ in loader]
    model.train(was_training)
    return torch.cat(outputs).numpy() if outputs else np.empty(0, dtype=np.float32)


def evaluate_sets(model: torch.nn.Module, datamodule, output_dir: str | Path, writer=None,
                  threshold: float = 0.5, step: int = 0) -> dict[str, dict]:
    """Predict, score and draw every evaluation set of ``datamodule``; return ``{set: metrics}``."""
    output_dir = Path(output_dir)
    results: dict[str, dict] = {}
    for name in datamodule.eval_set_names():
        rows = datamodule.rows(name)
        probabilities = predict_probabilities(model, datamodule.eval_dataloader(name))
        predictions = pd.DataFrame({
            "image": rows["image"], "patient": rows["patient_id"], "label": rows["target"],
            "probability": probabilities,
        })
        write_csv(output_dir / f"predictions_{name}.csv", predictions)
        metrics = binary_metrics(predictions["label"], predictions["probability"], threshold)
        results[name] = metrics
        log.info("%s: n=%d AUROC=%s accuracy=%.3f class0=%s class1=%s", name, metrics["n"],
                 _fmt(metrics["auroc"]), metrics["accuracy"], _fmt(metrics["accuracy_class0"]),
                 _fmt(metrics["accuracy_class1"]))
        for normalize, suffix in ((False, ""), (True, "_normalized")):
            title = f"{name}: {'normalized ' if normalize else ''}confusion matrix"
            figure = confusion_matrix_figure(metrics["confusion_matrix"], normalize=normalize, title=title)
            save_figure(figure, output_dir / f"confusion_matrix_{name}{suffix}.png")
            if writer is not None:
                writer.add_figure(f"{name}/confusion_matrix{suffix}", figure, global_step=step)
        if writer is not None:
            for key in ("accuracy", "accuracy_class0", "accuracy_class1", "balanced_accuracy", "auroc"):
                if metrics[key] is not None:
                    writer.add_scalar(f"{name}/{key}", metrics[key], global_step=step)
    return results


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"
