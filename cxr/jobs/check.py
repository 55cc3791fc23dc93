"""The data check: validate the data before training (``python -m cxr.check``, and every train.py run before it fits).

One line per problem class and fact; ``report.ok`` is False when training would fail.
"""
from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from cxr.data.images import ImageIndexError
from cxr.data.labels import LabelFileError
from cxr.data.leakage import find_overlaps, judge
from cxr.data.table import build_sets
from cxr.data.validation import ValidationReport, validate


def run_check(cfg: DictConfig, workers: int | None = None, sets: dict | None = None) -> ValidationReport:
    """Validate ``cfg.data`` (labels, images, split), its external set if one is set, and the leakage between them.

    ``sets``: the labelled tables the run trains on (``ChestXrayDataModule.labelled_sets()``); built here if None.
    ``cfg.data_check_cache`` (a folder, or null): images that passed are not decoded again while unchanged.
    """
    data = cfg.data
    if data.get("demo") is not None and data.get("root"):
        from cxr.data.demo import ensure_demo_dataset

        ensure_demo_dataset(data.root, **OmegaConf.to_container(data.demo, resolve=True))
    split = OmegaConf.to_container(data.split, resolve=True) if data.get("split") is not None else {}
    external = OmegaConf.to_container(data.get("external") or {}, resolve=True)
    missing = data.get("missing", "error")
    cache_dir = cfg.get("data_check_cache")
    settings_error = None
    if sets is None and data.get("labels") and data.get("root"):
        try:
            sets = build_sets(data.labels, data.root, external, data.get("exclude"))
        except (LabelFileError, ImageIndexError):
            sets = None  # validate() below reads each set on its own and names the problem
        except ValueError as error:  # data.exclude that cannot be applied
            settings_error = str(error)
    sets = sets or {}
    report = validate(data.get("labels"), data.get("root"), split, missing, workers, sets.get("main"), cache_dir)
    if settings_error:
        report.add("ERROR", "settings", settings_error)
    if external.get("root") and external.get("labels"):
        report.include(validate(external["labels"], external["root"], None, external.get("missing", missing),
                                workers, sets.get("external"), cache_dir), "external")
    if sets.get("main") is not None and report.ok:
        _check_leakage(report, sets, split, external.get("missing", missing),
                       OmegaConf.to_container(data.get("allow_overlap") or {}, resolve=True))
    return report


def _check_leakage(report: ValidationReport, sets: dict, split: dict, external_missing: str, allow: dict) -> None:
    """One line: the overlaps between test and train/val and between the external set and train/val."""
    main = sets["main"]
    external = sets["external"].usable(external_missing) if "external" in sets else None
    try:
        record, refusal = judge(find_overlaps(main.present, main.split(split), external), allow, split.get("method"))
    except ValueError as error:
        report.add("ERROR", "settings", str(error))
        return
    report.facts["leakage"] = record
    counts = ", ".join(f"{kind} {entry['count']} of {entry['of']}" + (" (allowed)" if entry["allowed"] else "")
                       for kind, entry in record.items())
    if refusal:
        report.add("ERROR", "leakage", refusal)
    else:
        report.add("WARNING" if any(e["count"] for e in record.values()) else "INFO", "leakage",
                   f"overlap between sets: {counts or 'not measurable (no patient ids, no external set)'}")
