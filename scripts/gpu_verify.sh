#!/usr/bin/env bash
# One call on a CUDA machine: every GPU test, then the norm bench and the DiT per-NFE bench.
# Logs go to ${OUT:-gpu-out}/. Usage: bash scripts/gpu_verify.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/gpu.txt"
timeout 260 python3 -m pytest -q -m gpu -p no:cacheprovider tests/unit/kernels tests/unit/models/test_pipeline_gpu.py \
    2>&1 | tee "$OUT/gpu_tests.log"
timeout 90 python3 -m kernels.bench_norms --no-sweep 2>&1 | tee "$OUT/bench_norms.log"
timeout 200 python3 -m models.bench_dit --sizes 1.3b,14b --reps 2 --budget-s 150 --no-checks 2>&1 | tee "$OUT/bench_dit.log"
