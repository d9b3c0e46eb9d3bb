"""Fault injection with real processes: a private redis-server (AOF, appendfsync always),
`python -m cli.main gateway`, `python -m cli.main webhooks` and worker processes running the numpy
test pipeline (tests/integration/worker_support.py, the same `run_worker` as `turbovid worker`).

While clients create jobs over HTTP: six worker SIGKILLs at random points (a worker running a job
when there is one), Redis SIGKILLed and restarted from its AOF, the gateway restarted. The harness
supervises like k8s does (a process that exits is started again) and keeps three workers. Then every
job the gateway accepted must end — completed, or failed with a code and a message — none lost (404)
and none stuck, and every ended job's webhook must reach the receiver. The counts are printed
(`pytest -s` shows them; FAULT_SEED=n replays a run)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from worker_procs import REPO, RedisServer, settings_on, spawn_worker, wait_for
from worker_support import free_port, test_settings

MODEL = "wan-tiny"
WORKERS = 3
JOBS = 30
KILLS = 6
STEP_DELAY = 0.25  # 4 steps: ~1 s of denoise per job, so kills land mid-job
TERMINAL = {"completed", "failed", "cancelled"}

pytestmark = pytest.mark.slow


class Receiver:
    def __init__(self) -> None:
        self.events: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                outer.events.append(json.loads(self.rfile.read(int(self.headers["content-length"]))))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def job_ids(self) -> set[str]:
        return {e["data"]["id"] for e in list(self.events)}


class Stack:
    """The processes, supervised: `tick()` restarts any that exited (what k8s' restartPolicy does)."""

    def __init__(self, tmp: Path, redis_url: str) -> None:
        self.tmp = tmp
        self.settings = settings_on(test_settings(tmp, queues=[MODEL]), redis_url, heartbeat_s=1, max_requeues=3)
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("TURBOVID_")}
        self.env.update({
            "PYTHONPATH": str(REPO), "TURBOVID_DEV_MODE": "true", "TURBOVID_AUTH__ENABLED": "false",
            "TURBOVID_REDIS__URL": redis_url, "TURBOVID_REDIS__KEY_PREFIX": self.settings.redis.key_prefix,
            "TURBOVID_STORAGE__LOCAL_DIR": str(self.settings.storage.local_dir),
            "TURBOVID_GATEWAY__PORT": str(self.port), "TURBOVID_GATEWAY__MODELS": json.dumps([MODEL]),
            "TURBOVID_GATEWAY__DEFAULT_MODEL": MODEL, "TURBOVID_EGRESS__ALLOW_PRIVATE_TARGETS": "true",
            "TURBOVID_QUEUE__HEARTBEAT_S": "1", "TURBOVID_QUEUE__MAX_REQUEUES": "3",
            "TURBOVID_AUTH__MAX_CONCURRENT_JOBS": "100", "TURBOVID_AUTH__RATE_LIMIT_PER_MINUTE": "1000",
        })
        self.gateway = self._cli("gateway")
        self.webhooks = self._cli("webhooks")
        self.workers: dict[str, subprocess.Popen[bytes]] = {}
        self.killed: set[str] = set()  # workers this harness SIGKILLed (their replacement is not a crash)
        self.restarts = 0  # processes that exited by themselves and were started again
        for _ in range(WORKERS):
            self.add_worker()

    def _cli(self, command: str) -> subprocess.Popen[bytes]:
        log = (self.tmp / f"{command}.log").open("ab")
        return subprocess.Popen([sys.executable, "-m", "cli.main", command], cwd=REPO, env=self.env,
                                stdout=log, stderr=subprocess.STDOUT)

    def add_worker(self) -> None:
        name = f"fault-{uuid.uuid4().hex[:6]}"
        self.workers[name] = spawn_worker(self.settings, name=name, step_delay=STEP_DELAY, log_dir=self.tmp)

    def tick(self) -> None:
        for name, proc in list(self.workers.items()):
            if proc.poll() is not None:
                del self.workers[name]
                self.add_worker()
                self.restarts += name not in self.killed
        for attr, command in (("gateway", "gateway"), ("webhooks", "webhooks")):
            if getattr(self, attr).poll() is not None:
                setattr(self, attr, self._cli(command))
                self.restarts += 1

    def restart_gateway(self) -> None:
        self.gateway.send_signal(signal.SIGTERM)
        self.gateway.wait(timeout=20)
        self.gateway = self._cli("gateway")

    def wait_ready(self, timeout: float = 30) -> None:
        def ready() -> bool:
            try:
                return httpx.get(f"{self.base}/readyz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, timeout=timeout, what="gateway /readyz", proc=self.gateway)

    def stop(self) -> None:
        procs = [self.gateway, self.webhooks, *self.workers.values()]
        for p in procs:
            if p.poll() is None:
                p.kill()
        for p in procs:
            p.wait(timeout=10)


def _http(method: str, url: str, **kw: object) -> httpx.Response | None:
    try:
        return httpx.request(method, url, timeout=3, **kw)  # type: ignore[arg-type]
    except httpx.HTTPError:
        return None


def test_no_job_is_lost_or_stuck_through_worker_kills_a_redis_restart_and_a_gateway_restart(tmp_path):
    seed = int(os.environ.get("FAULT_SEED", "0") or 0) or random.randrange(1 << 30)
    rng = random.Random(seed)
    receiver = Receiver()
    redis_srv = RedisServer(tmp_path / "redis").start()
    stack = Stack(tmp_path, redis_srv.url)
    accepted: list[str] = []
    refused = 0
    t_start = time.monotonic()
    try:
        stack.wait_ready()

        def submit_all() -> None:
            nonlocal refused
            for i in range(JOBS):
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:
                    r = _http("POST", f"{stack.base}/v1/videos",
                              json={"prompt": f"fault job {i}", "webhook_url": receiver.url})
                    if r is not None and r.status_code == 201:
                        accepted.append(r.json()["id"])
                        break
                    refused += 1  # gateway or Redis down right now: the client retries, as clients do
                    time.sleep(0.2)
                time.sleep(0.25)

        submitter = threading.Thread(target=submit_all, daemon=True)
        submitter.start()

        # faults: 6 worker kills, one Redis kill + restart (after kill 2), one gateway restart (after kill 4)
        kills = redis_restarts = gateway_restarts = 0
        while kills < KILLS:
            time.sleep(rng.uniform(0.8, 2.0))
            stack.tick()
            busy = [w for w in _running_workers(stack) if w in stack.workers]
            victim = rng.choice(busy or sorted(stack.workers))
            stack.killed.add(victim)
            stack.workers[victim].send_signal(signal.SIGKILL)
            stack.workers[victim].wait(timeout=10)
            kills += 1
            stack.tick()  # the supervisor starts a replacement
            if kills == 2:
                redis_srv.kill()
                time.sleep(0.3)
                redis_srv.start()
                redis_restarts += 1
            if kills == 4:
                stack.restart_gateway()
                stack.wait_ready()
                gateway_restarts += 1
        submitter.join(timeout=60)
        assert not submitter.is_alive() and len(accepted) == JOBS, (len(accepted), refused)

        # every accepted job ends: completed, or failed with a reason. So does any job whose creation reached
        # Redis while its reply did not (the gateway could not take it back): the client never saw it, but
        # it is whole, runs and ends like the others.
        states: dict[str, dict] = {}
        unseen: list[str] = []

        def all_ended() -> bool:
            stack.tick()
            unseen[:] = [v for v in _created_ids(stack) if v not in accepted]
            for vid in accepted + unseen:
                if states.get(vid, {}).get("status") in TERMINAL:
                    continue
                r = _http("GET", f"{stack.base}/v1/videos/{vid}")
                if r is not None and r.status_code in (200, 404):
                    states[vid] = r.json() if r.status_code == 200 else {"status": "lost"}
            return all(states.get(v, {}).get("status") in TERMINAL | {"lost"} for v in accepted + unseen)

        try:
            wait_for(all_ended, timeout=90, what="every job ended")
            wait_for(lambda: receiver.job_ids() >= set(accepted), timeout=30, what="a webhook for every job")
        except AssertionError:
            pass  # reported below with the counts
        attempts, held, left_after_sweep = _attempts(stack, accepted)
    finally:
        stack.stop()
        redis_srv.stop()
        receiver.server.shutdown()

    counts: dict[str, int] = {}
    for vid in accepted:
        status = states.get(vid, {}).get("status", "unknown")
        counts[status] = counts.get(status, 0) + 1
    failed = [s for s in states.values() if s.get("status") == "failed"]
    codes = sorted({s["error"]["code"] for s in failed if s.get("error")})
    print(f"\nfault injection (seed {seed}): {len(accepted)} jobs accepted ({refused} creations retried by the "
          f"client while the gateway/Redis were down); {kills} worker SIGKILLs, {redis_restarts} Redis "
          f"SIGKILL+restart (AOF), {gateway_restarts} gateway restart, {stack.restarts} supervised process "
          f"restarts; outcome {counts}, failure codes {codes}; {len(unseen)} jobs created whose reply was lost "
          f"({[states.get(v, {}).get('status') for v in unseen]}); webhooks for "
          f"{len(receiver.job_ids() & set(accepted))}/{len(accepted)} jobs; "
          f"{sum(1 for a in attempts if a > 1)} jobs re-queued after losing their worker (max attempts "
          f"{max(attempts, default=0)}); {len(held)} slots held at the end ({left_after_sweep} after the grace-period sweep); {time.monotonic() - t_start:.1f} s")
    lost = [v for v in accepted if states.get(v, {}).get("status") == "lost"]
    stuck = [v for v in accepted + unseen if states.get(v, {}).get("status") not in TERMINAL | {"lost"}]
    assert not lost, f"lost jobs: {lost}"
    assert not stuck, f"stuck jobs: {[(v, states.get(v, {}).get('status')) for v in stuck]}"
    assert all(s.get("error", {}).get("code") and s["error"].get("message") for s in failed)
    assert receiver.job_ids() >= set(accepted), "jobs that ended without their webhook"
    # Every ended job gave its slot back. A slot can outlive only a creation that reserved it and then lost
    # Redis before making its job (its give-back failed too): a reservation without a job record, which the
    # workers' periodic sweep frees once it is RESERVATION_GRACE_S old.
    assert not [(v, has_record) for v, has_record in held if v in accepted or has_record], held
    assert left_after_sweep == 0, f"{left_after_sweep} slots still held after the sweep"


def _attempts(stack: Stack, job_ids: list[str]) -> tuple[list[int], list[tuple[str, bool]], int]:
    """How many times a worker started each job (from the job records); the slots still held, as (job id,
    whether it has a job record); and how many the workers' sweep would leave once the grace period of a
    reservation is over."""
    import redis as redis_lib

    from contract.jobstore import RESERVATION_GRACE_S, JobStore
    from contract.keys import Keys

    keys = Keys(stack.settings.redis.key_prefix)
    client = redis_lib.Redis.from_url(stack.settings.redis.url)
    store = JobStore(client, keys)
    attempts = [rec.attempts if (rec := store.get(v)) is not None else 0 for v in job_ids]
    held = [(v, store.get(v) is not None) for v in (raw.decode() for raw in client.zrange(keys.active("dev"), 0, -1))]
    q = stack.settings.queue
    store.sweep_slots("dev", queued_ttl_s=q.queued_ttl_s, failure_ttl_s=q.failure_ttl_s,
                      now=time.time() + RESERVATION_GRACE_S + 1)
    return attempts, held, store.active_count("dev")


def _created_ids(stack: Stack) -> list[str]:
    """Every job of the owner that Redis holds a record of (accepted or not)."""
    import redis as redis_lib

    from contract.keys import Keys

    try:
        client = redis_lib.Redis.from_url(stack.settings.redis.url, socket_timeout=1)
        return [i.decode() for i in client.zrange(Keys(stack.settings.redis.key_prefix).owner("dev"), 0, -1)]
    except Exception:
        return []


def _running_workers(stack: Stack) -> list[str]:
    """Names of the workers running a job now (from the job records)."""
    import redis as redis_lib

    from contract.jobstore import JobStore
    from contract.keys import Keys

    try:
        client = redis_lib.Redis.from_url(stack.settings.redis.url, socket_timeout=1)
        store = JobStore(client, Keys(stack.settings.redis.key_prefix))
        owner_ids = [i.decode() for i in client.zrange(Keys(stack.settings.redis.key_prefix).active("dev"),
                                                        0, -1)]
        names = []
        for job_id in owner_ids:
            rec = store.get(job_id)
            if rec is not None and rec.status.value == "in_progress" and rec.worker:
                names.append(rec.worker)
        return sorted(set(names))
    except Exception:
        return []
