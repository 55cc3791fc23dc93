"""Scaling measures: DDP training with 1 vs 2 CPU processes (gloo), and GPU training steps (fp32 vs bf16-mixed)
where a CUDA GPU is present.

The DDP row runs the Lightning Trainer in a subprocess (``python -m cxr.bench.distributed <processes> ...``), as
``trainer=ddp_cpu`` does: the project's classifier, in-memory images (no decoding), batch 10 per process, the
default model settings; the first epoch is warm-up. Each process trains on its share of the same images, so
total img/s compares directly; Lightning gives each of N processes cpu_count / N threads.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cxr.bench.core import REPO, Row, Sizes, median

BATCH = 10
GPU_BATCH = 64  # per process on a GPU, where batch 10 of 150 px images would measure launch overhead
GPU_IMAGES = 8192


def _epoch_timer():
    import lightning as L

    class EpochTimer(L.Callback):
        def __init__(self):
            self.seconds: list[float] = []
            self._start = 0.0

        def on_train_epoch_start(self, trainer, pl_module):
            self._start = time.perf_counter()

        def on_train_epoch_end(self, trainer, pl_module):
            self.seconds.append(time.perf_counter() - self._start)

    return EpochTimer()


def _train(processes: int, images: int, epochs: int, out: str, accelerator: str = "cpu") -> None:
    """One measurement (in its own process tree): fit on ``images`` in-memory images, write the timings to ``out``.
    On ``accelerator=gpu``: batch ``GPU_BATCH`` per process and trainer.precision=auto (bf16-mixed on an H100)."""
    import lightning as L
    import torch
    from torch.utils.data import DataLoader

    from cxr.bench.compute import classifier, in_memory_dataset, train_paths
    from cxr.data.dataset import collate_batch
    from cxr.inference import resolve_precision

    path = train_paths()["default"]
    gpu = accelerator == "gpu"
    precision = resolve_precision("auto", "gpu") if gpu else path.precision
    batch = GPU_BATCH if gpu else BATCH
    loader = DataLoader(
        in_memory_dataset(images), batch_size=batch, shuffle=True, collate_fn=collate_batch, num_workers=2 * gpu
    )
    timer = _epoch_timer()
    strategy = "ddp" if processes > 1 else "auto"  # plain Lightning ddp is fine here: no Hydra sweep to rerun
    trainer = L.Trainer(
        accelerator=accelerator,
        devices=processes,
        strategy=strategy,
        max_epochs=epochs,
        precision=precision,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=[timer],
    )
    trainer.fit(classifier(path), train_dataloaders=loader)
    if trainer.is_global_zero:
        timed = timer.seconds[1:] or timer.seconds  # the first epoch is warm-up
        per_process = -(-images // processes)  # Lightning's DistributedSampler gives each process ceil(n / N)
        Path(out).write_text(
            json.dumps(
                {
                    "processes": processes,
                    "epoch_s": timer.seconds,
                    "median_epoch_s": median(timed),
                    "images_per_process_per_epoch": per_process,
                    "torch_threads_per_process": torch.get_num_threads(),
                    "precision": precision,
                    "accelerator": accelerator,
                    "batch_per_process": batch,
                }
            )
        )


def _measure(processes: int, sizes: Sizes, accelerator: str = "cpu") -> dict:
    gpu = accelerator == "gpu"
    images = max(GPU_IMAGES if gpu and sizes.name != "tiny" else sizes.lightning_images, 2 * BATCH * processes)
    epochs = max(2, sizes.lightning_epochs)
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "ddp.json"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        for key in ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "RANK"):
            env.pop(key, None)  # a fresh process group
        result = subprocess.run(
            [sys.executable, "-m", "cxr.bench.distributed", str(processes), str(images), str(epochs), str(out)]
            + [accelerator],
            cwd=folder,
            env=env,
            capture_output=True,
            text=True,
            timeout=1800,
        )
        if result.returncode != 0 or not out.is_file():
            raise RuntimeError(f"DDP measurement with {processes} process(es) failed: {result.stderr[-2000:]}")
        measured = json.loads(out.read_text())
    measured["img_per_s_per_process"] = measured["images_per_process_per_epoch"] / measured["median_epoch_s"]
    measured["img_per_s_total"] = measured["img_per_s_per_process"] * processes
    measured["images_per_epoch"] = images
    return measured


def bench_ddp(sizes: Sizes) -> list[Row]:
    """Training img/s with 1 process vs DDP with 2 CPU processes (gloo): per process and in total."""
    one, two = _measure(1, sizes), _measure(2, sizes)
    note = (
        f"2 processes: {two['img_per_s_per_process']:.1f} img/s per process, {two['img_per_s_total']:.1f} "
        f"total ({two['torch_threads_per_process']} torch thread(s) each) vs 1 process "
        f"{one['img_per_s_total']:.1f} img/s ({one['torch_threads_per_process']} threads); batch {BATCH} per "
        f"process, {one['precision']}"
    )
    return [
        Row(
            "DDP 2 CPU processes vs 1 (train, total)",
            "img/s",
            one["img_per_s_total"],
            two["img_per_s_total"],
            note=note,
            details={"1": one, "2": two},
        ),
        Row(
            "DDP 2 CPU processes vs 1 (train, per process)",
            "img/s",
            one["img_per_s_per_process"],
            two["img_per_s_per_process"],
            details={"1": one, "2": two},
        ),
    ]


def _gpu_step(net, batch: int, size: int, dtype):
    """A training step (forward under autocast ``dtype`` or fp32, BCE, backward, Adam) on the GPU."""
    import torch
    import torch.nn.functional as F

    model = net.cuda().train().to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-4, eps=1e-7, fused=True)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    images = torch.rand(batch, 3, size, size, device="cuda").contiguous(memory_format=torch.channels_last)
    targets = (torch.rand(batch, device="cuda") > 0.5).float()

    def step():
        with torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None):
            logits = model(images).reshape(-1)
        loss = F.binary_cross_entropy_with_logits(logits.float(), targets)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    return step


def bench_gpu(sizes: Sizes) -> list[Row]:
    """GPU training img/s, fp32 vs mixed precision (bf16 where supported, else fp16 with a scaler), for the thesis
    net (RGB 150 px) and torchvision's DenseNet-121 (224 px, CheXNet's network). Skipped without a CUDA GPU."""
    import torch

    if not torch.cuda.is_available():
        return [
            Row(
                "GPU train step (thesis net, DenseNet-121)",
                "img/s",
                None,
                None,
                note="skipped: no CUDA GPU visible (run python -m cxr.bench on a GPU machine)",
            )
        ]
    import torchvision

    from cxr.inference import gpu_supports_bf16
    from cxr.models.thesis_cnn import ThesisCNN

    mixed = torch.bfloat16 if gpu_supports_bf16() else torch.float16
    label = "bf16-mixed" if mixed == torch.bfloat16 else "16-mixed"
    nets = {
        "thesis net (150 px, batch 64)": (lambda: ThesisCNN(in_channels=3, image_size=150), 64, 150),
        "DenseNet-121 (224 px, batch 32)": (
            lambda: torchvision.models.densenet121(weights=None, num_classes=1),
            32,
            224,
        ),
    }
    rows = []
    for name, (build, batch, size) in nets.items():
        steps = {"fp32": _gpu_step(build(), batch, size, None), label: _gpu_step(build(), batch, size, mixed)}
        times: dict[str, list[float]] = {key: [] for key in steps}
        for round_ in range(sizes.warmup + sizes.reps):
            for key, step in steps.items():
                torch.cuda.synchronize()
                started = time.perf_counter()
                for _ in range(max(3, sizes.train_steps)):
                    step()
                torch.cuda.synchronize()
                if round_ >= sizes.warmup:
                    times[key].append(time.perf_counter() - started)
        rate = {key: batch * max(3, sizes.train_steps) / median(t) for key, t in times.items()}
        rows.append(
            Row(
                f"GPU train step, {name}: fp32 vs {label}",
                "img/s",
                rate["fp32"],
                rate[label],
                note=torch.cuda.get_device_name(),
                details={"img_per_s": rate, "batch": batch},
            )
        )
    return rows


if __name__ == "__main__":
    processes, images, epochs, out = sys.argv[1:5]
    _train(int(processes), int(images), int(epochs), out, *sys.argv[5:6])
