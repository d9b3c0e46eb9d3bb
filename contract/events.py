"""Live job events: what happened to a job, in order, for `GET /v1/videos/{id}/events` (SSE).

The worker (and the gateway, for what it decides: created, cancelled, expired) appends `JobEvent`s to
a Redis stream per job, `<p>:events:<id>` (contract/keys.py), capped in length and expiring with the
job record. Any gateway replica serves the stream: the SSE event id is the stream entry id, so a
client that reconnects with `Last-Event-ID` resumes right after the last event it saw. Polling
`GET /v1/videos/{id}` keeps working: the job hash holds the same status and progress.

Progress is monotonic and reaches 100 only when the content is downloadable (the `completed` event).
"""

from __future__ import annotations

from typing import Any, Literal

import redis
import redis.asyncio
from pydantic import BaseModel, ConfigDict

from contract.keys import Keys, text

EventType = Literal["queued", "started", "stage", "preview", "completed", "failed"]
TERMINAL_EVENTS = frozenset({"completed", "failed"})
MAX_EVENTS = 1000  # per job; a 4-step job writes a few dozen


def preview_key(output_key: str) -> str:
    """Object-store key of a running job's latest preview JPEG (`/content?variant=preview`)."""
    return f"{output_key}.preview.jpg"


def preview_url(job_id: str, version: int) -> str:
    """The URL path a "preview" event carries: `version` (the denoise step) changes with each new
    preview so that clients and caches fetch it again."""
    return f"/v1/videos/{job_id}/content?variant=preview&v={version}"


class JobEvent(BaseModel):
    model_config = ConfigDict(extra="forbid")

    event: EventType
    progress: int  # 0-100, never decreasing within a job's stream
    elapsed_s: float  # seconds since the job was created
    stage: str | None = None  # contract.jobs.Stage value while in progress
    step: int | None = None  # denoise step k (1-based) or decode chunk i of `steps`
    steps: int | None = None
    queue_position: int | None = None  # "queued"
    preview: str | None = None  # "preview": URL path of the JPEG (changes with each new preview)
    error: dict[str, str] | None = None  # "failed": {"code", "message"}


class EventLog:
    def __init__(self, client: redis.Redis, keys: Keys, *, max_events: int = MAX_EVENTS) -> None:
        self.r = client
        self.keys = keys
        self.max_events = max_events

    def publish(self, job_id: str, event: JobEvent, *, ttl_s: int, pipeline: Any = None) -> str:
        """Append an event; returns its id (the SSE event id). With `pipeline` the commands are only
        added to the caller's transaction and "" is returned (the id is known once it executes)."""
        key = self.keys.events(job_id)
        pipe = self.r.pipeline(transaction=False) if pipeline is None else pipeline
        pipe.xadd(key, {"data": event.model_dump_json(exclude_none=True)}, maxlen=self.max_events,
                  approximate=True)
        pipe.expire(key, ttl_s)
        if pipeline is not None:
            return ""
        entry_id = pipe.execute()[0]
        return text(entry_id)

    def read(self, job_id: str, *, after: str = "0", block_ms: int | None = None,
             count: int = 100) -> list[tuple[str, JobEvent]]:
        """Events strictly after entry id `after` ("0": from the start), waiting up to `block_ms` for
        the first one when there is none yet (None: don't wait)."""
        raw: Any = self.r.xread({self.keys.events(job_id): after}, count=count, block=block_ms)
        return _entries(raw)

    def last(self, job_id: str) -> tuple[str, JobEvent] | None:
        raw: Any = self.r.xrevrange(self.keys.events(job_id), count=1)
        if not raw:
            return None
        entry_id, fields = raw[0]
        data = fields.get(b"data", fields.get("data"))
        return (text(entry_id),
                JobEvent.model_validate_json(data))

    def delete(self, job_id: str) -> None:
        self.r.delete(self.keys.events(job_id))


class AsyncEventLog:
    """The reading half of `EventLog` on an asyncio Redis client: what the gateway's SSE route follows
    without holding a thread (a blocking XREAD waits on the event loop)."""

    def __init__(self, client: redis.asyncio.Redis, keys: Keys) -> None:
        self.r = client
        self.keys = keys

    async def read(self, job_id: str, *, after: str = "0", block_ms: int | None = None,
                   count: int = 100) -> list[tuple[str, JobEvent]]:
        """As `EventLog.read`."""
        raw: Any = await self.r.xread({self.keys.events(job_id): after}, count=count, block=block_ms)
        return _entries(raw)


def _entries(raw: Any) -> list[tuple[str, JobEvent]]:
    out: list[tuple[str, JobEvent]] = []
    for _stream, entries in raw or []:
        for entry_id, fields in entries:
            data = fields.get(b"data", fields.get("data"))
            eid = text(entry_id)
            out.append((eid, JobEvent.model_validate_json(data)))
    return out
