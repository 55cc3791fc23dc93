"""Validate the data before training: ``python -m cxr.check [the overrides train.py takes]``.

Prints one line per problem class and fact; exits 1 when training would fail. Writes no run directory.
"""
from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from cxr.cli import catch_user_errors
from cxr.data.images import ImageIndexError
from cxr.data.labels import LabelFileError
from cxr.data.leakage import find_overlaps, judge
from cxr.data.patient_ids import MissingPatientIdError
from cxr.data.table import build_sets
from cxr.data.validation import ValidationReport, validate

# Hydra would otherwise create outputs/<task>/runs/<time>/ with .hydra/ and a log file; the check writes nothing.
NO_OUTPUT = ("hydra.run.dir=.", "hydra.output_subdir=null", "hydra/job_logging=none")


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
            sets = build_sets(data.labels, data.root, external, data.get("exclude"),
                              data.get("missing_patient_id", "refuse"))
        except MissingPatientIdError as error:  # validate() below reads the labels without the policy
            settings_error = str(error)
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


@hydra.main(version_base="1.3", config_path="pkg://cxr.conf", config_name="train")
@catch_user_errors
def app(cfg: DictConfig) -> None:
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="[%(asctime)s] %(message)s",
                        datefmt="%H:%M:%S", force=True)
    report = run_check(cfg)
    lines = report.lines()
    print("\n".join(lines), flush=True)
    if not report.ok:  # the first problem as the one error line on stderr (the full report is on stdout above)
        first = next((line for line in lines if line.startswith("ERROR")), lines[-1])
        print(f"error: {first.removeprefix('ERROR').strip()}", file=sys.stderr, flush=True)
    sys.exit(0 if report.ok else 1)


def no_output_arguments(argv: list[str]) -> list[str]:
    """The no-output overrides first (a user's own override of the same key wins), then ``argv``."""
    given = {arg.split("=", 1)[0].lstrip("+~") for arg in argv}
    return [o for o in NO_OUTPUT if o.split("=", 1)[0] not in given] + list(argv)


def main() -> None:
    """Run the check (user errors end with one line, see cxr.cli)."""
    from cxr.cli import check_main

    check_main()


if __name__ == "__main__":
    main()
