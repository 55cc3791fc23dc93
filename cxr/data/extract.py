"""Archive extraction for :mod:`cxr.data.download` and :mod:`cxr.data.dataset_download`: a tar(.gz) or zip unpacked
only when every member stays inside its folder and is a plain file or folder (checked, then :mod:`tarfile`'s
``data`` filter / :mod:`zipfile`'s own name sanitising) and its declared sizes fit the disk; PNGs counted."""

from __future__ import annotations

import os
import shutil
import stat
import tarfile
import zipfile
import zlib
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


def archive_members(archive: Path) -> list[tuple[str, int]]:
    """The (name, size) of every file of a zip or tar(.gz), after refusing the archive if any member would leave
    its folder (absolute, ``..``) or is a link or device file. Raises DownloadError naming the archive."""
    try:
        if archive.name.lower().endswith(".zip"):
            with zipfile.ZipFile(archive) as packed:
                infos = packed.infolist()
            entries = [(i.filename, i.file_size, _zip_kind(i)) for i in infos]
        else:
            with tarfile.open(archive) as tar:
                infos = tar.getmembers()
            entries = [(m.name, m.size, "file" if m.isfile() else "dir" if m.isdir() else "link") for m in infos]
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as error:
        kind = "zip" if archive.name.lower().endswith(".zip") else "tar"
        raise DownloadError(f"{archive}: not a readable {kind} archive ({' '.join(str(error).split())})") from None
    for name, _, kind in entries:
        if name.startswith(("/", "\\")) or ".." in name.replace("\\", "/").split("/") or name[1:2] == ":":
            raise DownloadError(
                f"{archive.name}: member {name!r} would be written outside its folder; nothing extracted"
            )
        if kind == "link":
            raise DownloadError(
                f"{archive.name}: member {name!r} is a link or device file; a release archive holds only files and folders"
            )
    return [(name, size) for name, size, kind in entries if kind == "file"]


def _zip_kind(info: zipfile.ZipInfo) -> str:
    mode = info.external_attr >> 16  # the Unix mode, when the archive was made on Unix
    if stat.S_ISLNK(mode) or stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode):
        return "link"
    return "dir" if info.is_dir() else "file"


def safe_unpack(archive: Path, destination: Path, members: list[tuple[str, int]] | None = None) -> None:
    """Unpack a zip or tar(.gz) checked by :func:`archive_members` into ``destination``, after checking that the
    sizes its members declare fit the free disk (zipfile never writes more than a member declares; a tar member's
    size is its size): a bomb or a full disk is refused before a byte is written."""
    members = archive_members(archive) if members is None else members
    destination.mkdir(parents=True, exist_ok=True)
    needed, free = sum(size for _, size in members), shutil.disk_usage(destination).free
    if needed > free:
        raise DownloadError(
            f"{archive.name}: unpacks to {needed / 1e9:.1f} GB, {destination} has {free / 1e9:.1f} GB free; nothing extracted"
        )
    try:
        if archive.name.lower().endswith(".zip"):
            with zipfile.ZipFile(archive) as packed:
                packed.extractall(destination)  # CRC-checked member by member: a damaged file raises
        else:
            with tarfile.open(archive) as tar:
                tar.extractall(destination, filter="data")
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error) as error:
        raise DownloadError(
            f"{archive}: damaged archive ({' '.join(str(error).split())}); nothing of it kept"
        ) from None
