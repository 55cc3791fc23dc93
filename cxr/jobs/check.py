"""The data check: validate the data before training (``python -m cxr.check``, and every train.py run before it fits).

One line per problem class and fact; ``report.ok`` is False when training would fail.
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from cxr.data.images import ImageIndexError
from cxr.data.labels import LabelFileError
from cxr.data.patient_ids import MissingPatientIdError
from cxr.data.table import LabelledData, labelled_data
from cxr.data.validation import ValidationReport, validate


def run_check(cfg: DictConfig, workers: int | None = None, data: LabelledData | None = None) -> ValidationReport:
    """Validate ``cfg.data`` (labels, images, split), its external set if one is set, and the leakage between them.

    ``data``: the data step's result the run trains on (``ChestXrayDataModule.labelled_data()``); made here if None.
    ``cfg.data_check_cache`` (a folder, or null): images that passed are not decoded again while unchanged.
    """
    settings = cfg.data
    if settings.get("demo") is not None and settings.get("root"):
        from cxr.data.demo import ensure_demo_dataset

        ensure_demo_dataset(settings.root, **OmegaConf.to_container(settings.demo, resolve=True))
    split = OmegaConf.to_container(settings.split, resolve=True) if settings.get("split") is not None else {}
    external = OmegaConf.to_container(settings.get("external") or {}, resolve=True)
    missing = settings.get("missing", "error")
    cache_dir = cfg.get("data_check_cache")
    settings_error = None
    from cxr.data.registered import is_registered

    if data is None and is_registered(settings.get("name")):  # data=chexpert, mimic_cxr, merged, ...
        from cxr.data.registered import from_settings

        try:
            data = from_settings(OmegaConf.to_container(settings, resolve=True), settings.get("task"))
        except ValueError as error:  # LabelFileError, ConfigError, SplitError: one line naming the file or key
            report = ValidationReport()
            report.add("ERROR", "settings", str(error))
            return report
    elif data is None and settings.get("labels") and settings.get("root"):
        allow = OmegaConf.to_container(settings.get("allow_overlap") or {}, resolve=True)
        try:
            data = labelled_data(
                settings.labels,
                settings.root,
                split,
                external,
                settings.get("exclude"),
                missing,
                allow,
                settings.get("missing_patient_id", "refuse"),
            )
        except MissingPatientIdError as error:  # validate() below reads the labels without the policy
            settings_error = str(error)
        except (LabelFileError, ImageIndexError):
            data = None  # validate() below reads each set on its own and names the problem
        except ValueError as error:  # data.exclude that cannot be applied
            settings_error = str(error)
    sets = data.sets if data is not None else {}
    report = validate(
        settings.get("labels"), settings.get("root"), split, missing, workers, sets.get("main"), cache_dir
    )
    if settings_error:
        report.add("ERROR", "settings", settings_error)
    if external.get("root") and external.get("labels"):
        report.include(
            validate(
                external["labels"],
                external["root"],
                None,
                external.get("missing", missing),
                workers,
                sets.get("external"),
                cache_dir,
            ),
            "external",
        )
    for name, labelled in sets.items():  # data.externals: external test sets of registered datasets
        if name.startswith("external_"):
            report.include(validate(None, None, None, missing, workers, labelled, cache_dir), name)
    if data is not None and report.ok:
        _report_leakage(report, data)
    return report


def _report_leakage(report: ValidationReport, data: LabelledData) -> None:
    """One line: the overlaps between test and train/val and between the external set and train/val."""
    try:
        record, refusal = data.leakage()
    except ValueError as error:
        report.add("ERROR", "settings", str(error))
        return
    report.facts["leakage"] = record
    counts = ", ".join(
        f"{kind} {entry['count']} of {entry['of']}" + (" (allowed)" if entry["allowed"] else "")
        for kind, entry in record.items()
    )
    if refusal:
        report.add("ERROR", "leakage", refusal)
    else:
        report.add(
            "WARNING" if any(e["count"] for e in record.values()) else "INFO",
            "leakage",
            f"overlap between sets: {counts or 'not measurable (no patient ids, no external set)'}",
        )
