#!/usr/bin/env bash
# Create .venv and install TurboVid with its test extras. Safe to re-run.
# torch is pinned first so that pip takes the CPU build rather than the CUDA wheels.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    .venv/bin/python -m pip install -q "torch==${TORCH_VERSION:-2.13.0}"
fi
.venv/bin/python -m pip install -q -e ".[test]"
if ! command -v redis-server >/dev/null 2>&1; then
    echo "bootstrap: redis-server not found; the dev stack needs it (Debian: apt-get install redis-server)" >&2
fi
