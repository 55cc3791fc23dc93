"""Train, evaluate and save one run: python train.py [program=A|B|C] [data=demo|nih] [key=value ...]

Multirun: python train.py -m program=A,B,C
Resume a killed run in its own directory: python train.py resume=outputs/train/runs/<run>
"""
import sys

import hydra
from omegaconf import DictConfig

from cxr.pipeline import objective, resume_arguments, train


@hydra.main(version_base="1.3", config_path="pkg://cxr.conf", config_name="train")
def main(cfg: DictConfig) -> float:
    metrics = train(cfg)
    return objective(metrics)  # what an Optuna sweeper (hparams_search=...) maximises: validation AUROC, never test


if __name__ == "__main__":
    sys.argv[1:] = resume_arguments(sys.argv[1:])
    main()
