"""One run per run directory: a run holds an exclusive lock (``flock``) on ``<run dir>/.run.lock`` while it runs,
released when its process ends, however it ends; a second run in the same directory is refused in one line instead
of mixing checkpoints, overwriting run.json and interleaving the log."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from cxr.errors import ConfigError

LOCK_FILE = ".run.lock"
_HELD: dict[str, int] = {}  # run directory -> open lock file (kept open: the lock lives as long as the process)


class RunLockedError(ConfigError):
    """Another process runs in this run directory."""


def lock_run_directory(folder: str | Path) -> None:
    """Take this process's lock on ``folder`` (created if missing); RunLockedError when another process holds it."""
    folder = Path(folder).absolute()
    if str(folder) in _HELD:
        return
    folder.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(descriptor, 32, 0).decode(errors="replace").strip()
        os.close(descriptor)
        raise RunLockedError(
            f"{folder} is in use by another run (process {holder or 'unknown'}); wait for it to "
            "end or choose another hydra.run.dir"
        ) from None
    os.ftruncate(descriptor, 0)
    os.pwrite(descriptor, str(os.getpid()).encode(), 0)
    _HELD[str(folder)] = descriptor


def release_run_directory(folder: str | Path) -> None:
    """Give the lock on ``folder`` back before the process ends (tests; a finished job in a long process)."""
    descriptor = _HELD.pop(str(Path(folder).absolute()), None)
    if descriptor is not None:
        os.close(descriptor)


def lock_from_arguments(argv: list[str]) -> list[str]:
    """Lock the ``hydra.run.dir=`` of a single run's command line before Hydra writes its ``.hydra/`` files there
    (not for ``-m`` sweeps, nor for the ranks > 0 a cluster starts with the same command line)."""
    ranks = [os.environ.get(name) for name in ("RANK", "LOCAL_RANK", "SLURM_PROCID")]
    if any(flag in argv for flag in ("-m", "--multirun")) or any(r not in (None, "", "0") for r in ranks):
        return argv
    run_dirs = [a.partition("=")[2] for a in argv if a.startswith("hydra.run.dir=")]
    if run_dirs and "${" not in run_dirs[-1]:
        lock_run_directory(run_dirs[-1])
    return argv
