"""Grad-CAM heatmaps for predict.py ``cam=true`` (the grad-cam library, ``pytorch_grad_cam``).

Per input, and per output of a multi-label model, an overlay PNG under ``cam/`` in the run directory: the image as
the model saw it (square resize of the displayed grey image, at ``cam_size`` pixels) with the Grad-CAM map of the
last convolution, for the output's logit. ``cam.html`` shows them all with their probabilities and decisions.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from cxr.data.images import prepare_image


def last_convolution(model: torch.nn.Module) -> torch.nn.Module:
    """The last ``Conv2d`` of the network: Grad-CAM's usual target layer."""
    convolutions = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    if not convolutions:
        raise ValueError("Grad-CAM needs a convolutional network (no Conv2d layer found)")
    return convolutions[-1]


class OutputLogit:
    """Grad-CAM target: output ``k`` of one image's logits (a scalar for a one-output model)."""

    def __init__(self, k: int):
        self.k = k

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        return output.reshape(-1)[self.k]


def cam_maps(model: torch.nn.Module, images: torch.Tensor, n_outputs: int) -> np.ndarray:
    """``(N, K, H, W)`` Grad-CAM maps in [0, 1] for each image and output."""
    from pytorch_grad_cam import GradCAM

    model.eval()
    maps = []
    with (
        torch.inference_mode(False),
        torch.enable_grad(),
        GradCAM(model=model, target_layers=[last_convolution(model)]) as cam,
    ):
        for k in range(n_outputs):
            maps.append(cam(input_tensor=images.clone(), targets=[OutputLogit(k)] * len(images)))
    return np.stack(maps, axis=1)


def overlay(grey: np.ndarray, heatmap: np.ndarray) -> np.ndarray:
    """RGB uint8: the grey image with the heatmap (resized to it) in the jet colour map."""
    import cv2
    from pytorch_grad_cam.utils.image import show_cam_on_image

    size = grey.shape[:2]
    heatmap = cv2.resize(heatmap.astype(np.float32), (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    rgb = np.repeat(grey[:, :, None].astype(np.float32) / 255.0, 3, axis=2)
    return show_cam_on_image(rgb, np.clip(heatmap, 0, 1), use_rgb=True, image_weight=0.6)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)[:60]


def write_cam_report(
    predictor,
    frame: pd.DataFrame,
    output_dir: str | Path,
    size: int = 320,
    batch_size: int = 16,
    boxes: pd.DataFrame | None = None,
    quality: str = "",
) -> Path:
    """Overlay PNGs under ``<output_dir>/cam/`` for every predicted row (NIH's box drawn where ``boxes`` has one for
    the file name), and ``cam.html`` with a colour bar and ``quality`` (the model's validation AUROC); returns
    the page."""
    from cxr.data.inputs import prepare_input, read_grey
    from cxr.evaluation.cam_context import box_caption, draw_boxes, image_boxes

    if predictor.model is None:
        raise ValueError("cam=true needs a checkpoint (Grad-CAM differentiates the PyTorch model, not an .onnx file)")
    output_dir = Path(output_dir)
    (output_dir / "cam").mkdir(parents=True, exist_ok=True)
    ok = frame[frame["error"] == ""]
    names = predictor.names
    cards = []
    for start in range(0, len(ok), batch_size):
        chunk = ok.iloc[start : start + batch_size]
        images = torch.stack(
            [prepare_input(path, predictor.preprocessing, predictor.dicom_window)[0] for path in chunk["path"]]
        )
        maps = cam_maps(predictor.model, images, len(names))
        for (row_index, row), row_maps in zip(chunk.iterrows(), maps):
            image, _, _ = read_grey(row["path"], predictor.dicom_window)
            grey = prepare_image(image, channels=1, size=size, resample=predictor.preprocessing.resample)[:, :, 0]
            for k, name in enumerate(names):
                file_name = f"cam/{row_index:05d}_{_slug(Path(row['path']).stem)}"
                file_name += f"_{_slug(name)}.png" if len(names) > 1 else ".png"
                picture, note = overlay(grey, row_maps[k]), ""
                if (boxed := image_boxes(boxes, row["path"], name, names)) is not None:
                    picture, note = draw_boxes(picture, boxed), box_caption(row_maps[k], boxed)
                Image.fromarray(picture).save(output_dir / file_name)
                cards.append((row, name, file_name, note))
    page = output_dir / "cam.html"
    page.write_text(_html(cards, names, predictor, quality), encoding="utf-8")
    return page


def _html(cards, names, predictor, quality: str = "") -> str:
    from cxr.evaluation.cam_context import colour_bar

    items = []
    for row, name, file_name, note in cards:
        p = row[f"probability_{name}"]
        decision = "above" if row[f"decision_{name}"] == 1 else "below"
        warning = f"<p class=w>{html.escape(row['warning'])}</p>" if row["warning"] else ""
        items.append(
            f"<figure><img src='{html.escape(file_name)}' alt='Grad-CAM {html.escape(name)}'>"
            f"<figcaption><b>{html.escape(Path(row['path']).name)}</b><br>{html.escape(name)}: "
            f"p = {p:.3f} ({decision} threshold {row[f'threshold_{name}']:.3g}){warning}"
            + (f"<br>{note}" if note else "")
            + "</figcaption>"
            "</figure>"
        )
    thresholds = ", ".join(f"{n} {t:.3g}" for n, t in zip(names, predictor.thresholds))
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>Grad-CAM</title><style>"
        "body{font-family:sans-serif;margin:1em}figure{display:inline-block;margin:.4em;width:330px;"
        "vertical-align:top}img{width:320px}.bar{width:320px;height:12px}figcaption{font-size:.85em}.w{color:#a40}"
        ".q{border-left:4px solid #a40;padding-left:.5em}</style></head><body>"
        f"<h1>Grad-CAM</h1><p>{len(cards)} heatmap(s); thresholds: {html.escape(thresholds)} "
        f"({html.escape(predictor.threshold_source)}). Red: regions that raised the output's logit most "
        "(last convolution). Research model, not a medical device.</p>"
        + (f"<p class=q>{quality}</p>" if quality else "")
        + f"<p>{colour_bar()}low &larr; Grad-CAM &rarr; high "
        "(each map scaled to its own range: colours compare places within a map, not across maps)</p>"
        + "".join(items)
        + "</body></html>\n"
    )
