"""``python -m cxr.download nih [--to DIR] [--mirror URL | --from DIR_OF_TARBALLS] [--manifest CSV] [--jobs N]``

Fetches the 12 image archives of NIH ChestX-ray14 (verified against their MD5, resumable, extracted safely into
``DIR/images_001/images/...``), writes the label file and the official split lists into DIR and checks that
every image the manifest counts is present. Then: ``python train.py data=nih data.root=DIR
data.labels=DIR/Data_Entry_2017_v2020.csv``.
See :mod:`cxr.data.download`.
"""

from __future__ import annotations

from pathlib import Path

from cxr.data.download import download_release

DATASETS = ("nih",)


def download(
    dataset: str,
    to: str | Path = ".",
    manifest: str | None = None,
    mirror: str | None = None,
    source_dir: str | None = None,
    jobs: int = 3,
    keep_archives: bool = False,
    progress: bool = True,
) -> Path:
    """Fetch, verify and extract ``dataset`` (its archives, label file and split lists) into ``to``; returns it.
    Raises DownloadError (or OSError for an unwritable destination)."""
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}: choose one of {', '.join(DATASETS)}")
    download_release(to, manifest, mirror, source_dir, jobs, keep_archives, progress=progress)
    return Path(to).absolute()
