"""Shared pieces of the benchmark: sizes per mode, interleaved timing, machine facts, the result table."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib.resources import files
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CONFIG_DIR = Path(str(files("cxr.conf")))  # conf/ in a checkout, shipped in the wheel as cxr.conf
SHARED_DATA = REPO.parent / "shared" / "data"


@dataclass(frozen=True)
class Sizes:
    """How much each measure does: repetitions (after warm-up) and work per repetition."""

    name: str
    warmup: int  # untimed rounds before the timed ones
    reps: int  # timed rounds; every figure is the median over them
    train_steps: int  # training steps per round (batch 10; several, so that switching candidates is rare)
    infer_batches: int  # inference batches per round
    infer_batch: int  # images per inference batch
    loader_loops: int  # passes over the full-resolution PNGs per loader round
    epoch_loops: int  # passes over them per training epoch
    epoch_reps: int  # timed epochs per candidate (an epoch is long: fewer than reps)
    lightning_images: int
    lightning_epochs: int
    nih_rows: int | None  # rows of the official CSV indexed and split (None: all 112,120)
    worker_counts: tuple = (0, 1, 2)
    densenet_batch: int = 8
    densenet_size: int = 224
    densenet_reps: int = 3


FULL = Sizes(
    "full",
    warmup=2,
    reps=7,
    train_steps=6,
    infer_batches=2,
    infer_batch=64,
    loader_loops=3,
    epoch_loops=2,
    epoch_reps=3,
    lightning_images=120,
    lightning_epochs=3,
    nih_rows=None,
)
QUICK = Sizes(
    "quick",
    warmup=1,
    reps=3,
    train_steps=4,
    infer_batches=1,
    infer_batch=64,
    loader_loops=2,
    epoch_loops=1,
    epoch_reps=2,
    lightning_images=60,
    lightning_epochs=3,
    nih_rows=None,
)
TINY = Sizes(
    "tiny",
    warmup=0,
    reps=1,
    train_steps=1,
    infer_batches=1,
    infer_batch=8,
    loader_loops=1,
    epoch_loops=1,
    epoch_reps=1,
    lightning_images=20,
    lightning_epochs=2,
    nih_rows=300,
    worker_counts=(0, 1),
    densenet_batch=2,
    densenet_size=64,
    densenet_reps=1,
)


def interleaved(candidates: dict[str, Callable[[], object]], reps: int, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds per call of each candidate, timed round-robin (A B C A B C ...) so that load from other processes
    falls on all of them alike."""
    for _ in range(warmup):
        for run in candidates.values():
            run()
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(max(1, reps)):
        for name, run in candidates.items():
            started = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - started)
    return times


def median(values) -> float:
    return float(statistics.median(values))


def speedup(times: dict[str, list[float]], fast: str, baseline: str) -> float:
    """Median over rounds of baseline seconds / fast seconds. Both ran in the same round, one after the other, so
    a change of load between rounds (another process starting or pausing) cancels out of each round's ratio."""
    return median([b / f for b, f in zip(times[baseline], times[fast])])


@dataclass
class Row:
    """One line of the table: a measure, its baseline and fast figures, their ratio and the target."""

    measure: str
    unit: str
    baseline: float | None
    fast: float | None
    target: str = ""
    met: bool | None = None
    ratio: float | None = None  # fast / baseline; the measures give the median of per-round ratios
    note: str = ""
    details: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.ratio is None and self.baseline and self.fast is not None:
            self.ratio = self.fast / self.baseline

    def as_dict(self) -> dict:
        return asdict(self)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict:
    import lightning
    import numpy
    import PIL
    import torch

    from cxr.inference import cpu_supports_bf16, onnxruntime_available

    versions = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "numpy": numpy.__version__,
        "pillow": PIL.__version__,
    }
    if onnxruntime_available():
        import onnxruntime

        versions["onnxruntime"] = onnxruntime.__version__
    return {
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "torch_threads": torch.get_num_threads(),
        "bf16_native": cpu_supports_bf16(),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "versions": versions,
    }


def _fmt(value, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if unit == "%":
        return f"{value:+.1f}%"
    if abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.2f}" if abs(value) < 10 else f"{value:.1f}"


def table(rows: list[Row]) -> str:
    """The result table: measure, baseline, fast, ratio, target, met."""
    header = ("measure", "baseline", "fast", "ratio", "target", "met")
    lines = [
        (
            f"{r.measure} [{r.unit}]" if r.unit else r.measure,
            _fmt(r.baseline, r.unit),
            _fmt(r.fast, r.unit),
            "-" if r.ratio is None else f"{r.ratio:.2f}x",
            r.target or "-",
            "-" if r.met is None else ("yes" if r.met else "NO"),
        )
        for r in rows
    ]
    widths = [max(len(str(x)) for x in column) for column in zip(header, *lines)]
    out = ["  ".join(h.ljust(w) for h, w in zip(header, widths)), "  ".join("-" * w for w in widths)]
    out += ["  ".join(str(x).ljust(w) for x, w in zip(line, widths)) for line in lines]
    notes = [f"- {r.measure}: {r.note}" for r in rows if r.note]
    return "\n".join(out + ([""] + notes if notes else []))
