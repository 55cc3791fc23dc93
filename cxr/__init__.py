"""cxr: an experiment framework for deep learning on chest X-rays (PyTorch Lightning + Hydra)."""

import os

# PyTorch's OpenMP threads (GNU libgomp in torch's wheels) spin while they wait for one another: by default for
# about 300,000 turns, far longer than the gaps between the operators of a training step. On cores shared with
# other processes a spinning thread burns the time slice its partner needs (python -m cxr.bench, docs/performance.md "Fast
# on a CPU": thesis-net training on 2 shared cores went from 5.4 to 12.3 img/s fp32 and 5.7 to 22.3 bf16 without
# spinning); on an idle machine not spinning at all costs about 9% of a bf16 step (148 vs 162 img/s). A short spin
# (10,000 turns) keeps both: bf16 49.1 img/s vs 49.5 passive beside three busy loops, 162 idle. It must be set
# before torch loads libgomp, i.e. here (the entry points import cxr first); OMP_WAIT_POLICY or GOMP_SPINCOUNT in
# the environment win.
if "OMP_WAIT_POLICY" not in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", "10000")

__version__ = "0.1.0"
