"""What cam.html shows beside the heat-maps so that they are not over-read: the radiologists' box where NIH's box list
has one for the image, a colour bar, and the model's validation AUROC, with a caveat when it is near chance (a
near-chance model still draws convincing lung heat-maps)."""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np
import pandas as pd

from cxr.evaluation.boxes import box_mask, box_scores

NEAR_CHANCE = 0.7  # a validation AUROC below this (or a CI reaching 0.5) gets the caveat
BOX_COLOUR = (255, 255, 255)


def image_boxes(boxes: pd.DataFrame | None, path: str, output: str, findings: list[str]) -> pd.DataFrame | None:
    """The boxes of the input file ``path`` (matched by file name) for the map of ``output``: the finding's own
    boxes for a multi-label model, every box of the image for a binary one; None when there is none."""
    if boxes is None:
        return None
    rows = boxes[boxes["image"] == Path(path).name]
    if len(findings) > 1:
        rows = rows[rows["finding"] == output]
    return rows if len(rows) else None


def draw_boxes(rgb: np.ndarray, boxes: pd.DataFrame, reference_size: float = 1024) -> np.ndarray:
    """The overlay with each box's outline (boxes in reference-image pixels, scaled to the overlay)."""
    import cv2

    rgb = np.ascontiguousarray(rgb).copy()
    scale = rgb.shape[1] / float(reference_size), rgb.shape[0] / float(reference_size)
    for x, y, w, h in boxes[["x", "y", "w", "h"]].to_numpy(dtype=float):
        top_left = (int(round(x * scale[0])), int(round(y * scale[1])))
        bottom_right = (int(round((x + w) * scale[0])) - 1, int(round((y + h) * scale[1])) - 1)
        cv2.rectangle(rgb, top_left, bottom_right, BOX_COLOUR, thickness=2)
    return rgb


def box_caption(heatmap: np.ndarray, boxes: pd.DataFrame, reference_size: float = 1024) -> str:
    """One line on the map against the box: does the maximum fall inside, how much of the heat does."""
    scores = box_scores(heatmap, box_mask(boxes, heatmap.shape[-1], reference_size), 0.5)
    names = ", ".join(sorted(set(boxes["finding"])))
    inside = "inside" if scores["pointing_game"] else "outside"
    return (
        f"NIH box ({html.escape(names)}, white): maximum {inside}, {scores['heat_inside']:.0%} of the heat inside "
        f"(box {scores['box_share']:.0%} of the image)"
    )


def colour_bar(stops: int = 17) -> str:
    """The overlays' colour map (pytorch_grad_cam's: OpenCV's jet, piecewise linear) as a CSS gradient, low left."""
    import cv2

    ramp = np.linspace(0, 255, stops).round().astype(np.uint8).reshape(1, -1)
    rgb = cv2.cvtColor(cv2.applyColorMap(ramp, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)[0]
    colours = ", ".join(f"rgb({r},{g},{b}) {100 * i / (stops - 1):.1f}%" for i, (r, g, b) in enumerate(rgb))
    return f"<div class=bar style='background:linear-gradient(to right, {colours})'></div>"


def _auroc_with_ci(frame: pd.DataFrame, label: str, probability: str) -> dict | None:
    from cxr.evaluation.bootstrap import patient_bootstrap

    if label not in frame or probability not in frame or frame[label].nunique() < 2:
        return None
    ci = patient_bootstrap(frame[label], frame[probability], frame.get("patient", frame.index), n_resamples=500)
    return ci["auroc"]


def model_quality(ckpt_path: str | Path, run_dir: Path, names: list[str]) -> tuple[str, bool]:
    """(HTML sentence, near chance?) on the checkpoint's validation AUROC: from the run's predictions_val.csv with
    a patient-bootstrap CI when saved, else metrics.json's validation summary, else unknown."""
    metrics_file = run_dir / "metrics.json"
    try:
        metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    except (OSError, ValueError):
        metrics = {}
    evaluated = metrics.get("checkpoint")
    if evaluated and (run_dir / evaluated).resolve() != Path(ckpt_path).resolve():
        return (
            f"The run's validation figures are for {html.escape(str(evaluated))}, not for this checkpoint: "
            "its accuracy is unknown here. Judge these maps with care.",
            True,
        )
    entries = []
    validation = run_dir / "predictions_val.csv"
    if validation.is_file():
        frame = pd.read_csv(validation)
        columns = [("probability", "label")] if len(names) == 1 else [(f"probability_{n}", f"label_{n}") for n in names]
        for name, (probability, label) in zip(names, columns):
            if (entry := _auroc_with_ci(frame, label, probability)) is not None:
                entries.append((name, entry))
    if not entries:
        summary = metrics.get("validation") or {}
        value = summary.get("auroc_last" if "last" in str(metrics.get("checkpoint_choice", "")) else "auroc_best")
        if value is None:
            return "Validation AUROC unknown (no metrics.json beside the checkpoint): judge these maps with care.", True
        entries.append(("validation" if len(names) == 1 else "mean over findings", {"value": value}))
    near = [e["value"] < NEAR_CHANCE or (e.get("ci_low") is not None and e["ci_low"] <= 0.5) for _, e in entries if e]
    shown = "; ".join(
        f"{html.escape(n)} {e['value']:.3f}"
        + (f" [{e['ci_low']:.3f}, {e['ci_high']:.3f}]" if e.get("ci_low") is not None else "")
        for n, e in entries
    )
    sentence = f"Validation AUROC (95% patient-bootstrap CI where computed): {shown}."
    if any(near):
        sentence += (
            f" <b>Near chance</b> (below {NEAR_CHANCE} or a CI reaching 0.5): these maps show where this model "
            "looks, not where a finding is; a plausible-looking map does not mean the model works."
        )
    return sentence, any(near)
