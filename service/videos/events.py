"""`GET /v1/videos/{id}/events`: a job's live events as Server-Sent Events (text/event-stream).

The stream replays the job's events from the start (or from just after `Last-Event-ID`), then follows
them live, and closes after the terminal event (`completed` or `failed`). Each event is

    id: <Redis stream entry id>      (what a reconnecting client sends back as Last-Event-ID)
    event: <queued | started | stage | preview | completed | failed>
    data: <the JobEvent as JSON: progress, elapsed_s, stage, step, steps, queue_position, preview, error>

The events live in a Redis stream per job (contract/events.py), written by the worker and by the gateway
(queued, cancelled, expired), so any gateway replica serves any client and a reconnect may land on
another one. While the job waits in the queue this route also sends `queued` events with its current
place in the queue when that place changes; those are computed here, not stored, so they carry no `id:`
(a client's Last-Event-ID stays the last stored event's). A `: keep-alive` comment goes out after
KEEPALIVE_S without an event, so proxies keep the connection open.

Waiting costs no thread: the blocking XREAD runs on an asyncio Redis client of its own (a stream holds
one of its connections while it waits, never one of the request paths' pool: `Engine.aevents`), and the
record with its queue position is one async round trip (once a second while queued, once per
READ_BLOCK_MS otherwise).

Authentication is the usual `Authorization: Bearer` header. Browsers' `EventSource` cannot send
headers, so the playground reads the stream with `fetch()` (service/static/playground.js); no API key
is ever accepted in a URL (it would end up in access logs and browser history).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Header
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from pydantic import ValidationError

from contract.events import TERMINAL_EVENTS, JobEvent
from contract.jobs import TERMINAL, ErrorCode, JobError, JobStatus
from contract.jobstore import JobRecord
from service.deps import AppState, Auth, State
from service.errors import ApiError
from service.videos.protocol import public_error

router = APIRouter(tags=["videos"])

KEEPALIVE_S = 15.0
QUEUE_POLL_S = 1.0
READ_BLOCK_MS = 3000  # under the asyncio client's 5 s socket timeout
TERMINAL_GRACE_MS = 500  # a finished record's terminal event may be a moment behind it
_ENTRY_ID = re.compile(r"0|\d+-\d+")
SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


# 1. the wire format ------------------------------------------------------------------------------
def format_event(event: str, data: str, event_id: str | None = None) -> bytes:
    """One SSE event. `data` may hold newlines: each line becomes its own `data:` field."""
    lines = [f"id: {event_id}"] if event_id is not None else []
    lines.append(f"event: {event}")
    lines += [f"data: {line}" for line in data.split("\n")]
    return ("\n".join(lines) + "\n\n").encode()


def format_comment(text: str) -> bytes:
    """An SSE comment (ignored by clients; keeps idle connections open)."""
    return f": {text}\n\n".encode()


def job_event_data(event: JobEvent) -> str:
    """The JSON of an event as clients see it: a failure's message without server paths or object keys."""
    data: dict[str, Any] = event.model_dump(mode="json", exclude_none=True)
    if event.error is not None:
        try:
            err = JobError.model_validate({"code": event.error.get("code"), "message": event.error.get("message", "")})
            data["error"] = public_error(err).model_dump()
        except ValidationError:
            data["error"] = {"code": str(event.error.get("code", "error")), "message": "the job failed"}
    return json.dumps(data, separators=(",", ":"))


def sse(event: JobEvent, event_id: str | None = None) -> bytes:
    return format_event(event.event, job_event_data(event), event_id)


# 2. events computed from the record --------------------------------------------------------------
def _elapsed(record: JobRecord, at: float | None = None) -> float:
    return round(max(0.0, (at or time.time()) - record.spec.created_at), 3)


def queued_event(record: JobRecord, position: int | None) -> JobEvent:
    return JobEvent(event="queued", progress=0, elapsed_s=_elapsed(record), queue_position=position)


def terminal_event(record: JobRecord | None) -> JobEvent:
    """The terminal event of a finished (or deleted: None) job, from its record, for a stream that lacks it
    (expired, trimmed, or the job was deleted with its stream)."""
    if record is None:
        return JobEvent(event="failed", progress=0, elapsed_s=0.0,
                        error={"code": str(ErrorCode.cancelled), "message": "the job was deleted"})
    if record.status is JobStatus.completed:
        return JobEvent(event="completed", progress=100, elapsed_s=_elapsed(record, record.completed_at))
    err = record.error or JobError(code=ErrorCode.cancelled, message="the job was cancelled")
    return JobEvent(event="failed", progress=record.progress, elapsed_s=_elapsed(record, record.completed_at),
                    error={"code": str(err.code), "message": err.message})


# 3. following a job ------------------------------------------------------------------------------
async def follow(state: AppState, record: JobRecord, after: str,
                 clock: Callable[[], float] = time.monotonic) -> AsyncIterator[bytes]:
    """The SSE byte stream of one job: replay after `after`, follow live, end after the terminal event."""
    engine, job_id = state.engine, record.spec.job_id
    cursor = after
    position: int | None = None  # the queue place last told to this client
    yield b"retry: 2000\n\n"
    last_sent = clock()
    while True:
        waiting = record.status is JobStatus.queued
        entries = await engine.aevents.read(job_id, after=cursor,
                                            block_ms=int(QUEUE_POLL_S * 1000) if waiting else READ_BLOCK_MS)
        for entry_id, event in entries:
            cursor = entry_id
            if event.event == "queued":
                position = event.queue_position
            yield sse(event, entry_id)
            last_sent = clock()
            if event.event in TERMINAL_EVENTS:
                return
        # the record: deleted, finished, or still waiting (its queue place may have moved); one round trip
        fresh, now_at = await engine.get_with_position(job_id)  # fails a job queued past the queue TTL
        if fresh is None or fresh.status in TERMINAL:
            for entry_id, event in await engine.aevents.read(job_id, after=cursor, block_ms=TERMINAL_GRACE_MS):
                yield sse(event, entry_id)
                if event.event in TERMINAL_EVENTS:
                    return
            yield sse(terminal_event(fresh))
            return
        record = fresh
        if record.status is JobStatus.queued:
            if now_at != position and now_at is not None:
                position = now_at
                yield sse(queued_event(record, now_at))
                last_sent = clock()
        if clock() - last_sent >= KEEPALIVE_S:
            yield format_comment("keep-alive")
            last_sent = clock()


# 4. the route ------------------------------------------------------------------------------------
@router.get(
    "/v1/videos/{video_id}/events",
    response_class=StreamingResponse,
    responses={200: {"description": "The job's events (Server-Sent Events), ending after `completed` or "
                                    "`failed`.",
                     "content": {"text/event-stream": {"schema": {"type": "string"}}}}},
)
async def video_events(
    video_id: str,
    state: State,
    principal: Auth,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
) -> StreamingResponse:
    """Live job events as Server-Sent Events: replayed from the start (or after `Last-Event-ID`), then
    followed until the terminal event. `id:` is the event's id, `event:` its type, `data:` a JobEvent."""
    after = (last_event_id or "0").strip()
    if not _ENTRY_ID.fullmatch(after):
        raise ApiError(400, "invalid_request", "Last-Event-ID must be an event id this stream sent", "Last-Event-ID")
    record = await run_in_threadpool(state.videos.owned, principal, video_id)
    return StreamingResponse(follow(state, record, after), media_type="text/event-stream", headers=SSE_HEADERS)
