"""``python -m cxr.download nih [--to DIR] ...`` (:func:`cxr.cli.download_main`; the job: :mod:`cxr.jobs.download`)."""

import sys

from cxr.cli import download_main

if __name__ == "__main__":
    sys.exit(download_main())
