"""Scaling up: trainer configs (GPU, DDP), DDP with 2 CPU processes (gloo) against one process, DDP inside a Hydra
multirun, the SLURM launcher config, submitit_local multiruns with a preempted and requeued job."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

import pandas as pd
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from tests.conftest import DEMO_OVERRIDES, REPO
from tests.test_train import run_script

# Same data order in both runs (Lightning's DistributedSampler, seeded), same global batch (2 x 5 = 1 x 10), SGD
# (Adam divides by the gradient's running RMS, which turns rounding noise in near-zero gradients into lr-sized
# steps). Measured on this machine after 2 epochs: weights within 5e-4, test probabilities within 2e-4, the same
# validation AUROC every epoch, validation loss within 1e-4.
PARITY = [
    "program=C",
    "trainer.max_epochs=2",
    "callbacks.early_stopping=null",
    "trainer.deterministic=true",
    "model.optimizer._target_=torch.optim.SGD",
    "~model.optimizer.eps",
    "model.optimizer.lr=0.01",
    "data_check=false",
    "logger=csv",
]
WEIGHT_TOLERANCE, PROBABILITY_TOLERANCE, LOSS_TOLERANCE = 2e-3, 2e-3, 1e-3


def test_trainer_configs_for_gpu_and_ddp(make_cfg):
    gpu = make_cfg(["trainer=gpu"])
    assert (gpu.trainer.accelerator, gpu.trainer.devices, gpu.trainer.precision) == ("gpu", 1, "auto")
    assert gpu.data.num_workers > 0 and gpu.data.pin_memory and gpu.data.persistent_workers
    assert gpu.trainer.max_epochs == gpu.program.training.max_epochs  # the rest of trainer=cpu is kept
    ddp = make_cfg(["trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2"])
    assert ddp.trainer.strategy._target_ == "cxr.distributed.JobDDPStrategy" and ddp.trainer.sync_batchnorm
    assert ddp.trainer.strategy.run_config == f"{ddp.paths.output_dir}/.hydra/resolved.yaml"
    assert ddp.data.pin_memory and ddp.trainer.precision == "auto"
    cpu = make_cfg(["trainer=ddp_cpu"])
    assert (cpu.trainer.accelerator, cpu.trainer.devices, cpu.trainer.strategy.process_group_backend) == (
        "cpu",
        2,
        "gloo",
    )
    strategy = instantiate(cpu.trainer.strategy)
    from cxr.distributed import JobDDPStrategy

    assert isinstance(strategy, JobDDPStrategy) and strategy.run_config.endswith(".hydra/resolved.yaml")


@pytest.mark.parametrize(
    "cuda, bf16, expected", [(True, True, "bf16-mixed"), (True, False, "16-mixed"), (False, False, "16-mixed")]
)
def test_gpu_precision_auto_prefers_bf16_where_supported(monkeypatch, cuda, bf16, expected):
    from cxr import inference

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: bf16)
    assert inference.resolve_precision("auto", "gpu") == expected
    assert inference.resolve_precision("bf16-mixed", "gpu") == "bf16-mixed"  # a forced value is kept
    if not cuda:
        assert inference.resolve_precision("auto", "auto") == inference.resolve_precision("auto", "cpu")


def test_ddp_ranks_rerun_the_jobs_own_config_not_sys_argv(tmp_path, monkeypatch):
    """The launcher starts rank 1 with `python -m cxr.distributed <run dir>/.hydra/resolved.yaml`, whatever sys.argv says
    (under -m or a sweeper sys.argv would rerun the whole sweep); this breaks loudly if Lightning changes."""
    from lightning.fabric.plugins.environments import LightningEnvironment
    from lightning.pytorch.strategies.launchers import subprocess_script

    from cxr.distributed import _JobLauncher

    run_config = tmp_path / "config.yaml"
    run_config.write_text("seed: 1\n")
    monkeypatch.setattr(sys, "argv", ["train.py", "-m", "model.optimizer.lr=1e-3,2e-3"])
    started = []
    monkeypatch.setattr(
        subprocess_script.subprocess,
        "Popen",
        lambda command, env, cwd=None: started.append((command, env)) or mock.Mock(),
    )
    with mock.patch.dict(os.environ, {}, clear=False):
        os.environ.pop("LOCAL_RANK", None)
        _JobLauncher(str(run_config), LightningEnvironment(), num_processes=3, num_nodes=1)._call_children_scripts()
    assert [command for command, _ in started] == [[sys.executable, "-m", "cxr.distributed", str(run_config)]] * 2
    assert [env["LOCAL_RANK"] for _, env in started] == ["1", "2"]
    assert all(str(REPO) in env["PYTHONPATH"].split(os.pathsep) for _, env in started)
    with pytest.raises(FileNotFoundError, match="run_config"):
        _JobLauncher(str(tmp_path / "missing.yaml"), LightningEnvironment(), 2, 1)._call_children_scripts()


def _train_in_subprocess(demo_root: Path, run_dir: Path, *overrides: str) -> dict:
    result = run_script(["train.py", *DEMO_OVERRIDES(demo_root), *overrides, f"hydra.run.dir={run_dir}"])
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((run_dir / "metrics.json").read_text())


@pytest.mark.slow
def test_ddp_two_cpu_processes_match_one_process(tmp_path, demo_root):
    """2 gloo processes x batch 5 against 1 process x batch 10: one run directory, the same metrics within the
    stated tolerances, validation AUROC over all processes' predictions, files written by rank 0 only."""
    single, double = tmp_path / "one", tmp_path / "two"
    one = _train_in_subprocess(demo_root, single, *PARITY, "trainer=ddp_cpu", "trainer.devices=1", "data.batch_size=10")
    two = _train_in_subprocess(demo_root, double, *PARITY, "trainer=ddp_cpu", "trainer.devices=2", "data.batch_size=5")
    assert (one["processes"], two["processes"]) == (1, 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "two"]  # no directory per rank
    checkpoints = sorted(p.name for p in (double / "checkpoints").iterdir())
    assert len(checkpoints) == 2 and checkpoints[0].startswith("best-epoch") and checkpoints[1] == "last.ckpt"
    assert not list(double.glob(".*.tmp"))

    first, second = pd.read_csv(single / "history.csv"), pd.read_csv(double / "history.csv")
    assert list(second["epoch"]) == [1, 2]
    assert (first["val/auroc"] - second["val/auroc"]).abs().max() <= 1e-6
    assert (first["val/loss"] - second["val/loss"]).abs().max() <= LOSS_TOLERANCE
    assert (first["train/loss"] - second["train/loss"]).abs().max() <= LOSS_TOLERANCE
    weights = [
        torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
        for run in (single, double)
    ]
    assert max((weights[0][k] - weights[1][k]).abs().max().item() for k in weights[0]) <= WEIGHT_TOLERANCE
    p1, p2 = (pd.read_csv(run / "predictions_test.csv") for run in (single, double))
    assert (
        p1["image"].equals(p2["image"]) and (p1["probability"] - p2["probability"]).abs().max() <= PROBABILITY_TOLERANCE
    )
    assert two["test"]["n"] == one["test"]["n"] == two["split"]["test"]["images"]
    assert two["validation"]["auroc_last"] == pytest.approx(second["val/auroc"].iloc[-1])

    # val/auroc of the last epoch is the AUROC of the final weights over ALL validation images (not a mean of
    # per-process AUROCs, nor over Lightning's padded duplicates)
    from sklearn.metrics import roc_auc_score

    from cxr.inference import predict_probabilities
    from cxr.models.checkpoints import load_classifier

    cfg = OmegaConf.load(double / "config.yaml")
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    model, _ = load_classifier(double / "checkpoints" / "last.ckpt")
    probabilities = predict_probabilities(model, datamodule.eval_dataloader("val"), "eager")
    assert roc_auc_score(datamodule.rows("val")["target"], probabilities) == pytest.approx(
        second["val/auroc"].iloc[-1], abs=1e-6
    )


@pytest.mark.slow
def test_ddp_inside_a_multirun_trains_each_job_once_in_its_own_directory(tmp_path, demo_root):
    """Plain Lightning `ddp` would rerun the sweep in rank 1 (more directories, other hyper-parameters)."""
    sweep_dir, run_dir = tmp_path / "multirun", tmp_path / "never"
    result = run_script(
        [
            "train.py",
            "-m",
            "trainer=ddp_cpu",
            "model.optimizer.lr=0.001,0.002",
            "debug=fdr",
            "logger=csv",
            *DEMO_OVERRIDES(demo_root),
            f"hydra.sweep.dir={sweep_dir}",
            f"hydra.run.dir={run_dir}",
        ]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # each job's directory: its number and run name (the program and the swept value)
    assert sorted(p.name for p in sweep_dir.iterdir() if p.is_dir()) == ["0_A-lr0.001", "1_A-lr0.002"]
    assert not run_dir.exists()
    for job, lr in (("0_A-lr0.001", 0.001), ("1_A-lr0.002", 0.002)):
        assert f"model.optimizer.lr={lr}" in OmegaConf.load(sweep_dir / job / ".hydra" / "overrides.yaml")
        assert OmegaConf.load(sweep_dir / job / "config.yaml").model.optimizer.lr == lr
        assert json.loads((sweep_dir / job / "metrics.json").read_text())["processes"] == 2


def test_slurm_launcher_config_gives_one_task_per_gpu_and_a_requeue_signal(tmp_path, monkeypatch):
    """The sbatch script submitit would submit for hydra/launcher=slurm trainer=ddp (a fake srun on PATH: submitit
    only checks that it exists)."""
    import submitit
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from omegaconf import open_dict

    from tests.conftest import CONFIG_DIR

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(
            "train",
            return_hydra_config=True,
            overrides=[
                "hydra/launcher=slurm",
                "trainer=ddp",
                "trainer.devices=4",
                "trainer.num_nodes=2",
                "hydra.launcher.partition=gpu",
                "hydra.launcher.timeout_min=600",
            ],
        )
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir, cfg.hydra.runtime.cwd, cfg.hydra.job.name = str(tmp_path), str(REPO), "train"
    HydraConfig.instance().set_config(cfg)
    params = dict(instantiate(cfg.hydra.launcher).params)
    GlobalHydra.instance().clear()
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "srun").write_text("#!/bin/sh\nexit 0\n")
    (fake / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")
    # what hydra_submitit_launcher.BaseSubmititLauncher.launch does with the parameters
    executor = submitit.AutoExecutor(
        folder=tmp_path / "submitit", cluster="slurm", slurm_max_num_timeout=params.pop("max_num_timeout")
    )
    params.pop("submitit_folder")
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items()})
    script = executor._executor._make_submission_file_text("python -u -m submitit.core._submit x", "id")
    for line in (
        "--nodes=2",
        "--ntasks-per-node=4",
        "--gpus-per-node=4",
        "--partition=gpu",
        "--time=600",
        "--signal=USR2@120",
    ):
        assert f"#SBATCH {line}\n" in script
    assert executor._executor.max_num_timeout == 10


def test_a_requeued_submitit_job_resumes_from_its_last_checkpoint(make_cfg, monkeypatch):
    from cxr.run_dir import requeued_job

    cfg = make_cfg(["debug=fdr"])
    checkpoints = Path(cfg.paths.output_dir) / "checkpoints"
    checkpoints.mkdir(parents=True)
    monkeypatch.delenv("SUBMITIT_EXECUTOR", raising=False)
    (checkpoints / "last.ckpt").write_bytes(b"x")
    requeued_job(cfg)
    assert cfg.ckpt_path is None  # not a cluster job: a run directory with checkpoints is refused as before
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    requeued_job(cfg)
    assert cfg.ckpt_path == "last"
    fresh = make_cfg(["debug=fdr"])
    assert requeued_job(fresh) is None and fresh.ckpt_path is None  # first attempt: nothing to resume
    Path(fresh.paths.output_dir).mkdir(parents=True, exist_ok=True)
    (Path(fresh.paths.output_dir) / "metrics.json").write_text('{"program": "A"}')
    assert requeued_job(fresh) == {"program": "A"}  # requeued after it had finished: nothing is rerun


def _submitit_tasks(sweep_dir: Path) -> list[int]:
    """PIDs of the submitit task processes of this sweep (`python -m submitit.core._submit <sweep>/.submitit/..`)."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            command = (entry / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        if b"submitit.core._submit" in command and any(str(sweep_dir).encode() in part for part in command):
            pids.append(int(entry.name))
    return pids


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the submitit task through /proc")
def test_submitit_local_multirun_with_a_preempted_job_requeued_and_resumed_exactly(tmp_path, demo_root):
    """Two jobs with hydra/launcher=submitit_local; when job 0 has a last.ckpt, every task gets SIGUSR2 (what SLURM
    sends before the time limit or on preemption). Submitit requeues the job, which resumes from last.ckpt in the
    same run directory and ends exactly as an uninterrupted run."""
    sweep_dir = tmp_path / "sweep"
    settings = [
        *DEMO_OVERRIDES(demo_root),
        "program=B",
        "trainer.max_epochs=4",
        "callbacks.early_stopping=null",
        "trainer.deterministic=true",
        "logger=csv",
        "data_check=false",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(
        [
            sys.executable,
            "train.py",
            "-m",
            "hydra/launcher=submitit_local",
            "seed=1,2",
            *settings,
            f"hydra.sweep.dir={sweep_dir}",
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        last = sweep_dir / "0_B-seed1" / "checkpoints" / "last.ckpt"
        deadline = time.monotonic() + 600
        while not last.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert process.poll() is None, process.stderr.read()[-3000:]
        tasks = _submitit_tasks(sweep_dir)
        assert tasks
        for pid in tasks:
            os.kill(pid, signal.SIGUSR2)
        _, stderr = process.communicate(timeout=900)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, stderr[-3000:]
    assert sorted(p.name for p in sweep_dir.iterdir() if p.is_dir() and not p.name.startswith(".")) == [
        "0_B-seed1",
        "1_B-seed2",
    ]
    logs = "".join(p.read_text() for p in (sweep_dir / ".submitit").rglob("*_log.*"))
    assert "Requeued" in logs and "requeued local job: resuming" in logs
    for job, seed in (("0_B-seed1", 1), ("1_B-seed2", 2)):
        metrics = json.loads((sweep_dir / job / "metrics.json").read_text())
        assert metrics["epochs_trained"] == 4 and OmegaConf.load(sweep_dir / job / "config.yaml").seed == seed
    reference = tmp_path / "reference"
    _train_in_subprocess(demo_root, reference, *settings, "seed=1")
    for name in ("metrics.json", "history.csv", "predictions_test.csv"):
        assert (sweep_dir / "0_B-seed1" / name).read_bytes() == (reference / name).read_bytes(), name


def _random_state_worker(rank: int, world_size: int, port: int, folder: str) -> None:
    """One process of a 2-process gloo group: save the random states as a DDP checkpoint would (every rank dumps,
    rank 0's dictionary is written), scramble them, restore from rank 0's dictionary, draw again."""
    import random

    import numpy as np

    from cxr.callbacks import RandomState

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        torch.manual_seed(100 + rank), np.random.seed(rank), random.seed(rank)
        state = RandomState().state_dict()  # collective: gathers every rank's states
        expected = [torch.rand(3).tolist(), np.random.rand(3).tolist(), random.random()]
        written = {**state["ranks"][0], "ranks": state["ranks"]}  # what rank 0 saves in the checkpoint
        torch.manual_seed(999), np.random.seed(999), random.seed(999)
        RandomState().load_state_dict(written)
        drawn = [torch.rand(3).tolist(), np.random.rand(3).tolist(), random.random()]
        Path(folder, f"{rank}.json").write_text(json.dumps({"expected": expected, "drawn": drawn}))
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_each_ddp_process_gets_its_own_random_state_back_on_resume(tmp_path):
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    torch.multiprocessing.spawn(_random_state_worker, args=(2, port, str(tmp_path)), nprocs=2)
    results = [json.loads((tmp_path / f"{rank}.json").read_text()) for rank in (0, 1)]
    assert all(result["drawn"] == result["expected"] for result in results)
    assert results[0]["expected"] != results[1]["expected"]  # the processes' states differ: each got its own


@pytest.mark.slow
def test_bench_ddp_rows_measure_one_and_two_processes():
    from dataclasses import replace

    from cxr.bench import TINY
    from cxr.bench.distributed import bench_ddp

    total, per_process = bench_ddp(replace(TINY, lightning_images=40))
    assert total.measure.startswith("DDP") and per_process.measure.startswith("DDP")
    one, two = total.details["1"], total.details["2"]
    assert (one["processes"], two["processes"]) == (1, 2)
    assert two["images_per_process_per_epoch"] * 2 == one["images_per_process_per_epoch"] == 40


@pytest.mark.slow
def test_gpu_loader_settings_work_with_the_preprocessing_cache(make_cfg, tmp_path):
    """trainer=gpu's loader (workers, pinned memory, persistent workers) reading data.cache, run on the CPU here."""
    from cxr.jobs.train import train

    cfg = make_cfg(
        [
            "trainer=gpu",
            "trainer.accelerator=cpu",
            "trainer.precision=32-true",
            "trainer.benchmark=false",
            "data.cache=true",
            f"data.cache_dir={tmp_path / 'cache'}",
            "data.num_workers=2",
            "debug=fdr",
            "logger=csv",
        ]
    )
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    loader = datamodule.train_dataloader()
    assert (loader.num_workers, loader.pin_memory, loader.persistent_workers) == (2, True, True)
    assert datamodule.datasets["train"].source is not None  # reads the cache, not the PNGs
    metrics = train(cfg)
    assert metrics["test"]["n"] == metrics["split"]["test"]["images"] and metrics["processes"] == 1
    assert list((tmp_path / "cache").glob("*.npy"))


@pytest.mark.slow
def test_ddp_run_resumes_exactly_across_processes(tmp_path, demo_root):
    """Program D (random augmentation: each process draws its own) on 2 gloo processes: a run stopped after epoch 2
    (its metrics.json removed, as if it died before evaluating) and resumed with `resume=` to 3 epochs ends
    bit-for-bit like an uninterrupted 3-epoch run."""
    settings = [
        "program=D",
        "trainer=ddp_cpu",
        "data.batch_size=8",
        "callbacks.early_stopping=null",
        "trainer.deterministic=true",
        "data_check=false",
        "logger=csv",
    ]
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    _train_in_subprocess(demo_root, reference, *settings, "trainer.max_epochs=3")
    _train_in_subprocess(demo_root, resumed, *settings, "trainer.max_epochs=2")
    (resumed / "metrics.json").unlink()
    result = run_script(["train.py", f"resume={resumed}", "trainer.max_epochs=3"])
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("history.csv", "predictions_test.csv", "metrics.json"):
        assert (resumed / name).read_bytes() == (reference / name).read_bytes(), name
    # the ranks ran this start's config (a resume), while config.yaml keeps the first start's
    assert OmegaConf.load(resumed / ".hydra" / "resolved.yaml").ckpt_path == "last"
    assert OmegaConf.load(resumed / "config.yaml").ckpt_path is None
