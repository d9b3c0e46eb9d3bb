"""Gateway polling load, bounded, loopback only: GET /v1/videos/{id} latency and throughput.

    python load_tests/poll_load.py --workers 2 --clients 200 --duration 20

Starts its own gateway (`service.server.serve`, as `turbovid gateway --workers N` does, serving
`load_tests/bench_app.py`: the gateway plus one internal route doing a single Redis read) on a free
port against the local Redis (DB 14, a fresh key prefix, its keys deleted afterwards), creates one
queued job per client through the API, then runs, each at most 60 s:

  (a) paced: `--clients` clients, each polling its job once a second (keep-alive connections);
      reports p50/p99/max latency and errors (target: p99 <= 50 ms, 0 errors);
  (b) saturated closed loop: `--closed-clients` connections polling as fast as answers come;
      reports polls/s (target >= 1000) and latencies;
  (c) the same closed loop on `GET /_bench/redis-read` (one Redis read, no auth, tiny body):
      the ceiling of this server on this machine, measured in the same run, alternating with (b) in
      `--slices` slices so that both see the same machine; (b) / (c) is printed.

The load generator is asyncio on raw sockets (pre-built requests, a minimal response reader), not
Locust: on a 2-core machine shared with the gateway, Locust's per-request overhead (gevent, its
HTTP client and stats) would take a core of its own and measure itself. The generator's own CPU time
is printed so the reader can judge what it took.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from hashlib import sha256
from pathlib import Path

MAX_DURATION_S = 60
MAX_CLIENTS = 1000
REDIS_URL = "redis://127.0.0.1:6379/14"
API_KEY = "tv-load-test-key"
ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Stats:
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    statuses: dict[int, int] = field(default_factory=dict)

    def report(self, name: str, wall: float) -> dict[str, float]:
        lat = sorted(self.latencies)
        n = len(lat)
        pct = (lambda q: lat[min(n - 1, int(q * n))] * 1000) if n else (lambda q: float("nan"))
        out = {"requests": n, "errors": self.errors, "per_s": n / wall, "p50_ms": pct(0.5), "p99_ms": pct(0.99),
               "max_ms": lat[-1] * 1000 if n else float("nan"),
               "mean_ms": statistics.fmean(lat) * 1000 if n else float("nan")}
        print(f"{name:<34} {n:>7} req  {out['per_s']:>7.0f}/s  p50 {out['p50_ms']:6.1f} ms  "
              f"p99 {out['p99_ms']:6.1f} ms  max {out['max_ms']:7.1f} ms  errors {self.errors}  "
              f"statuses {dict(sorted(self.statuses.items()))}", flush=True)
        return out


class Conn:
    """One keep-alive HTTP/1.1 connection; `get` sends a pre-built request and reads one response."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> Conn:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(reader, writer)

    async def get(self, request: bytes) -> tuple[int, bytes]:
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        body = await self.reader.readexactly(length) if length else b""
        return status, body

    def close(self) -> None:
        self.writer.close()


def _request(path: str, auth: bool = True) -> bytes:
    extra = f"Authorization: Bearer {API_KEY}\r\n" if auth else ""
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}\r\n".encode()


async def _poll(port: int, requests: list[bytes], stats: Stats, until: float, *, interval: float | None) -> None:
    """One client: its own connection; `interval` None is a closed loop, else one poll per interval."""
    conn = await Conn.open(port)
    try:
        if interval is not None:
            await asyncio.sleep(random.uniform(0, interval))  # spread the clients over the second
        i = 0
        while True:
            start = time.perf_counter()
            if start >= until:
                break
            try:
                status, _ = await conn.get(requests[i % len(requests)])
            except (OSError, asyncio.IncompleteReadError):
                stats.errors += 1
                conn.close()
                conn = await Conn.open(port)
                continue
            elapsed = time.perf_counter() - start
            stats.latencies.append(elapsed)
            stats.statuses[status] = stats.statuses.get(status, 0) + 1
            if status != 200:
                stats.errors += 1
            i += 1
            if interval is not None:
                await asyncio.sleep(max(0.0, interval - elapsed))
    finally:
        conn.close()


async def _scenario(port: int, clients: int, requests: list[list[bytes]], duration: float,
                    interval: float | None) -> tuple[Stats, float]:
    stats = Stats()
    warm_until = time.perf_counter() + min(2.0, duration / 5)
    await asyncio.gather(*(_poll(port, requests[i % len(requests)], Stats(), warm_until, interval=None)
                           for i in range(min(clients, 16))))  # warm-up, not counted
    start = time.perf_counter()
    until = start + duration
    await asyncio.gather(*(_poll(port, requests[i % len(requests)], stats, until, interval=interval)
                           for i in range(clients)))
    return stats, time.perf_counter() - start


def _start_gateway(args: argparse.Namespace, prefix: str) -> tuple[subprocess.Popen[bytes], int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    env = {k: v for k, v in os.environ.items() if not k.startswith("TURBOVID_")}
    env.update({
        "TURBOVID_REDIS__URL": REDIS_URL, "TURBOVID_REDIS__KEY_PREFIX": prefix,
        "TURBOVID_AUTH__BOOTSTRAP_KEYS": json.dumps({"load": sha256(API_KEY.encode()).hexdigest()}),
        "TURBOVID_AUTH__RATE_LIMIT_PER_MINUTE": "1000000", "TURBOVID_AUTH__MAX_CONCURRENT_JOBS": "1000000",
        "TURBOVID_WEBHOOKS__SECRET": "whsec_bG9hZHRlc3Q=", "TURBOVID_STORAGE__LOCAL_DIR": "/tmp/turbovid-load",
    })
    code = ("import logging; logging.basicConfig(level=logging.WARNING); "
            "from service.server import serve; "
            f"serve('load_tests.bench_app:app', factory=True, host='127.0.0.1', port={port}, "
            f"workers={args.workers}, log_level='warning')")
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=ROOT)
    deadline = time.time() + 30
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                return proc, port
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                raise SystemExit("the gateway did not start") from None
            time.sleep(0.2)


def _create_jobs(port: int, n: int) -> list[str]:
    ids = []
    for i in range(n):
        body = json.dumps({"prompt": f"load {i}", "size": "64x64", "seconds": "1"}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/videos", data=body, method="POST", headers={
            "content-type": "application/json", "authorization": f"Bearer {API_KEY}"})
        with urllib.request.urlopen(req, timeout=10) as r:
            ids.append(json.loads(r.read())["id"])
    return ids


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", type=int, default=2, help="gateway server processes")
    p.add_argument("--clients", type=int, default=200, help="(a): clients polling once a second")
    p.add_argument("--closed-clients", type=int, default=64, help="(b), (c): closed-loop connections")
    p.add_argument("--duration", type=float, default=20.0, help=f"seconds per scenario (<= {MAX_DURATION_S})")
    p.add_argument("--scenarios", default="abc")
    p.add_argument("--slices", type=int, default=4, help="(b) and (c) alternate in this many slices each")
    args = p.parse_args(argv)
    if not (0 < args.duration <= MAX_DURATION_S and 0 < args.clients <= MAX_CLIENTS
            and 0 < args.closed_clients <= MAX_CLIENTS):
        print(f"--duration must be 1..{MAX_DURATION_S} s and clients 1..{MAX_CLIENTS}", file=sys.stderr)
        return 2
    import redis

    prefix = f"load{uuid.uuid4().hex[:8]}"
    proc, port = _start_gateway(args, prefix)
    self_cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    results: dict[str, dict[str, float]] = {}
    ids: list[str] = []
    try:
        ids += _create_jobs(port, args.clients)
        polls = [[_request(f"/v1/videos/{vid}")] for vid in ids]
        print(f"gateway: {args.workers} process(es) on :{port}; {len(ids)} queued jobs; "
              f"{os.cpu_count()} cores shared with this generator", flush=True)
        if "a" in args.scenarios:
            stats, wall = asyncio.run(_scenario(port, args.clients, polls, args.duration, interval=1.0))
            results["a"] = stats.report(f"(a) {args.clients} clients x 1 poll/s", wall)
        # (b) and (c) alternate in slices, so that both see the same share of a machine whose other load
        # changes over a minute; each gets `--duration` seconds in all
        base = [[_request("/_bench/redis-read", auth=False)]]
        closed = {"b": (polls, Stats(), [0.0]), "c": (base, Stats(), [0.0])}
        for _ in range(args.slices):
            for name in "bc":
                if name in args.scenarios:
                    reqs, total, walls = closed[name]
                    stats, w = asyncio.run(_scenario(port, args.closed_clients, reqs, args.duration / args.slices,
                                                     interval=None))
                    total.latencies += stats.latencies
                    total.errors += stats.errors
                    for k, v in stats.statuses.items():
                        total.statuses[k] = total.statuses.get(k, 0) + v
                    walls[0] += w
        if "b" in args.scenarios:
            results["b"] = closed["b"][1].report(f"(b) closed loop x{args.closed_clients}: GET job", closed["b"][2][0])
        if "c" in args.scenarios:
            results["c"] = closed["c"][1].report(f"(c) closed loop x{args.closed_clients}: 1 Redis read",
                                                 closed["c"][2][0])
        if "b" in results and "c" in results:
            print(f"(b)/(c): GET job at {results['b']['per_s'] / results['c']['per_s']:.2f} of the one-read "
                  "endpoint's throughput")
    finally:
        proc.terminate()
        proc.wait(timeout=15)
        client = redis.Redis.from_url(REDIS_URL)
        for key in client.scan_iter(match=f"{prefix}:*", count=1000):
            client.delete(key)
        for vid in ids:  # RQ's own keys are not prefixed
            client.delete(f"rq:job:{vid}")
            client.lrem("rq:queue:wan-tiny", 0, vid)
        client.close()
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    print(f"generator CPU: {cpu.ru_utime + cpu.ru_stime - self_cpu0.ru_utime - self_cpu0.ru_stime:.1f} s")
    a = results.get("a")
    ok = a is None or (a["errors"] == 0 and a["p99_ms"] <= 50)
    ok = ok and ("b" not in results or results["b"]["per_s"] >= 1000)
    print("targets met" if ok else "targets NOT met")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
