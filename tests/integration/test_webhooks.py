"""Webhook delivery through a real RQ worker on real Redis to a local receiver; SSRF refusal."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from gateway_support import KEY_A, bearer, clean_redis, make_settings
from rq import Queue, SimpleWorker
from rq.job import Job
from rq.registry import ScheduledJobRegistry

from service import webhooks
from service.app import create_app
from contract.jobs import RQ_SERIALIZER, WEBHOOK_QUEUE, JobError, JobStatus
from contract.settings import Settings


class Receiver:
    def __init__(self) -> None:
        self.calls: list[tuple[dict[str, str], str]] = []
        self.statuses: list[int] = []  # response codes to give, in order; then 200
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["content-length"])).decode()
                outer.calls.append(({k.lower(): v for k, v in self.headers.items()}, body))
                status = outer.statuses.pop(0) if outer.statuses else 200
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def _terminal_job(c: TestClient, settings: Settings, webhook_url: str, status: JobStatus) -> str:
    r = c.post("/v1/videos", json={"prompt": "x", "size": "64x64", "webhook_url": webhook_url},
               headers=bearer(KEY_A))
    assert r.status_code == 201, r.text
    vid = r.json()["id"]
    err = JobError(code="generation_failed", message="out of memory") if status is JobStatus.failed else None
    c.app.state.turbovid.engine.store.finish(vid, status, ttl_s=60, error=err)
    return vid


def _drain(settings: Settings) -> None:
    webhooks.configure(settings)
    conn = Queue(WEBHOOK_QUEUE, connection=_conn(), serializer=RQ_SERIALIZER)
    SimpleWorker([conn], connection=conn.connection, serializer=RQ_SERIALIZER).work(burst=True)


def _conn():
    import redis
    from gateway_support import REDIS_URL

    return redis.Redis.from_url(REDIS_URL)


def test_signed_delivery_and_retry_with_backoff(tmp_path: Path, receiver: Receiver) -> None:
    settings = make_settings(tmp_path, webhooks={"allow_private_targets": True, "secret": "whsec_dGVzdHNlY3JldA=="})
    with clean_redis() as rconn, TestClient(create_app(settings)) as c:
        vid = _terminal_job(c, settings, receiver.url, JobStatus.failed)
        record = c.app.state.turbovid.engine.store.get(vid)
        receiver.statuses = [503]  # first attempt fails -> RQ schedules a retry
        job_id = webhooks.enqueue_webhook(rconn, settings, record)
        _drain(settings)
        assert len(receiver.calls) == 1
        job = Job.fetch(job_id, connection=rconn, serializer=RQ_SERIALIZER)
        assert job.retries_left == settings.webhooks.max_attempts - 2
        assert job_id in ScheduledJobRegistry(WEBHOOK_QUEUE, connection=rconn, serializer=RQ_SERIALIZER)
        # run the retry now instead of waiting for the backoff
        Queue(WEBHOOK_QUEUE, connection=rconn, serializer=RQ_SERIALIZER).enqueue_job(job)
        _drain(settings)
        assert len(receiver.calls) == 2
        (h1, b1), (h2, b2) = receiver.calls
        assert h1["webhook-id"] == h2["webhook-id"] == f"evt_{vid}_failed"  # stable across retries
        assert webhooks.verify(settings.webhooks.secret.get_secret_value(), h2, b2)
        assert not webhooks.verify("whsec_b3RoZXI=", h2, b2)
        assert not webhooks.verify(settings.webhooks.secret.get_secret_value(), h2, b2.replace("x", "y"))
        event = json.loads(b2)
        assert event["type"] == "video.failed" and event["data"]["id"] == vid
        assert event["data"]["error"] == {"code": "generation_failed", "message": "out of memory"}
        assert Job.fetch(job_id, connection=rconn, serializer=RQ_SERIALIZER).get_status() == "finished"


def test_completed_event_links_the_content_when_public_url_is_set(tmp_path: Path, receiver: Receiver) -> None:
    settings = make_settings(tmp_path, webhooks={"allow_private_targets": True},
                             gateway={"public_url": "https://videos.example.com"})
    with clean_redis() as rconn, TestClient(create_app(settings)) as c:
        vid = _terminal_job(c, settings, receiver.url, JobStatus.completed)
        webhooks.enqueue_webhook(rconn, settings, c.app.state.turbovid.engine.store.get(vid))
        _drain(settings)
        headers, body = receiver.calls[0]
        assert webhooks.verify(settings.webhooks.secret.get_secret_value(), headers, body)
        event = json.loads(body)
        assert event["type"] == "video.completed" and event["data"]["status"] == "completed"
        assert event["data"]["url"] == f"https://videos.example.com/v1/videos/{vid}/content"


def test_no_webhook_url_enqueues_nothing(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    with clean_redis() as rconn, TestClient(create_app(settings)) as c:
        vid = c.post("/v1/videos", json={"prompt": "x", "size": "64x64"}, headers=bearer(KEY_A)).json()["id"]
        c.app.state.turbovid.engine.store.finish(vid, JobStatus.completed, ttl_s=60)
        record = c.app.state.turbovid.engine.store.get(vid)
        assert webhooks.enqueue_webhook(rconn, settings, record) is None
        assert Queue(WEBHOOK_QUEUE, connection=rconn, serializer=RQ_SERIALIZER).count == 0


def test_private_targets_are_refused_by_default(tmp_path: Path, receiver: Receiver) -> None:
    strict = make_settings(tmp_path)
    assert strict.webhooks.allow_private_targets is False
    with clean_redis() as rconn:
        with TestClient(create_app(strict)) as c:
            r = c.post("/v1/videos", json={"prompt": "x", "webhook_url": receiver.url}, headers=bearer(KEY_A))
            assert r.status_code == 400 and r.json()["error"]["param"] == "webhook_url"
        # a job accepted while private targets were allowed is still refused at delivery time
        lax = make_settings(tmp_path, webhooks={"allow_private_targets": True})
        with TestClient(create_app(lax)) as c:
            vid = _terminal_job(c, lax, receiver.url, JobStatus.completed)
            record = c.app.state.turbovid.engine.store.get(vid)
        job_id = webhooks.enqueue_webhook(rconn, strict, record)
        _drain(strict)
        assert receiver.calls == []
        job = Job.fetch(job_id, connection=rconn, serializer=RQ_SERIALIZER)
        assert job.get_status() == "failed" and "refused" in (job.latest_result().exc_string or "")
        # failed at once, not scheduled for the retries a transient error would get
        assert job_id not in ScheduledJobRegistry(WEBHOOK_QUEUE, connection=rconn, serializer=RQ_SERIALIZER)
