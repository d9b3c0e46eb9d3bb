"""HTTP limits against a real `turbovid gateway` process, with raw sockets: header deadline, header size,
parser errors as JSON, streamed body size (chunked: no memory growth), a client that disconnects
mid-body (a 499 log line, no 5xx in the metrics), and slow `image_url` sources that must not delay
other routes.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from gateway_support import GatewayProcess, clean_redis, png_bytes

HEADER_TIMEOUT_S = 1.0


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    tmp = tmp_path_factory.mktemp("gw")
    with clean_redis(), GatewayProcess(tmp, args=("--header-timeout", str(HEADER_TIMEOUT_S)), env={
            "TURBOVID_EGRESS__ALLOW_PRIVATE_TARGETS": "true", "TURBOVID_EGRESS__TIMEOUT_S": "3"}) as gw:
        yield gw


def _connect(gw: GatewayProcess, timeout: float = 10.0) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", gw.port), timeout=timeout)
    return s


def _read_response(s: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of one response; the body up to EOF or Content-Length."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before a response: {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = s.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(lines[0].split()[1]), headers, body


def _closed_within(s: socket.socket, seconds: float) -> bool:
    s.settimeout(seconds)
    try:
        while s.recv(65536):
            pass
        return True
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def _counted_statuses(gw: GatewayProcess) -> dict[str, float]:
    """http request counts by status from the gateway's /metrics."""
    out: dict[str, float] = {}
    for line in httpx.get(f"{gw.url}/metrics").text.splitlines():
        if line.startswith("turbovid_http_requests_total{"):
            labels, _, value = line.rpartition(" ")
            status = labels.split('status="')[1].split('"')[0]
            out[status] = out.get(status, 0.0) + float(value)
    return out


# 1. headers --------------------------------------------------------------------------------------
def test_unfinished_headers_get_a_json_408_and_are_dropped_within_the_deadline(gateway) -> None:
    s = _connect(gateway)
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    t0 = time.monotonic()
    status, headers, body = _read_response(s)
    assert status == 408 and headers["content-type"] == "application/json"
    assert json.loads(body)["error"]["code"] == "request_timeout"
    assert _closed_within(s, 2.0)
    assert time.monotonic() - t0 < HEADER_TIMEOUT_S + 2.0
    # a connection that never sends a byte is closed too
    silent = _connect(gateway)
    assert _closed_within(silent, HEADER_TIMEOUT_S + 2.0)
    # and a keep-alive connection is still fine between requests within the deadline
    ok = _connect(gateway)
    for _ in range(2):
        ok.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert _read_response(ok)[0] == 200


def test_a_50mb_header_line_is_refused_with_a_json_431_without_buffering_it(gateway) -> None:
    before = gateway.rss_mb()
    s = _connect(gateway)
    line = b"a" * (1 << 20)
    try:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ")
        for _ in range(50):
            s.sendall(line)
    except (BrokenPipeError, ConnectionResetError):
        pass  # refused (and closed) long before the 50 MB were sent
    status, headers, body = _read_response(s)
    assert status == 431 and headers["content-type"] == "application/json"
    assert json.loads(body)["error"]["code"] == "request_header_fields_too_large"
    assert gateway.rss_mb() - before < 20
    # too many header fields: 431 from the app
    many = b"".join(b"X-H%d: v\r\n" % i for i in range(200))
    s = _connect(gateway)
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n")
    status, _, body = _read_response(s)
    assert status == 431 and json.loads(body)["error"]["code"] == "request_header_fields_too_large"


@pytest.mark.parametrize("raw", [
    b"NOT HTTP AT ALL\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
    b"POST /v1/videos HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n",
])
def test_parser_errors_are_json(gateway, raw: bytes) -> None:
    s = _connect(gateway)
    s.sendall(raw)
    status, headers, body = _read_response(s)
    assert status == 400 and headers["content-type"] == "application/json", body
    assert json.loads(body)["error"]["code"] == "invalid_http"


# 2. bodies ---------------------------------------------------------------------------------------
def test_a_chunked_body_far_over_the_limit_is_refused_without_memory_growth(gateway) -> None:
    before = gateway.rss_mb()
    s = _connect(gateway)
    s.sendall(b"POST /v1/videos HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Transfer-Encoding: chunked\r\n\r\n")
    chunk = b"%x\r\n" % (1 << 20) + b" " * (1 << 20) + b"\r\n"
    sent = 0
    try:
        for _ in range(200):  # 200 MB, ~13x the limit
            s.sendall(chunk)
            sent += 1
    except (BrokenPipeError, ConnectionResetError):
        pass
    status, headers, body = _read_response(s)
    assert status == 413 and headers["content-type"] == "application/json"
    assert json.loads(body)["error"]["code"] == "request_too_large"
    assert sent < 200  # refused while streaming
    growth = gateway.rss_mb() - before
    assert growth < 40, f"the gateway grew by {growth:.0f} MiB"  # before the limit streamed: ~+370 MiB
    # a Content-Length over the limit is refused before a byte of the body is read
    s = _connect(gateway)
    s.sendall(b"POST /v1/videos HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: 999999999\r\n\r\n")
    status, _, body = _read_response(s)
    assert status == 413 and json.loads(body)["error"]["code"] == "request_too_large"


def test_a_client_that_disconnects_mid_body_is_a_499_log_line_not_a_5xx(gateway) -> None:
    before = _counted_statuses(gateway)
    s = _connect(gateway)
    s.sendall(b"POST /v1/videos HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: 1000\r\n\r\n{\"prompt\": \"a")
    time.sleep(0.3)
    s.close()
    deadline = time.monotonic() + 5
    while "499 client disconnected" not in gateway.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    log = gateway.log()
    assert "499 client disconnected" in log
    assert "Traceback" not in log and "ERROR" not in log
    after = _counted_statuses(gateway)
    assert after.get("499", 0) == before.get("499", 0) + 1
    assert sum(v for k, v in after.items() if k.startswith("5")) == 0


def test_deeply_nested_json_is_a_400(gateway) -> None:
    for body in (b"[" * 100_000, b'{"prompt": "x", "metadata": ' + b'{"a": ' * 100_000 + b"1" + b"}" * 100_001):
        r = httpx.post(f"{gateway.url}/v1/videos", content=body, headers={"content-type": "application/json"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json", r.text


# 3. slow image sources ---------------------------------------------------------------------------
class _Drip(BaseHTTPRequestHandler):
    """An image server that sends a PNG one byte a second (an attacker's, or a very slow one)."""

    payload = png_bytes()

    def do_GET(self) -> None:  # noqa: N802
        self.send_response(200)
        self.send_header("content-type", "image/png")
        self.send_header("content-length", str(len(self.payload)))
        self.end_headers()
        try:
            for i in range(len(self.payload)):
                self.wfile.write(self.payload[i:i + 1])
                self.wfile.flush()
                time.sleep(1.0)
        except OSError:
            pass

    def log_message(self, *args: object) -> None:
        pass


class _DripServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # every create's fetch connects at once


def test_slow_image_sources_do_not_delay_other_routes(gateway, tmp_path: Path) -> None:
    server = _DripServer(("127.0.0.1", 0), _Drip)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    image_url = f"http://127.0.0.1:{server.server_address[1]}/in.png"
    existing = httpx.post(f"{gateway.url}/v1/videos", json={"prompt": "a fox", "size": "96x64", "seconds": "1"})
    assert existing.status_code == 201, existing.text
    vid = existing.json()["id"]
    n_creates = 45  # more than the request threadpool's 40 threads

    async def run() -> tuple[list[httpx.Response], list[float], float]:
        async with httpx.AsyncClient(base_url=gateway.url, timeout=30,
                                     limits=httpx.Limits(max_connections=100)) as client:
            t0 = time.monotonic()
            creates = [asyncio.create_task(client.post("/v1/videos", json={
                "prompt": "x", "model": "wan-tiny-i2v", "image_url": image_url})) for _ in range(n_creates)]
            await asyncio.sleep(1.0)  # every create is now waiting on the drip
            latencies = []
            for path in (f"/v1/videos/{vid}", "/v1/videos", "/readyz") * 2:
                t = time.monotonic()
                r = await client.get(path)
                latencies.append(time.monotonic() - t)
                assert r.status_code in (200, 503), r.text  # /readyz: 503 without workers is an answer
            done = await asyncio.gather(*creates)
            return done, latencies, time.monotonic() - t0

    try:
        creates, latencies, total = asyncio.run(run())
    finally:
        server.shutdown()
        server.server_close()
    assert max(latencies) < 1.0, latencies
    # the overall deadline (3 s here), not a per-read timeout: the drip never pauses for long
    assert all(r.status_code == 400 and r.json()["error"]["code"] == "image_fetch_timeout" for r in creates)
    assert all(r.json()["error"]["param"] == "image_url" for r in creates)
    assert total < 3.0 + 6.0
