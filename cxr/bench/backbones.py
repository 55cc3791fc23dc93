"""``python -m cxr.bench --only backbones``: per pretrained-source architecture, parameters, CPU training and
inference img/s at its native input size and peak memory, each in its own subprocess (so that peak RSS is its own),
random weights (nothing downloaded), a few batches only."""

from __future__ import annotations

import json
import subprocess
import sys

from cxr.bench.core import Row, Sizes

# registry spec, channels, native size; RAD-DINO: transformers' DINOv2 ViT-B/14 at its processor's 518 px
ARCHITECTURES = {
    "xrv DenseNet-121": ({"name": "xrv/densenet121", "args": {}}, 1, 224),
    "xrv ResNet-50": ({"name": "xrv/resnet50", "args": {}}, 1, 512),
    "timm ViT-B/16": ({"name": "timm/vit_base_patch16_224", "args": {}}, 3, 224),
    "RAD-DINO ViT-B/14": ({"name": "hf/dinov2", "args": {"config": "RAD_DINO"}}, 3, 518),
}
_CHILD = r"""
import json, resource, sys, time
import torch
from cxr.models import registry
spec, channels, size, batch, steps = json.loads(sys.argv[1])
if spec["args"].get("config") == "RAD_DINO":
    from transformers import Dinov2Config
    spec["args"]["config"] = json.dumps(Dinov2Config(image_size=518).to_dict())
torch.manual_seed(0)
net = registry.build(spec, "bench", num_outputs=14)
params = sum(p.numel() for p in net.parameters())
images, targets = torch.rand(batch, channels, size, size), torch.rand(batch, 14).round()
optimizer = torch.optim.Adam(net.parameters(), 1e-4)
def train_step():
    optimizer.zero_grad()
    torch.nn.functional.binary_cross_entropy_with_logits(net(images), targets).backward()
    optimizer.step()
def timed(step, n):
    step()  # warm-up
    start = time.perf_counter()
    for _ in range(n):
        step()
    return batch * n / (time.perf_counter() - start)
net.train()
train = timed(train_step, steps)
net.eval()
with torch.inference_mode():
    infer = timed(lambda: net(images), steps)
print(json.dumps({"params": params, "train": train, "infer": infer,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def bench_backbones(sizes: Sizes) -> list[Row]:
    """One row per architecture: training img/s (baseline column) and inference img/s (fast column)."""
    batch, steps = (1, 1) if sizes.name == "tiny" else (4, 2)
    rows = []
    for name, (spec, channels, size) in ARCHITECTURES.items():
        result = subprocess.run(
            [sys.executable, "-c", _CHILD, json.dumps([spec, channels, size, batch, steps])],
            capture_output=True,
            text=True,
            timeout=1800,
        )
        if result.returncode != 0:
            raise RuntimeError(f"{name}: {result.stderr.strip().splitlines()[-1:]}")
        found = json.loads(result.stdout.strip().splitlines()[-1])
        rows.append(
            Row(
                f"backbone {name} ({channels}x{size}px): train | inference img/s",
                "img/s",
                round(found["train"], 2),
                round(found["infer"], 2),
                note=f"{found['params'] / 1e6:.1f} M parameters, peak RSS {found['peak_mb']:.0f} MB, batch {batch}",
                details={**found, "batch": batch, "steps": steps, "size": size, "channels": channels},
            )
        )
    return rows
