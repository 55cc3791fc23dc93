"""cxr: an experiment framework for deep learning on chest X-rays (PyTorch Lightning + Hydra)."""
import os

# PyTorch's OpenMP threads spin while they wait for one another; on cores shared with other processes a waiting
# thread burns the time slice its partner needs and every step stalls (python -m cxr.bench, README "Fast on a CPU":
# thesis-net training on 2 shared cores went from 5.4 to 12.3 img/s fp32 and 5.7 to 22.3 bf16). Passive waiting must
# be chosen before torch loads libgomp, i.e. here (the entry points import cxr first); an explicit
# OMP_WAIT_POLICY=ACTIVE in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
