"""service.server: the guarded protocol's keep-alive limits and header deadline, on a tiny ASGI app."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn

from service.server import GatewayConfig, ServerLimits


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    if scope["path"] == "/slow":
        await asyncio.sleep(1.5)  # longer than the header deadline: a response in progress is never cut
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


@pytest.fixture
def server() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    limits = ServerLimits(header_timeout_s=0.5, max_requests_per_connection=3, max_header_bytes=4096)
    srv = uvicorn.Server(GatewayConfig(_app, limits=limits, host="127.0.0.1", port=port, log_level="warning",
                                       lifespan="off"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 10
    while not srv.started and time.time() < deadline:
        time.sleep(0.02)
    yield port
    srv.should_exit = True
    thread.join(timeout=5)


def _exchange(s: socket.socket, path: str = "/") -> bytes:
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    data = b""
    while not data.endswith(b"ok"):
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def test_a_keep_alive_connection_serves_at_most_n_requests(server: int) -> None:
    s = socket.create_connection(("127.0.0.1", server), timeout=5)
    heads = [_exchange(s) for _ in range(3)]
    assert all(h.startswith(b"HTTP/1.1 200") for h in heads)
    assert b"connection: close" not in heads[0].lower() and b"connection: close" in heads[2].lower()
    assert s.recv(10) == b""  # closed after the third


def test_the_header_deadline_never_cuts_a_response_in_progress(server: int) -> None:
    s = socket.create_connection(("127.0.0.1", server), timeout=5)
    assert _exchange(s, "/slow").startswith(b"HTTP/1.1 200")
    # and between requests it runs again: an idle keep-alive connection is closed after it
    t0 = time.monotonic()
    assert s.recv(10) == b""
    assert time.monotonic() - t0 < 2.0
