"""The data step for the registered datasets (cxr.data.datasets: data=chexpert, mimic_cxr, merged, ...): read the
release, keep the configured views, apply the uncertain-label policy, and hand cxr.data.table a LabelledSet, so the
split, leakage judgement, data check and DataModule are the ones data=nih uses."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from cxr.data.datasets import READERS
from cxr.data.findings import HARMONISED, PATHOLOGIES, labelled_findings
from cxr.data.table import LabelledSet
from cxr.errors import ConfigError

log = logging.getLogger(__name__)
UNCERTAIN = ("ones", "zeros", "ignore")
MERGED = "merged"


def is_registered(name: str | None) -> bool:
    """Whether ``data.name`` is read by the dataset registry (nih and demo keep their own path)."""
    return name == MERGED or (name in READERS and name != "nih")


def read_dataset(name: str, root, options: Mapping | None = None) -> pd.DataFrame:
    """The reader ``name``'s frame of the release under ``root`` (``data.root`` must be set)."""
    if name not in READERS:
        raise ConfigError(f"unknown dataset {name!r}; registered: {', '.join(READERS)}")
    if not root:
        raise ConfigError(f"data.root is not set: give the unpacked {name} release, e.g. data.root=/data/{name}")
    if not Path(root).is_dir():
        raise ConfigError(f"data.root={root}: no such folder (the unpacked {name} release)")
    return READERS[name](Path(root), dict(options or {}))


def keep_views(frame: pd.DataFrame, views, name: str) -> pd.DataFrame:
    """Rows whose ``view_position`` is one of ``views`` (null or empty: every row)."""
    if not views:
        return frame
    wanted = {str(v).upper() for v in views}
    keep = frame["view_position"].str.upper().isin(wanted).fillna(False).to_numpy(dtype=bool)
    log.info("%s: data.views=%s keeps %d of %d images", name, sorted(wanted), int(keep.sum()), len(frame))
    return frame[keep].reset_index(drop=True)


def apply_uncertain(frame: pd.DataFrame, policy: str) -> pd.DataFrame:
    """Uncertain labels (-1) become 1 (``ones``), 0 (``zeros``) or missing (``ignore``: masked like an unlabelled
    finding); then ``target`` is 1 for any positive pathology, 0 when every pathology the image's dataset labels is
    negative, NaN otherwise (an image with only ignored or missing labels has no binary label)."""
    if policy not in UNCERTAIN:
        raise ConfigError(f"data.uncertain={policy!r}: choose one of {', '.join(UNCERTAIN)}")
    frame = frame.copy()
    value = {"ones": 1.0, "zeros": 0.0, "ignore": np.nan}[policy]
    findings = list(HARMONISED)
    values = frame[findings].to_numpy(dtype="float32", copy=True)
    values[values == -1] = value
    frame[findings] = values
    positive = np.zeros(len(frame), dtype=bool)
    unknown = np.zeros(len(frame), dtype=bool)
    for source, rows in frame.groupby("dataset", sort=False).groups.items():
        labelled = [f for f in labelled_findings(str(source)) if f in PATHOLOGIES]
        at = frame.index.get_indexer(rows)
        block = frame.loc[rows, labelled].to_numpy()
        positive[at] = (block == 1).any(axis=1)
        unknown[at] = np.isnan(block).any(axis=1)
    frame["target"] = np.where(positive, 1.0, np.where(unknown, np.nan, 0.0))
    return frame


def registered_set(name: str, root, options: Mapping | None, views, uncertain: str, task: str) -> LabelledSet:
    """One registered dataset as a LabelledSet: its frame after the view filter and the uncertain policy; a binary
    task keeps the images with a binary label."""
    frame = apply_uncertain(keep_views(read_dataset(name, root, options), views, name), uncertain)
    if task == "binary":
        known = frame["target"].notna()
        if not known.all():
            log.info(
                "%s: %d images without a binary label (uncertain or unlabelled) left out", name, int((~known).sum())
            )
        frame = frame[known].reset_index(drop=True)
    frame["target"] = frame["target"].astype("float64")
    labels = (options or {}).get("labels") or f"{name} label files under {root}"
    return LabelledSet(str(labels), str(root), frame, int(frame["path"].notna().sum()))


def merged_set(sources: Mapping, views, uncertain: str, task: str) -> LabelledSet:
    """``data=merged``: each source (``{name: {root, labels, options...}}``) read as a registered set, concatenated
    (patient ids carry the dataset's name, so no two sources share a patient)."""
    if not sources:
        raise ConfigError("data=merged needs data.sources, e.g. data.sources=[nih,chexpert]")
    sets = [
        registered_set(
            name,
            source.get("root"),
            {**dict(source.get("options") or {}), "labels": source.get("labels")},
            source.get("views", views),
            uncertain,
            task,
        )
        for name, source in sources.items()
    ]
    table = pd.concat([s.table for s in sets], ignore_index=True)
    roots = "; ".join(f"{name}: {s.root}" for name, s in zip(sources, sets))
    return LabelledSet(f"merged ({', '.join(sources)})", roots, table, sum(s.n_files for s in sets))


def registered_data(
    name: str,
    root,
    options: Mapping | None,
    views,
    uncertain: str,
    task: str,
    split: dict,
    external: dict | None = None,
    exclude: str | None = None,
    missing: str = "error",
    allow_overlap: dict | None = None,
    missing_patient_id: str = "refuse",
    sources: Mapping | None = None,
):
    """cxr.data.table.labelled_data for a registered dataset or data=merged: the same LabelledData (split, leakage
    and data check unchanged); ``data.external`` (a set in NIH's label layout) works as with data=nih."""
    from cxr.data.table import LabelledData, with_external

    main = (
        merged_set(sources or {}, views, uncertain, task)
        if name == MERGED
        else registered_set(name, root, options, views, uncertain, task)
    )
    external = dict(external or {})
    sets = with_external({"main": main}, external, exclude, missing_patient_id)
    return LabelledData(sets, dict(split or {}), external.get("missing", missing), dict(allow_overlap or {}))


def from_settings(data: Mapping, task: str | None = None):
    """:func:`registered_data` from the ``data`` config's plain values (the DataModule's and the data check's)."""
    from cxr.data.splits import SplitError

    name, split = data.get("name"), dict(data.get("split") or {})
    if split.get("method") == "thesis":
        raise SplitError(
            f"data={name}: split=thesis shuffles images and ignores patients; use split=official (the dataset's "
            "published split, with a patient-disjoint val) or split=patient"
        )
    releases = dict(data.get("releases") or {})
    unknown = [s for s in data.get("sources") or [] if s not in READERS]
    if unknown:
        raise ConfigError(f"data.sources: unknown dataset {unknown[0]!r}; registered: {', '.join(READERS)}")
    return registered_data(
        name,
        data.get("root"),
        {**dict(data.get("options") or {}), "labels": data.get("labels")},
        data.get("views"),
        data.get("uncertain") or "ignore",
        task or data.get("task") or "binary",
        split,
        dict(data.get("external") or {}),
        data.get("exclude"),
        data.get("missing", "error"),
        dict(data.get("allow_overlap") or {}),
        data.get("missing_patient_id", "refuse"),
        {s: dict(releases.get(s) or {}) for s in data.get("sources") or []},
    )


EXTERNAL_ROWS = ("test", "all")


def published_test(frame: pd.DataFrame, name: str) -> pd.DataFrame:
    """The rows of ``frame`` in the dataset's published test set (its validation set where it publishes no test set,
    as CheXpert); every row when it publishes no split."""
    published = frame["official_split"]
    for wanted in ("test", "val"):
        rows = published == wanted
        if rows.any():
            return frame[rows.fillna(False).to_numpy(dtype=bool)].reset_index(drop=True)
    log.info("%s publishes no test set: every labelled image is an external test image", name)
    return frame


def external_sets(externals: Mapping | None, task: str) -> dict[str, LabelledSet]:
    """``data.externals`` (the ``external`` config group): ``{"external_<name>": LabelledSet}``, each dataset read by
    its reader, after its views and uncertain policy, limited to its published test set (``rows: test``) or not."""
    sets = {}
    for name, settings in (externals or {}).items():
        settings = dict(settings or {})
        dataset = settings.get("name") or name
        rows = settings.get("rows") or "test"
        if rows not in EXTERNAL_ROWS:
            raise ConfigError(f"data.externals.{name}.rows={rows!r}: choose one of {', '.join(EXTERNAL_ROWS)}")
        options = {**dict(settings.get("options") or {}), "labels": settings.get("labels")}
        try:
            labelled = registered_set(
                dataset,
                settings.get("root"),
                options,
                settings.get("views"),
                settings.get("uncertain") or "ignore",
                task,
            )
        except ConfigError as error:
            raise ConfigError(f"data.externals.{name}: {error}") from error
        if rows == "test":
            labelled.table = published_test(labelled.table, dataset)
        sets[f"external_{name}"] = labelled
    return sets
