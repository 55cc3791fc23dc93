"""Validate the data before training: ``python -m cxr.check [the overrides train.py takes]``.

Prints one line per problem class and fact; exits 1 when training would fail. Writes no run directory.
"""
from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from cxr.data.validation import ValidationReport, validate

# Hydra would otherwise create outputs/<task>/runs/<time>/ with .hydra/ and a log file; the check writes nothing.
NO_OUTPUT = ("hydra.run.dir=.", "hydra.output_subdir=null", "hydra/job_logging=none")


def run_check(cfg: DictConfig, workers: int | None = None) -> ValidationReport:
    """Validate ``cfg.data`` (labels, images, split) and its external set if one is set."""
    data = cfg.data
    if data.get("demo") is not None and data.get("root"):
        from cxr.data.demo import ensure_demo_dataset

        ensure_demo_dataset(data.root, **OmegaConf.to_container(data.demo, resolve=True))
    split = OmegaConf.to_container(data.split, resolve=True) if data.get("split") is not None else {}
    report = validate(data.get("labels"), data.get("root"), split, data.get("missing", "error"), workers)
    external = data.get("external") or {}
    if external.get("root") and external.get("labels"):
        report.include(validate(external.labels, external.root, None,
                                external.get("missing", data.get("missing", "error")), workers), "external")
    return report


@hydra.main(version_base="1.3", config_path="pkg://cxr.conf", config_name="train")
def _app(cfg: DictConfig) -> None:
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="[%(asctime)s] %(message)s",
                        datefmt="%H:%M:%S", force=True)
    report = run_check(cfg)
    print("\n".join(report.lines()), flush=True)
    sys.exit(0 if report.ok else 1)


def main() -> None:
    """Run the Hydra app with the no-output overrides first (a user's own override of the same key wins)."""
    given = {arg.split("=", 1)[0].lstrip("+~") for arg in sys.argv[1:]}
    sys.argv[1:1] = [o for o in NO_OUTPUT if o.split("=", 1)[0] not in given]
    _app()


if __name__ == "__main__":
    main()
