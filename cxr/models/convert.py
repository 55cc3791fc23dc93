"""``python -m cxr.models.convert xrv <file> --trust-pickle``: a torchxrayvision weight file published as a whole
pickled model, rewritten as a safetensors state dict that cxr loads weights-only.

Unpickling runs code from the file, so it happens only here, only with ``--trust-pickle``, with torchxrayvision's
classes importable, and with a warning; cxr itself never unpickles weights.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path


def convert_xrv(path: Path, out: Path | None = None) -> Path:
    """Unpickle torchxrayvision's whole model at ``path`` and write its state dict as ``<stem>.safetensors``."""
    import torch
    from safetensors.torch import save_file

    try:
        import torchxrayvision  # noqa: F401  the pickle names its classes
    except ImportError:
        raise SystemExit("error: converting needs torchxrayvision: pip install -e '.[pretrained]'") from None
    warnings.warn(f"unpickling {path}: this runs code from the file; do it only for a file you trust", stacklevel=2)
    model = torch.load(path, map_location="cpu", weights_only=False)
    state = model.state_dict() if hasattr(model, "state_dict") else model
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise SystemExit(f"error: {path}: holds neither a model nor a state dict")
    out = out or path.with_suffix(".safetensors")
    save_file({k: v.contiguous() for k, v in state.items() if k != "op_threshs"}, str(out))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cxr.models.convert", description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=["xrv"], help="the publisher's format (xrv: a whole pickled model)")
    parser.add_argument("file", type=Path, help="the published weight file")
    parser.add_argument("--out", type=Path, help="where to write the safetensors file (default: beside the file)")
    parser.add_argument("--trust-pickle", action="store_true", help="allow unpickling (runs code from the file)")
    args = parser.parse_args(argv)
    if not args.file.is_file():
        print(f"error: {args.file}: no such file", file=sys.stderr)
        return 2
    if not args.trust_pickle:
        print(
            f"error: {args.file} is a pickled model; unpickling runs code from it: add --trust-pickle if you trust "
            "the file (e.g. checked against docs/pretrained.md)",
            file=sys.stderr,
        )
        return 2
    out = convert_xrv(args.file, args.out)
    print(f"wrote {out} (a state dict; use it as model.weights_file={out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
