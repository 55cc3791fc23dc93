"""``python -m cxr.prepare [--workers=N] [--shards] [--list | --prune] [train.py overrides]``
(:func:`cxr.cli.prepare_main`; the job: :mod:`cxr.jobs.prepare`)."""

from cxr.cli import prepare_main

if __name__ == "__main__":
    prepare_main()
