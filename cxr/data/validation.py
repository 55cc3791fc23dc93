"""Check a labelled image set before training: label file, images on disk, full decoding, split settings.

``validate`` does not stop at the first problem: it collects one finding per problem class into a report.
"""
from __future__ import annotations

import logging
import os
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from multiprocessing import Pool
from pathlib import Path

import pandas as pd
from PIL import Image

from cxr.data.images import ImageIndexError, ImageReadError, index_images, load_image
from cxr.data.labels import LabelFileError, read_labels
from cxr.data.splits import SPLITS, SplitError, make_split, summarise_split

log = logging.getLogger(__name__)
MISSING_POLICIES = ("error", "drop")  # as cxr.data.datamodule (not imported: it pulls in Lightning)
FIRST = 5                 # offenders named per problem line
MAX_SHAPES = 10           # mode/size combinations named in the facts line
PROGRESS_SECONDS = 10.0   # interval between progress log lines while decoding
VOCABULARY = {"sex": ("M", "F"), "view_position": ("PA", "AP")}
_TRUNCATED = re.compile(r"truncat|broken data stream", re.IGNORECASE)


@dataclass(frozen=True)
class Finding:
    """One reported line: level (ERROR, WARNING, INFO), problem class and message."""
    level: str
    kind: str
    message: str

    def __str__(self) -> str:
        return f"{self.level} {self.message}"


@dataclass
class ValidationReport:
    """Findings in the order they were found, and the facts behind them (counts, modes, split summary)."""
    findings: list[Finding] = field(default_factory=list)
    facts: dict = field(default_factory=dict)

    def add(self, level: str, kind: str, message: str) -> None:
        self.findings.append(Finding(level, kind, message))

    def include(self, other: "ValidationReport", name: str) -> None:
        """Append another set's findings, prefixed with ``name`` (e.g. the external set)."""
        self.findings += [Finding(f.level, f"{name}.{f.kind}", f"{name}: {f.message}") for f in other.findings]
        self.facts[name] = other.facts

    @property
    def ok(self) -> bool:
        return not any(f.level == "ERROR" for f in self.findings)

    def get(self, kind: str) -> Finding | None:
        return next((f for f in self.findings if f.kind == kind), None)

    def lines(self) -> list[str]:
        counts = Counter(f.level for f in self.findings)
        verdict = ("OK: training can start" if self.ok else "FAILED: training would fail")
        return [str(f) for f in self.findings] + [
            f"{verdict} ({counts['ERROR']} error(s), {counts['WARNING']} warning(s))"]


def _first(names) -> str:
    return ", ".join(map(str, list(names)[:FIRST]))


def inspect_image(path: str) -> tuple[str, str]:
    """Decode one file fully; return ``('ok', 'L 1024x1024')`` or (problem class, ImageReadError message)."""
    try:
        if os.path.getsize(path) == 0:
            return "zero_byte", ""
        load_image(path, channels=1, size=8)  # the training decoder, to a tiny size: full decode, cheap resize
        with Image.open(path) as image:
            return "ok", f"{image.mode} {image.width}x{image.height}"
    except (ImageReadError, OSError) as error:
        return ("truncated" if _TRUNCATED.search(str(error)) else "unreadable"), str(error)


def decode_all(paths: list[str], workers: int | None = None) -> list[tuple[str, str]]:
    """``inspect_image`` for every path, in a process pool of ``workers`` (default: all CPUs), in order."""
    n = len(paths)
    workers = max(1, min(workers or os.cpu_count() or 1, n))
    start = last = time.monotonic()
    results = []
    pool = Pool(workers) if workers > 1 else None
    try:
        chunksize = max(1, min(64, n // (workers * 4)))
        for i, result in enumerate(pool.imap(inspect_image, paths, chunksize) if pool else map(inspect_image, paths)):
            results.append(result)
            if time.monotonic() - last >= PROGRESS_SECONDS:
                last = time.monotonic()
                log.info("decoded %d of %d images (%.0f%%)", i + 1, n, 100 * (i + 1) / n)
    finally:
        if pool:
            pool.terminate()
            pool.join()
    log.info("decoded %d images in %.1f s with %d worker(s)", n, time.monotonic() - start, workers)
    return results


def validate(labels, root, split: dict | None = None, missing: str = "error",
             workers: int | None = None) -> ValidationReport:
    """Check one labelled set; ``split`` (the data.split settings) is also checked unless None."""
    report = ValidationReport()
    if missing not in MISSING_POLICIES:
        report.add("ERROR", "settings", f"data.missing={missing!r}: choose one of {', '.join(MISSING_POLICIES)}")
    if not labels or not root:
        report.add("ERROR", "settings", "data.labels and data.root must be set "
                   "(e.g. data.root=/data/nih data.labels=/data/nih/Data_Entry_2017_v2020.csv)")
        return report
    try:
        table = read_labels(labels)
    except LabelFileError as error:
        report.add("ERROR", "label_file", f"label file: {error}")
        return report
    _check_labels(report, table, Path(labels).name)
    present = _check_images(report, table, root, Path(labels).name, missing, workers)
    if split is not None:
        _check_split(report, table if present is None else present, dict(split), root)
    return report


def _check_labels(report: ValidationReport, table: pd.DataFrame, name: str) -> None:
    patients = table["patient_id"].nunique() if table["patient_id"].notna().all() else None
    report.facts.update(rows=len(table), patients=patients, class1_share=round(float(table["target"].mean()), 4))
    report.add("INFO", "rows", f"rows: {len(table)} in {name}, "
               f"{patients if patients is not None else 'no'} patient ids, class-1 (finding) share "
               f"{report.facts['class1_share']:.3f}")
    for column, allowed in VOCABULARY.items():
        values = table[column]
        bad = values.notna() & ~values.isin(allowed)
        if bad.any():
            offenders = [f"{image}: {value!r}" for image, value in zip(table.loc[bad, "image"], values[bad])]
            report.add("WARNING", f"vocabulary.{column}", f"{column} outside {'/'.join(allowed)}: "
                       f"{int(bad.sum())} of {len(table)} rows (first: {_first(offenders)})")
    ages = table["age_years"]
    odd = ages.notna() & ~ages.between(0, 120)
    if odd.any():
        offenders = [f"{image}: {age:g}" for image, age in zip(table.loc[odd, "image"], ages[odd])]
        report.add("WARNING", "vocabulary.age", f"ages outside 0-120 years: {int(odd.sum())} of {len(table)} rows "
                   f"(first: {_first(offenders)})")


def _check_images(report: ValidationReport, table: pd.DataFrame, root, name: str, missing: str,
                  workers: int | None) -> pd.DataFrame | None:
    """Missing files, then every found file decoded; return the rows with an image (None if root is unusable)."""
    try:
        found = index_images(root)
    except ImageIndexError as error:
        report.add("ERROR", "image_index", f"image folder: {error}")
        return None
    paths = table["image"].map(found)
    absent = paths.isna()
    n, n_absent = len(table), int(absent.sum())
    report.facts.update(images_found=n - n_absent, images_missing=n_absent, unlabelled_files=len(found) - n + n_absent)
    report.add("INFO", "images", f"images: {n - n_absent} of {n} listed in {name} found under {root}"
               + (f" ({len(found) - n + n_absent} other image files there are not labelled)"
                  if len(found) > n - n_absent else ""))
    if n_absent:
        hint = ("fix data.root, or skip them with data.missing=drop" if missing != "drop"
                else "data.missing=drop: training skips them")
        report.add("ERROR" if missing != "drop" else "WARNING", "missing",
                   f"missing images: {n_absent} of {n} listed in {name} are not under {root} "
                   f"(first: {_first(table.loc[absent, 'image'])}); {hint}")
    present = table.loc[~absent].assign(path=paths[~absent].astype(str)).reset_index(drop=True)
    if present.empty:
        return present
    results = pd.DataFrame(decode_all(present["path"].tolist(), workers), columns=["status", "detail"])
    images = present["image"]
    problems = {
        "zero_byte": "zero-byte images: {k} of {n} found are empty files (first: {first})",
        "truncated": "truncated images: {k} of {n} found end before their image data does (first: {first}); {why}",
        "unreadable": "unreadable images: {k} of {n} found cannot be decoded (first: {first}); {why}",
    }
    for kind, text in problems.items():
        hit = (results["status"] == kind).to_numpy()
        if hit.any():
            report.add("ERROR", kind, text.format(k=int(hit.sum()), n=len(present), first=_first(images[hit]),
                                                  why=results.loc[hit, "detail"].iloc[0]))
    shapes = Counter(results.loc[results["status"] == "ok", "detail"])
    report.facts["modes"] = dict(Counter(shape.split(" ")[0] for shape in shapes.elements()))
    report.facts["sizes"] = dict(Counter(shape.split(" ")[1] for shape in shapes.elements()))
    report.facts["modes_sizes"] = dict(shapes.most_common())
    if shapes:
        listed = ", ".join(f"{shape}: {count}" for shape, count in shapes.most_common(MAX_SHAPES))
        more = f" and {len(shapes) - MAX_SHAPES} more" if len(shapes) > MAX_SHAPES else ""
        report.add("INFO", "modes_sizes", f"image modes and sizes: {listed}{more}")
    return present


def _check_split(report: ValidationReport, table: pd.DataFrame, settings: dict, root) -> None:
    method = settings.pop("method", None)
    if table.empty:
        report.add("ERROR", "split", f"split: no labelled image is left to split (none was found under {root})")
        return
    try:
        split = make_split(table, method, **settings)
    except (SplitError, TypeError) as error:
        message = str(error) if str(error).startswith("split") else f"split={method}: {error}"
        if isinstance(error, TypeError):
            message = f"split={method}: settings do not fit this method: {error}"
        report.add("ERROR", "split", message)
        return
    summary = summarise_split(table, split)
    report.facts["split"] = summary
    parts = [f"{name} {summary[name]['images']} images"
             + (f" / {summary[name]['patients']} patients" if summary[name]["patients"] is not None else "")
             for name in SPLITS]
    report.add("INFO", "split", f"split={method}: {', '.join(parts)}"
               + (f"; {len(table) - summary['method_images']} labelled images in no split"
                  if summary["method_images"] < len(table) else ""))
    if summary["test"]["images"] == 0:
        report.add("WARNING", "empty_test", f"split={method}: the test split is empty (nothing to evaluate)")
    overlap = summary["patients_in_several_splits"]
    report.add("INFO", "overlap", "patients in more than one split: "
               + (str(overlap) if overlap is not None else "unknown (no patient ids)"))
