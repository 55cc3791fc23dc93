"""Generator of a small SYNTHETIC dataset in the NIH ChestX-ray14 layout (drawn shapes, not real X-rays).

It lets ``python train.py`` run end to end offline; the data is built deterministically once into a cache folder.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from cxr.data.labels import FINDINGS, NO_FINDING

DEMO_VERSION = 2  # bump when the generator changes; part of the sentinel so old caches are rebuilt
CSV_NAME = "Data_Entry_demo.csv"
SENTINEL = ".complete"
HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
          "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]")
# rough NIH prevalences (Infiltration common, Hernia rare); normalised to sampling weights
_WEIGHTS = np.array([11.6, 2.5, 4.2, 2.1, 11.9, 2.2, 1.5, 0.2, 17.7, 5.2, 5.6, 3.0, 1.3, 4.7])
_ORIGINAL = ("2500,2048,0.168,0.168", "2992,2991,0.143,0.143", "3056,2544,0.139,0.139", "2048,2500,0.168,0.168")

log = logging.getLogger(__name__)


def _soft_ellipse(x, y, x0, y0, a, b, edge=0.04):
    """1 inside the ellipse centred (x0, y0) with radii (a, b), 0 outside, with a smooth border."""
    r = np.sqrt(((x - x0) / a) ** 2 + ((y - y0) / b) ** 2)
    return 1.0 / (1.0 + np.exp(np.clip((r - 1.0) / edge, -50, 50)))


def _draw(rng: np.random.Generator, size: int, sick: bool) -> np.ndarray:
    """One greyscale 'chest X-ray': body, two dark lungs, bright mediastinum, opacities if sick, noise."""
    y, x = np.meshgrid(np.linspace(-1, 1, size), np.linspace(-1, 1, size), indexing="ij")
    cx, cy = rng.uniform(-0.06, 0.06, 2)
    s = rng.uniform(0.9, 1.08)
    img = 0.08 + 0.45 * _soft_ellipse(x, y, cx, cy + 0.08, 0.85 * s, 1.0 * s, 0.08)
    lungs = []
    for side in (-1, 1):
        lung = _soft_ellipse(x, y, cx + side * 0.34 * s, cy - 0.02, 0.24 * s, 0.52 * s, 0.08)
        lungs.append((cx + side * 0.34 * s, cy - 0.02, 0.24 * s, 0.52 * s))
        img -= 0.28 * lung
    img += 0.2 * _soft_ellipse(x, y, cx, cy + 0.1, 0.1 * s, 0.9 * s, 0.15)  # spine / mediastinum
    img += 0.12 * _soft_ellipse(x, y, cx + 0.08 * s, cy + 0.25, 0.2 * s, 0.16 * s, 0.2)  # heart
    n_blobs = rng.integers(1, 4) if sick else int(rng.random() < 0.12)
    for _ in range(n_blobs):
        lx, ly, a, b = lungs[rng.integers(2)]
        angle, radius = rng.uniform(0, 2 * np.pi), 0.7 * np.sqrt(rng.random())
        bx, by = lx + a * radius * np.cos(angle), ly + b * radius * np.sin(angle)
        sigma = rng.uniform(0.06, 0.14)
        amp = rng.uniform(0.2, 0.45) if sick else rng.uniform(0.03, 0.09)
        img += amp * np.exp(-((x - bx) ** 2 + (y - by) ** 2) / (2 * sigma**2))
    img *= rng.uniform(0.85, 1.15)  # exposure
    img += rng.normal(0.0, 0.04, img.shape)
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _rows(rng: np.random.Generator, n_patients: int, lo: int, hi: int) -> list[tuple[str, bool]]:
    """CSV lines (without newline) and whether each image has a finding."""
    rows = []
    for patient in range(1, n_patients + 1):
        k = int(rng.integers(lo, hi + 1))
        age, gender = int(rng.integers(18, 91 - (k - 1) // 2)), "MF"[rng.integers(2)]
        p_sick = 0.85 if rng.random() < 0.5 else 0.15  # disease status correlated within a patient
        for followup in range(k):
            sick = bool(rng.random() < p_sick)
            if sick:
                count = int(rng.choice([1, 2, 3], p=[0.6, 0.3, 0.1]))
                picked = rng.choice(len(FINDINGS), count, replace=False, p=_WEIGHTS / _WEIGHTS.sum())
                labels = "|".join(FINDINGS[i] for i in sorted(picked))
            else:
                labels = NO_FINDING
            view = "PA" if rng.random() < 0.6 else "AP"
            original = _ORIGINAL[rng.integers(len(_ORIGINAL))]
            rows.append((f"{patient:08d}_{followup:03d}.png,{labels},{followup},{patient},"
                         f"{age + followup // 2},{gender},{view},{original}", sick))
    return rows


def ensure_demo_dataset(root: str | Path, n_patients: int = 160, images_per_patient: tuple[int, int] = (1, 6),
                        image_size: int = 128, seed: int = 0) -> Path:
    """Generate (once) the synthetic demo dataset under root; return the path of its label CSV."""
    root = Path(root).expanduser().absolute()
    lo, hi = (int(v) for v in images_per_patient)
    if n_patients < 1 or not 1 <= lo <= hi or image_size < 16:
        raise ValueError(f"bad demo dataset arguments: n_patients={n_patients}, "
                         f"images_per_patient={images_per_patient}, image_size={image_size}")
    stamp = json.dumps({"version": DEMO_VERSION, "n_patients": int(n_patients), "images_per_patient": [lo, hi],
                        "image_size": int(image_size), "seed": int(seed)}, sort_keys=True)
    sentinel = root / SENTINEL
    if sentinel.is_file() and sentinel.read_text() == stamp and (root / CSV_NAME).is_file():
        return root / CSV_NAME
    if root.exists() and any(root.iterdir()) and not (sentinel.exists() or (root / CSV_NAME).exists()):
        raise FileExistsError(f"{root} is not empty and is not a demo dataset; refusing to replace it")

    rng = np.random.default_rng(seed)
    rows = _rows(rng, n_patients, lo, hi)
    log.info("Generating a SYNTHETIC demo dataset (drawn shapes, not real X-rays) at %s: %d images of %d patients. "
             "Use real data with data=nih data.root=... data.labels=...", root, len(rows), n_patients)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    half = (len(rows) + 1) // 2
    for i, (line, sick) in enumerate(rows):
        folder = tmp / ("images_001" if i < half else "images_002") / "images"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(_draw(rng, image_size, sick)).save(folder / line.split(",", 1)[0])
    with open(tmp / CSV_NAME, "w", newline="") as f:
        f.write(HEADER + "\n" + "".join(line + "\n" for line, _ in rows))
    (tmp / SENTINEL).write_text(stamp)  # last: only a finished build carries it

    old = root.parent / f".{root.name}.old-{os.getpid()}"
    if root.exists():
        os.replace(root, old)
    try:
        os.replace(tmp, root)
    except OSError:  # another process finished first and put its build at root
        shutil.rmtree(tmp, ignore_errors=True)
        if not (sentinel.is_file() and sentinel.read_text() == stamp):
            raise
    shutil.rmtree(old, ignore_errors=True)
    return root / CSV_NAME
