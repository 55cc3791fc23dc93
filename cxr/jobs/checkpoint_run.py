"""The training run a checkpoint belongs to: its directory and the images of its splits."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from cxr.errors import PredictError


def run_directory(ckpt_path: str | Path) -> Path:
    """The training run a checkpoint belongs to (checkpoints live in ``<run>/checkpoints/``)."""
    path = Path(ckpt_path).resolve()
    return path.parent.parent if path.parent.name == "checkpoints" else path.parent


def run_images(ckpt_path, limit: int, split: str = "test") -> tuple[list[Path], str]:
    """The first ``limit`` images of the checkpoint run's ``split`` (its splits.csv), found under its data root."""
    from omegaconf import OmegaConf

    from cxr.data.images import index_images

    run = run_directory(ckpt_path)
    try:
        config = OmegaConf.load(run / "config.yaml")
        splits = pd.read_csv(run / "splits.csv")
        found = index_images(config.data.root)
    except Exception as error:  # no run directory beside the checkpoint, or its data moved
        raise PredictError(f"cannot find the run's {split} images ({type(error).__name__}: {error})") from error
    names = splits.loc[splits["split"] == split, "image"].tolist()
    paths = [found[n] for n in names if n in found][:limit]
    return paths, f"{len(paths)} {split} images of the run ({config.data.root})"
