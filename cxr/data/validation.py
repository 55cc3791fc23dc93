"""Check a labelled image set before training: label file, images on disk, full decoding, split settings.

``validate`` does not stop at the first problem: it collects one finding per problem class into a report.
It reads the labelled table of ``cxr.data.table`` (the one the DataModule trains on). Images that passed a
decode are remembered in a small CSV (``DecodeCache``: path, size, mtime), so an unchanged image is not decoded
again by a later check; a changed or added one is.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from multiprocessing import Pool
from pathlib import Path

import pandas as pd
import PIL
from PIL import Image

from cxr.data.images import DICOM_SUFFIXES, ImageIndexError, ImageReadError, dicom_pixels, load_image
from cxr.data.labels import LabelFileError, read_labels
from cxr.data.splits import SPLITS, SplitError, summarise_split
from cxr.data.table import MISSING_POLICIES, LabelledSet, unset_data_keys, with_image_paths

log = logging.getLogger(__name__)
FIRST = 5  # offenders named per problem line
MAX_SHAPES = 10  # mode/size combinations named in the facts line
PROGRESS_SECONDS = 10.0  # interval between progress log lines while decoding
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

    def include(self, other: ValidationReport, name: str) -> None:
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
        verdict = "OK: training can start" if self.ok else "FAILED: training would fail"
        return [str(f) for f in self.findings] + [
            f"{verdict} ({counts['ERROR']} error(s), {counts['WARNING']} warning(s))"
        ]


def _first(names) -> str:
    return ", ".join(map(str, list(names)[:FIRST]))


def inspect_image(path: str) -> tuple[str, str]:
    """Decode one file fully; return ``('ok', 'L 1024x1024')`` or (problem class, ImageReadError message)."""
    try:
        if os.path.getsize(path) == 0:
            return "zero_byte", ""
        if str(path).lower().endswith(DICOM_SUFFIXES):  # decoded as training decodes it (cxr.data.dicom)
            pixels = dicom_pixels(path)
            return "ok", f"DICOM {pixels.shape[1]}x{pixels.shape[0]}"
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
    # the workers end on terminate()'s SIGTERM even where the job ignores it (submitit's handler, inherited by fork)
    pool = Pool(workers, signal.signal, (signal.SIGTERM, signal.SIG_DFL)) if workers > 1 else None
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


class DecodeCache:
    """Images that decoded without a problem, remembered by path, size and modification time (one CSV per image
    folder and Pillow version under ``folder``): an unchanged image is not decoded again, a changed or new one is."""

    COLUMNS = ["path", "size", "mtime_ns", "detail"]

    def __init__(self, folder: str | Path, root: str | Path):
        key = hashlib.sha1(f"{Path(root).resolve()}|Pillow {PIL.__version__}|v1".encode()).hexdigest()[:16]
        self.path = Path(folder) / f"decoded-{key}.csv"
        self.known = pd.DataFrame(columns=self.COLUMNS).set_index("path")
        if self.path.is_file():
            try:
                known = pd.read_csv(
                    self.path,
                    dtype={"path": str, "size": "int64", "mtime_ns": "int64", "detail": str},
                    keep_default_na=False,
                )
                if list(known.columns) == self.COLUMNS:
                    self.known = known.drop_duplicates("path", keep="last").set_index("path")
            except (ValueError, OSError, pd.errors.ParserError) as error:  # damaged: decode everything again
                log.warning("data check cache %s unreadable (%s); decoding every image", self.path, error)

    @staticmethod
    def stat(paths: list[str]) -> pd.DataFrame:
        sizes, times = [], []
        for path in paths:
            try:
                info = os.stat(path)
                sizes.append(info.st_size), times.append(info.st_mtime_ns)
            except OSError:
                sizes.append(-1), times.append(-1)
        return pd.DataFrame({"size": sizes, "mtime_ns": times}, index=pd.Index(paths, name="path"))

    def unchanged(self, stats: pd.DataFrame) -> pd.Series:
        """Per path: the remembered ``detail`` ('L 1024x1024') if size and mtime are as when it passed, else None."""
        known = self.known.reindex(stats.index)
        same = (known["size"] == stats["size"]) & (known["mtime_ns"] == stats["mtime_ns"]) & (stats["size"] > 0)
        return known["detail"].where(same, None)

    def remember(self, stats: pd.DataFrame, details: pd.Series) -> None:
        """Add the images that passed (``details`` indexed by path) and save atomically."""
        from cxr.artifacts import write_csv

        rows = stats.loc[details.index].assign(detail=details)
        merged = pd.concat([self.known.drop(index=rows.index, errors="ignore"), rows])
        self.known = merged
        try:
            write_csv(self.path, merged.reset_index()[self.COLUMNS])
        except OSError as error:  # a read-only cache folder only costs the next check its time
            log.warning("could not save the data check cache %s: %s", self.path, error)


def validate(
    labels,
    root,
    split: dict | None = None,
    missing: str = "error",
    workers: int | None = None,
    labelled: LabelledSet | None = None,
    cache_dir: str | Path | None = None,
) -> ValidationReport:
    """Check one labelled set; ``split`` (the data.split settings) is also checked unless None.

    ``labelled``: the labelled table already built for training (else read from ``labels`` and ``root``);
    ``cache_dir``: remember images that passed the decode there (see ``DecodeCache``).
    """
    report = ValidationReport()
    if missing not in MISSING_POLICIES:
        report.add("ERROR", "settings", f"data.missing={missing!r}: choose one of {', '.join(MISSING_POLICIES)}")
    if labelled is None:
        if unset := unset_data_keys(labels, root):
            report.add("ERROR", "settings", unset)
            return report
        try:
            table = read_labels(labels)
        except LabelFileError as error:
            report.add("ERROR", "label_file", f"label file: {error}")
            return report
        _check_labels(report, table, Path(labels).name)
        try:
            labelled = with_image_paths(table, labels, root)
        except ImageIndexError as error:
            report.add("ERROR", "image_index", f"image folder: {error}")
            if split is not None:  # the split settings are still checked, on the label rows
                rows = LabelledSet(str(labels), str(root), table.assign(path=table["image"]), 0)
                _check_split(report, rows, rows.present, dict(split))
            return report
    else:
        _check_labels(report, labelled.table, Path(labelled.labels).name)
    if labelled.excluded is not None:
        excluded = labelled.excluded
        report.add(
            "INFO",
            "excluded",
            f"held out of {Path(labelled.labels).name} (data.exclude): {len(excluded)} "
            f"images of {excluded['patient_id'].nunique()} patients (first: {_first(excluded['image'])})",
        )
    present = _check_images(report, labelled, missing, workers, cache_dir)
    if split is not None:
        _check_split(report, labelled, present, dict(split))
    return report


def _check_labels(report: ValidationReport, table: pd.DataFrame, name: str) -> None:
    patients = table["patient_id"].nunique() if table["patient_id"].notna().all() else None
    report.facts.update(rows=len(table), patients=patients, class1_share=round(float(table["target"].mean()), 4))
    report.add(
        "INFO",
        "rows",
        f"rows: {len(table)} in {name}, "
        f"{patients if patients is not None else 'no'} patient ids, class-1 (finding) share "
        f"{report.facts['class1_share']:.3f}",
    )
    for column, allowed in VOCABULARY.items():
        values = table[column]
        bad = values.notna() & ~values.isin(allowed)
        if bad.any():
            offenders = [f"{image}: {value!r}" for image, value in zip(table.loc[bad, "image"], values[bad])]
            report.add(
                "WARNING",
                f"vocabulary.{column}",
                f"{column} outside {'/'.join(allowed)}: "
                f"{int(bad.sum())} of {len(table)} rows (first: {_first(offenders)})",
            )
    ages = table["age_years"]
    odd = ages.notna() & ~ages.between(0, 120)
    if odd.any():
        offenders = [f"{image}: {age:g}" for image, age in zip(table.loc[odd, "image"], ages[odd])]
        report.add(
            "WARNING",
            "vocabulary.age",
            f"ages outside 0-120 years: {int(odd.sum())} of {len(table)} rows (first: {_first(offenders)})",
        )


def _check_images(
    report: ValidationReport, labelled: LabelledSet, missing: str, workers: int | None, cache_dir: str | Path | None
) -> pd.DataFrame:
    """Missing files, then every found file decoded (or remembered as unchanged); return the rows with an image."""
    table, root, name = labelled.table, labelled.root, Path(labelled.labels).name
    n, n_found = len(table), len(labelled.present)
    held_out = 0 if labelled.excluded is None else int(labelled.excluded["path"].notna().sum())  # data.exclude
    n_absent, unlabelled = n - n_found, labelled.n_files - n_found - held_out
    report.facts.update(images_found=n_found, images_missing=n_absent, unlabelled_files=unlabelled)
    report.add(
        "INFO",
        "images",
        f"images: {n_found} of {n} listed in {name} found under {root}"
        + (f" ({unlabelled} other image files there are not labelled)" if unlabelled > 0 else ""),
    )
    if n_absent:
        hint = (
            "fix data.root, or skip them with data.missing=drop"
            if missing != "drop"
            else "data.missing=drop: training skips them"
        )
        report.add(
            "ERROR" if missing != "drop" else "WARNING",
            "missing",
            f"missing images: {labelled.missing_message(name)}; {hint}",
        )
    present = labelled.present
    if present.empty:
        return present
    paths = present["path"].tolist()
    cache = DecodeCache(cache_dir, root) if cache_dir else None
    stats = DecodeCache.stat(paths) if cache else None
    remembered = cache.unchanged(stats) if cache else pd.Series(None, index=paths, dtype=object)
    todo = remembered.isna().to_numpy()
    decoded = decode_all(present.loc[todo, "path"].tolist(), workers) if todo.any() else []
    results = pd.DataFrame({"status": "ok", "detail": remembered.to_numpy()})
    if decoded:
        results.loc[todo, ["status", "detail"]] = pd.DataFrame(decoded, columns=["status", "detail"]).to_numpy()
    report.facts.update(images_decoded=int(todo.sum()), images_remembered=int((~todo).sum()))
    if cache:
        passed = todo & (results["status"] == "ok").to_numpy()
        if passed.any():
            cache.remember(stats, pd.Series(results.loc[passed, "detail"].to_numpy(), index=stats.index[passed]))
        report.add(
            "INFO",
            "decoded",
            f"decoded: {int(todo.sum())} images; {int((~todo).sum())} unchanged since they "
            f"passed an earlier check, not decoded again (remembered in {cache.path})",
        )
    images = present["image"]
    problems = {
        "zero_byte": "zero-byte images: {k} of {n} found are empty files (first: {first})",
        "truncated": "truncated images: {k} of {n} found end before their image data does (first: {first}); {why}",
        "unreadable": "unreadable images: {k} of {n} found cannot be decoded (first: {first}); {why}",
    }
    for kind, text in problems.items():
        hit = (results["status"] == kind).to_numpy()
        if hit.any():
            report.add(
                "ERROR",
                kind,
                text.format(
                    k=int(hit.sum()), n=len(present), first=_first(images[hit]), why=results.loc[hit, "detail"].iloc[0]
                ),
            )
    shapes = Counter(results.loc[results["status"] == "ok", "detail"])
    report.facts["modes"] = dict(Counter(shape.split(" ")[0] for shape in shapes.elements()))
    report.facts["sizes"] = dict(Counter(shape.split(" ")[1] for shape in shapes.elements()))
    report.facts["modes_sizes"] = dict(shapes.most_common())
    if shapes:
        listed = ", ".join(f"{shape}: {count}" for shape, count in shapes.most_common(MAX_SHAPES))
        more = f" and {len(shapes) - MAX_SHAPES} more" if len(shapes) > MAX_SHAPES else ""
        report.add("INFO", "modes_sizes", f"image modes and sizes: {listed}{more}")
    return present


def _check_split(report: ValidationReport, labelled: LabelledSet, table: pd.DataFrame, settings: dict) -> None:
    method = settings.get("method")
    if table.empty:
        report.add(
            "ERROR", "split", f"split: no labelled image is left to split (none was found under {labelled.root})"
        )
        return
    try:
        split = labelled.split(settings)
    except (SplitError, TypeError) as error:
        message = str(error) if str(error).startswith("split") else f"split={method}: {error}"
        if isinstance(error, TypeError):
            message = f"split={method}: settings do not fit this method: {error}"
        report.add("ERROR", "split", message)
        return
    summary = summarise_split(table, split)
    report.facts["split"] = summary
    parts = [
        f"{name} {summary[name]['images']} images"
        + (f" / {summary[name]['patients']} patients" if summary[name]["patients"] is not None else "")
        for name in SPLITS
    ]
    report.add(
        "INFO",
        "split",
        f"split={method}: {', '.join(parts)}"
        + (
            f"; {len(table) - summary['method_images']} labelled images in no split"
            if summary["method_images"] < len(table)
            else ""
        ),
    )
    if summary["test"]["images"] == 0:
        report.add("WARNING", "empty_test", f"split={method}: the test split is empty (nothing to evaluate)")
    overlap = summary["patients_in_several_splits"]
    report.add(
        "INFO",
        "overlap",
        "patients in more than one split: " + (str(overlap) if overlap is not None else "unknown (no patient ids)"),
    )
