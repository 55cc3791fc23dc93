"""A heat-map against the boxes drawn around a finding: the box mask and the pointing-game, heat-inside and IoU
scores (cxr.evaluation.localisation scores a test set with them; cam_context captions an overlay)."""

from __future__ import annotations

import numpy as np
import pandas as pd


def box_mask(boxes: pd.DataFrame, size: int, reference_size: float) -> np.ndarray:
    """(size, size) bool mask of the union of ``boxes`` (x, y, w, h in a reference_size-square image)."""
    mask = np.zeros((size, size), dtype=bool)
    scale = size / float(reference_size)
    for x, y, w, h in boxes[["x", "y", "w", "h"]].to_numpy(dtype=float):
        # pixels whose centres lie inside the scaled box; at least one pixel per box
        x0, y0 = int(np.ceil(x * scale - 0.5)), int(np.ceil(y * scale - 0.5))
        x1, y1 = int(np.ceil((x + w) * scale - 0.5)), int(np.ceil((y + h) * scale - 0.5))
        x1, y1 = max(x1, x0 + 1), max(y1, y0 + 1)
        mask[max(y0, 0) : min(y1, size), max(x0, 0) : min(x1, size)] = True
    return mask


def box_scores(heatmap: np.ndarray, mask: np.ndarray, iou_threshold: float) -> dict[str, float]:
    """Pointing-game hit (0/1), heat inside, IoU, the box's share of the image and whether the map is flat, for one
    map and box mask. A flat map (no gradient reached the layer) has no maximum: a miss, uniform heat, an empty
    binarised map."""
    heatmap = np.asarray(heatmap, dtype=np.float64)
    low, high = float(heatmap.min()), float(heatmap.max())
    share = float(mask.mean())
    if high - low <= 1e-12:
        return {"pointing_game": 0.0, "heat_inside": share, "iou": 0.0, "box_share": share, "flat": 1}
    heat = heatmap - low
    peak = np.unravel_index(int(np.argmax(heat)), heat.shape)
    hot = heat >= iou_threshold * (high - low)
    union = int((hot | mask).sum())
    return {
        "pointing_game": float(mask[peak]),
        "heat_inside": float(heat[mask].sum() / heat.sum()),
        "iou": float((hot & mask).sum() / union) if union else 0.0,
        "box_share": share,
        "flat": 0,
    }
