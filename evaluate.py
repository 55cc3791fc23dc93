"""Evaluate a checkpoint on the test split and the external set: python evaluate.py ckpt_path=<file> [overrides]

The checkpoint's training overrides (program, data, split, ...) are applied first, then the ones given here,
so the test split is the one the model was trained against unless you change it.
"""
import hydra
from omegaconf import DictConfig

from cxr.pipeline import evaluate, evaluation_config


@hydra.main(version_base="1.3", config_path="pkg://cxr.conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    evaluate(evaluation_config(cfg))


if __name__ == "__main__":
    main()
