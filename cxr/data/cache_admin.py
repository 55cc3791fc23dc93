"""Cache inventory and maintenance (``python -m cxr.prepare --list`` / ``--prune``): the caches under a folder,
finished or partial, with their size on disk; deleting those no configuration uses."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

from cxr.data.cache import cache_files, read_valid


def list_caches(cache_dir: str | Path) -> list[dict]:
    """Every cache (finished or partial) under ``cache_dir``: name, state, images, size on disk, creation time."""
    cache_dir = Path(cache_dir)
    if not cache_dir.is_dir():
        return []
    names = {p.name.split(".", 1)[0] for p in cache_dir.iterdir() if p.name.startswith("images-")}
    found = []
    for name in sorted(names):
        files = cache_files(cache_dir, name)
        meta, reason = read_valid(files, None)
        on_disk = [p for p in cache_dir.iterdir() if p.name.split(".", 1)[0] == name]
        size = sum(p.stat().st_size if p.is_file() else sum(q.stat().st_size for q in p.iterdir()) for p in on_disk)
        state = "complete" if reason is None else "partial" if files["progress"].exists() else f"invalid ({reason})"
        found.append(
            {
                "name": name,
                "state": state,
                "images": meta.get("n_images"),
                "bytes": size,
                "created": meta.get("created"),
                "first_image": meta.get("first_image"),
                "files": on_disk,
            }
        )
    return found


def prune_caches(cache_dir: str | Path, keep: Sequence[str] = ()) -> list[dict]:
    """Delete every cache under ``cache_dir`` whose name is not in ``keep``; returns what was deleted."""
    deleted = [entry for entry in list_caches(cache_dir) if entry["name"] not in set(keep)]
    for entry in deleted:
        for path in entry["files"]:
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    return deleted
