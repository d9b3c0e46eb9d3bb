# A GPU worker: CUDA 12.8 runtime (Blackwell / RTX 5090 = sm_120 needs ≥ 12.8; also H100/H200, L40S),
# torch cu128 wheels, Triton, PyAV (bundled FFmpeg with libx264).
# Build from the repo root:  docker build -f docker/worker.Dockerfile -t turbovid-worker .
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04
ENV DEBIAN_FRONTEND=noninteractive PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-dev build-essential ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/venv
WORKDIR /app

# torch first (large, changes rarely) so code edits don't invalidate this layer.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu128
RUN pip install --index-url ${TORCH_INDEX} "torch>=2.7"

COPY pyproject.toml README.md ./
# The worker needs contract/ (what it shares with the gateway), cli/ (the `turbovid` command),
# worker/, models/ and kernels/; never the gateway's service/.
COPY contract ./contract
COPY cli ./cli
COPY worker ./worker
COPY models ./models
COPY kernels ./kernels
RUN pip install ".[worker]"

RUN useradd --system --uid 10001 --create-home turbovid && mkdir -p /cache /checkpoints && chown 10001 /cache
USER 10001
# Weights are mounted read-only at /checkpoints; Triton/inductor caches and tiny weights go to /cache.
ENV TURBOVID_WORKER__DEVICE=cuda TURBOVID_WORKER__DTYPE=auto TURBOVID_WORKER__METRICS_PORT=9101 \
    TURBOVID_WORKER__CACHE_DIR=/cache TRITON_CACHE_DIR=/cache/triton HF_HOME=/cache/hf
EXPOSE 9101
# Healthy once the pipeline is loaded and warmed up (the metrics server's /ready; /healthz is liveness).
# Loading a 14B model takes minutes: hence the long start period.
HEALTHCHECK --interval=15s --timeout=5s --start-period=600s --retries=3 \
    CMD python3 -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/ready' % os.environ.get('TURBOVID_WORKER__METRICS_PORT', '9101'), timeout=4)"
# SIGTERM: finish the current denoise step, re-queue (or finish) the job, exit. Give it time:
# compose stop_grace_period / k8s terminationGracePeriodSeconds.
STOPSIGNAL SIGTERM
ENTRYPOINT ["turbovid"]
CMD ["worker"]
