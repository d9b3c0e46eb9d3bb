"""The SSE wire format of /v1/videos/{id}/events and the events the gateway computes from a job record."""

from __future__ import annotations

import json
import time

from contract.events import JobEvent
from contract.jobs import ErrorCode, GenerationParams, JobError, JobSpec, JobStatus
from contract.jobstore import JobRecord
from service.videos.events import (
    format_comment,
    format_event,
    job_event_data,
    queued_event,
    sse,
    terminal_event,
)


def _parse(raw: bytes) -> list[dict[str, str]]:
    """What a browser's EventSource makes of a byte stream: one dict per dispatched event."""
    events = []
    for block in raw.decode().split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.split("\n"):
            if not line or line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            fields[name] = fields[name] + "\n" + value if name == "data" and name in fields else value
        if "data" in fields:
            events.append(fields)
    return events


def _record(status: JobStatus = JobStatus.queued, **fields: object) -> JobRecord:
    params = GenerationParams(kind="t2v", width=64, height=64, num_frames=9, prompt="p", seed=1, num_steps=4)
    spec = JobSpec(job_id="video_1", owner="dev", model="wan-tiny", params=params, output_key="outputs/video_1.mp4",
                   created_at=time.time() - 2.0)
    return JobRecord(spec=spec, status=status, created_at=spec.created_at, **fields)


def test_event_framing_id_type_and_json_data() -> None:
    event = JobEvent(event="stage", progress=40, elapsed_s=1.25, stage="denoise", step=2, steps=4)
    raw = sse(event, "1700000000000-3")
    assert raw.endswith(b"\n\n") and raw.count(b"\n\n") == 1
    (parsed,) = _parse(raw)
    assert parsed["id"] == "1700000000000-3"
    assert parsed["event"] == "stage"
    assert json.loads(parsed["data"]) == {"event": "stage", "progress": 40, "elapsed_s": 1.25, "stage": "denoise",
                                          "step": 2, "steps": 4}


def test_multiline_data_is_split_into_data_fields_and_rejoined() -> None:
    raw = format_event("x", "line one\nline two")
    assert b"data: line one\ndata: line two\n\n" in raw
    assert b"id:" not in raw  # computed events carry no id: Last-Event-ID stays the last stored one
    assert _parse(raw)[0]["data"] == "line one\nline two"


def test_comment_is_not_an_event() -> None:
    assert format_comment("keep-alive") == b": keep-alive\n\n"
    assert _parse(format_comment("keep-alive")) == []


def test_failure_message_hides_server_paths_and_object_keys() -> None:
    event = JobEvent(event="failed", progress=30, elapsed_s=3.0,
                     error={"code": "generation_failed", "message": "open /srv/cache/w.pt failed for outputs/v.mp4"})
    data = json.loads(job_event_data(event))
    assert data["error"]["code"] == "generation_failed"
    assert "/srv/cache" not in data["error"]["message"] and "outputs/v.mp4" not in data["error"]["message"]
    storage = JobEvent(event="failed", progress=99, elapsed_s=3.0,
                       error={"code": "storage_error", "message": "s3://bucket/key: AccessDenied"})
    assert "bucket" not in json.loads(job_event_data(storage))["error"]["message"]


def test_events_computed_from_the_record() -> None:
    queued = queued_event(_record(), 3)
    assert (queued.event, queued.queue_position, queued.progress) == ("queued", 3, 0)
    assert 1.5 < queued.elapsed_s < 10
    done = _record(JobStatus.completed, completed_at=time.time(), progress=100)
    assert (terminal_event(done).event, terminal_event(done).progress) == ("completed", 100)
    failed = _record(JobStatus.failed, progress=40, completed_at=time.time(),
                     error=JobError(code=ErrorCode.timeout, message="too slow"))
    ev = terminal_event(failed)
    assert (ev.event, ev.progress, ev.error) == ("failed", 40, {"code": "timeout", "message": "too slow"})
    cancelled = terminal_event(_record(JobStatus.cancelled))
    assert cancelled.event == "failed" and cancelled.error is not None and cancelled.error["code"] == "cancelled"
    deleted = terminal_event(None)
    assert deleted.event == "failed" and deleted.error is not None and deleted.error["code"] == "cancelled"
