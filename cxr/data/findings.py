"""The harmonised label space: one list of finding names that every dataset's labels are mapped onto.

NIH ChestX-ray14's 14 findings, spelled as NIH spells them, then the findings other datasets add. Each dataset's
own label -> harmonised finding map is the package table ``harmonised_findings.csv`` (columns
``dataset,source_label,finding,note``; an empty ``finding`` marks a source label that is not a finding, such as
CheXpert's "No Finding"). A finding a dataset does not label is missing (NaN), never negative.
"""

from __future__ import annotations

import csv
import io
from functools import cache
from importlib import resources

from cxr.data.labels import FINDINGS

NIH_FINDINGS = FINDINGS  # NIH's 14, as cxr.data.labels reads them from every NIH label layout
ADDED_FINDINGS = (
    "Lung Opacity",
    "Lung Lesion",
    "Fracture",
    "Enlarged Cardiomediastinum",
    "Support Devices",
    "Pleural Other",
)
HARMONISED = NIH_FINDINGS + ADDED_FINDINGS
NOT_PATHOLOGY = ("Support Devices",)  # an image with devices only is "No Finding" (CheXpert's labeler, NIH's target)
PATHOLOGIES = tuple(f for f in HARMONISED if f not in NOT_PATHOLOGY)
NO_FINDING = "No Finding"
TABLE = "harmonised_findings.csv"
COLUMNS = ("dataset", "source_label", "finding", "note")


@cache
def mapping_table() -> tuple[dict, ...]:
    """Every row of the package table ``harmonised_findings.csv``, as dicts of its four columns."""
    text = resources.files("cxr.data").joinpath(TABLE).read_text(encoding="utf-8")
    rows = tuple(csv.DictReader(io.StringIO(text)))
    return rows


def mapping(dataset: str) -> dict[str, str | None]:
    """``dataset``'s source label -> harmonised finding (None for a label that is not a finding)."""
    rows = [row for row in mapping_table() if row["dataset"] == dataset]
    if not rows:
        known = sorted({row["dataset"] for row in mapping_table()})
        raise KeyError(f"no rows for dataset {dataset!r} in {TABLE} (datasets: {', '.join(known)})")
    return {row["source_label"]: row["finding"] or None for row in rows}


def labelled_findings(dataset: str) -> tuple[str, ...]:
    """The harmonised findings ``dataset`` labels, in HARMONISED order (the others are missing for it)."""
    found = {finding for finding in mapping(dataset).values() if finding}
    return tuple(f for f in HARMONISED if f in found)
