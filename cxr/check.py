"""Validate the data before training: ``python -m cxr.check [the overrides train.py takes]``.

Prints one line per problem class and fact; exits 1 when training would fail. Writes no run directory.
"""
from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from cxr.cli import catch_user_errors
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
@catch_user_errors
def app(cfg: DictConfig) -> None:
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="[%(asctime)s] %(message)s",
                        datefmt="%H:%M:%S", force=True)
    report = run_check(cfg)
    lines = report.lines()
    print("\n".join(lines), flush=True)
    if not report.ok:  # the first problem as the one error line on stderr (the full report is on stdout above)
        first = next((line for line in lines if line.startswith("ERROR")), lines[-1])
        print(f"error: {first.removeprefix('ERROR').strip()}", file=sys.stderr, flush=True)
    sys.exit(0 if report.ok else 1)


def no_output_arguments(argv: list[str]) -> list[str]:
    """The no-output overrides first (a user's own override of the same key wins), then ``argv``."""
    given = {arg.split("=", 1)[0].lstrip("+~") for arg in argv}
    return [o for o in NO_OUTPUT if o.split("=", 1)[0] not in given] + list(argv)


def main() -> None:
    """Run the check (user errors end with one line, see cxr.cli)."""
    from cxr.cli import check_main

    check_main()


if __name__ == "__main__":
    main()
