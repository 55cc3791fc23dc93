"""One-pass preparation: ``python -m cxr.prepare [--workers=N] [--shards] [--list | --prune] [train.py overrides]``

Decodes and resizes every image the configured datamodule reads (after ``data.exclude``) once, in parallel with a
progress bar and an ETA, into the preprocessing cache that ``data.cache=true`` and ``data.format=shards`` read
(:mod:`cxr.data.cache`: one grey plane per image shared by greyscale and RGB programs, resumable after an
interruption, only stale chunks rebuilt). ``--shards`` (or ``data.format=shards``) then writes each split as LitData shards (:mod:`cxr.data.shards`).
``--list`` shows the caches and shards under ``data.cache_dir`` / ``data.shards_dir`` (the ones this config uses
are marked); ``--prune`` deletes every cache this config does not use. Writes no run directory.

    python -m cxr.prepare data=nih data.root=/data/nih data.labels=/data/nih/Data_Entry_2017_v2020.csv program=C
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("cxr.prepare")


def split_datamodule(cfg: DictConfig):
    """The configured datamodule with its split made and nothing decoded (the demo set generated first): its tables
    are the images training reads, after ``data.exclude`` and the missing-image policy."""
    from hydra.utils import instantiate

    data = cfg.data
    if not data.get("labels") or not data.get("root"):
        raise ValueError(
            "data.labels and data.root must be set (e.g. data=nih data.root=/data/nih "
            "data.labels=/data/nih/Data_Entry_2017_v2020.csv)"
        )
    datamodule = instantiate(data, format="png", cache=False)
    datamodule.prepare_data()
    datamodule.setup("fit")
    return datamodule


def labelled_paths(datamodule) -> dict[str, list[str]]:
    """The image lists the datamodule caches, in its order: the labelled table and the external set."""
    lists = {"labelled": datamodule.table["path"].tolist()}
    if datamodule.external_table is not None:
        lists["external"] = datamodule.external_table["path"].tolist()
    return lists


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def prepare(
    cfg: DictConfig, workers: int | None = None, shards: bool = False, progress: bool = True, echo=print
) -> dict:
    """Build (or finish, or refresh) the cache of every image list of ``cfg.data``; optionally the shards."""
    from cxr.data.cache import CacheSpec, open_cache
    from cxr.data.cache_build import open_or_build

    preprocessing = OmegaConf.to_container(cfg.program.preprocessing, resolve=True)
    spec = CacheSpec.of(preprocessing)
    summary = {}
    for name, paths in labelled_paths(split_datamodule(cfg)).items():
        started = time.perf_counter()
        built = open_cache(paths, spec, cfg.data.cache_dir) is None
        cached = open_or_build(paths, preprocessing, cfg.data.cache_dir, workers, progress=progress)
        seconds = time.perf_counter() - started
        decoded = cached.meta.get("images_decoded", len(paths)) if built else 0
        rate = decoded / cached.meta["build_seconds"] if decoded and cached.meta.get("build_seconds") else None
        size = cached.array_path.stat().st_size + (cached.colour_path.stat().st_size if cached.colour_rows else 0)
        summary[name] = {
            "images": len(paths),
            "decoded_now": decoded,
            "seconds": round(seconds, 2),
            "bytes": size,
            "img_per_s": rate and round(rate, 1),
            "cache": str(cached.array_path),
            "coloured_images": len(cached.colour_rows),
            "workers": workers or os.cpu_count(),
        }
        echo(
            f"{name}: {len(paths)} images, {spec.image_size}x{spec.image_size} {spec.resample}, "
            f"{size / 1e6:.1f} MB in {cached.array_path} ({len(cached.colour_rows)} coloured image(s) kept as "
            "RGB); " + (f"{decoded} decoded in {seconds:.1f} s ({rate:.0f} img/s)" if rate else "already prepared")
        )
    if shards or cfg.data.get("format") == "shards":
        from hydra.utils import instantiate

        started = time.perf_counter()
        datamodule = instantiate(cfg.data, format="shards")
        datamodule.setup("fit")
        for name, dataset in datamodule.datasets.items():
            folder = Path(getattr(dataset, "folder", None) or dataset.input_dir.path)
            summary[f"shards_{name}"] = {"images": len(dataset), "folder": str(folder), "bytes": _folder_bytes(folder)}
            echo(f"shards {name}: {len(dataset)} images, {_folder_bytes(folder) / 1e6:.1f} MB in {folder}")
        echo(
            f"shards ready in {time.perf_counter() - started:.1f} s; train with data.format=shards "
            f"data.shards_dir={cfg.data.shards_dir}"
        )
    return summary


def shards_in_use(cfg: DictConfig, datamodule, lists: dict[str, list[str]]) -> set[str]:
    """The shard folder names this config reads with data.format=shards (``datamodule``: :func:`split_datamodule`)."""
    from cxr.data.cache import CacheSpec, content_key
    from cxr.data.shards import shard_name

    spec = CacheSpec.of(OmegaConf.to_container(cfg.program.preprocessing, resolve=True))
    keys = {name: content_key(paths, spec) for name, paths in lists.items()}
    return {
        shard_name(
            name,
            datamodule.rows(name),
            keys["external" if name == "external" else "labelled"],
            spec,
            datamodule.target_columns,
        )
        for name in datamodule.datasets
    }


def list_or_prune(cfg: DictConfig, prune: bool, echo=print) -> list[dict]:
    """Print the caches and shard folders; with ``prune`` delete the ones this config does not use."""
    from cxr.data.cache import CacheSpec, cache_name
    from cxr.data.cache_admin import list_caches, prune_caches
    from cxr.data.shards import list_shards

    spec = CacheSpec.of(OmegaConf.to_container(cfg.program.preprocessing, resolve=True))
    try:
        datamodule = split_datamodule(cfg)
        lists = labelled_paths(datamodule)
        in_use = {cache_name(paths, spec) for paths in lists.values()}
        shards_used = shards_in_use(cfg, datamodule, lists)
    except (ValueError, OSError) as error:
        if prune:
            raise
        echo(f"(which caches this config uses is unknown: {error})")
        in_use, shards_used = set(), set()
    caches, shards = list_caches(cfg.data.cache_dir), list_shards(cfg.data.shards_dir)
    echo(f"caches under {cfg.data.cache_dir}:" if caches else f"no cache under {cfg.data.cache_dir}")
    for entry in caches:
        mark = "in use" if entry["name"] in in_use else "prunable"
        echo(
            f"  {entry['name']}: {entry['state']}, {entry['images']} images, {entry['bytes'] / 1e6:.1f} MB, "
            f"created {entry['created']} [{mark}]"
        )
    if shards:
        echo(f"shards under {cfg.data.shards_dir}:")
    for entry in shards:
        mark = "in use" if entry["name"] in shards_used else "prunable" if entry["ours"] else "not cxr's, never pruned"
        echo(
            f"  {entry['name']}: {entry['images'] if entry['images'] is not None else 'incomplete,'} images, "
            f"{entry['bytes'] / 1e6:.1f} MB [{mark}]"
        )
    if prune:
        doomed = [e for e in shards if e["ours"] and e["name"] not in shards_used]  # only folders cxr made
        doomed_caches = [e for e in caches if e["name"] not in in_use]
        echo(
            f"deleting {len(doomed_caches)} cache(s) and {len(doomed)} shard folder(s):"
            if doomed or doomed_caches
            else "nothing to delete"
        )
        for entry in doomed_caches:
            echo(f"  {', '.join(str(p) for p in entry['files'])}")
        for entry in doomed:
            echo(f"  {entry['folder']}")
        deleted = prune_caches(cfg.data.cache_dir, keep=sorted(in_use))
        for entry in doomed:
            shutil.rmtree(entry["folder"])
            deleted.append(entry)
        echo(
            f"pruned {len(deleted)} cache(s) and shard folder(s), {sum(e['bytes'] for e in deleted) / 1e6:.1f} MB freed"
        )
        return deleted
    return caches + shards
