"""Compare training runs in one report: python compare.py <run or multirun directories...> [--out DIR]

Writes report.md and a self-contained report.html (figures embedded) into --out, by default
outputs/compare/<date_time>/ under the current directory, and prints the table of runs.
"""
import argparse
import sys

from cxr.evaluation.report import ReportError, compare


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("paths", nargs="+", help="run directories, or folders holding them (multiruns, outputs/)")
    parser.add_argument("--out", default=None,
                        help="report directory (default: outputs/compare/<date_time>/); never overwritten")
    parser.add_argument("--set", default="test", dest="set_name", help="evaluation set: test or external")
    parser.add_argument("--n-resamples", type=int, default=1000, help="patient resamples of the paired bootstrap")
    parser.add_argument("--seed", type=int, default=0, help="seed of the paired bootstrap")
    args = parser.parse_args(argv)
    if args.n_resamples < 1:
        parser.error("--n-resamples must be at least 1")
    try:
        report = compare(args.paths, out=args.out, set_name=args.set_name, n_resamples=args.n_resamples,
                         seed=args.seed)
    except ReportError as error:
        print(f"compare.py: error: {error}", file=sys.stderr)
        return 2
    print(report.table)
    print(f"\nreport: {report.directory / 'report.md'} (and report.html)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
