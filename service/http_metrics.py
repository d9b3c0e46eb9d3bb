"""HTTP request metrics as a pure ASGI middleware: count and latency by method, route template, status.

The same series as `service.metrics.install` (names from contract/metric_names.py, on the app's
`GatewayMetrics`), without Starlette's BaseHTTPMiddleware, which runs every request through a task group
and memory streams: measured at ~0.4 ms of CPU per request on the 2-core bench machine, ~40 % of a poll
(`load_tests/poll_load.py`).
"""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.metrics import GatewayMetrics


class HttpMetrics:
    def __init__(self, app: ASGIApp, *, metrics: GatewayMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # what the client gets when the app raises (ServerErrorMiddleware answers it)

        async def observed_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, observed_send)
        finally:
            path = getattr(scope.get("route"), "path", None)  # set by the router on a match
            route = str(path) if path else "unmatched"
            self.metrics.requests.labels(scope["method"], route, str(status)).inc()
            self.metrics.latency.labels(scope["method"], route).observe(time.perf_counter() - start)
