"""Evaluate a checkpoint on the test split and the external set: python evaluate.py ckpt_path=<file> [overrides]

The checkpoint's training overrides (program, data, split, ...) are applied first, then the ones given here; the
test split is the run's own (its splits.csv) unless split_from=config. The same as ``cxr-evaluate``.
"""

from cxr.cli import evaluate_main

if __name__ == "__main__":
    evaluate_main()
