"""How far the measures are from the machine's limit: FLOPs per image of the networks (torch's FlopCounterMode)
against the measured peak of a large matrix product in fp32, bf16 and int8 on the same cores."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from cxr.bench.core import Row, Sizes, interleaved, median


def flops_per_image(net: torch.nn.Module, image: tuple[int, int, int], batch: int = 2) -> dict[str, float]:
    """FLOPs per image of a forward pass and of a training step (forward + backward) of ``net``."""
    x = torch.rand(batch, *image)
    with FlopCounterMode(display=False) as counter:
        with torch.no_grad():
            net(x)
    forward = counter.get_total_flops() / batch
    with FlopCounterMode(display=False) as counter:
        out = net(x)
        F.binary_cross_entropy_with_logits(out.float(), torch.zeros_like(out.float())).backward()
    net.zero_grad(set_to_none=True)
    return {"forward": forward, "train": counter.get_total_flops() / batch}


def matmul_peak(sizes: Sizes, n: int | None = None) -> dict[str, float]:
    """GFLOP/s of an n x n matrix product in fp32 and bf16, and GOP/s in int8 (int32 sums, ``torch._int_mm``,
    where this torch has it on the CPU), timed round-robin on the cores torch uses."""
    n = n or (2048 if sizes.name != "tiny" else 256)
    a32, b32 = torch.rand(n, n), torch.rand(n, n)
    a16, b16 = a32.bfloat16(), b32.bfloat16()
    repeat = 4 if sizes.name != "tiny" else 1
    candidates = {
        "fp32": lambda: [a32 @ b32 for _ in range(repeat)],
        "bf16": lambda: [a16 @ b16 for _ in range(repeat)],
    }
    a8, b8 = torch.randint(-128, 128, (n, n), dtype=torch.int8), torch.randint(-128, 128, (n, n), dtype=torch.int8)
    try:
        torch._int_mm(a8[:32, :32], b8[:32, :32])
        candidates["int8"] = lambda: [torch._int_mm(a8, b8) for _ in range(repeat)]
    except (AttributeError, RuntimeError):  # no CPU int8 matmul in this torch
        pass
    times = interleaved(candidates, sizes.reps, max(1, sizes.warmup))
    return {name: 2 * n**3 * repeat / median(t) / 1e9 for name, t in times.items()}


def bench_limits(sizes: Sizes, rows: list[Row]) -> list[Row]:
    """Peak matmul GFLOP/s and the thesis net's FLOPs; the train and inference rows measured before in this run
    (``rows``) are given as a share of the peak."""
    from cxr.models.thesis_cnn import ThesisCNN

    flops = flops_per_image(ThesisCNN(3), (3, 150, 150))
    peak = matmul_peak(sizes)
    details = {
        "gflop_per_image": {k: v / 1e9 for k, v in flops.items()},
        "matmul_gflops": peak,
        "threads": torch.get_num_threads(),
    }
    out = [
        Row(
            "matmul peak fp32 vs bf16",
            "GFLOP/s",
            peak["fp32"],
            peak["bf16"],
            details=details,
            note=f"{torch.get_num_threads()} threads; thesis net {flops['forward'] / 1e9:.2f} GFLOP/image forward, "
            f"{flops['train'] / 1e9:.2f} training",
        )
    ]
    if "int8" in peak:
        out.append(
            Row(
                "matmul peak fp32 vs int8",
                "GOP/s",
                peak["fp32"],
                peak["int8"],
                details=details,
                note="int8 x int8 -> int32 (torch._int_mm)",
            )
        )
    shares = {}
    for row in rows:
        kind = (
            "train"
            if row.measure.startswith("train step")
            else "forward"
            if row.measure.startswith("inference")
            else None
        )
        if kind is None or row.fast is None or "vs Keras" in row.measure:
            continue
        precision = (
            "int8" if "int8" in row.measure else "bf16" if "bf16" in row.note or "bf16" in row.measure else "fp32"
        )
        if precision not in peak:
            continue
        achieved = row.fast * flops[kind] / 1e9
        shares[row.measure] = {"gflops": achieved, "share_of_peak": achieved / peak[precision], "peak": precision}
    if shares:
        details["share_of_peak"] = shares
        text = "; ".join(
            f"{m.split(',')[-1].strip()}: {v['gflops']:.0f} GFLOP/s = {100 * v['share_of_peak']:.0f}% "
            f"of {v['peak']} peak"
            for m, v in shares.items()
        )
        out.append(Row("thesis net vs matmul peak", "GFLOP/s", None, None, details=details, note=text))
    return out
