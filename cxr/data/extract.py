"""Archive extraction for :mod:`cxr.data.download`: a tar(.gz) unpacked only when every member stays inside its
folder (checked, then :mod:`tarfile`'s ``data`` filter), and the PNGs a folder holds counted."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

from cxr.errors import DownloadError


def safe_extract(archive: Path, destination: Path) -> int:
    """Extract a tar(.gz) into ``destination``; refuse any member whose path would leave it. Returns PNG count."""
    destination = destination.resolve()
    destination.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(archive) as tar:
            members = tar.getmembers()
            for member in members:
                where = (destination / member.name).resolve()
                if member.name.startswith(("/", "\\")) or not where.is_relative_to(destination):
                    raise DownloadError(
                        f"{archive.name}: member {member.name!r} would be written outside "
                        f"{destination}; nothing extracted"
                    )
                if member.issym() or member.islnk() or member.isdev():
                    raise DownloadError(
                        f"{archive.name}: member {member.name!r} is a link or device file; "
                        "an image archive holds only files and folders"
                    )
            tar.extractall(destination, members=members, filter="data")
    except (tarfile.TarError, EOFError, OSError) as error:
        raise DownloadError(f"{archive}: not a readable tar archive ({error})") from None
    return sum(1 for m in members if m.isfile() and m.name.lower().endswith(".png"))


def count_pngs(folder: Path) -> int:
    """The PNG files under ``folder``, at any depth."""
    return sum(1 for _, _, files in os.walk(folder) for name in files if name.lower().endswith(".png"))
