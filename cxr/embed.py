"""``python -m cxr.embed --weights xrv:densenet121-res224-all --inputs <images> --out <dir>``: encoder embeddings
of a set of images (cxr.jobs.embed); ``--checkpoint <ckpt>`` embeds with a trained run's encoder instead."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from cxr.errors import UserError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cxr.embed", description=__doc__.split("\n")[0])
    parser.add_argument("--weights", help="a named source: xrv:..., timm:<model>, hf:<owner>/<name>")
    parser.add_argument("--weights-file", help="the local copy of the named source")
    parser.add_argument("--checkpoint", help="a cxr training checkpoint instead of --weights")
    parser.add_argument("--inputs", nargs="+", required=True, help="files, folders, globs or @list.txt of images")
    parser.add_argument("--out", type=Path, default=Path("embeddings"), help="output folder (default: embeddings)")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from cxr.jobs.embed import embed

    try:
        path = embed(args.inputs, args.out, args.weights, args.weights_file, args.checkpoint, args.batch_size)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {path} and {path.with_name('index.csv')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
