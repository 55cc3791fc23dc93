"""``model_card.md`` for every training run: what the model does, on what data, how well, and where not to trust it.

Written at the end of ``train()`` from the run's config and metrics; for an existing run directory:
``python -m cxr.model_card <run dir>``.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from cxr.evaluation.checklist import checklist_lines
from cxr.evaluation.localisation import markdown_lines as localisation_lines
from cxr.evaluation.small_n import MIN_PATIENTS, mark
from cxr.evaluation.tables import calibration_lines, subgroup_lines
from cxr.models.sources import card_lines

SETS = ("test", "external")
NOT_A_DEVICE = (
    "**Research model, not a medical device.** It has not been validated for clinical use and must not "
    "be used to diagnose, triage or treat anyone."
)


def _f(value, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _ci(metrics: dict, key: str) -> str:
    """``metrics[key]`` with its interval from ``metrics["ci"][key]``, as ``v [lo, hi]``."""
    return _with_ci({**((metrics.get("ci") or {}).get(key) or {}), "value": metrics.get(key)})


def _task(cfg: DictConfig, metrics: dict) -> tuple[str, list[str]]:
    """The task (``task`` config group when present: name and findings) and the output names."""
    task_cfg = cfg.get("task")
    if isinstance(task_cfg, DictConfig):
        name, findings = task_cfg.get("name", "binary"), list(task_cfg.get("findings") or [])
    else:
        name, findings = (task_cfg or (metrics.get("test") or {}).get("task") or "binary"), []
    if name == "multilabel":
        return (f"multi-label: one probability per finding ({len(findings)}: {', '.join(findings)})", findings)
    return (
        "binary: `No Finding` (0) against any of the 14 NIH findings (1), as in the thesis",
        findings if len(findings) == 1 else ["finding"],
    )


def _with_ci(entry) -> str:
    """``{"value", "ci_low", "ci_high"}`` as ``v [lo, hi]``."""
    if not isinstance(entry, dict) or entry.get("value") is None:
        return _f(entry) if isinstance(entry, (int, float)) else "n/a"
    if entry.get("ci_low") is None:
        return _f(entry["value"])
    return f"{_f(entry['value'])} [{_f(entry['ci_low'])}, {_f(entry['ci_high'])}]"


def _performance(name: str, metrics: dict) -> list[str]:
    counts = [
        f"{label} = {metrics[key]}"
        for key, label in (("n", "n"), ("n_class0", "class 0"), ("n_class1", "class 1"), ("n_patients", "patients"))
        if metrics.get(key) is not None
    ]
    lines = [mark(f"### {name} set ({', '.join(counts)})", metrics), ""]
    if metrics.get("auroc") is not None or "ci" in metrics:
        op = metrics.get("operating_point") or {}
        lines += ["| metric (95% patient-bootstrap CI) | threshold 0.5 | operating point |", "|---|---|---|"]
        for key, label in (
            ("auroc", "AUROC"),
            ("balanced_accuracy", "balanced accuracy"),
            ("accuracy_class1", "sensitivity (class-1 accuracy)"),
            ("accuracy_class0", "specificity (class-0 accuracy)"),
            ("ppv", "PPV"),
            ("npv", "NPV"),
            ("accuracy", "accuracy"),
        ):
            lines.append(f"| {label} | {_ci(metrics, key)} | {_ci(op, key) if op else 'n/a'} |")
        lines.append("")
        extra = []
        if metrics.get("average_precision") is not None:
            extra.append(f"average precision {_f(metrics['average_precision'])}")
        if extra:
            lines += ["; ".join(extra).capitalize() + ".", ""]
        lines += calibration_lines(name, metrics.get("calibration"))
        expert = metrics.get("expert_labels") or {}
        if expert.get("n"):
            small = expert.get("small_n", expert["n"] < MIN_PATIENTS)  # older runs: judged by images
            n = mark(f"n = {expert['n']}", small)
            lines += [
                f"Against radiologists' labels (Google 2019, {n}; "
                f"{expert.get('definition', '')}): AUROC {_ci(expert, 'auroc')}, NIH/expert agreement "
                f"{_f(expert.get('agreement_nih_vs_expert'))}"
                + (" (both on fewer than 10 patients)." if small else "."),
                "",
            ]
    findings = metrics.get("findings")
    if isinstance(findings, dict) and findings:
        mean = metrics.get("mean_auroc")
        lines += [
            f"Per finding (mean AUROC {_with_ci(mean)}; thresholds chosen on validation, class 1 strictly above):"
            if mean
            else "Per finding:",
            "",
            "| finding | AUROC | average precision | threshold | sensitivity | specificity |",
            "|---|---|---|---|---|---|",
        ]
        for finding, m in findings.items():
            op = m.get("operating_point") or {}
            lines.append(
                f"| {mark(finding, m)} | {_with_ci(m.get('auroc'))} | {_with_ci(m.get('average_precision'))} | "
                f"{_f(op.get('threshold'))} | {_f(op.get('sensitivity'))} | {_f(op.get('specificity'))} |"
            )
        lines.append("")
    return lines


def _subgroups(name: str, metrics: dict) -> list[str]:
    return subgroup_lines(name, metrics)  # AUROC with CIs, largest gap, worst group (cxr/evaluation/tables.py)


def _data_caveats(cfg: DictConfig, metrics: dict) -> list[str]:
    """Known limitations of the data, from the data itself where it documents them."""
    caveats = []
    data = cfg.data
    if data.get("name") == "demo":
        caveats.append(
            "Trained on the built-in **synthetic** demo data (drawn shapes): its numbers say nothing about X-rays."
        )
    root = Path(str(data.get("root") or ""))
    readme = root / "README.md"
    if readme.is_file():
        text = readme.read_text(encoding="utf-8", errors="replace")
        match = re.search(r"\*\*Beware[^*]*\*\*.*?(?:\n\s*\n|\Z)", text, flags=re.S)
        if match:
            caveats.append(f"From the data's README ({readme}): " + " ".join(match.group(0).split()))
    split = metrics.get("split") or {}
    shared = split.get("patients_in_several_splits")
    if shared:
        caveats.append(
            f"{shared} patients have images in more than one split (split method "
            f"`{data.split.get('method')}`): test results are optimistic; use `split=patient` or "
            "`split=official` for patient-disjoint estimates."
        )
    caveats += [
        "NIH ChestX-ray14 labels were mined from radiology reports by NLP (estimated >90% accurate, lower for some "
        "findings); the model learned those labels, not radiologists' reads.",
        "One institution (NIH Clinical Center), frontal views (PA/AP) only, adults mostly: other hospitals, "
        "scanners, lateral views and children are outside what it saw. `predict.py` warns on DICOM modality other "
        "than CR/DX and on lateral views.",
        f"Images are reduced to {cfg.program.preprocessing.image_size} px before the network sees them: small "
        "findings (nodules, thin pneumothoraces) may be invisible at that size.",
        "Subgroup results on small groups have wide intervals; a subgroup where AUROC drops (e.g. one `source`) "
        "points at a shortcut rather than at the disease.",
    ]
    return caveats


def _which_checkpoint(cfg: DictConfig) -> str:
    """``evaluation.checkpoint``: last (end of training, the thesis) or best (validation AUROC)."""
    try:
        which = (cfg.get("evaluation") or {}).get("checkpoint") or "best"
    except Exception:  # an interpolation this config cannot resolve
        which = "best"
    return "the last epoch's weights" if which == "last" else "best by validation AUROC"


def model_card(cfg: DictConfig, metrics: dict, output_dir: str | Path) -> str:
    """The model card's Markdown text."""
    output_dir = Path(output_dir)
    task, names = _task(cfg, metrics)
    preprocessing = OmegaConf.to_container(cfg.program.preprocessing, resolve=True)
    training = OmegaConf.to_container(cfg.program.get("training") or {}, resolve=True)
    checkpoint = metrics.get("checkpoint")
    op = (metrics.get("test") or {}).get("operating_point") or {}
    split = metrics.get("split") or {}
    name = metrics.get("run_name") or cfg.get("run_name") or output_dir.name
    lines = [
        f"# Model card: {name} (program {metrics.get('program')} on {metrics.get('data')}, {output_dir.name})",
        "",
        NOT_A_DEVICE,
        "",
        "## Model",
        "",
        f"- Task: {task}.",
        f"- Network: `{cfg.model.net.get('_target_') or cfg.model.net.get('name')}`, {metrics.get('params'):,} trainable parameters; "
        f"trained {metrics.get('epochs_trained')} epoch(s), seed {cfg.get('seed')}.",
        f"- Checkpoint: `{checkpoint or 'none (fast_dev_run)'}` ({_which_checkpoint(cfg)}"
        + (f"; epoch {metrics['checkpoint_epoch']}, counted from 1" if metrics.get("checkpoint_epoch") else "")
        + ").",
        f"- Training recipe: batch {training.get('batch_size')}, learning rate {training.get('lr')}, "
        f"class weight {training.get('class_weight')}, augmentation {training.get('augmentation') or 'none'}.",
        *card_lines(metrics.get("pretrained")),  # initial weights and their leakage flag (cxr.models.sources)
        "",
        "## Data and split",
        "",
        f"- Data: `{cfg.data.get('name')}`, images `{cfg.data.get('root')}`, labels `{cfg.data.get('labels')}`.",
        f"- Split: `{cfg.data.split.get('method')}` (seed {cfg.data.split.get('seed')}).",
        "",
    ]
    rows = [(k, v) for k, v in split.items() if isinstance(v, dict) and "images" in v]
    if rows:
        lines += ["| split | images | patients | class-1 share |", "|---|---|---|---|"]
        lines += [f"| {k} | {v.get('images')} | {v.get('patients')} | {_f(v.get('class1_share'))} |" for k, v in rows]
        lines.append("")
    external = cfg.data.get("external") or {}
    if external.get("root"):
        lines += [f"- External set: `{external.get('root')}` (labels `{external.get('labels')}`).", ""]
    from cxr.evaluation.external import tested_on  # the internal test split, per-source splits, external sets

    lines += tested_on(metrics)
    lines += [
        "## Preprocessing",
        "",
        f"Images are resized to {preprocessing.get('image_size')} x {preprocessing.get('image_size')} "
        f"(`{preprocessing.get('resample')}`), then converted to {preprocessing.get('channels')} channel(s), "
        f"divided by {preprocessing.get('pixel_divisor')}, minus {preprocessing.get('mean')}, divided by "
        f"{preprocessing.get('std')}. `predict.py` applies exactly this (read from the checkpoint); DICOM is "
        "windowed to 8-bit grey first (docs/using-a-model.md, 'DICOM').",
        "",
        "## Operating point",
        "",
    ]
    if op:
        lines += [
            f"Threshold **{_f(op.get('threshold'), 4)}**, chosen {op.get('chosen_on')}; an image is called "
            "class 1 when its probability is above it. On the test set: sensitivity "
            f"{_ci(op, 'accuracy_class1')}, specificity {_ci(op, 'accuracy_class0')}. `predict.py` uses this "
            "threshold; export.py embeds it.",
            "",
        ]
    elif isinstance((metrics.get("test") or {}).get("findings"), dict):
        lines += [
            "One threshold per finding, chosen on the validation split (table under Performance); "
            "`predict.py` uses them and export.py embeds them.",
            "",
        ]
    else:
        lines += ["No operating point was chosen (no validation predictions); 0.5 is used.", ""]
    lines += ["## Performance", ""]
    for name in SETS:
        if isinstance(metrics.get(name), dict):
            lines += _performance(name, metrics[name])
    for name in SETS:
        if isinstance(metrics.get(name), dict):
            lines += _subgroups(name, metrics[name])
    for name in SETS:  # Grad-CAM against NIH's boxes, where the set has boxed images
        lines += localisation_lines(name, metrics.get(name))
    lines += ["## Known limitations", ""] + [f"- {c}" for c in _data_caveats(cfg, metrics)] + [""]
    lines += checklist_lines(cfg, metrics)  # CLAIM 2024 / TRIPOD+AI (cxr/evaluation/checklist.py)
    lines += ["## Use", ""]
    if checkpoint:
        lines += [
            "```bash",
            f"python predict.py ckpt_path={output_dir / checkpoint} inputs=<folder>",
            f"python export.py ckpt_path={output_dir / checkpoint} format=onnx",
            "```",
            "",
        ]
    else:
        lines += ["No checkpoint was saved (fast_dev_run): there is no model to apply.", ""]
    lines += [f"Outputs: {', '.join(names)}. " + NOT_A_DEVICE, ""]
    return "\n".join(lines)


def write_model_card(cfg: DictConfig, metrics: dict, output_dir: str | Path) -> Path:
    from cxr.artifacts import write_text

    return write_text(Path(output_dir) / "model_card.md", model_card(cfg, metrics, output_dir))


def main(argv: list[str] | None = None) -> int:
    """``python -m cxr.model_card <run dir>``: (re)write the card of a finished training run."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m cxr.model_card <run dir>", file=sys.stderr)
        return 2
    run = Path(argv[0])
    if not (run / "metrics.json").is_file() or not (run / "config.yaml").is_file():
        print(f"{run}: not a finished training run (needs config.yaml and metrics.json)", file=sys.stderr)
        return 2
    path = write_model_card(OmegaConf.load(run / "config.yaml"), json.loads((run / "metrics.json").read_text()), run)
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
