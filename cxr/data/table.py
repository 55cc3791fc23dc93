"""The data step, once per run: label file -> normalised rows -> image paths on disk -> split -> leakage judged.

:func:`labelled_data` is the one function that does it; the data check (``cxr.jobs.check``, reporting with
``cxr.data.validation``) and the DataModule both receive its result, so the labels are read, the image folder
indexed, "which labelled images are missing" decided, the split made and the leakage judged in one place.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from cxr.data.images import ImageIndexError, index_images
from cxr.data.labels import read_labels
from cxr.data.leakage import find_overlaps, judge
from cxr.data.splits import make_split
from cxr.errors import ConfigError

log = logging.getLogger(__name__)
MISSING_POLICIES = ("error", "drop")
FIRST = 5  # image names quoted in a message


@dataclass
class LabelledSet:
    """One label file and its image folder: every labelled row, with ``path`` (None when the image is missing)."""

    labels: str
    root: str
    table: pd.DataFrame
    n_files: int  # image files found under root (labelled or not)
    excluded: pd.DataFrame | None = None  # rows held out by data.exclude (image, patient_id, finding_labels, path)
    _splits: dict = field(default_factory=dict, repr=False)

    @property
    def missing(self) -> pd.DataFrame:
        """The labelled rows whose image is not under root (saved as dropped_images.csv with data.missing=drop)."""
        rows = self.table[self.table["path"].isna()]
        return rows[["image", "patient_id", "finding_labels"]].reset_index(drop=True)

    @property
    def present(self) -> pd.DataFrame:
        """The labelled rows whose image was found, with their path."""
        return self.table[self.table["path"].notna()].reset_index(drop=True)

    def missing_message(self, name: str | None = None) -> str:
        missing = self.missing
        return (
            f"{len(missing)} of {len(self.table)} images listed in {name or self.labels} are not under "
            f"{self.root} (first: {', '.join(missing['image'].head(FIRST))})"
        )

    def usable(self, missing: str = "error") -> pd.DataFrame:
        """The rows to train or evaluate on under the ``data.missing`` policy (``error`` raises, ``drop`` skips)."""
        if missing not in MISSING_POLICIES:
            raise ConfigError(f"data.missing={missing!r}: choose one of {', '.join(MISSING_POLICIES)}")
        n_missing = int(self.table["path"].isna().sum())
        if n_missing and missing == "error":
            raise ImageIndexError(f"{self.missing_message()}; fix data.root, or skip them with data.missing=drop")
        if n_missing:
            log.warning(
                "data.missing=drop: dropped %d of %d labelled images not found under %s",
                n_missing,
                len(self.table),
                self.root,
            )
        return self.present

    def split(self, settings: dict) -> pd.Series:
        """``make_split`` of the found rows (index aligned with ``present``), computed once per settings."""
        key = repr(sorted(settings.items()))
        if key not in self._splits:
            settings = dict(settings)
            self._splits[key] = make_split(self.present, settings.pop("method", None), **settings)
        return self._splits[key]


EXCLUDE = ("external_images", "external_patients")


def labelled_set(labels: str | Path, root: str | Path, missing_patient_id: str = "refuse") -> LabelledSet:
    """Read ``labels`` and look up each image under ``root`` (raises LabelFileError / ImageIndexError); missing
    patient ids refused or made per image (cxr.data.patient_ids)."""
    from cxr.data.patient_ids import apply_policy

    return with_image_paths(apply_policy(read_labels(labels), labels, missing_patient_id), labels, root)


def with_image_paths(table: pd.DataFrame, labels: str | Path, root: str | Path) -> LabelledSet:
    """Index ``root`` once and give every labelled row its image path (None when the file is missing)."""
    found = index_images(root)
    paths = table["image"].map(found).map(lambda p: None if pd.isna(p) else str(p)).astype(object)
    return LabelledSet(str(labels), str(root), table.assign(path=paths), len(found))


def attach_image_paths(
    table: pd.DataFrame, root: str | Path, missing: str = "error", labels: str | Path = ""
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Add a ``path`` column to an already read table; return (rows with an image, rows whose image is missing)."""
    if missing not in MISSING_POLICIES:
        raise ConfigError(f"data.missing={missing!r}: choose one of {', '.join(MISSING_POLICIES)}")
    labelled = with_image_paths(table, labels or "the label file", root)
    return labelled.usable(missing), labelled.missing


def exclude_external(main: LabelledSet, external: LabelledSet, how: str) -> LabelledSet:
    """Hold the external set's images (``external_images``) or all images of its patients (``external_patients``)
    out of the main table, so that no split of it can hold them; the held-out rows are kept as ``excluded``."""
    if how not in EXCLUDE:
        raise ConfigError(f"data.exclude={how!r}: choose one of {', '.join(EXCLUDE)} (or null)")
    table = main.table
    if how == "external_images":
        hit = table["image"].isin(external.table["image"])
    else:
        patients = external.table["patient_id"].dropna()
        if len(patients) < len(external.table) or table["patient_id"].isna().any():
            raise ConfigError(
                f"data.exclude=external_patients needs patient ids in {main.labels} and "
                f"{external.labels}; use data.exclude=external_images"
            )
        hit = table["patient_id"].isin(patients)
    excluded = table.loc[hit, ["image", "patient_id", "finding_labels", "path"]].reset_index(drop=True)
    log.info(
        "data.exclude=%s: held %d images of %d patients out of %s",
        how,
        len(excluded),
        excluded["patient_id"].nunique(),
        main.labels,
    )
    return LabelledSet(main.labels, main.root, table.loc[~hit].reset_index(drop=True), main.n_files, excluded)


DATA_KEY_EXAMPLES = {
    "data.labels": "the label file, e.g. data.labels=/data/nih/Data_Entry_2017_v2020.csv",
    "data.root": "the image folder, e.g. data.root=/data/nih",
}


def unset_data_keys(labels, root) -> str | None:
    """The message naming each of ``data.labels`` and ``data.root`` that is not set (None when both are)."""
    unset = [key for key, value in (("data.labels", labels), ("data.root", root)) if not value]
    if not unset:
        return None
    verb = "is" if len(unset) == 1 else "are"
    return f"{' and '.join(unset)} {verb} not set: give {'; and '.join(DATA_KEY_EXAMPLES[k] for k in unset)}"


def build_sets(
    labels, root, external: dict | None = None, exclude: str | None = None, missing_patient_id: str = "refuse"
) -> dict[str, LabelledSet]:
    """The labelled sets of a run: ``main`` and, when ``external.labels`` and ``external.root`` are set,
    ``external``; ``exclude`` (data.exclude) holds the external set out of the main table."""
    if unset := unset_data_keys(labels, root):
        raise ConfigError(unset)
    return with_external(
        {"main": labelled_set(labels, root, missing_patient_id)}, external, exclude, missing_patient_id
    )


def with_external(
    sets: dict[str, LabelledSet], external: dict | None, exclude: str | None, missing_patient_id: str
) -> dict[str, LabelledSet]:
    """``sets`` plus ``external`` when ``data.external.labels`` and ``.root`` are set; ``exclude`` (data.exclude)
    holds the external set out of the main table."""
    external = external or {}
    if external.get("labels") and external.get("root"):
        sets["external"] = labelled_set(external["labels"], external["root"], missing_patient_id)
    if exclude:
        if "external" not in sets:
            raise ConfigError(
                f"data.exclude={exclude} needs an external set (data.external.labels, data.external.root)"
            )
        sets["main"] = exclude_external(sets["main"], sets["external"], exclude)
    return sets


@dataclass
class LabelledData:
    """The result of the data step (:func:`labelled_data`): the labelled sets, the main set's split and the leakage
    judgement, each computed once; the data check reports on it and the DataModule trains on it."""

    sets: dict[str, LabelledSet]  # main and, with data.external, external
    split_settings: dict  # data.split
    external_missing: str = "error"  # data.external.missing (else data.missing)
    allow_overlap: dict = field(default_factory=dict)  # data.allow_overlap
    _judgement: tuple | None = field(default=None, repr=False)

    @property
    def main(self) -> LabelledSet:
        return self.sets["main"]

    @property
    def external(self) -> LabelledSet | None:
        return self.sets.get("external")

    def split(self) -> pd.Series:
        """train/val/test of every found row of the main set (index aligned with ``main.present``)."""
        return self.main.split(self.split_settings)

    def leakage(self) -> tuple[dict, str | None]:
        """``(record, refusal)``: the overlaps between test and train/val and between the external set and
        train/val (cxr.data.leakage), and the refusal message when one is not allowed (None when all are)."""
        if self._judgement is None:
            external = self.external.usable(self.external_missing) if self.external is not None else None
            overlaps = find_overlaps(self.main.present, self.split(), external)
            self._judgement = judge(overlaps, self.allow_overlap, self.split_settings.get("method"))
        return self._judgement


def labelled_data(
    labels,
    root,
    split: dict,
    external: dict | None = None,
    exclude: str | None = None,
    missing: str = "error",
    allow_overlap: dict | None = None,
    missing_patient_id: str = "refuse",
) -> LabelledData:
    """The data step of a run (the ``data`` config's settings): read the labels, index the images, build the
    labelled tables (:func:`build_sets`); the split and the leakage judgement are made on first use and kept."""
    external = dict(external or {})
    return LabelledData(
        build_sets(labels, root, external, exclude, missing_patient_id),
        dict(split or {}),
        external.get("missing", missing),
        dict(allow_overlap or {}),
    )
