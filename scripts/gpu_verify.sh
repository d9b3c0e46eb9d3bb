#!/usr/bin/env bash
# GPU verification in one device call. Logs and results go to ${OUT:-gpu-out}/ (at most 8 files).
#   bash scripts/gpu_verify.sh tests    GPU tests (the fast-path subset), VAE bench, warm start through
#                                       real processes (turbovid bench --skip-stages, 2-layer umT5)
#   bash scripts/gpu_verify.sh bench    turbovid bench, whole job (full umT5-XXL) + DiT per-NFE bench
# Needs: redis-server on PATH (the e2e part), the service's packages importable.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
mode=${1:-tests}
W=/tmp/turbovid-bench-weights-$mode
{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
  python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
  nproc; df -h /tmp | tail -1; } 2>&1 | tee "$OUT/gpu.txt"

if [ "$mode" = tests ]; then
    # weights (GPU random init, disk writes) while the tests run
    (timeout 150 python3 -m cli.main bench --weights "$W" --text-encoder small --skip-e2e --skip-stages) \
        >"$OUT/weights.log" 2>&1 &
    wpid=$!
    timeout 110 python3 -m pytest -q -m gpu -p no:cacheprovider -o addopts="" --timeout 100 \
        tests/unit/models/test_ops.py::test_cuda_fused_kernels_match_plain_pytorch \
        tests/unit/models/test_pipeline_gpu.py \
        "tests/unit/kernels/test_w8a8_gpu.py::test_norm_int8_output_feeds_the_gemm_at_wan_shapes" \
        tests/unit/models/test_vae_gpu.py tests/unit/kernels/test_rmsnorm_silu.py 2>&1 | tee "$OUT/gpu_tests.log" | tail -25
    timeout 75 python3 -m models.bench_vae --sizes 832x480,1280x720 --repeats 2 --skip-encode 2>&1 \
        | tee "$OUT/bench_vae.log" | tail -20
    wait $wpid; tail -3 "$OUT/weights.log"
    timeout 200 python3 -m cli.main bench --weights "$W" --text-encoder small --skip-stages --jobs 3 \
        --start-timeout 170 --out "$OUT/warm_start.json" --logs "$OUT/e2e" 2>&1 | tee "$OUT/warm_start.log" \
        | grep -v " INFO \|^INFO" | tail -25
else
    timeout 330 python3 -m cli.main bench --weights "$W" --reps 2 --jobs 3 --start-timeout 200 \
        --out "$OUT/bench.json" --logs "$OUT/e2e" 2>&1 | tee "$OUT/bench.log" | grep -v " INFO \|^INFO" | tail -40
    timeout 90 python3 -m models.bench_dit --sizes 1.3b --reps 2 --budget-s 60 --no-checks 2>&1 \
        | tee "$OUT/bench_dit.log" | tail -12
fi
