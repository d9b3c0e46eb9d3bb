"""Helpers for the gateway/webhook integration tests: real Redis, moto S3 server, uvicorn thread.

Isolation: these tests use Redis DB 12 (RQ's own keys are not prefixable, and queue names are model
ids) and a fresh key prefix per test; the DB is flushed before and after each test.
"""

from __future__ import annotations

import contextlib
import io
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import redis

from contract.keys import Keys
from contract.settings import Settings
from contract.workers import WorkerInfo, WorkerRegistry
from service.auth import hash_key

REDIS_DB = 12
REDIS_URL = f"redis://127.0.0.1:6379/{REDIS_DB}"
KEY_A = "tv-test-key-alice"
KEY_B = "tv-test-key-bob"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def clean_redis() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    try:
        yield client
    finally:
        client.flushdb()
        client.close()


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    groups: dict[str, Any] = {
        "redis": {"url": REDIS_URL, "key_prefix": f"t{uuid.uuid4().hex[:8]}"},
        "storage": {"backend": "local", "local_dir": str(tmp_path / "store")},
        "auth": {"bootstrap_keys": {"alice": hash_key(KEY_A), "bob": hash_key(KEY_B)},
                 "max_concurrent_jobs": 100, "rate_limit_per_minute": 1000},
        "gateway": {"models": ["wan-tiny", "wan-tiny-i2v"], "default_model": "wan-tiny", "poll_after_ms": 700},
        "webhooks": {"secret": "whsec_dGVzdHNlY3JldA=="},  # the built-in dev secret is refused outside dev mode
    }
    for group, values in overrides.items():
        if isinstance(values, dict):
            groups.setdefault(group, {}).update(values)
        else:
            groups[group] = values
    return Settings(**groups)


def advertise_worker(settings: Settings, name: str = "w1", *, models: tuple[str, ...] = ("wan-tiny", "wan-tiny-i2v"),
                     solver: str = "rcm", attention: str = "dense", linear: str = "native", ready: bool = True,
                     ttl_s: int = 60, kernels: dict[str, str] | None = None) -> WorkerInfo:
    """What a worker process writes on start and at each heartbeat: its WorkerInfo, with a TTL."""
    info = WorkerInfo(name=name, models=list(models), solver=solver, attention=attention,  # type: ignore[arg-type]
                      linear=linear, device="cpu", dtype="float32", started_at=time.time(), ready=ready,
                      kernels=kernels or {})
    client = redis.Redis.from_url(settings.redis.url)
    try:
        WorkerRegistry(client, Keys(settings.redis.key_prefix)).advertise(info, ttl_s)
    finally:
        client.close()
    return info


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def png_bytes(w: int = 96, h: int = 64, fmt: str = "PNG") -> bytes:
    from PIL import Image

    img = Image.fromarray((np.arange(w * h * 3, dtype=np.uint32) % 251).astype(np.uint8).reshape(h, w, 3))
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def tiny_mp4(path: Path, frames: int = 9, w: int = 64, h: int = 64) -> int:
    """Encode a short H.264 clip with PyAV; returns its size in bytes."""
    import av

    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=16)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.time_base = Fraction(1, 16)
        for i in range(frames):
            arr = np.full((h, w, 3), (i * 25) % 255, dtype=np.uint8)
            for pkt in stream.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")):
                out.mux(pkt)
        for pkt in stream.encode():
            out.mux(pkt)
    return path.stat().st_size


def decode_frames(data: bytes) -> int:
    import av

    with av.open(io.BytesIO(data)) as f:
        return sum(1 for _ in f.decode(video=0))


class UvicornThread:
    """Serve an ASGI app on 127.0.0.1:<free port> in a daemon thread."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> UvicornThread:
        self.thread.start()
        deadline = time.time() + 15
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


class GatewayProcess:
    """`turbovid gateway` as a real process on 127.0.0.1:<free port> (dev mode, auth off, Redis DB 12).

    `env` adds TURBOVID_* variables; `args` adds command-line flags. The log is kept in `log_path`."""

    def __init__(self, tmp_path: Path, *, args: tuple[str, ...] = (), env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.log_path = tmp_path / "gateway.log"
        self.args = args
        self.env = {
            "TURBOVID_DEV_MODE": "true", "TURBOVID_AUTH__ENABLED": "false", "TURBOVID_REDIS__URL": REDIS_URL,
            "TURBOVID_REDIS__KEY_PREFIX": f"t{uuid.uuid4().hex[:8]}", "TURBOVID_GATEWAY__PORT": str(self.port),
            "TURBOVID_STORAGE__LOCAL_DIR": str(tmp_path / "store"),
            "TURBOVID_GATEWAY__MODELS": '["wan-tiny", "wan-tiny-i2v"]', **(env or {}),
        }
        self.proc: Any = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def rss_mb(self) -> float:
        """Resident memory of the gateway process (MiB), from /proc."""
        with open(f"/proc/{self.proc.pid}/status") as f:
            kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
        return kb / 1024

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def __enter__(self) -> GatewayProcess:
        import os
        import subprocess
        import sys
        import urllib.request

        env = {k: v for k, v in os.environ.items() if not k.startswith("TURBOVID_")}
        env.update(self.env)
        self._log_file = open(self.log_path, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen([sys.executable, "-m", "cli.main", "gateway", *self.args], env=env,
                                     stdout=self._log_file, stderr=subprocess.STDOUT,
                                     cwd=Path(__file__).resolve().parents[2])
        deadline = time.time() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/healthz", timeout=1) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            if self.proc.poll() is not None or time.time() > deadline:
                self.__exit__()
                raise RuntimeError(f"the gateway did not start:\n{self.log()}")
            time.sleep(0.1)

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except Exception:
            self.proc.kill()
            self.proc.wait(timeout=5)
        self._log_file.close()
