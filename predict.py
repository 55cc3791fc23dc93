"""Predict on new X-rays: python predict.py ckpt_path=<.ckpt or exported .onnx> inputs=<file|folder|glob|list>

PNG, JPEG and DICOM (recognised by content); cam=true adds Grad-CAM overlays; json=true a JSON copy.
Exit status: 0 all inputs predicted, 1 some inputs failed (rows with an error), 2 a bad model or input argument.
"""
import sys

import hydra
from omegaconf import DictConfig

from cxr.checkpoints import CheckpointError
from cxr.predict import PredictError, predict


@hydra.main(version_base="1.3", config_path="pkg://cxr.conf", config_name="predict")
def main(cfg: DictConfig) -> None:
    try:
        status = predict(cfg)
    except (PredictError, CheckpointError) as error:
        print(f"predict.py: {error}", file=sys.stderr)
        status = 2
    if status:
        sys.exit(status)


if __name__ == "__main__":
    main()
