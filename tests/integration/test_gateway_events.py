"""GET /v1/videos/{id}/events against real Redis and a real uvicorn server; the worker's side of the stream
is played by this test through `contract.events.EventLog` (the worker process itself: tests/e2e/).

Checked: replay then live follow in order with stream ids, closing after the terminal event; resume by
Last-Event-ID (also on another gateway replica); live queue position while queued; cancel and deletion
end the stream; tenancy; keep-alive comments; many open streams hold no request thread; the preview
variant of /content."""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from gateway_support import (
    KEY_A,
    KEY_B,
    UvicornThread,
    advertise_worker,
    bearer,
    clean_redis,
    make_settings,
    png_bytes,
)

from contract.events import EventLog, JobEvent, preview_key
from contract.jobs import JobStatus
from contract.keys import Keys
from service.app import create_app
from service.deps import AppState
from service.engine import ASYNC_POOL_SIZE
from service.videos import events as events_module

A, B = bearer(KEY_A), bearer(KEY_B)


def read_events(client: httpx.Client, video_id: str, *, headers: dict[str, str] | None = None,
                timeout: float = 20, comments: list[str] | None = None) -> list[dict[str, Any]]:
    """The stream's events (id, event, data as a dict) until the server closes it."""
    out: list[dict[str, Any]] = []
    with client.stream("GET", f"/v1/videos/{video_id}/events", headers={**A, **(headers or {})},
                       timeout=timeout) as resp:
        assert resp.status_code == 200, resp.read()
        assert resp.headers["content-type"].startswith("text/event-stream")
        fields: dict[str, str] = {}
        for line in resp.iter_lines():
            if line.startswith(":"):
                if comments is not None:
                    comments.append(line)
                continue
            if line == "":
                if "data" in fields:
                    out.append({"id": fields.get("id"), "event": fields["event"], "data": json.loads(fields["data"])})
                fields = {}
                continue
            name, _, value = line.partition(": ")
            fields[name] = value
    return out


@pytest.fixture()
def gateway(tmp_path: Path) -> Iterator[tuple[httpx.Client, AppState, EventLog]]:
    with clean_redis() as r:
        settings = make_settings(tmp_path)
        advertise_worker(settings)
        app = create_app(settings)
        with UvicornThread(app) as server, httpx.Client(base_url=server.url, timeout=20) as client:
            yield client, app.state.turbovid, EventLog(r, Keys(settings.redis.key_prefix))


def _create(client: httpx.Client) -> str:
    resp = client.post("/v1/videos", json={"prompt": "a fox"}, headers=A)
    assert resp.status_code == 201, resp.text
    return str(resp.json()["id"])


def _run_job(log: EventLog, state: AppState, video_id: str, *, delay: float = 0.5) -> threading.Thread:
    """What a worker publishes for a 4-step job, starting after `delay` seconds."""

    def run() -> None:
        time.sleep(delay)
        state.engine.store.mark_started(video_id, "w1")
        log.publish(video_id, JobEvent(event="started", progress=1, elapsed_s=0.6), ttl_s=60)
        for k in range(1, 5):
            log.publish(video_id, JobEvent(event="stage", progress=k * 20, elapsed_s=0.6 + k / 10, stage="denoise",
                                           step=k, steps=4), ttl_s=60)
            time.sleep(0.05)
        state.engine.store.set_progress(video_id, 100)
        log.publish(video_id, JobEvent(event="completed", progress=100, elapsed_s=1.2), ttl_s=60)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_replay_follow_in_order_and_close_after_the_terminal_event(gateway) -> None:
    client, state, log = gateway
    vid = _create(client)
    _run_job(log, state, vid)
    t0 = time.monotonic()
    events = read_events(client, vid)
    assert time.monotonic() - t0 < 10  # closed by the server after `completed`, not by the timeout
    assert [e["event"] for e in events] == ["queued", "started", "stage", "stage", "stage", "stage", "completed"]
    assert events[0]["data"]["queue_position"] == 0
    assert [e["data"]["step"] for e in events if e["event"] == "stage"] == [1, 2, 3, 4]
    progress = [e["data"]["progress"] for e in events]
    assert progress == sorted(progress) and progress[-1] == 100
    ids = [e["id"] for e in events]
    assert all(ids) and ids == sorted(ids, key=lambda i: tuple(int(p) for p in i.split("-")))
    # a later client gets the whole story replayed, then the stream closes
    assert [e["id"] for e in read_events(client, vid)] == ids


def test_queued_comes_first_even_when_a_worker_takes_the_job_at_once(gateway,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """An idle worker takes a job the moment it lands on the queue and publishes "started" at once (seen in
    CI: a stream that began ['started', 'stage', 'queued', ...]). The gateway's "queued" still comes first:
    here "started" is published the moment the creation's transaction has run (the earliest a worker can
    see the job on its queue)."""
    client, state, log = gateway
    engine = state.engine
    real_pipeline = engine._r.pipeline
    started: set[str] = set()

    def pipeline_then_start(*args, **kw):  # noqa: ANN002, ANN003, ANN202 - redis-py's own signature
        pipe = real_pipeline(*args, **kw)
        real_execute = pipe.execute

        def execute(*eargs, **ekw):  # noqa: ANN002, ANN003, ANN202
            out = real_execute(*eargs, **ekw)
            for model in state.settings.gateway.models:
                for job_id in set(engine.queue.queue(model).get_job_ids()) - started:
                    started.add(job_id)
                    log.publish(job_id, JobEvent(event="started", progress=1, elapsed_s=0.01), ttl_s=60)
            return out

        pipe.execute = execute
        return pipe

    monkeypatch.setattr(engine._r, "pipeline", pipeline_then_start)
    vid = _create(client)
    state.engine.store.mark_started(vid, "w1")
    state.engine.store.set_progress(vid, 100)
    log.publish(vid, JobEvent(event="completed", progress=100, elapsed_s=0.2), ttl_s=60)
    assert [e["event"] for e in read_events(client, vid)] == ["queued", "started", "completed"]


def test_resume_after_last_event_id_on_another_replica(gateway, tmp_path: Path) -> None:
    client, state, log = gateway
    vid = _create(client)
    _run_job(log, state, vid, delay=0).join()
    first = read_events(client, vid)
    other = create_app(state.settings)  # a second gateway process on the same Redis
    with UvicornThread(other) as server, httpx.Client(base_url=server.url) as client2:
        rest = read_events(client2, vid, headers={"Last-Event-ID": first[2]["id"]})
    assert rest == first[3:]
    bad = client.get(f"/v1/videos/{vid}/events", headers={**A, "Last-Event-ID": "nonsense"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "Last-Event-ID"


def test_live_queue_position_then_cancel_ends_the_stream(gateway) -> None:
    client, state, _log = gateway
    first, second = _create(client), _create(client)
    got: list[dict[str, Any]] = []
    reader = threading.Thread(target=lambda: got.extend(read_events(client, second)), daemon=True)
    reader.start()
    time.sleep(1.5)
    assert client.delete(f"/v1/videos/{first}", headers=A).status_code == 200  # `second` moves up
    time.sleep(2.0)
    assert client.delete(f"/v1/videos/{second}", headers=A).status_code == 200
    reader.join(timeout=10)
    assert not reader.is_alive()
    kinds = [(e["event"], e["data"].get("queue_position"), e["id"] is not None) for e in got]
    assert kinds[0] == ("queued", 1, True)  # the gateway's event at creation
    assert ("queued", 0, False) in kinds  # computed while it waits: no id
    assert got[-1]["event"] == "failed" and got[-1]["data"]["error"]["code"] == "cancelled"


def test_queued_job_cancelled_is_a_stored_failed_event(gateway) -> None:
    client, state, _log = gateway
    vid = _create(client)
    state.engine.cancel(vid)  # what DELETE does first; the record stays (status cancelled)
    events = read_events(client, vid)
    assert [e["event"] for e in events] == ["queued", "failed"]
    assert events[-1]["id"] is not None and events[-1]["data"]["error"]["code"] == "cancelled"


def test_tenancy_and_auth(gateway) -> None:
    client, _state, _log = gateway
    vid = _create(client)
    assert client.get(f"/v1/videos/{vid}/events", headers=B).status_code == 404
    assert client.get("/v1/videos/video_nope/events", headers=A).status_code == 404
    resp = client.get(f"/v1/videos/{vid}/events")
    assert resp.status_code == 401 and resp.json()["error"]["code"] == "missing_api_key"
    assert client.get(f"/v1/videos/{vid}/events?access_token={KEY_A}").status_code == 401  # no keys in URLs


def test_keep_alive_comments_while_nothing_happens(gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    client, state, log = gateway
    monkeypatch.setattr(events_module, "KEEPALIVE_S", 0.5)
    monkeypatch.setattr(events_module, "READ_BLOCK_MS", 300)
    vid = _create(client)
    state.engine.store.mark_started(vid, "w1")  # running, silent for a while
    comments: list[str] = []

    def finish() -> None:
        time.sleep(2.0)
        log.publish(vid, JobEvent(event="completed", progress=100, elapsed_s=2.0), ttl_s=60)

    threading.Thread(target=finish, daemon=True).start()
    events = read_events(client, vid, comments=comments)
    assert events[-1]["event"] == "completed"
    assert len(comments) >= 2 and all(c == ": keep-alive" for c in comments)


def test_open_streams_hold_no_request_thread_or_connection(gateway) -> None:
    """60 streams of a running job, each blocked in XREAD: more than the request threadpool's 40 threads and
    the request paths' 32 pooled Redis connections, and polling still answers at once."""
    client, state, log = gateway
    vid = _create(client)
    state.engine.store.mark_started(vid, "w1")  # running and silent: every stream waits in XREAD
    assert ASYNC_POOL_SIZE < 60
    base = str(client.base_url)
    streams = [httpx.Client(base_url=base, timeout=30) for _ in range(60)]
    opened = [s.stream("GET", f"/v1/videos/{vid}/events", headers=A) for s in streams]
    try:
        for ctx in opened:
            assert ctx.__enter__().status_code == 200
        time.sleep(0.5)  # all of them inside their blocking read
        # /readyz runs on the request threadpool, GET /v1/videos/{id} on the request paths' Redis pool
        for path in ("/readyz", f"/v1/videos/{vid}", "/v1/videos", f"/v1/videos/{vid}", "/readyz"):
            t0 = time.monotonic()
            assert client.get(path, headers=A, timeout=10).status_code == 200
            assert time.monotonic() - t0 < 1.0, path
    finally:
        for ctx, s in zip(opened, streams, strict=True):
            ctx.__exit__(None, None, None)
            s.close()
    # clients gone: their blocking reads are cancelled at once, not left to run out
    deadline = time.monotonic() + 2.0
    while any(c.get("cmd") == "xread" for c in log.r.client_list()):
        assert time.monotonic() < deadline, "XREADs of disconnected streams still waiting"
        time.sleep(0.1)


def test_preview_variant(gateway) -> None:
    client, state, _log = gateway
    vid = _create(client)
    resp = client.get(f"/v1/videos/{vid}/content", params={"variant": "preview"}, headers=A)
    assert resp.status_code == 409 and resp.json()["error"]["code"] == "preview_not_ready"
    record = state.engine.store.get(vid)
    jpeg = png_bytes(64, 64, fmt="JPEG")
    state.storage.put_bytes(jpeg, preview_key(record.spec.output_key), "image/jpeg")
    resp = client.get(f"/v1/videos/{vid}/content", params={"variant": "preview"}, headers=A)
    assert resp.status_code == 200 and resp.headers["content-type"] == "image/jpeg"
    assert resp.headers["cache-control"] == "no-store" and resp.content == jpeg
    from PIL import Image

    assert Image.open(io.BytesIO(resp.content)).size == (64, 64)
    assert client.get(f"/v1/videos/{vid}/content", params={"variant": "preview"}, headers=B).status_code == 404
    # the worker deletes the preview when the job ends
    state.storage.delete(preview_key(record.spec.output_key))
    state.engine.store.finish(vid, JobStatus.failed, ttl_s=60)
    resp = client.get(f"/v1/videos/{vid}/content", params={"variant": "preview"}, headers=A)
    assert resp.status_code == 409 and "previews exist only while it runs" in resp.json()["error"]["message"]


def test_a_job_the_queue_refuses_leaves_no_record_and_no_events(gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    """Redis fails between the "queued" event and the enqueue: the POST fails, and neither the job's
    record nor its event stream is left behind (no one could follow them; nothing claims a job exists)."""
    import redis

    client, state, log = gateway
    created: list[str] = []

    def refuse(spec, **kw):  # noqa: ANN001, ANN202 - the queue's own signature
        created.append(spec.job_id)
        assert [e.event for _, e in log.read(spec.job_id)] == ["queued"]  # published first
        raise redis.ConnectionError("the queue went away")

    monkeypatch.setattr(state.engine.queue, "submit", refuse)
    resp = client.post("/v1/videos", json={"prompt": "a fox"}, headers=A)
    assert resp.status_code >= 500
    assert created and state.engine.store.get(created[0]) is None
    assert log.read(created[0]) == []
