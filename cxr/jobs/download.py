"""``python -m cxr.download nih|openi|chexpert|mimic_cxr|padchest|vindr_cxr|rsna_pneumonia [--to DIR] [--mirror URL |
--from DIR_OF_ARCHIVES] ...``

Fetches the 12 image archives of NIH ChestX-ray14 (verified against their MD5, resumable, extracted safely into
``DIR/images_001/images/...``), writes the label file and the official split lists into DIR and checks that
every image the manifest counts is present. Then: ``python train.py data=nih data.root=DIR
data.labels=DIR/Data_Entry_2017_v2020.csv``.
The other releases (Open-i downloaded, the registration-gated ones taken ``--from`` the folder of what the user
downloaded) are checked and unpacked the same way: :mod:`cxr.data.dataset_download`.
See :mod:`cxr.data.download`.
"""

from __future__ import annotations

from pathlib import Path

from cxr.data.dataset_download import prepare
from cxr.data.dataset_releases import RELEASES
from cxr.data.download import download_release
from cxr.errors import DownloadError

DATASETS = ("nih", *RELEASES)


def download(
    dataset: str,
    to: str | Path = ".",
    manifest: str | None = None,
    mirror: str | None = None,
    source_dir: str | None = None,
    jobs: int = 3,
    keep_archives: bool = False,
    progress: bool = True,
    partial: bool = False,
) -> Path:
    """Fetch, verify and extract ``dataset`` (its archives, label file and split lists) into ``to``; returns the
    folder to give as ``data.root``. Raises DownloadError (or OSError for an unwritable destination)."""
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}: choose one of {', '.join(DATASETS)}")
    if dataset != "nih":
        if manifest:
            raise DownloadError(f"--manifest is for nih only; {dataset}'s archives are listed in the package")
        return prepare(dataset, to, source_dir, mirror, keep_archives, partial, jobs, progress)
    download_release(to, manifest, mirror, source_dir, jobs, keep_archives, progress=progress)
    return Path(to).absolute()
