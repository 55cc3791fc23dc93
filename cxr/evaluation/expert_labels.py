"""Google's 2019 radiologist re-labels of 4,376 NIH images (Majkowska et al., Radiology 2020) as a reference.

Each image was read by three radiologists for four findings: fracture, pneumothorax, airspace opacity,
nodule or mass (adjudicated YES/NO). Mapping used here: **abnormal (1)** if any of the four is YES, **normal
(0)** if all four are NO. This is a narrower definition than NIH's 14 text-mined findings (an image with only,
say, cardiomegaly is 'normal' here), so read agreement with it as a check on the four findings, not as truth.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

EXPERT_FINDINGS = ("Fracture", "Pneumothorax", "Airspace opacity", "Nodule or mass")


def read_google2019_labels(path: str | Path) -> pd.DataFrame:
    """image, expert_target (0 normal / 1 abnormal) and the four expert findings as 0/1."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"expert label file not found: {path}")
    table = pd.read_csv(path, dtype=str, index_col=False)
    missing = [c for c in ("Image Index", *EXPERT_FINDINGS) if c not in table.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(missing)} of Google's 2019 NIH re-label file")
    findings = pd.DataFrame(index=table.index)
    for column in EXPERT_FINDINGS:
        values = table[column].str.strip().str.upper()
        unknown = sorted(set(values) - {"YES", "NO"})
        if unknown:
            raise ValueError(f"{path}: column {column!r} holds {unknown[0]!r}; expected YES or NO")
        findings[column] = (values == "YES").astype(int)
    return pd.DataFrame(
        {"image": table["Image Index"].str.strip(), "expert_target": findings.max(axis=1).astype(int), **findings}
    )
