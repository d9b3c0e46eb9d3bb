"""Worker subprocesses for the crash / SIGTERM / liveness / fault tests (real processes, real Redis),
and `RedisServer`: a private redis-server on a free port for tests that flush, stop or restart it."""

from __future__ import annotations

import json
import os
import shutil
import socket
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


def spawn_worker(settings: Settings, *, name: str, step_delay: float, metrics_port: int = 0, log_dir: Path,
                 env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """A worker subprocess with the numpy test pipeline, not waited for."""
    log = (log_dir / f"{name}.log").open("wb")
    return subprocess.Popen([sys.executable, str(SUPPORT), str(step_delay)], cwd=REPO,
                            env={**worker_env(settings, name=name, metrics_port=metrics_port), **(env or {})},
                            stdout=log, stderr=subprocess.STDOUT)


def start_worker(settings: Settings, *, name: str, step_delay: float, metrics_port: int = 0,
                 log_dir: Path) -> subprocess.Popen[bytes]:
    proc = spawn_worker(settings, name=name, step_delay=step_delay, metrics_port=metrics_port, log_dir=log_dir)
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


class RedisServer:
    """A private redis-server (AOF on: appendfsync always) on a free port, in `data_dir`; restartable."""

    def __init__(self, data_dir: Path, *, appendonly: bool = True) -> None:
        self.data_dir = data_dir
        self.appendonly = appendonly
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server is not installed")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.data_dir), "--save", "",
                "--appendonly", "yes" if self.appendonly else "no", "--appendfsync", "always"]
        self.proc = subprocess.Popen(args, stdout=(self.data_dir / "redis.log").open("ab"), stderr=subprocess.STDOUT)
        client = redis.Redis.from_url(self.url, socket_connect_timeout=1)

        def up() -> bool:
            try:
                return bool(client.ping())
            except redis.RedisError:
                return False

        wait_for(up, timeout=15, what="redis-server up")
        client.close()
        return self

    def kill(self) -> None:
        """SIGKILL (what an OOM kill or a node loss does): only what the AOF holds survives."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def settings_on(settings: Settings, redis_url: str, **queue: object) -> Settings:
    """`settings` pointed at another Redis (and with `queue` fields replaced)."""
    return settings.model_copy(update={"redis": settings.redis.model_copy(update={"url": redis_url}),
                                       "queue": settings.queue.model_copy(update=queue)})
