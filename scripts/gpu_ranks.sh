#!/usr/bin/env bash
# `turbovid worker --gpus 2` through real processes on a 2-GPU host (nvidia-h200-x2), random full-size
# weights: redis-server, `turbovid gateway`, first a one-GPU worker (the baseline), then a 2-rank worker on
# the same cache dir; JOBS jobs each (same seeds), then a rank killed mid-job. Logs go to ${OUT:-gpu-out}/.
#   bash scripts/gpu_ranks.sh [MODEL] [SIZE] [FRAMES]      default: wan2.1-t2v-1.3b 832x480 81
# Prints per worker: start -> ready, per job POST -> completed and the worker's stage timings; the 2-rank
# videos against the 1-rank ones (same seed: bf16 splits round differently, so close, not equal); and
# whether the killed rank failed its job (generation_failed, naming the rank) and the worker exited 1.
# PROFILE=1: the 2-rank worker writes each rank's kernel table per job to $OUT/profiles
# (TURBOVID_RANK_PROFILE; the profiler slows those jobs, so their times are not the worker's).
# Needs: redis-server on PATH, python3 with torch/triton and the service's packages (PyAV, redis, rq).
set -uo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:-wan2.1-t2v-1.3b}; SIZE=${2:-832x480}; FRAMES=${3:-81}; JOBS=${JOBS:-3}
OUT=${OUT:-gpu-out}; mkdir -p "$OUT"; OUT=$(cd "$OUT" && pwd)
W=/tmp/turbovid-ranks-weights-$MODEL; S=/tmp/turbovid-ranks; rm -rf "$S"; mkdir -p "$S"
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
{ nvidia-smi --query-gpu=name,memory.total --format=csv; python3 -c "import torch; print('torch', torch.__version__)"; } \
    2>&1 | tee "$OUT/ranks.log"

if [ "$MODEL" = wan-tiny ]; then  # CPU smoke of this script: TURBOVID_WORKER__DEVICE=cpu bash scripts/gpu_ranks.sh wan-tiny 64x64 9
    CKPT='[]'
else
    echo "== weights ($MODEL, random, 2-layer umT5)" | tee -a "$OUT/ranks.log"
    timeout 200 python3 -m cli.main bench --model "$MODEL" --weights "$W" --text-encoder small --skip-e2e --skip-stages \
        >"$OUT/weights.log" 2>&1 || { tail -20 "$OUT/weights.log"; exit 1; }
    CKPT="[\"$W\"]"
fi

port() { python3 -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])"; }
RP=$(port); GP=$(port); MP=$(port)
redis-server --port "$RP" --bind 127.0.0.1 --save "" --appendonly no >"$S/redis.log" 2>&1 &
export TURBOVID_DEV_MODE=true TURBOVID_AUTH__ENABLED=false TURBOVID_REDIS__URL=redis://127.0.0.1:$RP/0 \
    TURBOVID_GATEWAY__PORT=$GP TURBOVID_GATEWAY__MODELS="[\"$MODEL\"]" TURBOVID_GATEWAY__DEFAULT_MODEL=$MODEL \
    TURBOVID_WORKER__MODEL=$MODEL TURBOVID_WORKER__CHECKPOINT="$CKPT" TURBOVID_WORKER__METRICS_PORT=$MP \
    TURBOVID_WORKER__CACHE_DIR=$S/cache TURBOVID_STORAGE__LOCAL_DIR=$S/storage TURBOVID_QUEUE__HEARTBEAT_S=2
python3 -m cli.main gateway >"$OUT/gateway.log" 2>&1 &
trap 'kill $(jobs -p) 2>/dev/null' EXIT

timeout 540 python3 - "$MODEL" "$SIZE" "$FRAMES" "$JOBS" "$GP" "$MP" "$OUT" <<'EOF' 2>&1 | tee -a "$OUT/ranks.log"
import io, json, os, signal, subprocess, sys, time, urllib.request
import av, numpy as np
model, size, frames, jobs, gport, mport, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), *sys.argv[5:]
base, ready = f"http://127.0.0.1:{gport}", f"http://127.0.0.1:{mport}/ready"

def http(method, url, body=None, timeout=30):
    req = urllib.request.Request(url, method=method, data=json.dumps(body).encode() if body else None,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except OSError:
        return 0, b""

def start(name, args, env=None):
    log = open(f"{out}/{name}.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "cli.main", "worker", *args], stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, **(env or {})})
    t0 = time.monotonic()
    while http("GET", ready, timeout=2)[0] != 200:
        if proc.poll() is not None or time.monotonic() - t0 > 300:
            sys.exit(f"{name} did not get ready (exit {proc.poll()}); see {out}/{name}.log")
        time.sleep(0.5)
    print(f"{name}: start -> ready {time.monotonic() - t0:.1f} s", flush=True)
    return proc

def post(seed):
    body = {"model": model, "prompt": f"a fox in the snow {seed}", "size": size, "num_frames": frames,
            "num_steps": 4, "seed": seed}
    status, raw = http("POST", f"{base}/v1/videos", body)
    assert status in (200, 201, 202), (status, raw[:300])
    return json.loads(raw)["id"], time.monotonic()

def wait(job, t0, timeout=120):
    while time.monotonic() - t0 < timeout:
        video = json.loads(http("GET", f"{base}/v1/videos/{job}")[1])
        if video["status"] in ("completed", "failed"):
            return video, time.monotonic() - t0
        time.sleep(0.01)
    sys.exit(f"job {job} still {video['status']} after {timeout} s")

def run_jobs(name):
    videos = []
    for seed in range(jobs):
        video, s = wait(*post(seed))
        t = video.get("timings") or {}
        print(f"{name} job {seed}: {video['status']} POST->completed {s:.3f} s  worker: "
              + " ".join(f"{k} {t[k]:.3f}" for k in ("text_encode", "denoise", "vae_decode", "video_encode", "upload",
                                                      "total") if k in t), flush=True)
        data = http("GET", f"{base}/v1/videos/{video['id']}/content", timeout=60)[1]
        with av.open(io.BytesIO(data)) as c:
            videos.append(np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)]).astype(np.int16))
    return videos

one = start("worker1", [], {"CUDA_VISIBLE_DEVICES": "0"})
ref = run_jobs("1 GPU ")
one.send_signal(signal.SIGTERM); one.wait(60)
two = start("worker2", ["--gpus", "2"],
            {"TURBOVID_RANK_PROFILE": f"{out}/profiles"} if os.environ.get("PROFILE") == "1" else None)
got = run_jobs("2 ranks")
for seed, (a, b) in enumerate(zip(ref, got)):
    d = np.abs(a - b)
    psnr = 10 * np.log10(255**2 / max(float((d.astype(np.float64) ** 2).mean()), 1e-9))
    print(f"seed {seed}: 2 ranks vs 1 GPU: mean |diff| {d.mean():.3f}, max {d.max()}, PSNR {psnr:.1f} dB")

# a rank killed mid-job: the job fails naming it, the worker exits non-zero (NCCL: rank 0 may be blocked)
kids = [int(c) for t in os.listdir(f"/proc/{two.pid}/task") for c in open(f"/proc/{two.pid}/task/{t}/children").read().split()]
rank1 = [k for k in kids if b"spawn_main" in open(f"/proc/{k}/cmdline", "rb").read()
         and b"resource_tracker" not in open(f"/proc/{k}/cmdline", "rb").read()]
job, t0 = post(99)
while json.loads(http("GET", f"{base}/v1/videos/{job}")[1]).get("progress", 0) < 8:
    time.sleep(0.005)
os.kill(rank1[0], signal.SIGKILL)
video, s = wait(job, time.monotonic(), timeout=60)
print(f"kill rank 1 mid-job: job {video['status']} {s:.1f} s after the kill: {video.get('error')}")
try:
    print(f"worker exit code {two.wait(30)}")
except subprocess.TimeoutExpired:
    print("worker still running 30 s after the kill (FAIL)"); two.kill()
EOF
