"""NIH ChestX-ray14 through the dataset registry (for data=merged and external sets): cxr.data.labels' reader, its
patients prefixed ``nih:``, and NIH's official split from the release's lists (under the root, else the copies
shipped in cxr/data/nih_release). ``data=nih`` itself keeps its own path (cxr.data.table)."""

from __future__ import annotations

import gzip
from collections.abc import Mapping
from importlib import resources
from pathlib import Path

import pandas as pd

from cxr.data.datasets.common import finish
from cxr.data.findings import NIH_FINDINGS
from cxr.data.images import index_images
from cxr.data.labels import read_labels

NAME = "nih"
LABEL_FILES = ("Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv")
LISTS = {"test": "test_list.txt", "train": "train_val_list.txt"}


def image_list(root: Path, name: str) -> set[str]:
    """An official list under ``root``, else the package's gzipped copy."""
    path = root / name
    if path.is_file():
        text = path.read_text()
    else:
        with gzip.open(str(resources.files("cxr.data") / "nih_release" / f"{name}.gz"), "rt") as handle:
            text = handle.read()
    return {line.strip() for line in text.splitlines() if line.strip()}


def read(root: Path, options: Mapping) -> pd.DataFrame:
    """The NIH label file (``options['labels']``, else the release's under ``root``) with image paths under root."""
    root = Path(root)
    labels = options.get("labels") or next(
        (root / n for n in LABEL_FILES if (root / n).is_file()), root / LABEL_FILES[0]
    )
    table = read_labels(labels)
    found = index_images(root)
    split = pd.Series(pd.NA, index=table.index, dtype="string")
    split[table["image"].isin(image_list(root, LISTS["train"]))] = "train"
    split[table["image"].isin(image_list(root, LISTS["test"]))] = "test"
    frame = table[["image", "age_years", "sex", "view_position"]].assign(
        path=table["image"].map(lambda name: str(found[name]) if name in found else None),
        patient_id=NAME + ":" + table["patient_id"].astype("string"),
        official_split=split,
    )
    for finding in NIH_FINDINGS:
        frame[finding] = table[finding].astype("float32")
    return finish(frame, NAME)
