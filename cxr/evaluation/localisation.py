"""Does the heat-map look where the finding is? Grad-CAM maps of an evaluation set's boxed images scored against
NIH's ``BBox_List_2017.csv`` (984 boxes drawn by radiologists, 8 findings; Wang et al. 2017).

Per box, on the map of the box's finding (a binary model: its one "any finding" output), at the model's input size:

- pointing game: a hit when the map's maximum lies inside the box (no tolerance margin);
- heat inside: the share of the map's total heat that falls inside the box (energy-based pointing game);
- IoU: the box against the map binarised at ``iou_threshold`` of its range (Grad-CAM maps are scaled to [0, 1]).

Chance level for the first two is the box's share of the image (a uniformly random point, uniform heat). Each is
reported per finding and over all boxes as a mean with a patient-bootstrap CI (a pointing game of all hits or all
misses: the exact binomial interval over patients instead, as the bootstrap collapses there) (``localisation`` in metrics.json,
``localisation_<set>.csv`` per box). Boxes are in the coordinates of the 1024 x 1024 originals, scaled to the input.
"""

from __future__ import annotations

import logging
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from cxr.errors import UserError
from cxr.evaluation.bootstrap import PatientResampler, _check_options, _interval, patient_codes
from cxr.evaluation.boxes import box_mask, box_scores

log = logging.getLogger(__name__)
BUILTIN = "nih2017"  # BBox_List_2017.csv, shipped in cxr/data/nih_release (NIH: public domain)
DEFAULTS = {"boxes": BUILTIN, "iou_threshold": 0.5, "reference_size": 1024, "batch_size": 16}
BOX_FINDINGS = {"Infiltrate": "Infiltration"}  # the box list's names for the label file's findings
MEASURES = ("pointing_game", "heat_inside", "iou")
BOOTSTRAP_KEYS = ("n_resamples", "seed", "level")
SMALL_N = 10  # fewer patients than this: the figure is marked "small n"


class BoxFileError(UserError, ValueError):
    """A box list that cannot be read; the message names the file and row."""


def builtin_boxes() -> Path:
    return Path(str(resources.files("cxr.data") / "nih_release" / "BBox_List_2017.csv.gz"))


def read_boxes(source: str | Path | None) -> pd.DataFrame | None:
    """image, finding, x, y, w, h (floats, reference-image pixels) from NIH's layout (``Image Index``,
    ``Finding Label``, ``Bbox [x``, ``y``, ``w``, ``h]``) or plain columns image, finding, x, y, w, h; None when off."""
    if source in (None, "", "null", False):
        return None
    path = builtin_boxes() if str(source) == BUILTIN else Path(str(source)).expanduser()
    if not path.is_file():
        raise BoxFileError(f"evaluation.localisation.boxes: file not found: {path} (null turns localisation off)")
    try:
        table = pd.read_csv(path)
    except (ValueError, OSError, UnicodeDecodeError) as error:
        raise BoxFileError(f"{path}: not a readable CSV ({error})") from None
    table = table.rename(columns={"Image Index": "image", "Finding Label": "finding", "Bbox [x": "x", "h]": "h"}).loc[
        :, lambda t: ~t.columns.str.startswith("Unnamed")
    ]
    missing = [c for c in ("image", "finding", "x", "y", "w", "h") if c not in table.columns]
    if missing:
        raise BoxFileError(f"{path}: no column(s) {', '.join(missing)} (NIH's BBox_List_2017 layout expected)")
    coordinates = table[["x", "y", "w", "h"]].apply(pd.to_numeric, errors="coerce")
    bad = coordinates.isna().any(axis=1) | (coordinates[["w", "h"]] <= 0).any(axis=1) | table["image"].isna()
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise BoxFileError(
            f"{path}: row {row + 2}: a box needs an image name and numeric x, y and positive w, h "
            f"(got {table.iloc[row].tolist()})"
        )
    finding = table["finding"].astype(str).map(lambda f: BOX_FINDINGS.get(f, f))
    return pd.DataFrame({"image": table["image"].astype(str), "finding": finding, **coordinates})


def bootstrap_means(
    values: pd.DataFrame, patients, n_resamples: int = 1000, seed: int = 0, level: float = 0.95
) -> dict[str, dict]:
    """{column: {"value", "ci_low", "ci_high"}}: the mean of each column over the rows with a percentile CI from
    patient resamples (cxr.evaluation.bootstrap's resampler: whole patients, with replacement)."""
    _check_options(n_resamples, level)
    array = values.to_numpy(dtype=np.float64)
    resampler = PatientResampler(patient_codes(patients))
    rng = np.random.default_rng(seed)
    means = np.empty((n_resamples, array.shape[1]))
    for b in range(n_resamples):
        means[b] = array[resampler.draw(rng)].mean(axis=0)
    result = {}
    for j, column in enumerate(values.columns):
        low, high = _interval(means[:, j], level)
        result[column] = {"value": float(array[:, j].mean()), "ci_low": low, "ci_high": high}
    return result


def exact_bound(hit_rate: float, n_patients: int, level: float = 0.95) -> dict | None:
    """Clopper-Pearson interval over patients when every box was a hit (or every one a miss): the percentile
    bootstrap then collapses to [1, 1] ([0, 0]), which 13 boxes cannot support. None otherwise."""
    alpha = (1.0 - level) / 2
    if hit_rate == 0.0:
        return {"value": 0.0, "ci_low": 0.0, "ci_high": 1.0 - alpha ** (1.0 / n_patients), "ci_method": "exact"}
    if hit_rate == 1.0:
        return {"value": 1.0, "ci_low": alpha ** (1.0 / n_patients), "ci_high": 1.0, "ci_method": "exact"}
    return None


def summarise(per_box: pd.DataFrame, bootstrap: dict) -> dict:
    """Per finding and over all boxes: n boxes/patients, each measure's mean with its CI, chance (box share)."""

    def one(rows: pd.DataFrame) -> dict:
        scored = bootstrap_means(rows[list(MEASURES)], rows["patient"], **bootstrap)
        n_patients = int(pd.Series(patient_codes(rows["patient"])).nunique())
        exact = exact_bound(scored["pointing_game"]["value"], n_patients, bootstrap.get("level", 0.95))
        scored["pointing_game"] = exact or scored["pointing_game"]
        return {
            "n_boxes": len(rows),
            "n_patients": n_patients,
            "small_n": n_patients < SMALL_N,
            **scored,
            "chance": float(rows["box_share"].mean()),
            "n_flat_maps": int(rows["flat"].sum()),
        }

    return {
        "findings": {f: one(rows) for f, rows in per_box.groupby("finding", sort=True)},
        "all": one(per_box),
    }


def _output_of(finding: str, findings: list[str] | None) -> int | None:
    """The model output whose map is scored for a box: the finding's own, or a binary model's only output."""
    if not findings:
        return 0
    return findings.index(finding) if finding in findings else None


def heatmaps(model, images, outputs: list[int]) -> np.ndarray:
    """(N, H, W) Grad-CAM maps in [0, 1], image i's for output ``outputs[i]`` (cxr.evaluation.gradcam's layer)."""
    from cxr.evaluation.gradcam import OutputLogit, grad_cam

    return grad_cam(model, images, [OutputLogit(k) for k in outputs])


def localise_set(
    model, findings: list[str] | None, datamodule, name: str, predictions: pd.DataFrame, settings: dict, output_dir
) -> dict | None:
    """The ``localisation`` entry of set ``name`` (None when off or no image of the set has a box); writes
    ``localisation_<set>.csv``. ``findings``: a multi-label model's outputs (None: binary); ``settings``: the
    evaluation settings (``localisation`` and ``bootstrap``)."""
    options = {**DEFAULTS, **(settings.get("localisation") or {})}
    boxes = read_boxes(options["boxes"])
    if boxes is None:
        return None
    boxes = boxes[boxes["image"].isin(set(predictions["image"]))]
    if boxes.empty:
        return None
    try:
        import pytorch_grad_cam  # noqa: F401
    except ImportError:
        log.warning(
            "localisation: %d boxed images in %s, not scored (needs grad-cam: pip install -e '.[predict]')",
            boxes["image"].nunique(),
            name,
        )
        return {"not_computed": "grad-cam is not installed (pip install -e '.[predict]')"}
    import torch

    boxes = boxes.assign(output=[_output_of(f, findings) for f in boxes["finding"]])
    skipped = sorted(boxes.loc[boxes["output"].isna(), "finding"].unique())
    boxes = boxes.dropna(subset=["output"])
    position = {image: i for i, image in enumerate(predictions["image"])}  # predictions are in dataset order
    units = list(boxes.groupby(["image", "finding"], sort=True))  # several boxes of one finding: their union
    rows = []
    for start in range(0, len(units), int(options["batch_size"])):
        chunk = units[start : start + int(options["batch_size"])]
        images = torch.stack([datamodule.datasets[name][position[image]][0] for (image, _), _ in chunk])
        maps = heatmaps(model, images, [int(group["output"].iloc[0]) for _, group in chunk])
        for ((image, finding), group), heatmap in zip(chunk, maps):
            prediction = predictions.iloc[position[image]]
            output = f"probability_{finding}" if findings else "probability"
            mask = box_mask(group, heatmap.shape[-1], options["reference_size"])
            rows.append(
                {
                    "image": image,
                    "patient": prediction["patient"],
                    "finding": finding,
                    "n_boxes": len(group),
                    "probability": float(prediction[output]),
                    **box_scores(heatmap, mask, float(options["iou_threshold"])),
                }
            )
    if not rows:
        return {"not_computed": f"the model predicts none of the boxed findings ({', '.join(skipped)})"}
    per_box = pd.DataFrame(rows)
    from cxr.artifacts import write_csv

    write_csv(Path(output_dir) / f"localisation_{name}.csv", per_box)
    result = {
        "boxes": str(options["boxes"]),
        "map": "Grad-CAM of the last convolution, for the box's finding"
        + ("" if findings else " (binary model: its one 'any finding' output)"),
        "pointing_game": "hit when the map's maximum lies inside the box (no tolerance)",
        "iou_threshold": float(options["iou_threshold"]),
        "chance": "the box's share of the image (a random point; uniform heat)",
        "n_images": int(per_box["image"].nunique()),
        "findings_not_predicted": skipped,
        **summarise(per_box, {k: v for k, v in (settings.get("bootstrap") or {}).items() if k in BOOTSTRAP_KEYS}),
    }
    overall = result["all"]
    log.info(
        "%s: localisation over %d boxes (%d patients): pointing game %.2f [%.2f, %.2f], heat inside %.2f, "
        "IoU@%.2g %.2f; chance %.2f",
        name,
        overall["n_boxes"],
        overall["n_patients"],
        overall["pointing_game"]["value"],
        overall["pointing_game"]["ci_low"],
        overall["pointing_game"]["ci_high"],
        overall["heat_inside"]["value"],
        result["iou_threshold"],
        overall["iou"]["value"],
        overall["chance"],
    )
    return result


# ------------------------------------------------------------------------------------------------ reading it out
HEADERS = ["finding", "boxes", "patients", "pointing game", "heat inside", "IoU", "chance"]


def _with_ci(entry) -> str:
    if not isinstance(entry, dict) or entry.get("value") is None:
        return "n/a"
    if entry.get("ci_low") is None:
        return f"{entry['value']:.2f}"
    return f"{entry['value']:.2f} [{entry['ci_low']:.2f}, {entry['ci_high']:.2f}]"


def table_rows(localisation: dict) -> list[list]:
    """One row per finding and one over all boxes; "(small n)" beside fewer than SMALL_N patients."""
    entries = [*(localisation.get("findings") or {}).items(), ("all boxes", localisation.get("all"))]
    return [
        [
            finding,
            m.get("n_boxes"),
            f"{m.get('n_patients')}{' (small n)' if m.get('small_n') else ''}",
            *(_with_ci(m.get(k)) for k in MEASURES),
            f"{m['chance']:.2f}" if m.get("chance") is not None else "n/a",
        ]
        for finding, m in entries
        if isinstance(m, dict)
    ]


def caption(localisation: dict) -> str:
    return (
        f"Grad-CAM against NIH's radiologist boxes ({localisation.get('boxes')}): {localisation.get('map')}. Pointing "
        f"game: {localisation.get('pointing_game')}; heat inside: share of the map's heat inside the box; IoU: map "
        f"binarised at {localisation.get('iou_threshold')} of its range. Chance: {localisation.get('chance')}. Means "
        "with 95% patient-bootstrap CIs (a pointing game of all hits or all misses: the exact binomial interval over "
        "patients)."
        + (
            f" Boxes of findings the model does not predict were left out: {', '.join(skipped)}."
            if (skipped := localisation.get("findings_not_predicted"))
            else ""
        )
    )


def markdown_lines(set_name: str, metrics: dict) -> list[str]:
    """The model card's localisation section of one set (nothing when it was not scored)."""
    from cxr.evaluation.tables import markdown_table

    localisation = metrics.get("localisation") if isinstance(metrics, dict) else None
    if not isinstance(localisation, dict):
        return []
    lines = [f"### Localisation on the {set_name} set", ""]
    if localisation.get("not_computed"):
        return lines + [f"Not computed: {localisation['not_computed']}.", ""]
    return lines + [caption(localisation), "", markdown_table(HEADERS, table_rows(localisation)), ""]


def report_blocks(runs, set_name: str) -> list[tuple]:
    """compare.py's blocks: each run's localisation table on ``set_name`` (none when no run scored one)."""
    blocks = []
    for run in runs:
        localisation = (run.metrics.get(set_name) or {}).get("localisation")
        if isinstance(localisation, dict) and localisation.get("all"):
            blocks += [("h", 3, run.name), ("p", caption(localisation)), ("table", HEADERS, table_rows(localisation))]
    return [("h", 2, f"Heat-map localisation ({set_name})"), *blocks] if blocks else []
