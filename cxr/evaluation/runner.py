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
from cxr.evaluation.calibration import fit_scaling, run_calibration, set_calibration
from cxr.evaluation.curves import average_precision
from cxr.evaluation.expert_labels import read_google2019_labels
from cxr.evaluation.figures import (
    calibration_figure,
    confusion_matrix_figure,
    probability_histogram_figure,
    roc_pr_figure,
    save_figure,
)
from cxr.evaluation.localisation import localise_set
from cxr.evaluation.metrics import binary_metrics
from cxr.evaluation.operating_points import audited_finding_thresholds, write_validation_predictions
from cxr.evaluation.small_n import patient_counts
from cxr.evaluation.subgroups import subgroup_columns, subgroup_gaps, subgroup_metrics
from cxr.evaluation.ten_crop import TenCrop, ten_crop_loader
from cxr.evaluation.thresholds import choose_threshold

log = logging.getLogger(__name__)
DEFAULTS = {
    "threshold": 0.5,
    "operating_point": {"method": "youden", "target_sensitivity": None},
    "bootstrap": {"n_resamples": 1000, "seed": 0, "level": 0.95},
    "calibration_bins": 10,
    "calibration": "none",
    "expert_labels": None,
    "subgroups": {"side_tables": [], "min_size": 5, "age_bands": [0, 18, 40, 60, 80]},
    "inference_backend": "auto",
    "inference_batch_size": 64,
    "any_finding": "max",
    "ten_crop": False,
}


def model_findings(model: torch.nn.Module) -> list[str] | None:
    """The output names of a multi-label model (``hparams.findings``), None for a binary one."""
    hparams = getattr(model, "hparams", None) or {}
    return list(hparams["findings"]) if hparams.get("task") == "multilabel" else None


def predictions_frame(model: torch.nn.Module, datamodule, name: str, settings: dict | None = None) -> pd.DataFrame:
    """image, patient, label (binary target), probability; a multi-label model's ``probability`` is its "any
    finding" score (``settings.any_finding``), followed by ``label_<finding>`` and ``probability_<finding>``."""
    rows, settings = datamodule.rows(name), {**DEFAULTS, **(settings or {})}
    findings = model_findings(model)
    backend, predictor, loader = settings["inference_backend"], model, None
    if findings and settings.get("ten_crop"):  # cxr.evaluation.ten_crop: crops of the image resized to 256 px
        predictor = TenCrop(model, datamodule.preprocessing.image_size)
        loader = ten_crop_loader(datamodule, name, settings["inference_batch_size"])
        # the ten-crop wrapper fails in ONNX Runtime after export: torch directly, rather than an export, a failed
        # check and a warning per set
        backend = backend if backend in ("eager", "torch", "torch_bf16") else "torch"
    # int8 ranges come from validation images (as the operating point does), never from the set being scored
    calibration = (
        datamodule.eval_dataloader("val") if backend == "onnxruntime_int8" and len(datamodule.rows("val")) else None
    )
    probabilities = inference.predict_probabilities(
        predictor,
        loader if loader is not None else datamodule.eval_dataloader(name),
        backend,
        settings["inference_batch_size"],
        calibration=calibration,
    )
    if not findings:
        return pd.DataFrame(
            {
                "image": rows["image"],
                "patient": rows["patient_id"],
                "label": rows["target"],
                "probability": probabilities,
            }
        )
    from cxr.evaluation.multilabel import any_finding_score

    probabilities = probabilities.reshape(len(rows), len(findings))
    # any of the model's findings, not of all 14; empty only when none of them is labelled for the image
    any_finding = rows[findings].astype("float64").max(axis=1)
    frame = pd.DataFrame(
        {
            "image": rows["image"],
            "patient": rows["patient_id"],
            "label": any_finding if any_finding.isna().any() else any_finding.astype("int64"),
            "probability": any_finding_score(probabilities, settings["any_finding"]),
        }
    )
    # a finding not labelled for an image (another dataset's label space, an ignored uncertain label) stays empty
    per_finding = {f"label_{f}": rows[f].astype("float64").to_numpy() for f in findings}
    per_finding.update({f"probability_{f}": probabilities[:, j] for j, f in enumerate(findings)})
    return pd.concat([frame, pd.DataFrame(per_finding, index=frame.index)], axis=1)


def validation_frame(model, datamodule, settings: dict) -> pd.DataFrame | None:
    """The validation split's predictions (None without one): made once, for the binary threshold, the
    per-finding ones and temperature scaling, and saved as predictions_val.csv."""
    if not len(datamodule.rows("val")):
        return None
    return predictions_frame(model, datamodule, "val", settings)


def operating_threshold(validation: pd.DataFrame | None, settings: dict) -> tuple[float, str]:
    """The threshold of ``settings.operating_point``, chosen on the validation predictions."""
    method = settings["operating_point"]["method"]
    if validation is None or method == "fixed":
        return float(settings["threshold"]), "fixed"
    try:
        threshold = choose_threshold(
            validation["label"],
            validation["probability"],
            method,
            settings["operating_point"].get("target_sensitivity"),
        )
    except ValueError as error:
        log.warning("operating point not chosen (%s); using %s", error, settings["threshold"])
        return float(settings["threshold"]), "fixed"
    return float(threshold), f"{method} on val"


def score(labels, probabilities, patients, threshold: float, bootstrap: dict) -> dict:
    """Metrics at ``threshold`` with patient-bootstrap confidence intervals under ``ci``."""
    metrics = binary_metrics(labels, probabilities, threshold)
    metrics["ci"] = patient_bootstrap(labels, probabilities, patients, threshold=threshold, **bootstrap)
    return metrics


def evaluate_sets(
    model: torch.nn.Module,
    datamodule,
    output_dir: str | Path,
    settings: dict | None = None,
    writer=None,
    step: int = 0,
    run_name: str = "",
) -> dict[str, dict]:
    """Predict, score and draw every evaluation set of ``datamodule`` (figure titles name ``run_name``); return
    ``{set: metrics}`` and ``calibration`` (the temperatures and the validation split's calibration)."""
    settings = {**DEFAULTS, **(settings or {})}
    output_dir = Path(output_dir)
    raw_validation = validation_frame(model, datamodule, settings)
    scaling = fit_scaling(raw_validation, model_findings(model), settings["calibration"])  # None: not scaled
    calibrate = (lambda f: scaling.apply(f, model_findings(model), settings["any_finding"])) if scaling else None
    validation = calibrate(raw_validation) if scaling and raw_validation is not None else raw_validation
    write_validation_predictions(output_dir, validation)  # what every operating point was chosen on
    operating_point, chosen_on = operating_threshold(validation, settings)
    expert = read_google2019_labels(settings["expert_labels"]) if settings.get("expert_labels") else None
    finding_thresholds, findings_chosen_on, audit = _finding_thresholds(model_findings(model), validation, settings)
    results: dict[str, dict] = {}
    for name in datamodule.eval_set_names():
        raw = predictions_frame(model, datamodule, name, settings)
        predictions = calibrate(raw) if scaling else raw
        write_csv(output_dir / f"predictions_{name}.csv", predictions)
        binary = predictions["label"].notna().to_numpy()  # no binary label: only unlabelled or ignored findings
        labels, probabilities = predictions["label"].to_numpy()[binary], predictions["probability"].to_numpy()[binary]
        patients = predictions["patient"][binary]
        metrics = score(labels, probabilities, patients, settings["threshold"], settings["bootstrap"])
        metrics["n_patients"] = int(patients.nunique()) if patients.notna().all() else None
        metrics.update(patient_counts(labels, patients))  # small_n: fewer than 10 patients of a class
        metrics["average_precision"] = average_precision(labels, probabilities)
        metrics["calibration"] = set_calibration(raw, predictions, scaling, settings)
        op = score(labels, probabilities, patients, operating_point, settings["bootstrap"])
        metrics["operating_point"] = {"chosen_on": chosen_on, **op}
        if expert is not None:
            metrics["expert_labels"] = _expert_scores(predictions, expert, settings)
        groups = subgroup_columns(
            datamodule.rows(name)[binary],
            settings["subgroups"].get("side_tables"),
            settings["subgroups"].get("age_bands"),
        )
        metrics["subgroups"] = subgroup_metrics(
            labels,
            probabilities,
            groups,
            settings["threshold"],
            settings["subgroups"].get("min_size", 1),
            patients,
            settings["bootstrap"],
        )
        metrics["subgroup_gaps"] = subgroup_gaps(
            labels, probabilities, patients, groups, metrics["subgroups"], settings["bootstrap"]
        )
        localisation = localise_set(model, model_findings(model), datamodule, name, predictions, settings, output_dir)
        if localisation is not None:  # the set has images with NIH boxes (cxr/evaluation/localisation.py)
            metrics["localisation"] = localisation
        if model_findings(model):
            _add_finding_metrics(
                metrics,
                name,
                predictions,
                model_findings(model),
                finding_thresholds,
                findings_chosen_on,
                audit,
                settings,
                output_dir,
                writer,
                step,
                run_name,
            )
        results[name] = metrics
        log.info(
            "%s: n=%d AUROC=%s [%s, %s] accuracy=%.3f class0=%s class1=%s | at %s=%.3f: class0=%s class1=%s",
            name,
            metrics["n"],
            _fmt(metrics["auroc"]),
            _fmt(metrics["ci"]["auroc"]["ci_low"]),
            _fmt(metrics["ci"]["auroc"]["ci_high"]),
            metrics["accuracy"],
            _fmt(metrics["accuracy_class0"]),
            _fmt(metrics["accuracy_class1"]),
            chosen_on,
            operating_point,
            _fmt(op["accuracy_class0"]),
            _fmt(op["accuracy_class1"]),
        )
        _draw(
            name,
            metrics,
            labels,
            probabilities,
            {"fixed": settings["threshold"], chosen_on: operating_point},
            output_dir,
            writer,
            step,
            run_name,
        )
    results["calibration"] = run_calibration(raw_validation, validation, scaling, settings)
    from cxr.evaluation.external import add_drops  # data.externals: the AUROC drop from the internal test split

    add_drops(results, output_dir, model_findings(model), settings["bootstrap"])
    return results


def _finding_thresholds(
    findings: list[str] | None, validation: pd.DataFrame | None, settings: dict
) -> tuple[dict[str, float | None], dict[str, str], dict | None]:
    """Per-finding thresholds chosen on the validation predictions (cxr.evaluation.operating_points; without them
    the fixed threshold each), what each was chosen by, and the audit for metrics.json."""
    if not findings:
        return {}, {}, None
    if validation is None or settings["operating_point"]["method"] == "fixed":
        return {f: float(settings["threshold"]) for f in findings}, {f: "fixed" for f in findings}, None
    return audited_finding_thresholds(findings, validation, settings)


def _add_finding_metrics(
    metrics: dict,
    name: str,
    predictions: pd.DataFrame,
    findings: list[str],
    thresholds: dict,
    chosen_on: dict,
    audit: dict | None,
    settings: dict,
    output_dir: Path,
    writer,
    step: int,
    run_name: str = "",
) -> None:
    """Per-finding AUROC/AP with patient-bootstrap CIs, mean AUROC, per-finding operating points; the table
    ``findings_<set>.csv`` / ``.md`` beside published values, ``roc_findings_<set>.png``, TensorBoard scalars."""
    from cxr.evaluation import multilabel

    labels = predictions[[f"label_{f}" for f in findings]].to_numpy()
    probabilities = predictions[[f"probability_{f}" for f in findings]].to_numpy()
    minimum = settings.get("min_positive_patients_for_mean", multilabel.MIN_POSITIVE_PATIENTS_FOR_MEAN)
    scored = multilabel.multilabel_bootstrap(
        labels, probabilities, predictions["patient"], findings, **settings["bootstrap"], min_positive_patients=minimum
    )
    for j, finding in enumerate(findings):
        scored["findings"][finding].update(patient_counts(labels[:, j], predictions["patient"]))
        scored["findings"][finding]["operating_point"] = {
            "chosen_on": chosen_on[finding],
            **multilabel.at_threshold(labels[:, j], probabilities[:, j], thresholds.get(finding)),
        }
    metrics.update(
        {
            "task": "multilabel",
            "any_finding": settings["any_finding"],
            "mean_auroc": scored["mean_auroc"],
            "findings": scored["findings"],
            "finding_thresholds": audit,
        }
    )
    table = multilabel.findings_table(scored["findings"], scored["mean_auroc"])
    write_csv(output_dir / f"findings_{name}.csv", table)
    from cxr.artifacts import write_text
    from cxr.evaluation.tables import markdown_table

    write_text(
        output_dir / f"findings_{name}.md",
        f"# Per-finding results: {name}\n\n"
        + markdown_table(list(table.columns), table.values.tolist())
        + f"\n\n{multilabel.PUBLISHED_NOTE}\n",
    )
    figure = multilabel.roc_grid_figure(
        labels,
        probabilities,
        findings,
        thresholds,
        title=f"{run_name + ': ' if run_name else ''}{name}: ROC per finding (dots: thresholds, {_chosen(chosen_on)})",
    )
    save_figure(figure, output_dir / f"roc_findings_{name}.png")
    mean = scored["mean_auroc"]
    log.info(
        "%s: mean AUROC over %d findings = %s [%s, %s]; %s",
        name,
        mean["n_findings"],
        _fmt(mean["value"]),
        _fmt(mean["ci_low"]),
        _fmt(mean["ci_high"]),
        ", ".join(
            f"{f} {_fmt(m['auroc']['value'])}" for f, m in scored["findings"].items() if m["auroc"]["value"] is not None
        ),
    )
    if writer is not None:
        writer.add_figure(f"{name}/roc_findings", figure, global_step=step)
        if mean["value"] is not None:
            writer.add_scalar(f"{name}/mean_auroc", mean["value"], global_step=step)
        for finding, m in scored["findings"].items():
            for key in ("auroc", "average_precision"):
                if m[key]["value"] is not None:
                    writer.add_scalar(f"{name}/{key}/{finding}", m[key]["value"], global_step=step)


def _expert_scores(predictions: pd.DataFrame, expert: pd.DataFrame, settings: dict) -> dict:
    joined = predictions.merge(expert[["image", "expert_target"]], on="image", how="inner")
    result = {
        "n": int(len(joined)),
        "definition": "abnormal = any of fracture, pneumothorax, airspace opacity, nodule or mass (Google 2019)",
    }
    if len(joined):
        result.update(patient_counts(joined["expert_target"], joined["patient"]))
        result["agreement_nih_vs_expert"] = float((joined["label"] == joined["expert_target"]).mean())
        result.update(
            score(
                joined["expert_target"],
                joined["probability"],
                joined["patient"],
                settings["threshold"],
                settings["bootstrap"],
            )
        )
    return result


def _draw(
    name: str,
    metrics: dict,
    labels,
    probabilities,
    thresholds: dict,
    output_dir: Path,
    writer,
    step: int,
    run_name: str = "",
) -> None:
    """The set's figures; a figure that shows decisions says its threshold: the confusion matrices at the fixed
    threshold (``confusion_matrix_<set>``) and at the operating point predict.py applies (``..._operating_point``)."""
    title = f"{run_name}: {name}" if run_name else name
    op = metrics["operating_point"]
    matrices = {
        "": (metrics["confusion_matrix"], f"threshold {metrics['threshold']:g} (fixed)"),
        "_operating_point": (
            op["confusion_matrix"],
            f"operating point: threshold {op['threshold']:.3g} ({op['chosen_on']}; predict.py's)",
        ),
    }
    figures = {}
    for kind, (matrix, threshold) in matrices.items():
        for normalize, suffix in ((False, ""), (True, "_normalized")):
            figures[f"confusion_matrix_{name}{kind}{suffix}"] = confusion_matrix_figure(
                matrix,
                normalize=normalize,
                title=f"{title}: {'normalized ' if normalize else ''}confusion matrix\n{threshold}",
            )
    if metrics["auroc"] is not None:
        figures[f"roc_pr_{name}"] = roc_pr_figure(labels, probabilities, thresholds, title=title)
    figures[f"calibration_{name}"] = calibration_figure(labels, probabilities, title=title)
    figures[f"probabilities_{name}"] = probability_histogram_figure(labels, probabilities, thresholds, title=title)
    for file_name, figure in figures.items():
        save_figure(figure, output_dir / f"{file_name}.png")
        if writer is not None:
            writer.add_figure(
                f"{name}/{file_name.removesuffix('_' + name).replace(f'_{name}_', '_')}", figure, global_step=step
            )
    if writer is not None:
        for key in ("accuracy", "accuracy_class0", "accuracy_class1", "balanced_accuracy", "auroc"):
            if metrics[key] is not None:
                writer.add_scalar(f"{name}/{key}", metrics[key], global_step=step)


def _chosen(chosen_on: dict) -> str:
    return "; ".join(sorted(set(chosen_on.values())))


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"
