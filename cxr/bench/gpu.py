"""GPU measures beyond the training step (cxr.bench.distributed.bench_gpu): DDP over the GPUs present and the
service on a GPU. Each one is a skipped row (no error) without a CUDA GPU; ``scripts/gpu_check.sh`` runs them all."""

from __future__ import annotations

from cxr.bench.core import Row, Sizes

GPU_SERVE_REQUESTS = 500  # per concurrency level: the device time of a lent GPU is short


def gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def skipped(measure: str, unit: str) -> list[Row]:
    return [Row(measure, unit, None, None, note="skipped: no CUDA GPU visible (run scripts/gpu_check.sh on one)")]


def bench_gpu_ddp(sizes: Sizes) -> list[Row]:
    """Lightning training img/s of the thesis net on 1 GPU vs DDP on every GPU present (batch 64 per GPU,
    in-memory images, trainer.precision=auto)."""
    from cxr.bench.distributed import GPU_BATCH, _measure

    gpus = gpu_count()
    if not gpus:
        return skipped("DDP on the GPUs present vs 1 GPU (train, total)", "img/s")
    one = _measure(1, sizes, "gpu")
    every = _measure(gpus, sizes, "gpu") if gpus > 1 else one
    note = (
        f"{gpus} GPU(s): {every['img_per_s_total']:.0f} img/s total, {every['img_per_s_per_process']:.0f} per GPU; "
        f"batch {GPU_BATCH} per GPU, {one['precision']}" + ("" if gpus > 1 else "; one GPU only: DDP not measured")
    )
    return [
        Row(
            f"DDP {gpus} GPU(s) vs 1 (train, total)",
            "img/s",
            one["img_per_s_total"],
            every["img_per_s_total"],
            note=note,
            details={"one": one, "every": every, "gpus": gpus},
        )
    ]


def bench_gpu_serve(sizes: Sizes, requests: int | None = None, image_dir=None) -> list[Row]:
    """The service (python -m cxr.serve device=cuda, the torch backend) under the bench's bounded load."""
    from cxr.bench.serving import bench_serve

    if not gpu_count():
        return skipped("serve /predict on a GPU", "req/s")
    n = requests or (20 if sizes.name == "tiny" else GPU_SERVE_REQUESTS)
    rows = bench_serve(sizes, n, image_dir, overrides=("device=cuda", "backend=torch"))
    for row in rows:
        row.measure = row.measure.replace("serve ", "serve on a GPU: ", 1)
    return rows
