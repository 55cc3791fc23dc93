"""Generator of a small SYNTHETIC dataset in the NIH ChestX-ray14 layout (drawn shapes, not real X-rays).

It lets ``python train.py`` run end to end offline; the data is built deterministically once into a cache folder.
With ``finding_marks=True`` (``task=multilabel``) each of MARKED_FINDINGS has a mark of its own (an enlarged heart,
fluid at a lung base, ...), and about a third of the images with a finding have two, so that a multi-label model
can learn each one. The folder also holds NIH-style ``test_list.txt`` / ``train_val_list.txt`` (patient-disjoint:
every fifth patient is in the test list) for ``split=official``.
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

DEMO_VERSION = 3  # bump when the generator changes; part of the sentinel so old caches are rebuilt
# (3: official split lists added; images and labels of finding_marks=False unchanged since 2)
MARKED_FINDINGS = ("Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumothorax")
CSV_NAME = "Data_Entry_demo.csv"
SENTINEL = ".complete"
HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]"
)
# rough NIH prevalences (Infiltration common, Hernia rare); normalised to sampling weights
_WEIGHTS = np.array([11.6, 2.5, 4.2, 2.1, 11.9, 2.2, 1.5, 0.2, 17.7, 5.2, 5.6, 3.0, 1.3, 4.7])
_ORIGINAL = ("2500,2048,0.168,0.168", "2992,2991,0.143,0.143", "3056,2544,0.139,0.139", "2048,2500,0.168,0.168")

log = logging.getLogger(__name__)


def _soft_ellipse(x, y, x0, y0, a, b, edge=0.04):
    """1 inside the ellipse centred (x0, y0) with radii (a, b), 0 outside, with a smooth border."""
    r = np.sqrt(((x - x0) / a) ** 2 + ((y - y0) / b) ** 2)
    return 1.0 / (1.0 + np.exp(np.clip((r - 1.0) / edge, -50, 50)))


def _draw(rng: np.random.Generator, size: int, sick: bool, marks: tuple[str, ...] | None = None) -> np.ndarray:
    """One greyscale 'chest X-ray': body, two dark lungs, bright mediastinum, opacities if sick, noise.

    ``marks`` (finding_marks=True): draw each named finding's own mark instead of the generic opacities."""
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
    if marks is not None:
        return _finish(rng, _draw_marks(rng, img, x, y, cx, cy, s, lungs, marks))
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


def _finish(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    img = img * rng.uniform(0.9, 1.1)  # exposure
    img += rng.normal(0.0, 0.03, img.shape)
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _draw_marks(rng, img, x, y, cx, cy, s, lungs, marks) -> np.ndarray:
    """The mark of each finding in ``marks``; other findings (and No Finding) leave the image plain."""
    heart = 1.9 if "Cardiomegaly" in marks else 1.0  # Cardiomegaly: a heart about twice as wide
    img += 0.14 * heart * _soft_ellipse(x, y, cx + 0.08 * s * heart, cy + 0.25, 0.2 * s * heart, 0.16 * s * heart, 0.1)
    for finding in marks:
        lx, ly, a, b = lungs[rng.integers(2)]
        if finding == "Effusion":  # fluid filling the base of one lung, flat upper border
            level = ly + b * rng.uniform(0.25, 0.45)
            img += 0.32 * _soft_ellipse(x, y, lx, ly, a, b, 0.05) / (1.0 + np.exp(-(y - level) / 0.02))
        elif finding == "Pneumothorax":  # a dark band without lung markings along the outer edge of a lung
            outer = lx + np.sign(lx - cx) * a * 0.8
            img -= 0.22 * _soft_ellipse(x, y, outer, ly - 0.35 * b, 0.12 * s, 0.5 * b, 0.05)
        elif finding == "Mass":  # one large, sharp-edged bright disc
            r = rng.uniform(0.12, 0.17) * s
            img += 0.35 * _soft_ellipse(
                x, y, lx + rng.uniform(-0.3, 0.3) * a, ly + rng.uniform(-0.3, 0.3) * b, r, r, 0.03
            )
        elif finding == "Nodule":  # several small bright dots
            for _ in range(int(rng.integers(3, 6))):
                bx, by = lx + rng.uniform(-0.6, 0.6) * a, ly + rng.uniform(-0.6, 0.6) * b
                img += 0.4 * np.exp(-((x - bx) ** 2 + (y - by) ** 2) / (2 * 0.025**2))
        elif finding == "Infiltration":  # hazy, patchy opacities spread over both lungs
            for lx, ly, a, b in lungs:
                for _ in range(3):
                    bx, by = lx + rng.uniform(-0.6, 0.6) * a, ly + rng.uniform(-0.6, 0.6) * b
                    img += 0.12 * np.exp(-((x - bx) ** 2 + (y - by) ** 2) / (2 * 0.12**2))
    return img


def _marked_labels(rng: np.random.Generator) -> str:
    """One finding (2 in 3) or two (1 in 3) from MARKED_FINDINGS."""
    count = 1 if rng.random() < 2 / 3 else 2
    picked = rng.choice(len(MARKED_FINDINGS), count, replace=False)
    return "|".join(sorted(MARKED_FINDINGS[i] for i in picked))


def _rows(
    rng: np.random.Generator, n_patients: int, lo: int, hi: int, finding_marks: bool = False
) -> list[tuple[str, bool]]:
    """CSV lines (without newline) and whether each image has a finding."""
    rows = []
    for patient in range(1, n_patients + 1):
        k = int(rng.integers(lo, hi + 1))
        age, gender = int(rng.integers(18, 91 - (k - 1) // 2)), "MF"[rng.integers(2)]
        p_sick = 0.85 if rng.random() < 0.5 else 0.15  # disease status correlated within a patient
        for followup in range(k):
            sick = bool(rng.random() < p_sick)
            if sick and finding_marks:
                labels = _marked_labels(rng)
            elif sick:
                count = int(rng.choice([1, 2, 3], p=[0.6, 0.3, 0.1]))
                picked = rng.choice(len(FINDINGS), count, replace=False, p=_WEIGHTS / _WEIGHTS.sum())
                labels = "|".join(FINDINGS[i] for i in sorted(picked))
            else:
                labels = NO_FINDING
            view = "PA" if rng.random() < 0.6 else "AP"
            original = _ORIGINAL[rng.integers(len(_ORIGINAL))]
            rows.append(
                (
                    f"{patient:08d}_{followup:03d}.png,{labels},{followup},{patient},"
                    f"{age + followup // 2},{gender},{view},{original}",
                    sick,
                )
            )
    return rows


def ensure_demo_dataset(
    root: str | Path,
    n_patients: int = 160,
    images_per_patient: tuple[int, int] = (1, 6),
    image_size: int = 128,
    seed: int = 0,
    finding_marks: bool = False,
) -> Path:
    """Generate (once) the synthetic demo dataset under root; return the path of its label CSV.

    ``finding_marks``: one distinct mark per finding of MARKED_FINDINGS (for task=multilabel)."""
    root = Path(root).expanduser().absolute()
    lo, hi = (int(v) for v in images_per_patient)
    if n_patients < 1 or not 1 <= lo <= hi or image_size < 16:
        raise ValueError(
            f"bad demo dataset arguments: n_patients={n_patients}, "
            f"images_per_patient={images_per_patient}, image_size={image_size}"
        )
    stamp = json.dumps(
        {
            "version": DEMO_VERSION,
            "n_patients": int(n_patients),
            "images_per_patient": [lo, hi],
            "image_size": int(image_size),
            "seed": int(seed),
            **({"finding_marks": True} if finding_marks else {}),
        },
        sort_keys=True,
    )
    sentinel = root / SENTINEL
    if sentinel.is_file() and sentinel.read_text() == stamp and (root / CSV_NAME).is_file():
        return root / CSV_NAME
    if root.exists() and any(root.iterdir()) and not (sentinel.exists() or (root / CSV_NAME).exists()):
        raise FileExistsError(f"{root} is not empty and is not a demo dataset; refusing to replace it")

    rng = np.random.default_rng(seed)
    rows = _rows(rng, n_patients, lo, hi, bool(finding_marks))
    log.info(
        "Generating a SYNTHETIC demo dataset (drawn shapes, not real X-rays) at %s: %d images of %d patients. "
        "Use real data with data=nih data.root=... data.labels=...",
        root,
        len(rows),
        n_patients,
    )
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    half = (len(rows) + 1) // 2
    for i, (line, sick) in enumerate(rows):
        folder = tmp / ("images_001" if i < half else "images_002") / "images"
        folder.mkdir(parents=True, exist_ok=True)
        marks = tuple(line.split(",")[1].split("|")) if finding_marks else None
        Image.fromarray(_draw(rng, image_size, sick, marks)).save(folder / line.split(",", 1)[0])
    with open(tmp / CSV_NAME, "w", newline="") as f:
        f.write(HEADER + "\n" + "".join(line + "\n" for line, _ in rows))
    names = [(line.split(",", 1)[0], int(line.split(",")[3])) for line, _ in rows]  # NIH's official split lists
    (tmp / "test_list.txt").write_text("".join(f"{n}\n" for n, patient in names if patient % 5 == 0))
    (tmp / "train_val_list.txt").write_text("".join(f"{n}\n" for n, patient in names if patient % 5 != 0))
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
