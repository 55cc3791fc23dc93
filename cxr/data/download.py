"""Fetch the NIH ChestX-ray14 release into one folder: verified, resumable, safely extracted archives.

``python -m cxr.download nih --to DIR`` (see :mod:`cxr.download`). Every archive of the manifest
(``release_archives.csv``: archive, url, md5, images) is

1. downloaded to ``DIR/.download/<archive>.part`` with HTTP Range requests, so an interrupted transfer continues
   where it stopped (a server that ignores Range restarts it from zero);
2. checked against its MD5 before use; a mismatch is deleted and fetched once more, then reported;
3. extracted (:mod:`cxr.data.extract`) with :mod:`tarfile`'s ``data`` filter (no absolute paths, no ``..``, no
   links leaving the folder, no device files) after an explicit check that every member path stays inside its
   folder, into ``DIR/images_001/`` ... (each archive holds ``images/*.png``: the release layout
   ``images_001/images/...``);
4. counted: the archive is complete when its folder holds the number of PNGs the manifest gives; then
   ``DIR/.download/<archive>.done`` is written and the archive is skipped on the next run.

The label file and the official split lists are written into ``DIR`` from the copies shipped with the package
(``cxr/data/nih_release/``), or fetched from ``--mirror``. Archives are processed in parallel threads (the work
is network and zlib, both of which release the GIL).
"""

from __future__ import annotations

import csv
import gzip
import json
import os
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from urllib.parse import urljoin

import requests
import urllib3

from cxr.artifacts import file_digest
from cxr.data.extract import count_pngs, safe_extract
from cxr.errors import DownloadError

MANIFEST_COLUMNS = ("archive", "url", "md5", "images")
METADATA_FILES = ("Data_Entry_2017_v2020.csv", "train_val_list.txt", "test_list.txt")
STATE_DIR = ".download"
BLOCK = 1 << 20
CONNECT_RETRIES = 3  # a dropped connection is resumed (Range) up to this many times per attempt
TIMEOUT_S = 60
BYTES_PER_IMAGE = (
    405_000  # mean size of a 1024 px release PNG (the 48 originals of the NIH sample); tar.gz barely shrinks it
)
_STOP = threading.Event()  # set on Ctrl-C: every transfer stops after its current block, keeping its .part file


@dataclass(frozen=True)
class Archive:
    name: str
    url: str
    md5: str
    images: int

    @property
    def folder(self) -> str:
        """``images_01.tar.gz`` -> ``images_001`` (the release layout ``images_001/images/...``)."""
        stem = self.name.split(".", 1)[0]
        prefix, _, number = stem.rpartition("_")
        return f"{prefix}_{int(number):03d}" if number.isdigit() else stem


def shipped(name: str) -> Path:
    """A file of the release metadata shipped with the package (``cxr/data/nih_release``)."""
    return Path(str(resources.files("cxr.data") / "nih_release" / name))


def read_manifest(path: str | Path | None = None) -> list[Archive]:
    """The archives of ``path`` (default: the release's own list shipped with the package)."""
    path = Path(path) if path else shipped("release_archives.csv")
    try:
        with open(path, newline="") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in MANIFEST_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise DownloadError(
                    f"{path}: missing column(s) {', '.join(missing)} "
                    f"(need {', '.join(MANIFEST_COLUMNS)}; found {', '.join(reader.fieldnames or [])})"
                )
            archives = []
            for line, row in enumerate(reader, start=2):
                name, md5 = (row["archive"] or "").strip(), (row["md5"] or "").strip().lower()
                if not name or Path(name).name != name or name in (".", ".."):
                    raise DownloadError(f"{path}: line {line}: archive name {name!r} must be a plain file name")
                if len(md5) != 32 or any(c not in "0123456789abcdef" for c in md5):
                    raise DownloadError(f"{path}: line {line}: md5 {row['md5']!r} is not 32 hex digits")
                try:
                    images = int(row["images"])
                except (TypeError, ValueError):
                    raise DownloadError(f"{path}: line {line}: images {row['images']!r} is not a count") from None
                archives.append(Archive(name, (row["url"] or "").strip(), md5, images))
    except FileNotFoundError:
        raise DownloadError(f"manifest not found: {path}") from None
    if not archives:
        raise DownloadError(f"{path}: lists no archive")
    return archives


class Progress:
    """tqdm bars: one overall (bytes of every archive) and one per archive in flight; silent when disabled."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self._lock = threading.Lock()
        self.overall = self._bar(desc="overall", total=0, position=0) if enabled else None
        self._positions = iter(range(1, 10_000))

    def _bar(self, **kwargs):
        from tqdm.auto import tqdm

        return tqdm(unit="B", unit_scale=True, unit_divisor=1024, leave=kwargs.pop("leave", True), **kwargs)

    def archive(self, name: str):
        if not self.enabled:
            return None
        with self._lock:
            return self._bar(desc=name, total=None, position=next(self._positions), leave=False)

    def expect(self, bar, total: int, done: int) -> None:
        if bar is not None:
            bar.reset(total=total)
            bar.update(done)
            with self._lock:
                self.overall.total += total
                self.overall.update(done)
                self.overall.refresh()

    def advance(self, bar, count: int) -> None:
        if bar is not None:
            bar.update(count)
            with self._lock:
                self.overall.update(count)

    def close(self) -> None:
        if self.overall is not None:
            self.overall.close()


def fetch(
    url: str, target: Path, progress: Progress | None = None, bar=None, session: requests.Session | None = None
) -> Path:
    """Download ``url`` to ``target`` via ``target.part``, resuming a partial file with an HTTP Range request."""
    part = target.with_name(target.name + ".part")
    session = session or requests.Session()
    counted = False
    for attempt in range(CONNECT_RETRIES + 1):
        have = part.stat().st_size if part.exists() else 0
        headers = {"Accept-Encoding": "identity", **({"Range": f"bytes={have}-"} if have else {})}
        try:
            with session.get(url, headers=headers, stream=True, timeout=TIMEOUT_S) as response:
                if response.status_code == 416:  # the partial file is already whole (or longer than the file)
                    total = content_range_total(response.headers.get("Content-Range"))
                    if total is None:
                        raise DownloadError(
                            f"{url}: HTTP 416 with a malformed Content-Range "
                            f"{response.headers.get('Content-Range')!r:.80}; {part} kept"
                        )
                    if total == have:
                        break
                    part.unlink()
                    continue
                response.raise_for_status()
                resumed = response.status_code == 206
                if not resumed:
                    have = 0  # the server ignored Range: start over
                total = have + int(response.headers.get("Content-Length", 0) or 0)
                if progress is not None and not counted:
                    progress.expect(bar, total, have)
                    counted = True
                with open(part, "ab" if resumed else "wb") as handle:
                    # read1: whatever has arrived (up to BLOCK), written at once, so an interruption loses nothing
                    while block := response.raw.read1(BLOCK):
                        handle.write(block)
                        if _STOP.is_set():
                            raise KeyboardInterrupt
                        if progress is not None:
                            progress.advance(bar, len(block))
            if response.headers.get("Content-Length") and part.stat().st_size < total:
                raise requests.ConnectionError(f"connection closed at {part.stat().st_size} of {total} bytes")
            break
        except (
            requests.ConnectionError,
            requests.Timeout,
            requests.exceptions.ChunkedEncodingError,
            urllib3.exceptions.HTTPError,
        ) as error:  # read1 raises urllib3's own (connection dropped, timeout)
            if attempt == CONNECT_RETRIES:
                kept = part.stat().st_size if part.exists() else 0
                raise DownloadError(
                    f"{url}: {short(error)} (after {CONNECT_RETRIES + 1} tries; {kept} bytes kept "
                    f"in {part}, the next run resumes from there)"
                ) from None
            time.sleep(min(2**attempt, 10) * 0.1)
        except requests.HTTPError as error:
            raise DownloadError(f"{url}: HTTP {error.response.status_code} {error.response.reason}") from None
        except requests.RequestException as error:
            raise DownloadError(f"{url}: {short(error)}") from None
    os.replace(part, target)
    return target


def content_range_total(value: str | None) -> int | None:
    """The complete length of an HTTP 416 answer's ``Content-Range: bytes */<length>`` (-1 when absent); None when
    the header is malformed."""
    if value is None:
        return -1
    total = value.strip().rsplit("/", 1)[-1]
    return int(total) if value.strip().startswith("bytes") and "/" in value and total.isdigit() else None


def short(error: Exception) -> str:
    """The last, most specific line of a requests/urllib3 error (they nest the cause in the message)."""
    text = str(error) or type(error).__name__
    return text.rsplit("(Caused by ", 1)[-1].rstrip(")") if "Caused by" in text else text


@dataclass
class Result:
    archive: Archive
    status: str  # "skipped" (already complete), "downloaded", "copied" (--from)
    bytes: int = 0
    seconds: float = 0.0
    refetched: bool = False


def _state(root: Path, archive: Archive) -> Path:
    return root / STATE_DIR / f"{archive.name}.done"


def is_complete(root: Path, archive: Archive) -> bool:
    """Done marker with this archive's MD5, and the folder still holds every image the manifest counts."""
    try:
        marker = json.loads(_state(root, archive).read_text())
    except (OSError, ValueError):
        return False
    return marker.get("md5") == archive.md5 and count_pngs(root / archive.folder) == archive.images


def archive_url(archive: Archive, mirror: str | None) -> str:
    if mirror:
        return urljoin(mirror.rstrip("/") + "/", archive.name)
    if not archive.url:
        raise DownloadError(f"{archive.name}: the manifest gives no url (use --mirror or --from)")
    return archive.url


def get_archive(
    archive: Archive,
    root: Path,
    mirror: str | None = None,
    source_dir: Path | None = None,
    keep: bool = False,
    progress: Progress | None = None,
) -> Result:
    """Fetch (or take from ``source_dir``), verify, extract and count one archive; skip it when already complete."""
    if is_complete(root, archive):
        return Result(archive, "skipped")
    state = root / STATE_DIR
    state.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    bar = progress.archive(archive.name) if progress else None
    refetched = False
    try:
        if source_dir is not None:
            local = source_dir / archive.name
            if not local.is_file():
                raise DownloadError(f"{archive.name}: not found in {source_dir}")
            if (digest := file_digest(local, "md5")) != archive.md5:
                raise DownloadError(
                    f"{local}: MD5 {digest} does not match the manifest's {archive.md5} (a damaged or different file)"
                )
            tarball, status = local, "copied"
        else:
            tarball, status = state / archive.name, "downloaded"
            url = archive_url(archive, mirror)
            with requests.Session() as session:
                for attempt in (1, 2):
                    digest = file_digest(tarball, "md5") if tarball.exists() else None  # kept from a run before
                    if digest != archive.md5:
                        tarball.unlink(missing_ok=True)
                        fetch(url, tarball, progress, bar, session)
                        digest = file_digest(tarball, "md5")
                    if digest == archive.md5:
                        break
                    tarball.unlink()
                    if attempt == 2:
                        raise DownloadError(
                            f"{archive.name}: MD5 {digest} does not match the manifest's "
                            f"{archive.md5} twice in a row ({url}); the file was deleted. Check "
                            "the mirror or the manifest"
                        )
                    refetched = True
        folder = root / archive.folder
        extracted = safe_extract(tarball, folder)
        found = count_pngs(folder)
        if found != archive.images:
            raise DownloadError(
                f"{archive.name}: {found} PNGs under {folder} after extraction ({extracted} in the "
                f"archive), the manifest says {archive.images}"
            )
        size = tarball.stat().st_size
        if status == "downloaded" and not keep:
            tarball.unlink()
        _state(root, archive).write_text(
            json.dumps({"md5": archive.md5, "images": archive.images, "finished": time.strftime("%Y-%m-%dT%H:%M:%S")})
        )
        return Result(archive, status, size, time.perf_counter() - started, refetched)
    finally:
        if bar is not None:
            bar.close()


def metadata_digests(manifest: str | Path | None = None) -> dict[str, str]:
    """SHA-256 of the label file and split lists: the official release's, shipped with the package
    (``release_metadata.sha256``), or for another manifest the ``<manifest>.sha256`` file beside it (the format of
    ``sha256sum``)."""
    path = shipped("release_metadata.sha256") if manifest is None else Path(manifest).with_suffix(".sha256")
    try:
        lines = path.read_text().splitlines()
    except OSError:
        raise DownloadError(
            f"{path} not found: the label file and split lists fetched from --mirror are verified "
            f"against it (lines '<sha256>  <name>' for {', '.join(METADATA_FILES)})"
        ) from None
    digests = {}
    for line in lines:
        digest, _, name = line.strip().partition("  ")
        if name:
            digests[name.strip()] = digest.lower()
    return digests


def verify_metadata(path: Path, digests: dict[str, str]) -> None:
    """Refuse (and delete) a fetched metadata file whose SHA-256 is not the expected one."""
    expected = digests.get(path.name)
    digest = file_digest(path, "sha256")
    if digest != expected:
        path.unlink(missing_ok=True)
        raise DownloadError(
            f"{path.name}: SHA-256 {digest} is not the release's {expected or '(none listed)'}: "
            "a tampered or different file from the mirror was deleted"
        )


def write_metadata(
    root: Path, mirror: str | None = None, source_dir: Path | None = None, manifest: str | Path | None = None
) -> list[Path]:
    """The label file and split lists into ``root``: from the mirror (verified against their SHA-256), from
    ``source_dir`` if it has them, else from the copies shipped with the package."""
    written = []
    digests = metadata_digests(manifest) if mirror else {}
    for name in METADATA_FILES:
        target = root / name
        if mirror:
            fetch(urljoin(mirror.rstrip("/") + "/", name), target)
            verify_metadata(target, digests)
        elif source_dir is not None and (source_dir / name).is_file():
            shutil.copyfile(source_dir / name, target)
        else:
            tmp = target.with_name(target.name + ".part")
            with gzip.open(shipped(name + ".gz"), "rb") as packed, open(tmp, "wb") as out:
                shutil.copyfileobj(packed, out)
            os.replace(tmp, target)
        written.append(target)
    return written


def check_release(root: Path, archives: list[Archive]) -> list[str]:
    """Problems left after the download: archive folders short of their count, labelled images not on disk."""
    problems = [
        f"{a.folder}: {n} of {a.images} images" for a in archives if (n := count_pngs(root / a.folder)) != a.images
    ]
    labels = root / METADATA_FILES[0]
    if labels.is_file() and not problems:
        from cxr.data.images import index_images
        from cxr.data.labels import read_labels

        found = index_images(root)
        try:
            listed = read_labels(labels)["image"]
        except (ValueError, OSError) as error:
            return problems + [f"{labels}: cannot be read as a label file ({error})"]
        absent = listed[~listed.isin(found.keys())]
        if len(absent) and len(found) >= len(listed):  # the whole release is on disk (not a partial manifest)
            problems.append(
                f"{labels.name}: {len(absent)} labelled images are not on disk (first: {', '.join(absent.head(3))})"
            )
    return problems


def disk_needed(archives: list[Archive], jobs: int, keep: bool, local: bool = False) -> int:
    """Peak bytes in DIR: the extracted images, plus the archives (all of them with ``keep``, else the ``jobs``
    largest, in flight at once); ``local`` archives (--from) are read where they are."""
    images = sum(a.images for a in archives) * BYTES_PER_IMAGE
    if local:
        return images
    if keep:
        return 2 * images
    return images + sum(sorted((a.images * BYTES_PER_IMAGE for a in archives), reverse=True)[: max(1, jobs)])


def download_release(
    root: str | Path,
    manifest: str | Path | None = None,
    mirror: str | None = None,
    source_dir: str | Path | None = None,
    jobs: int = 3,
    keep: bool = False,
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> list[Result]:
    """Everything of :mod:`cxr.download`: archives in parallel, metadata, final count. Raises DownloadError."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    archives = read_manifest(manifest)
    source = Path(source_dir) if source_dir else None
    if source is not None and not source.is_dir():
        raise DownloadError(f"--from {source}: not a folder")
    write_metadata(root, mirror, source, manifest)
    todo = [a for a in archives if not is_complete(root, a)]
    needed = disk_needed(todo, jobs, keep, local=source is not None)
    free = shutil.disk_usage(root).free
    if needed > free:
        echo(
            f"warning: {root} has {free / 1e9:.1f} GB free; the {len(todo)} archive(s) still to fetch need about "
            f"{needed / 1e9:.1f} GB (estimate: {BYTES_PER_IMAGE // 1000} KB per image)"
        )
    bars = Progress(progress)
    results, failures = [], []
    _STOP.clear()
    try:
        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            futures = {pool.submit(get_archive, a, root, mirror, source, keep, bars): a for a in archives}
            try:
                for future in as_completed(futures):
                    try:
                        results.append(future.result())
                    except DownloadError as error:
                        failures.append(str(error))
            except KeyboardInterrupt:
                _STOP.set()  # the threads stop after their current block; their .part files stay for the next run
                for future in futures:
                    future.cancel()
                raise
    finally:
        bars.close()
    for result in sorted(results, key=lambda r: r.archive.name):
        rate = f", {result.bytes / 1e6 / result.seconds:.1f} MB/s" if result.seconds and result.bytes else ""
        echo(
            f"{result.archive.name}: {result.status}{' (re-fetched after an MD5 mismatch)' if result.refetched else ''}"
            f" -> {root / result.archive.folder} ({result.archive.images} images{rate})"
        )
    if failures:
        raise DownloadError("; ".join(failures))
    problems = check_release(root, archives)
    if problems:
        raise DownloadError(f"{root}: incomplete: " + "; ".join(problems))
    return results
