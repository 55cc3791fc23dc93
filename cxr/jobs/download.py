"""``python -m cxr.download nih [--to DIR] [--mirror URL | --from DIR_OF_TARBALLS] [--manifest CSV] [--jobs N]``

Fetches the 12 image archives of NIH ChestX-ray14 (verified against their MD5, resumable, extracted safely into
``DIR/images_001/images/...``), writes the label file and the official split lists into DIR and checks that
every image the manifest counts is present. Then: ``python train.py data=nih data.root=DIR
data.labels=DIR/Data_Entry_2017_v2020.csv``.
See :mod:`cxr.data.download`.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

DATASETS = ("nih",)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cxr.download", description=__doc__.split("\n\n")[1])
    parser.add_argument("dataset", choices=DATASETS)
    parser.add_argument("--to", default=".", metavar="DIR", help="destination folder (default: the current one)")
    parser.add_argument("--mirror", metavar="URL",
                        help="base URL under which every file (archives, Data_Entry_2017_v2020.csv, "
                             "train_val_list.txt, test_list.txt) is fetched by its name")
    parser.add_argument("--from", dest="source_dir", metavar="DIR_OF_TARBALLS",
                        help="take the archives from this folder instead of downloading them")
    parser.add_argument("--manifest", metavar="CSV",
                        help="archive,url,md5,images (default: the release's list shipped with cxr)")
    parser.add_argument("--jobs", type=int, default=3, help="archives fetched in parallel (default 3)")
    parser.add_argument("--keep-archives", action="store_true",
                        help="keep the downloaded .tar.gz files after extraction (default: delete them)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    if args.mirror and args.source_dir:
        parser.error("--mirror and --from exclude each other")
    from cxr.data.download import download_release
    from cxr.errors import DownloadError

    try:
        download_release(args.to, args.manifest, args.mirror, args.source_dir, args.jobs, args.keep_archives,
                         progress=not args.no_progress)
    except DownloadError as error:
        print(f"cxr.download: {error}", file=sys.stderr)
        return 1
    except OSError as error:  # an unwritable or full destination: the message names the file
        print(f"cxr.download: {error.strerror or error}: {error.filename or args.to}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"cxr.download: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    root = Path(args.to).absolute()
    print(f"NIH ChestX-ray14 is ready in {root}. Train with:\n  python train.py data=nih data.root={root} "
          f"data.labels={root}/Data_Entry_2017_v2020.csv split=official", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
