"""Open-i, the Indiana University chest X-ray collection (NLM; Demner-Fushman et al., JAMIA 2016): 3,955 reports,
7,470 images.

The release: ``NLMCXR_reports.tgz`` unpacked (``ecgen-radiology/<n>.xml``, one report each, naming its images in
``parentImage``) and ``NLMCXR_png.tgz`` unpacked beside it (``<image id>.png``). Labels are the report's manually
coded MeSH terms (``MeSH/major``: ``Descriptor/qualifier/...``, e.g. ``Opacity/lung/upper lobe/right``); a table
source label matches a term equal to it or starting with it and ``/``. A finding no term marks is negative;
``normal`` reports have none; ``No Indexing`` reports are unlabelled (NaN). torchxrayvision reads the automatic
(MTI) terms instead: see the table's notes. One report is one patient (``openi:CXR<n>``); no official split.
View, sex: the DICOM header of ``NLMCXR_dcm.tgz``'s ``<n>_IM-....dcm`` beside the PNGs, or ``metadata`` (a CSV of
those headers with ``imageid, View Position, Patient's Sex``, e.g. torchxrayvision's nlmcxr_dicom_metadata.csv.gz).
"""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree  # expat >= 2.4 refuses entity expansion bombs; no external entities
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from cxr.data.datasets.release import (
    contract_frame,
    dicom_fields,
    existing_paths,
    harmonised_map,
    positives,
    read_table,
)
from cxr.data.labels import LabelFileError

NAME = "openi"
REPORTS = "ecgen-radiology"
UNINDEXED = "No Indexing"


def read_reports(folder: Path) -> pd.DataFrame:
    """One row per image named in a report: report id, image id and the report's MeSH major terms."""
    files = sorted(folder.glob("*.xml"))
    if not files:
        raise LabelFileError(f"no reports found: {folder} holds no .xml (unpack NLMCXR_reports.tgz into the root)")
    rows = []
    for file in files:
        try:
            report = ElementTree.parse(file).getroot()
        except ElementTree.ParseError as error:
            raise LabelFileError(f"{file}: not a readable Open-i report ({error})") from error
        uid = report.find("uId")
        if uid is None or not uid.get("id"):
            raise LabelFileError(f"{file}: no <uId id=...> naming the report")
        terms = frozenset((node.text or "").strip() for node in report.findall("MeSH/major")) - {""}
        for image in report.findall("parentImage"):
            rows.append({"report": uid.get("id"), "imageid": image.get("id"), "terms": terms})
    return pd.DataFrame(rows, columns=["report", "imageid", "terms"])


def source_labels(terms: frozenset[str], sources: tuple[str, ...]) -> frozenset[str]:
    """The table's source labels that the coded terms match (equal, or the term continues with ``/``)."""
    return frozenset(s for s in sources for t in terms if t == s or t.startswith(s + "/"))


def _metadata(path: Path) -> pd.DataFrame:
    table = read_table(path, ("imageid", "View Position"), ("Patient's Sex",))
    table = table.drop_duplicates("imageid").set_index("imageid")
    sex = table["Patient's Sex"].str.strip().str.upper()
    return pd.DataFrame(
        {
            "view_position": table["View Position"].str.strip().str.upper().replace("", pd.NA),
            "sex": sex.where(sex.isin(("M", "F"))),
        }
    )


def read(root: Path, options: Mapping) -> pd.DataFrame:
    """One row per image of the Open-i release under ``root`` (module docstring)."""
    root = Path(root)
    options = options or {}
    folder = Path(options["labels"]) if options.get("labels") else root / REPORTS
    table = read_reports(folder)
    images = table["imageid"] + ".png"
    sources = tuple(harmonised_map(NAME))
    label_sets = table["terms"].map(lambda terms: source_labels(terms, sources))
    labelled = ~table["terms"].map(lambda terms: UNINDEXED in terms)
    if options.get("metadata"):
        header = _metadata(Path(options["metadata"])).reindex(table["imageid"]).reset_index(drop=True)
        header["age_years"] = float("nan")
    else:
        dicoms = existing_paths(root, table["imageid"].str.removeprefix("CXR") + ".dcm")
        header = dicom_fields(dicoms)
    columns = {
        "image": images,
        "path": existing_paths(root, images),
        "patient_id": NAME + ":" + table["report"],
        "study_id": table["report"],
        "age_years": header["age_years"],
        "sex": header["sex"],
        "view_position": header["view_position"],
        "official_split": pd.Series(pd.NA, index=table.index, dtype=object),
    }
    return contract_frame(NAME, columns, positives(label_sets, NAME, labelled))
