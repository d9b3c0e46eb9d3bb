"""Worker subprocesses for the crash / SIGTERM / metrics tests (real processes, real Redis)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import redis
from rq import Queue, Worker

from contract.jobstore import JobRecord, JobStore
from contract.keys import Keys
from contract.settings import Settings

REPO = Path(__file__).resolve().parents[2]
SUPPORT = Path(__file__).with_name("worker_support.py")


def worker_env(settings: Settings, *, name: str, metrics_port: int = 0) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TURBOVID_")}
    env.update({
        "PYTHONPATH": str(REPO),
        "TURBOVID_DEV_MODE": "true",
        "TURBOVID_AUTH__ENABLED": "false",
        "TURBOVID_REDIS__URL": settings.redis.url,
        "TURBOVID_REDIS__KEY_PREFIX": settings.redis.key_prefix,
        "TURBOVID_STORAGE__LOCAL_DIR": str(settings.storage.local_dir),
        "TURBOVID_QUEUE__HEARTBEAT_S": str(settings.queue.heartbeat_s),
        "TURBOVID_QUEUE__MAX_REQUEUES": str(settings.queue.max_requeues),
        "TURBOVID_WORKER__MODEL": settings.worker.model,
        "TURBOVID_WORKER__QUEUES": json.dumps(settings.worker.queues),
        "TURBOVID_WORKER__DEVICE": "cpu",
        "TURBOVID_WORKER__WARMUP": "false",
        "TURBOVID_WORKER__METRICS_PORT": str(metrics_port),
        "TURBOVID_WORKER__NAME": name,
    })
    return env


def start_worker(settings: Settings, *, name: str, step_delay: float, metrics_port: int = 0,
                 log_dir: Path) -> subprocess.Popen[bytes]:
    log = (log_dir / f"{name}.log").open("wb")
    proc = subprocess.Popen([sys.executable, str(SUPPORT), str(step_delay)], cwd=REPO,
                            env=worker_env(settings, name=name, metrics_port=metrics_port),
                            stdout=log, stderr=subprocess.STDOUT)
    client = redis.Redis.from_url(settings.redis.url)
    wait_for(lambda: any(w.name == name for w in Worker.all(queue=Queue(settings.worker.queues[0],
                                                                           connection=client))),
             timeout=30, what=f"worker {name} registered", proc=proc)
    return proc


def wait_for(cond: Callable[[], object], *, timeout: float, what: str,
             proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process exited with {proc.returncode} while waiting for {what}")
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def record(settings: Settings, job_id: str) -> JobRecord:
    rec = JobStore(redis.Redis.from_url(settings.redis.url), Keys(settings.redis.key_prefix)).get(job_id)
    assert rec is not None
    return rec


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=10)
