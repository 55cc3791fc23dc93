"""Encoder embeddings of a set of images (``python -m cxr.embed``): from a named pretrained source or a trained
checkpoint, with the preprocessing those weights expect, written as ``embeddings.npy`` + ``index.csv`` (and
``embeddings.parquet`` when pyarrow is installed) for linear probes and retrieval outside cxr."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cxr.artifacts import write_csv
from cxr.data.dataset import Preprocessing
from cxr.data.inputs import collect_inputs, prepare_input
from cxr.errors import ConfigError
from cxr.models import registry, sources
from cxr.models.checkpoints import load_classifier

log = logging.getLogger(__name__)


def encoder(weights: str | None, weights_file: str | None, checkpoint: str | None):
    """(network with ``features``, its preprocessing) from a checkpoint or a named source."""
    if checkpoint:
        model, _ = load_classifier(checkpoint)
        net, settings = model.net, model.hparams.preprocessing
    else:
        source = sources.parse(weights)
        if source is None:
            raise ConfigError(
                f"--weights={weights}: name a pretrained source (xrv:..., timm:..., hf:...) or give --checkpoint"
            )
        spec = sources.network(source, weights_file)
        net = registry.build(spec, "weights", weights=weights, weights_file=weights_file, num_outputs=1)
        settings = sources.preprocessing(source, weights_file)
    if not hasattr(net, "features"):
        raise ConfigError(f"{checkpoint or weights}: its network has no encoder embedding (a pretrained source has)")
    return net.eval(), Preprocessing(**{k: v for k, v in settings.items() if k in Preprocessing.__dataclass_fields__})


def embed(inputs, out: Path, weights=None, weights_file=None, checkpoint=None, batch_size: int = 32) -> Path:
    """Write the embeddings of ``inputs`` under ``out``; returns the .npy file."""
    net, preprocessing = encoder(weights, weights_file, checkpoint)
    paths, skipped = collect_inputs(inputs)
    rows = []
    with torch.inference_mode():
        for start in range(0, len(paths), batch_size):
            chunk = paths[start : start + batch_size]
            images = torch.stack([prepare_input(path, preprocessing)[0] for path in chunk])
            rows.append(net.features(images).float().numpy())
    embeddings = np.concatenate(rows) if rows else np.zeros((0, 0), dtype=np.float32)
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "embeddings.npy", embeddings)
    write_csv(out / "index.csv", pd.DataFrame({"row": range(len(paths)), "path": [str(p) for p in paths]}))
    try:
        import pyarrow  # noqa: F401

        table = pd.DataFrame({"path": [str(p) for p in paths], "embedding": list(embeddings)})
        table.to_parquet(out / "embeddings.parquet", index=False)
    except ImportError:
        pass
    log.info("%d image(s) (%d skipped), %d-dimensional embeddings: %s", len(paths), skipped, embeddings.shape[-1], out)
    return out / "embeddings.npy"
