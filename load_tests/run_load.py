"""A small, bounded load test against a local TurboVid stack (loopback only).

    turbovid serve --dev --port 8000 &
    python load_tests/run_load.py --base-url http://127.0.0.1:8000 --jobs 20 --concurrency 4

Submits `--jobs` T2V jobs (at most `--concurrency` in flight, tiny sizes by default), polls each
to a terminal state, downloads the MP4, and prints: submit latency, end-to-end latency p50/p95/max,
the worker's stage timings (means), throughput and failures. Refuses non-loopback targets so it
cannot be pointed at someone else's service by accident; exits non-zero if any job failed.
"""

from __future__ import annotations

import argparse
import ipaddress
import socket
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from urllib.parse import urlparse

import httpx

MAX_JOBS = 200
MAX_CONCURRENCY = 16


@dataclass
class Outcome:
    ok: bool
    submit_s: float
    total_s: float
    status: str
    timings: dict[str, float] = field(default_factory=dict)
    error: str | None = None


def _loopback(url: str) -> bool:
    host = urlparse(url).hostname or ""
    try:
        return all(ipaddress.ip_address(info[4][0]).is_loopback
                   for info in socket.getaddrinfo(host, None))
    except (OSError, ValueError):
        return False


def _one(client: httpx.Client, args: argparse.Namespace, i: int, stop: threading.Event) -> Outcome:
    t0 = time.perf_counter()
    body = {"model": args.model, "prompt": f"load test clip {i}", "size": args.size,
            "num_frames": args.frames, "seed": i}
    resp = client.post("/v1/videos", json=body, headers={"Idempotency-Key": f"load-{args.run_id}-{i}"})
    submit = time.perf_counter() - t0
    if resp.status_code != 201:
        return Outcome(False, submit, submit, f"http_{resp.status_code}", error=resp.text[:200])
    vid = resp.json()["id"]
    deadline = time.monotonic() + args.timeout
    obj = resp.json()
    while obj["status"] not in ("completed", "failed") and not stop.is_set():
        if time.monotonic() > deadline:
            return Outcome(False, submit, time.perf_counter() - t0, "timeout")
        time.sleep(args.poll)
        obj = client.get(f"/v1/videos/{vid}").json()
    if obj["status"] != "completed":
        return Outcome(False, submit, time.perf_counter() - t0, obj["status"], error=str(obj.get("error")))
    content = client.get(f"/v1/videos/{vid}/content", follow_redirects=True)
    total = time.perf_counter() - t0
    ok = content.status_code == 200 and content.content[4:8] == b"ftyp"
    if not args.keep:
        client.delete(f"/v1/videos/{vid}")
    return Outcome(ok, submit, total, "completed" if ok else "bad_content", obj.get("timings", {}))


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base-url", default="http://127.0.0.1:8000")
    p.add_argument("--api-key", default="dev")
    p.add_argument("--model", default="wan-tiny")
    p.add_argument("--size", default="64x64")
    p.add_argument("--frames", type=int, default=5)
    p.add_argument("--jobs", type=int, default=10)
    p.add_argument("--concurrency", type=int, default=2)
    p.add_argument("--timeout", type=float, default=300.0, help="per job, seconds")
    p.add_argument("--poll", type=float, default=0.25)
    p.add_argument("--keep", action="store_true", help="don't delete the videos afterwards")
    args = p.parse_args(argv)
    if not _loopback(args.base_url):
        print(f"refusing {args.base_url}: this load test only targets loopback addresses", file=sys.stderr)
        return 2
    if not (1 <= args.jobs <= MAX_JOBS and 1 <= args.concurrency <= MAX_CONCURRENCY):
        print(f"--jobs must be 1..{MAX_JOBS} and --concurrency 1..{MAX_CONCURRENCY}", file=sys.stderr)
        return 2
    args.run_id = f"{int(time.time())}"

    stop = threading.Event()
    headers = {"Authorization": f"Bearer {args.api_key}"}
    t0 = time.perf_counter()
    with httpx.Client(base_url=args.base_url, headers=headers, timeout=30) as client, \
            ThreadPoolExecutor(args.concurrency) as pool:
        try:
            outcomes = list(pool.map(lambda i: _one(client, args, i, stop), range(args.jobs)))
        except KeyboardInterrupt:
            stop.set()
            raise
    wall = time.perf_counter() - t0

    ok = [o for o in outcomes if o.ok]
    print(f"jobs {len(outcomes)}  ok {len(ok)}  failed {len(outcomes) - len(ok)}  wall {wall:.1f}s  "
          f"throughput {len(ok) / wall:.2f} videos/s  (concurrency {args.concurrency}, {args.size}, "
          f"{args.frames} frames, model {args.model})")
    if ok:
        totals = [o.total_s for o in ok]
        print(f"end-to-end s: p50 {_pct(totals, 0.5):.2f}  p95 {_pct(totals, 0.95):.2f}  max {max(totals):.2f}")
        print(f"submit s:     p50 {_pct([o.submit_s for o in ok], 0.5):.3f}  "
              f"max {max(o.submit_s for o in ok):.3f}")
        stages = sorted({k for o in ok for k in o.timings})
        print("worker stage means s: " + "  ".join(
            f"{s} {statistics.mean(o.timings.get(s, 0.0) for o in ok):.3f}" for s in stages))
    for o in outcomes:
        if not o.ok:
            print(f"  failed: {o.status} {o.error or ''}")
    return 0 if len(ok) == len(outcomes) else 1


if __name__ == "__main__":
    raise SystemExit(main())
