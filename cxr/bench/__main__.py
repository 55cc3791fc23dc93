"""``python -m cxr.bench [--quick] [--out FILE.json] [--only train,inference,...]``"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings

from cxr.bench import FULL, QUICK, SECTIONS, TINY, run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cxr.bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (about a third of the time)")
    parser.add_argument("--tiny", action="store_true", help="smoke test: one repetition of tiny work")
    parser.add_argument("--out", help="write the results as JSON to this file")
    parser.add_argument("--only", help=f"comma-separated sections of {','.join(SECTIONS)}")
    parser.add_argument("--images", help="folder of 1024x1024 PNGs (default ../shared/data/nih/full-res)")
    parser.add_argument("--shared", help="the shared data folder (default ../shared/data)")
    parser.add_argument(
        "--serve-requests",
        type=int,
        default=None,
        help="requests per concurrency level of --only serve (default 2000; 20 with --tiny)",
    )
    args = parser.parse_args(argv)
    sections = tuple(s.strip() for s in args.only.split(",")) if args.only else SECTIONS
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section(s) {', '.join(sorted(unknown))}; choose from {', '.join(SECTIONS)}")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    warnings.filterwarnings("ignore")
    sizes = TINY if args.tiny else QUICK if args.quick else FULL
    document = run(
        sizes,
        args.out,
        sections,
        image_dir=args.images,
        shared=args.shared,
        echo=lambda text: print(text, flush=True),
        serve_requests=args.serve_requests,
    )
    return 1 if document["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
