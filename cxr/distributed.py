"""Multi-process training (DDP) inside Hydra jobs: every rank trains the same job, in the same run directory.
An entry point (it starts the ranks' processes, ``python -m cxr.distributed``); the training job never imports it.

Lightning's ``ddp`` starts ranks 1..N-1 by re-running ``sys.argv``. Under ``python train.py -m ...`` or a sweeper
that re-runs the whole sweep in every process: each rank makes its own run directories and, under Optuna, trains
other hyper-parameters (lightning-hydra-template's most reported problem); under submitit ``sys.argv`` is not even
``train.py``. :class:`JobDDPStrategy` is Lightning's ``DDPStrategy`` whose launcher starts the other ranks with
this job's own resolved config instead (``python -m cxr.distributed <run dir>/.hydra/resolved.yaml``, written by
rank 0 before training: this start's config, also on a resume), whoever launched the job: a plain run, a multirun, a sweeper, submitit. Where the cluster
starts the processes itself (SLURM tasks, torchrun) Lightning starts none and this class changes nothing.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path
from unittest import mock

import lightning.pytorch.strategies.launchers.subprocess_script as _subprocess_script
import torch.distributed as dist
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher

log = logging.getLogger(__name__)
# what Lightning's launcher sets in this process's environment for the children
_LAUNCH_VARIABLES = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE", "PYTHONPATH")


def rank_command(run_config: str | os.PathLike) -> list[str]:
    """The command that runs one more rank of the job whose resolved config is ``run_config``."""
    return [sys.executable, "-m", "cxr.distributed", str(Path(run_config).resolve())]


class _JobLauncher(_SubprocessScriptLauncher):
    """Lightning's subprocess launcher (environment variables, process observer) with :func:`rank_command` as the
    children's command instead of ``sys.argv``."""

    def __init__(self, run_config: str, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.run_config = run_config
        self._saved_environment: dict[str, str | None] = {}

    def _call_children_scripts(self) -> None:
        self._saved_environment = {key: os.environ.get(key) for key in _LAUNCH_VARIABLES}
        if not Path(self.run_config).is_file():
            raise FileNotFoundError(
                f"trainer.strategy.run_config={self.run_config}: no such file (the other DDP "
                "ranks run this resolved config)"
            )
        package_root = str(Path(__file__).resolve().parents[1])  # so that `-m cxr.distributed` imports this cxr
        paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
        if package_root not in paths:
            os.environ["PYTHONPATH"] = os.pathsep.join([package_root, *filter(None, paths)])
        command = rank_command(self.run_config)
        # Lightning builds the command inline; swap in ours (tests/test_distributed.py notices if this stops working)
        with (
            mock.patch.object(_subprocess_script, "_HYDRA_AVAILABLE", False),
            mock.patch.object(_subprocess_script, "_basic_subprocess_cmd", lambda: command),
        ):
            super()._call_children_scripts()

    def finish(self, timeout_s: float = 300) -> None:
        """After fit: wait for ranks 1..N-1 to exit, close the process group and restore the environment, so that the
        next job of a multirun (in this same process) starts its own processes and group."""
        for process in self.procs:
            try:
                process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("DDP rank process %d still running after fit: killing it", process.pid)
                process.kill()
                process.wait()
        self.procs = []
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
        for key, value in self._saved_environment.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        self._saved_environment = {}


class JobDDPStrategy(DDPStrategy):
    """``DDPStrategy`` whose ranks 1..N-1 run ``run_config`` (this job's resolved config) rather than ``sys.argv``."""

    strategy_name = "ddp_job"

    def __init__(self, run_config: str, **kwargs):
        super().__init__(**kwargs)
        self.run_config = str(run_config)

    def teardown(self) -> None:
        super().teardown()
        if isinstance(self._launcher, _JobLauncher) and self._launcher.procs:
            self._launcher.finish()

    def _configure_launcher(self) -> None:
        super()._configure_launcher()
        if isinstance(self._launcher, _SubprocessScriptLauncher):
            self._launcher = _JobLauncher(self.run_config, self.cluster_environment, self.num_processes, self.num_nodes)


def main(argv: list[str] | None = None) -> int:
    """Rank >= 1 of a DDP job: ``python -m cxr.distributed <run dir>/.hydra/resolved.yaml`` (started by the launcher)."""
    from omegaconf import OmegaConf

    from cxr.jobs.train import train
    from cxr.run_dir import global_rank

    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        raise SystemExit("usage: python -m cxr.distributed <run dir>/.hydra/resolved.yaml (started by trainer=ddp)")
    logging.basicConfig(level=logging.WARNING, format=f"[rank {global_rank()}] %(levelname)s %(name)s: %(message)s")
    train(OmegaConf.load(argv[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
