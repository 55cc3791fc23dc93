"""The cache of published pretrained weights: download on first use (resuming a partial file), SHA-256 checked
against the pin of the named source, a local file or folder accepted instead, and one line when offline.

The cache is ``$CXR_WEIGHTS_DIR`` (default ``~/.cache/cxr/weights``), one folder per source. ``CXR_WEIGHTS_MIRROR``
(a base URL) replaces the publisher's host, keeping the path: an organisation's mirror, or a loopback server in
the tests.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from cxr.errors import DownloadError

log = logging.getLogger(__name__)
CHUNK = 1 << 20


@dataclass(frozen=True)
class RemoteFile:
    """One published file: where it is, its name in the cache, and its SHA-256 (None: not pinned yet)."""

    url: str
    filename: str
    sha256: str | None = None


def cache_root() -> Path:
    """Where downloaded weights are kept: ``$CXR_WEIGHTS_DIR`` or ``~/.cache/cxr/weights``."""
    return Path(os.environ.get("CXR_WEIGHTS_DIR") or Path.home() / ".cache" / "cxr" / "weights").expanduser()


def mirrored(url: str) -> str:
    """``url`` on ``$CXR_WEIGHTS_MIRROR`` when set (same path), else unchanged."""
    mirror = os.environ.get("CXR_WEIGHTS_MIRROR")
    return f"{mirror.rstrip('/')}{urlsplit(url).path}" if mirror else url


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _check(path: Path, remote: RemoteFile, key: str) -> None:
    """Refuse a file whose SHA-256 differs from the pin (the file is kept aside as ``.bad``); record an unpinned one."""
    actual = sha256_of(path)
    if remote.sha256 is None:
        log.warning("%s: %s has no pinned SHA-256 in cxr; its SHA-256 is %s", key, path.name, actual)
        return
    if actual != remote.sha256:
        bad = path.with_name(path.name + ".bad")
        path.replace(bad)
        raise DownloadError(
            f"{key}: {path.name} has SHA-256 {actual}, expected {remote.sha256} (a damaged or different file; "
            f"moved to {bad}); delete it and run again, or give model.weights_file=<a file you trust>"
        )


def fetch(remote: RemoteFile, folder: Path, key: str, timeout: float = 30.0) -> Path:
    """The cached copy of ``remote`` under ``folder``, downloaded (or resumed from ``<file>.part``) if absent.

    ``key`` names the setting in messages (``model.weights=xrv:...``). Offline or refused: one line naming the
    URL, the file and where to put it."""
    import requests

    target = folder / remote.filename
    if target.is_file():
        _check(target, remote, key)
        return target
    folder.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    url = mirrored(remote.url)
    offset = part.stat().st_size if part.is_file() else 0
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    try:
        with requests.get(url, headers=headers, stream=True, timeout=timeout, allow_redirects=True) as response:
            if response.status_code == 416:  # the partial file is already whole
                pass
            else:
                response.raise_for_status()
                resumed = offset and response.status_code == 206
                if offset and not resumed:
                    log.info("%s: the server ignored the range request; downloading %s again", key, remote.filename)
                log.info("%s: downloading %s%s", key, url, f" (resuming at {offset} bytes)" if resumed else "")
                with open(part, "ab" if resumed else "wb") as file:
                    for block in response.iter_content(CHUNK):
                        file.write(block)
    except (requests.RequestException, OSError) as error:
        raise DownloadError(
            f"{key}: cannot download {url} ({type(error).__name__}); put {remote.filename} there at {target} "
            f"(or give model.weights_file=<path>)"
        ) from None
    part.replace(target)
    _check(target, remote, key)
    return target
