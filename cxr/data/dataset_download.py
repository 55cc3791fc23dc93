"""Get a release beyond NIH onto disk, verified: ``python -m cxr.download openi`` fetches Open-i; ``python -m
cxr.download <name> --from DIR`` takes the archives a user downloaded after registering (CheXpert, MIMIC-CXR-JPG,
PadChest, VinDr-CXR, RSNA Pneumonia). What each release is: :mod:`cxr.data.dataset_releases`.

The machinery is NIH's (:mod:`cxr.data.download`, :mod:`cxr.data.extract`): a download goes to
``DIR/.download/<archive>.part`` with HTTP Range requests, so an interrupted one resumes; every archive is checked
before a byte is written (members inside their folder, no links or devices, the published count of images, the
unpacked size fits the disk), unpacked into ``DIR/.download/<archive>.partial/`` (zip and gzip CRCs checked on the
way), and only then moved into ``DIR``: a bad archive leaves what is already there as it was. A finished archive is
marked ``DIR/.download/<archive>.done`` and skipped next time. Then the publisher's checksum list is verified where
there is one (PhysioNet's ``SHA256SUMS.txt``), and the dataset's reader reads the release: its label files must
list the published number of images, every one of them on disk.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urljoin

import requests

from cxr.artifacts import file_digest
from cxr.data.dataset_releases import RELEASES, Archive, Release
from cxr.data.download import STATE_DIR, Progress, fetch
from cxr.data.extract import archive_members, safe_unpack
from cxr.errors import DownloadError, UserError

PHYSIONET_TREE = "physionet.org/files/*/*/"  # where ``wget -r`` of a PhysioNet release puts it


def prepare(
    name: str,
    to: str | Path = ".",
    source_dir: str | Path | None = None,
    mirror: str | None = None,
    keep: bool = False,
    partial: bool = False,
    jobs: int = 3,
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> Path:
    """Fetch (Open-i) or take from ``source_dir``, verify and unpack release ``name`` into ``to``; returns the
    release root to give as ``data.root``. ``partial``: a subset of the release (some of PadChest's ``N.zip``, part
    of a PhysioNet tree) is accepted, each archive still checked whole. Raises DownloadError."""
    release = RELEASES[name]
    to = Path(to).absolute()
    source = Path(source_dir).absolute() if source_dir else None
    if source is None and not release.url:
        raise DownloadError(
            f"{release.title} is behind a registration: download {release.describe()}, then "
            f"python -m cxr.download {name} --from DIR_OF_ARCHIVES"
        )
    if source is not None and not source.is_dir():
        raise DownloadError(f"--from {source}: not a folder")
    tree = physionet_tree(release, source) if source is not None else None
    if tree is not None:  # a release already unpacked by wget -r: verified where it is, nothing copied
        echo(f"{tree}: {release.title} as downloaded from PhysioNet; verified in place")
        root = tree
    else:
        to.mkdir(parents=True, exist_ok=True)
        (to / STATE_DIR).mkdir(exist_ok=True)
        inputs = find_archives(release, source, partial) if source is not None else None
        expected = folder_counts(release, inputs)
        absent = sorted(set(expected) - {a.folder(p.name) for a, p in inputs or []}, key=int)
        if absent and not partial:
            raise DownloadError(
                f"{source}: {len(absent)} of the {len(expected)} image archives the labels CSV needs are missing "
                f"(first: {absent[0]}.zip); --partial unpacks those present"
            )
        for archive, path in inputs or [(a, None) for a in release.archives]:
            echo(get_archive(release, archive, path, to, mirror, keep, expected, progress))
        root = release_root(release, to)
    if release.checksums:
        echo(verify_checksums(root, release.checksums, partial, jobs, progress))
    echo(check_images(release, root, partial))
    return root


def physionet_tree(release: Release, source: Path) -> Path | None:
    """The release folder when ``source`` is (or holds) a PhysioNet release tree with its checksum list."""
    if not release.checksums or any(a.matches(p.name) for a in release.archives for p in source.iterdir()):
        return None
    for pattern in ("", PHYSIONET_TREE):
        for found in sorted(source.glob(pattern + release.checksums)):
            if (found.parent / release.marker).is_file():
                return found.parent
    return None


def find_archives(release: Release, source: Path, partial: bool) -> list[tuple[Archive, Path]]:
    """The user's files for each archive of the release; one error line naming what is missing."""
    names = sorted(p.name for p in source.iterdir() if p.is_file())
    found = [(a, source / n) for a in release.archives for n in names if a.matches(n)]
    if release.one_of:
        found = found[:1]
    missing = [] if release.one_of and found else [a for a in release.archives if all(a is not f for f, _ in found)]
    if any(not a.plain for a, _ in found) and (not missing or (partial and not any(a.plain for a in missing))):
        return sorted(found, key=lambda item: not item[0].plain)  # the label file first: it counts the folders
    what = (" or " if release.one_of else ", ").join(a.pattern.replace("{n}", "N") for a in missing)
    tree = f", nor the {release.checksums} tree that wget -r makes" if release.checksums else ""
    raise DownloadError(f"{source}: no {what}{tree}: expected {release.describe()}")


def folder_counts(release: Release, inputs: list[tuple[Archive, Path]] | None) -> dict[str, int]:
    """PadChest's per-folder image counts, from its labels CSV (each row names its ``ImageDir``)."""
    labels = next((path for archive, path in inputs or [] if archive.plain), None)
    if labels is None or not any(a.into for a in release.archives):
        return {}
    import pandas as pd

    try:
        column = pd.read_csv(labels, usecols=["ImageDir"], dtype=str)["ImageDir"]
    except (ValueError, OSError, EOFError) as error:
        raise DownloadError(f"{labels}: not PadChest's labels CSV with an ImageDir column ({error})") from None
    return column.str.strip().value_counts().to_dict()


def _marker(to: Path, name: str) -> Path:
    return to / STATE_DIR / f"{name}.done"


def get_archive(
    release: Release,
    archive: Archive,
    path: Path | None,
    to: Path,
    mirror: str | None,
    keep: bool,
    expected: dict[str, int],
    progress: bool,
) -> str:
    """One archive: fetched or taken, checked, unpacked via a staging folder, marked done. Returns its line."""
    name = path.name if path is not None else archive.pattern
    stamp = {"size": path.stat().st_size, "mtime_ns": path.stat().st_mtime_ns} if path is not None else {}
    try:
        done = json.loads(_marker(to, name).read_text())
    except (OSError, ValueError):
        done = None
    if done is not None and all(done.get(k) == v for k, v in stamp.items()):
        return f"{name}: already unpacked, skipped ({_marker(to, name)})"
    if archive.plain:
        shutil.copyfile(path, to / name)
        _marker(to, name).write_text(json.dumps(stamp))
        return f"{name}: copied -> {to / name}"
    status, sha256 = "taken from --from", ""
    if path is None:
        path, status = download(archive, to, mirror, progress), "downloaded"
        sha256 = file_digest(path, "sha256")
    members = archive_members(path)
    count = sum(1 for member, _ in members if member.lower().endswith(archive.kind))
    folder = archive.folder(name)
    if folder and folder not in expected:
        raise DownloadError(f"{path}: the labels CSV places no image in a folder {folder}/ (not a release archive?)")
    published = expected[folder] if folder else archive.files
    if published is not None and count != published:
        raise DownloadError(
            f"{path}: holds {count:,} {archive.kind} files; the published release has {published:,} "
            f"{'(as many as its labels CSV places in ' + folder + '/) ' if folder else ''}"
            "(an incomplete download or another version); nothing extracted"
        )
    inside = bool(folder) and all(member.startswith(folder + "/") for member, _ in members)
    staging = to / STATE_DIR / f"{name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        safe_unpack(path, staging / (folder if folder and not inside else ""), members)
        merge(staging, to)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if status == "downloaded" and not keep:
        path.unlink()
    _marker(to, name).write_text(json.dumps({**stamp, "files": count, "sha256": sha256, "at": time.strftime("%FT%T")}))
    received = f"; SHA-256 of what was received: {sha256} (no checksum is published)" if sha256 else ""
    of = f" of {published:,} published" if published is not None else " (no count published)"
    return f"{name}: {status}, {count:,}{of} {archive.kind} files unpacked -> {to / folder}{received}"


def download(archive: Archive, to: Path, mirror: str | None, progress: bool) -> Path:
    """The archive fetched into ``DIR/.download`` (resumed from its .part file), or the whole one kept there."""
    target = to / STATE_DIR / archive.pattern
    if target.is_file():  # completed by a run that stopped before unpacking it
        return target
    url = urljoin(mirror.rstrip("/") + "/", archive.pattern) if mirror else archive.url
    bars = Progress(progress)
    bar = bars.archive(archive.pattern)
    try:
        with requests.Session() as session:
            fetch(url, target, bars, bar, session)
    finally:
        if bar is not None:
            bar.close()
        bars.close()
    if archive.md5 and (digest := file_digest(target, "md5")) != archive.md5:
        target.unlink()
        raise DownloadError(f"{archive.pattern}: MD5 {digest} is not the published {archive.md5} ({url}); deleted")
    return target


def merge(staging: Path, target: Path) -> None:
    """Move everything under ``staging`` into ``target``: whole folders renamed where ``target`` has none yet,
    files replaced one by one where it has (what other archives put there stays)."""
    for entry in os.scandir(staging):
        destination = target / entry.name
        if entry.is_dir(follow_symlinks=False) and destination.is_dir():
            merge(Path(entry.path), destination)
        else:
            os.replace(entry.path, destination)


def release_root(release: Release, to: Path) -> Path:
    """The folder of the unpacked release: the one holding its marker file, ``to`` or up to two folders below."""
    if not release.marker:
        return to
    for depth in range(3):
        found = sorted(p for p in to.glob("*/" * depth + release.marker) if STATE_DIR not in p.parts)
        if found:
            return found[0].parents[release.marker.count("/")]
    raise DownloadError(f"{to}: no {release.marker} after unpacking: not the {release.title} release layout")


def verify_checksums(root: Path, listing: str, partial: bool, jobs: int, progress: bool) -> str:
    """Every file of the publisher's ``sha256sum`` list present with its digest (a subset with ``partial``)."""
    entries = []
    for line in (root / listing).read_text().splitlines():
        digest, _, relative = line.strip().partition(" ")
        relative = relative.strip().lstrip("*")
        if relative and not relative.startswith("/") and ".." not in relative.split("/"):
            entries.append((digest.lower(), relative))
    present = [(d, r) for d, r in entries if (root / r).is_file()]
    absent = len(entries) - len(present)
    if absent and not partial:
        first = next(r for d, r in entries if not (root / r).is_file())
        raise DownloadError(f"{root}: {absent:,} of the {len(entries):,} files {listing} lists are missing "
                            f"(first: {first}); --partial accepts a subset")  # fmt: skip

    def check(item: tuple[str, str]) -> str | None:
        digest, relative = item
        return None if file_digest(root / relative, "sha256") == digest else relative

    from tqdm.auto import tqdm

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:  # hashlib releases the GIL on large files
        results = pool.map(check, present)
        bad = [r for r in tqdm(results, total=len(present), desc=listing, disable=not progress) if r]
    if bad:
        raise DownloadError(f"{root / bad[0]}: SHA-256 is not the one {listing} lists ({len(bad)} such files)")
    return f"{listing}: {len(present):,} of {len(entries):,} files match the publisher's SHA-256"


def check_images(release: Release, root: Path, partial: bool) -> str:
    """The dataset's reader on the release: its label files list the published count, every image on disk."""
    from cxr.data.datasets import READERS

    try:
        frame = READERS[release.name](root, {})
    except UserError as error:
        raise DownloadError(f"{release.title} unpacked into {root}, but its labels cannot be read: {error}") from None
    listed, absent = len(frame), int(frame["path"].isna().sum())
    if listed != release.images and not partial:
        raise DownloadError(
            f"{root}: the label files list {listed:,} images; the published {release.title} has {release.images:,} "
            "(another version?)"
        )
    if absent and not partial:
        first = ", ".join(frame.loc[frame["path"].isna(), "image"].head(3))
        raise DownloadError(f"{root}: {absent:,} of the {listed:,} labelled images are not on disk (first: {first})")
    return (
        f"{release.title}: {listed - absent:,} of the {listed:,} labelled images on disk ({release.images:,} published)"
    )
