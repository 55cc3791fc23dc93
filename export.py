"""Export a checkpoint: python export.py ckpt_path=<.ckpt> format=onnx|torchscript [output=<file>]

Embeds preprocessing, output names and the run's operating point; checks parity on real images at export time
(max |delta p| printed and stored in <file>.parity.json). Exit status 2 on a bad argument or a failed parity check.
"""
import sys

import hydra
from omegaconf import DictConfig

from cxr.checkpoints import CheckpointError
from cxr.export import export
from cxr.predict import PredictError


@hydra.main(version_base="1.3", config_path="pkg://cxr.conf", config_name="export")
def main(cfg: DictConfig) -> None:
    try:
        export(cfg)
    except (PredictError, CheckpointError) as error:
        print(f"export.py: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
