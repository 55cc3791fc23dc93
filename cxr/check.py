"""``python -m cxr.check [the overrides train.py takes]``: the same as ``cxr-check`` (:func:`cxr.cli.check_main`)."""

from cxr.cli import check_main

if __name__ == "__main__":
    check_main()
