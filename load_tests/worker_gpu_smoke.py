"""Run one real worker in-process (burst mode) on this machine's GPU and report per-job timings.

    python load_tests/worker_gpu_smoke.py --model wan-tiny --jobs 4 --size 128x128 --frames 33

Starts a throw-away redis-server on loopback (needs `redis-server` on PATH), uses local storage in a
temp dir, enqueues `--jobs` T2V jobs the way the gateway does, runs `worker.main.run_worker`
(pipeline load + warm-up + the jobs) and prints load time, per-stage timings per job and the
worker's GPU memory gauges. No network, nothing left behind.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import uuid
from pathlib import Path

import redis
from prometheus_client import generate_latest

from cli.devstack import EmbeddedRedis
from contract.jobs import GenerationParams, JobSpec
from contract.jobstore import JobStore
from contract.keys import Keys
from contract.queue import JobQueue
from contract.settings import Settings
from worker.main import load_model_pipeline, run_worker
from worker.metrics import WorkerMetrics, cuda_memory_reader


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="wan-tiny")
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--attention", default="auto")
    p.add_argument("--linear", default="auto")
    p.add_argument("--jobs", type=int, default=4)
    p.add_argument("--size", default="128x128")
    p.add_argument("--frames", type=int, default=33)
    p.add_argument("--steps", type=int, default=4)
    args = p.parse_args()
    width, height = (int(v) for v in args.size.split("x"))

    srv = EmbeddedRedis()
    srv.start()
    tmp = Path(tempfile.mkdtemp(prefix="turbovid-gpu-smoke-"))
    try:
        settings = Settings(
            dev_mode=True, redis={"url": srv.url}, storage={"backend": "local", "local_dir": tmp / "storage"},
            gateway={"models": [args.model], "default_model": args.model},
            worker={"model": args.model, "device": args.device, "dtype": args.dtype, "attention": args.attention,
                    "linear": args.linear, "metrics_port": 0, "cache_dir": tmp / "cache"},
        )
        t0 = time.perf_counter()
        pipeline = load_model_pipeline(settings, args.device, args.dtype)
        load_s = time.perf_counter() - t0
        client = redis.Redis.from_url(srv.url)
        store = JobStore(client, Keys(settings.redis.key_prefix))
        jobs = JobQueue(client, settings.queue)
        ids = []
        for i in range(args.jobs):
            job_id = f"video_{uuid.uuid4().hex[:16]}"
            params = GenerationParams(kind="t2v", prompt=f"smoke test {i}", width=width, height=height,
                                      num_frames=args.frames, num_steps=args.steps, seed=i)
            spec = JobSpec(job_id=job_id, owner="smoke", model=args.model,
                           params=params.resolve(pipeline.card, pipeline.capabilities()),
                           output_key=f"outputs/{job_id}.mp4", created_at=time.time())
            store.create(spec, ttl_s=3600)
            jobs.submit(spec)
            ids.append(job_id)
        t0 = time.perf_counter()
        metrics = WorkerMetrics(args.model, gpu_memory=cuda_memory_reader(args.device))
        run_worker(settings, pipeline=pipeline, burst=True, metrics=metrics)
        serve_s = time.perf_counter() - t0
        print(f"model {args.model} on {args.device} ({args.dtype}, attention {args.attention}, linear {args.linear})")
        print(f"pipeline load {load_s:.2f}s; warm-up + {args.jobs} jobs {serve_s:.2f}s "
              f"({args.size}, {args.frames} frames, {args.steps} steps)")
        for job_id in ids:
            rec = store.get(job_id)
            assert rec is not None
            stages = {k: round(v, 4) for k, v in rec.timings.items()}
            print(f"{job_id} {rec.status.value} {json.dumps(stages)}"
                  + (f" error={rec.error.code}: {rec.error.message}" if rec.error else ""))
        for line in generate_latest(metrics.registry).decode().splitlines():
            if line.startswith("turbovid_gpu_memory_bytes{"):
                print(line)
        return 0 if all(store.get(i).status.value == "completed" for i in ids) else 1  # type: ignore[union-attr]
    finally:
        srv.stop()


if __name__ == "__main__":
    raise SystemExit(main())
