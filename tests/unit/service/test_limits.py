"""service.limits: the streamed body limit, the body read deadline and the JSON depth limit."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from service.limits import BodyTimeout, BodyTooLarge, JsonTooDeep, LimitsConfig, RequestLimits, loads_json


def _run(cfg: LimitsConfig, messages: list[dict[str, Any]], headers: list[tuple[bytes, bytes]] | None = None,
         stall: bool = False) -> tuple[list[dict[str, Any]], BaseException | None, int]:
    """Run RequestLimits around an app that reads the whole body; (sent messages, app error, bytes read)."""
    sent: list[dict[str, Any]] = []
    read = 0
    feed = list(messages)

    async def receive() -> dict[str, Any]:
        if feed:
            return feed.pop(0)
        if stall:
            await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        nonlocal read
        while True:
            m = await receive()
            read += len(m.get("body", b""))
            if not m.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})

    scope = {"type": "http", "headers": headers or []}
    error: BaseException | None = None
    try:
        asyncio.run(RequestLimits(app, config=cfg)(scope, receive, send))
    except (BodyTooLarge, BodyTimeout) as exc:
        error = exc
    return sent, error, read


def test_a_streamed_body_is_cut_at_the_limit_before_the_app_holds_more() -> None:
    chunks = [{"type": "http.request", "body": b"x" * 400, "more_body": True} for _ in range(100)]
    sent, error, read = _run(LimitsConfig(max_body_bytes=1000), chunks)
    assert isinstance(error, BodyTooLarge) and read <= 1000 and not sent
    sent, error, read = _run(LimitsConfig(max_body_bytes=1000), chunks[:2] + [{"type": "http.request", "body": b""}])
    assert error is None and read == 800 and sent[0]["status"] == 200


def test_content_length_and_header_count_are_refused_before_reading() -> None:
    sent, error, read = _run(LimitsConfig(max_body_bytes=1000), [], headers=[(b"content-length", b"1001")])
    assert sent[0]["status"] == 413 and read == 0 and error is None
    sent, _, _ = _run(LimitsConfig(max_body_bytes=1000, max_headers=3), [], headers=[(b"x", b"y")] * 4)
    assert sent[0]["status"] == 431


def test_a_body_that_stops_arriving_times_out() -> None:
    first = [{"type": "http.request", "body": b"x", "more_body": True}]
    _, error, read = _run(LimitsConfig(max_body_bytes=1000, body_timeout_s=0.2), first, stall=True)
    assert isinstance(error, BodyTimeout) and read == 1


def test_json_depth() -> None:
    assert loads_json(b'{"a": [[1]]}', max_depth=3) == {"a": [[1]]}
    for raw in (b'{"a": [[[1]]]}', b"[" * 100_000):
        with pytest.raises(JsonTooDeep):
            loads_json(raw, max_depth=3)
    with pytest.raises(ValueError):
        loads_json(b"{nope")
