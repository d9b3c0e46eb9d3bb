"""The dev stack (`turbovid serve --dev`) as a subprocess: embedded Redis, real wan-tiny worker on
CPU, local storage, auth off. One stack per test session; its shutdown is checked too."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class DevStack:
    base_url: str
    metrics_url: str
    storage_dir: Path
    proc: subprocess.Popen[bytes]


@pytest.fixture(scope="session")
def dev_stack():
    # Own temp dir: pytest's basetemp rotation (other sessions) must not delete it under the stack.
    state = Path(tempfile.mkdtemp(prefix="turbovid-e2e-"))
    port, metrics_port = _free_port(), _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TURBOVID_")}
    env.update({"PYTHONPATH": str(REPO), "TURBOVID_WORKER__METRICS_PORT": str(metrics_port),
                "TURBOVID_QUEUE__HEARTBEAT_S": "2"})
    log = (state / "stack.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "serve", "--dev", "--port", str(port), "--device", "cpu",
         "--state-dir", str(state)],
        cwd=state, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 240
    while True:
        if proc.poll() is not None:
            pytest.fail(f"dev stack exited with {proc.returncode}:\n{(state / 'stack.log').read_text()[-4000:]}")
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("dev stack not ready in 240 s")
        time.sleep(0.5)
    stack = DevStack(base, f"http://127.0.0.1:{metrics_port}/metrics", state / "storage", proc)
    yield stack
    proc.send_signal(signal.SIGINT)  # what Ctrl-C does
    try:
        code = proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    assert code == 0, (state / "stack.log").read_text()[-4000:]
    shutil.rmtree(state, ignore_errors=True)
