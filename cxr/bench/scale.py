"""(6) NIH scale: read the official 112,120-row label CSV, index 112,120 image files in the release layout
(``images_001/images`` ... ``images_012/images``; symlinks cycling over the sample images) and split them, in a
fresh subprocess whose peak RSS is read with ``getrusage(RUSAGE_CHILDREN)`` by a small launcher process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cxr.bench.core import REPO, SHARED_DATA, Row, Sizes

CSV = "nih-meta/Data_Entry_2017_v2020.csv.gz"
FOLDERS = 12

# What the training job does before building datasets: read labels, index images, attach paths, split.
# With only the data modules imported (no torch or Lightning: their import alone is ~800 MB of RSS here).
CHILD = r"""
import json, resource, sys, time
started = time.perf_counter()
from cxr.data.labels import read_labels
from cxr.data.images import index_images
from cxr.data.splits import make_split
{extra_import}
imported = time.perf_counter()
rss_after_imports = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
csv, root, split = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
t0 = time.perf_counter()
table = read_labels(csv)
t1 = time.perf_counter()
{attach}
t2 = time.perf_counter()
method = split.pop("method")
table["split"] = make_split(table, method, **split)
t3 = time.perf_counter()
print(json.dumps({{"rows": len(table), "split_counts": table["split"].value_counts().to_dict(),
                  "read_s": t1 - t0, "index_s": t2 - t1, "split_s": t3 - t2, "total_s": t3 - t0,
                  "import_s": imported - started, "rss_after_imports_kb": rss_after_imports,
                  "self_maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}}))
"""
ATTACH_DATA_ONLY = """found = index_images(root)
paths = table["image"].map(found)
table = table.loc[paths.notna()].assign(path=paths.dropna().astype(str)).reset_index(drop=True)"""
ATTACH_DATAMODULE = "table, _ = attach_image_paths(table, root)"


def make_release_layout(csv: Path, samples: list[Path], root: Path, n_rows: int | None = None) -> Path:
    """Symlinks named as the CSV's images, cycling over ``samples``, in 12 ``images_NNN/images`` folders.
    Returns the label file to use (the CSV itself, or its first ``n_rows`` rows)."""
    import pandas as pd

    names = pd.read_csv(csv, usecols=["Image Index"], nrows=n_rows)["Image Index"].tolist()
    per_folder = -(-len(names) // FOLDERS)
    folder = None
    for i, name in enumerate(names):
        if i % per_folder == 0:
            folder = root / f"images_{i // per_folder + 1:03d}" / "images"
            folder.mkdir(parents=True)
        os.symlink(samples[i % len(samples)], folder / name)
    if n_rows is None:
        return csv
    labels = root.parent / "labels.csv"
    pd.read_csv(csv, nrows=n_rows).to_csv(labels, index=False)
    return labels


# The launcher runs the child and reads RUSAGE_CHILDREN: a child forked straight from the benchmark would start
# with the benchmark's RSS (Linux keeps the high-water mark across fork and exec), the launcher's is small.
LAUNCHER = r"""
import json, resource, subprocess, sys, time
started = time.perf_counter()
done = subprocess.run([sys.executable, "-c"] + sys.argv[1:], capture_output=True, text=True)
wall = time.perf_counter() - started
if done.returncode:
    sys.stderr.write(done.stderr[-3000:])
    sys.exit(done.returncode)
result = json.loads(done.stdout.strip().splitlines()[-1])
result.update(maxrss_mb=resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, wall_s=wall)
print(json.dumps(result))
"""


def run_child(labels: Path, root: Path, split: dict, datamodule: bool = False) -> dict:
    """Index and split in a fresh subprocess; its timings, peak RSS (RUSAGE_CHILDREN) and wall time."""
    with_datamodule = "import cxr.data.datamodule  # torch + Lightning\nfrom cxr.data.table import attach_image_paths"
    code = CHILD.format(
        extra_import=with_datamodule if datamodule else "", attach=ATTACH_DATAMODULE if datamodule else ATTACH_DATA_ONLY
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(
        [sys.executable, "-c", LAUNCHER, code, str(labels), str(root), json.dumps(split)],
        capture_output=True,
        text=True,
        env=env,
    )
    if done.returncode:
        raise RuntimeError(f"index+split child failed ({done.returncode}): {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def bench_nih_scale(sizes: Sizes, shared: Path | None = None) -> list[Row]:
    shared = Path(shared or SHARED_DATA)
    csv = shared / CSV
    if not csv.is_file():
        return [
            Row("NIH scale: index + split", "s", None, None, "< 3 s, < 500 MB", None, note=f"skipped: {csv} not found")
        ]
    sample_dir = next((d for d in (shared / "nih" / "images", shared / "nih" / "full-res") if d.is_dir()), None)
    samples = sorted(p.resolve() for p in sample_dir.glob("*.png")) if sample_dir else []
    lists = (shared / "nih-meta" / "train_val_list.txt", shared / "nih-meta" / "test_list.txt")
    split = (
        {"method": "official", "train_val_list": str(lists[0]), "test_list": str(lists[1]), "val": 0.1, "seed": 100}
        if all(p.is_file() for p in lists)
        else {"method": "patient", "train": 0.7, "val": 0.1, "seed": 100}
    )
    with tempfile.TemporaryDirectory(prefix="cxr-bench-nih-") as tmp:
        if not samples:
            from PIL import Image

            samples = [Path(tmp) / "sample.png"]
            Image.new("L", (64, 64)).save(samples[0])
        started = time.perf_counter()
        labels = make_release_layout(csv, samples, Path(tmp) / "nih", sizes.nih_rows)
        layout_s = time.perf_counter() - started
        data_only = run_child(labels, Path(tmp) / "nih", split)
        with_lightning = run_child(labels, Path(tmp) / "nih", split, datamodule=True) if sizes.name == "full" else None
    seconds, rss = data_only["total_s"], data_only["maxrss_mb"]
    details = {
        "data_modules_only": data_only,
        "with_datamodule_import": with_lightning,
        "symlinks_s": layout_s,
        "split": split["method"],
        "rows": data_only["rows"],
    }
    note = (
        f"{data_only['rows']} rows, split={split['method']}: read {data_only['read_s']:.2f} s, index "
        f"{data_only['index_s']:.2f} s, split {data_only['split_s']:.2f} s; peak RSS of the child, data "
        "modules only"
    )
    if with_lightning:
        note += (
            f"; via cxr.data.datamodule (imports torch + Lightning): {with_lightning['total_s']:.2f} s, "
            f"{with_lightning['maxrss_mb']:.0f} MB"
        )
    return [
        Row("NIH scale: index + split", "s", None, seconds, "< 3 s", seconds < 3.0, details=details, note=note),
        Row("NIH scale: peak RSS", "MB", None, rss, "< 500 MB", rss < 500.0, details=details),
    ]
