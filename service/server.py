"""The HTTP server the gateway runs under: uvicorn (httptools parser) with the connection limits it lacks.

uvicorn has a keep-alive timeout but no header read deadline (a connection that never finishes its
headers, or never sends a byte, is held forever) and, with httptools, no header size limit (a 50 MB
header line is buffered). `GuardedHttpToolsProtocol` adds, per connection:

- a header deadline (`header_timeout_s`), counted from the connection's start and from the end of each
  response to the end of the next request's headers: a client that is too slow gets a 408 (JSON) and
  the connection is closed; a silent one is closed. Never armed while a response is in progress.
- a header size limit (`max_header_bytes` of request line + headers): 431 (JSON), connection closed;
- at most `max_requests_per_connection` requests per keep-alive connection (then `connection: close`);
- parser errors (malformed request line, bad chunked encoding, ...) answered as JSON 400, not text.

The header count, body size and body read deadline are enforced in the app (`service/limits.py`),
keep-alive idle time by uvicorn's `timeout_keep_alive`. Why not another server: hypercorn has only a
per-read inactivity timeout (a byte every few seconds keeps a connection forever), and a front proxy
(nginx) is one more process to ship and run in every environment; these limits are a few lines on the
server we already run, they hold in the dev stack, the container and tests alike, and in front of a
proxy they are a second line.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerLimits:
    header_timeout_s: float = 10.0
    max_header_bytes: int = 32 * 1024
    keep_alive_s: int = 5
    max_requests_per_connection: int = 1000


_REASONS = {400: "Bad Request", 408: "Request Timeout", 431: "Request Header Fields Too Large"}


class GatewayConfig(uvicorn.Config):
    """uvicorn's Config carrying the ServerLimits (pickled with it to `--workers` processes)."""

    def __init__(self, app: Any, *, limits: ServerLimits, **kwargs: Any) -> None:
        super().__init__(app, http=GuardedHttpToolsProtocol, timeout_keep_alive=limits.keep_alive_s, **kwargs)
        self.server_limits = limits


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    def __init__(self, config: uvicorn.Config, server_state: ServerState, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.limits: ServerLimits = getattr(config, "server_limits", ServerLimits())
        self._header_timer: asyncio.TimerHandle | None = None
        self._awaiting_headers = True  # between requests and while a request line/headers come in
        self._header_bytes = 0
        self._requests = 0

    # header deadline ------------------------------------------------------------------------------
    def _arm_header_timer(self) -> None:
        self._cancel_header_timer()
        self._header_timer = self.loop.call_later(self.limits.header_timeout_s, self._header_timeout)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _busy(self) -> bool:
        return bool(self.pipeline) or (self.cycle is not None and not self.cycle.response_complete)

    def _header_timeout(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or self._busy():
            return
        if self._header_bytes:
            self._refuse(408, "request_timeout",
                         f"the request headers did not arrive within {self.limits.header_timeout_s:g} s")
        else:
            self.transport.close()

    def _refuse(self, status: int, code: str, message: str) -> None:
        """Answer a request the app never saw with a JSON error, and close the connection."""
        body = json.dumps({"error": {"code": code, "message": message, "param": None}}).encode()
        head = [f"HTTP/1.1 {status} {_REASONS[status]}".encode()]
        head += [name + b": " + value for name, value in self.server_state.default_headers]
        head += [b"content-type: application/json", b"content-length: " + str(len(body)).encode(),
                 b"connection: close"]
        self.transport.write(b"\r\n".join(head) + b"\r\n\r\n" + body)
        self.transport.close()
        log.info("%d %s from %s", status, code, self.client[0] if self.client else "?")

    # uvicorn's protocol hooks -----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._awaiting_headers:
            self._header_bytes += len(data)
        super().data_received(data)
        if self._awaiting_headers and self._header_bytes > self.limits.max_header_bytes \
                and not self.transport.is_closing():
            self._refuse(431, "request_header_fields_too_large",
                         f"the request line and headers are larger than {self.limits.max_header_bytes} bytes")

    def send_400_response(self, msg: str) -> None:
        self._cancel_header_timer()
        self._refuse(400, "invalid_http", "the request is not valid HTTP/1.1")

    def on_headers_complete(self) -> None:
        self._awaiting_headers = False
        self._cancel_header_timer()
        super().on_headers_complete()
        self._requests += 1
        if self._requests >= self.limits.max_requests_per_connection and self.cycle is not None:
            self.cycle.keep_alive = False

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._awaiting_headers = True
        self._header_bytes = 0

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm_header_timer()


def serve(app: Any, *, host: str, port: int, workers: int = 1, limits: ServerLimits | None = None,
          factory: bool = False, log_level: str = "info") -> None:
    """Run `app` (an ASGI app, or with `factory` an import string "module:function" building one, as
    `workers` > 1 needs) under uvicorn with the guarded protocol, in `workers` processes."""
    config = GatewayConfig(app, limits=limits or ServerLimits(), host=host, port=port, workers=workers,
                           factory=factory, proxy_headers=True, log_level=log_level)
    if workers > 1:
        from uvicorn.supervisors import Multiprocess

        sock = config.bind_socket()
        Multiprocess(config, sockets=[sock]).run()
    else:
        uvicorn.Server(config).run()
