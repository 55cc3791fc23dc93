"""Compare training runs in one report: python compare.py <run or multirun directories...> [--out DIR]

Writes report.md and a self-contained report.html (figures embedded) into --out, by default
outputs/compare/<date_time>/ under the current directory, and prints the table of runs. The same as ``cxr-compare``.
"""

import sys

from cxr.cli import compare_main as main

if __name__ == "__main__":
    sys.exit(main())
