#!/usr/bin/env bash
# GPU checks of issue 23, for a machine with a CUDA GPU (a few minutes on one H100): DenseNet-121 and the thesis
# network training img/s, fp32 vs bf16-mixed; DDP on every GPU present vs one; the service (python -m cxr.serve
# device=cuda) under a bounded load. Writes the table and ${1:-gpu_check.json}. Without a GPU it says so and exits 0.
#   bash scripts/gpu_check.sh [out.json]      (CXR_GPU_CHECK_QUICK=0 for the full repetitions)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-gpu_check.json}"
if ! python -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: skipped: no CUDA GPU visible"
    exit 0
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
quick=$([ "${CXR_GPU_CHECK_QUICK:-1}" = 1 ] && echo --quick || true)
exec python -m cxr.bench $quick --only gpu,gpu_ddp,gpu_serve --out "$out"
