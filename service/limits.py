"""Request limits applied before any route runs: header count, body size (streamed), body read deadline,
and a JSON parser with a nesting limit.

`RequestLimits` is a pure ASGI middleware (outermost in the app):
- more than `max_headers` header fields: 431;
- a `Content-Length` over `max_body_bytes`: 413 at once, nothing read;
- a body of unknown length (chunked) is counted as it is received and `BodyTooLarge` is raised from
  `receive()` as soon as it passes the limit, so the app never holds more than the limit and the server's
  own flow control (uvicorn pauses reading at 64 KiB per connection) keeps the rest on the client;
- a body still incomplete `body_timeout_s` (60 s: 15 MiB at 2 Mbit/s) after the headers: `BodyTimeout` (408).
The exceptions are answered as JSON by `service.errors`. Header size and header read deadline are the
HTTP server's job (`service/server.py`): they happen before ASGI sees the request.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from contract.settings import Settings

MAX_JSON_DEPTH = 32


class BodyTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"the request body is larger than {limit} bytes")
        self.limit = limit


class BodyTimeout(Exception):
    def __init__(self, timeout_s: float) -> None:
        super().__init__(f"the request body did not arrive within {timeout_s:g} s")
        self.timeout_s = timeout_s


class JsonTooDeep(ValueError):
    pass


def max_request_bytes(settings: Settings) -> int:
    """The largest request body: an image upload (multipart, or base64 in JSON) plus the other fields."""
    return settings.limits.max_upload_bytes * 4 // 3 + 2 * 1024 * 1024


@dataclass(frozen=True)
class LimitsConfig:
    max_body_bytes: int
    max_headers: int = 100
    body_timeout_s: float = 60.0


def _json_response(status: int, code: str, message: str) -> tuple[Message, Message]:
    body = orjson.dumps({"error": {"code": code, "message": message, "param": None}})
    start = {"type": "http.response.start", "status": status,
             "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                         (b"connection", b"close")]}
    return start, {"type": "http.response.body", "body": body}


class RequestLimits:
    def __init__(self, app: ASGIApp, *, config: LimitsConfig) -> None:
        self.app = app
        self.cfg = config

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        cfg = self.cfg
        headers = scope["headers"]
        refusal: tuple[int, str, str] | None = None
        if len(headers) > cfg.max_headers:
            refusal = (431, "request_header_fields_too_large", f"more than {cfg.max_headers} header fields")
        else:
            for name, value in headers:
                if name == b"content-length":
                    if not value.isdigit():
                        refusal = (400, "invalid_request", "Content-Length is not a number")
                    elif int(value) > cfg.max_body_bytes:
                        refusal = (413, "request_too_large",
                                   f"the request body is larger than {cfg.max_body_bytes} bytes")
                    break
        if refusal is not None:
            for message in _json_response(*refusal):
                await send(message)
            return

        received = 0
        body_done = False
        deadline = time.monotonic() + cfg.body_timeout_s

        async def limited_receive() -> Message:
            nonlocal received, body_done
            if body_done:  # after the body: waiting for http.disconnect, no deadline
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                raise BodyTimeout(cfg.body_timeout_s) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > cfg.max_body_bytes:
                    raise BodyTooLarge(cfg.max_body_bytes)
                body_done = not message.get("more_body", False)
            return message

        await self.app(scope, limited_receive, send)


def loads_json(raw: bytes, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Parse JSON (orjson: refuses nesting past 1024 without recursing in Python), then refuse nesting
    deeper than `max_depth`. ValueError (JsonTooDeep for the depth) when it cannot be used."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if "depth" in str(exc):
            raise JsonTooDeep(f"the JSON is nested deeper than {max_depth} levels") from None
        raise
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth > max_depth:
            raise JsonTooDeep(f"the JSON is nested deeper than {max_depth} levels")
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return data
