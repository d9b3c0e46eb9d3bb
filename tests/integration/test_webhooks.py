"""Webhook delivery through a real RQ worker on real Redis to a local receiver; SSRF refusal."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient
from gateway_support import KEY_A, bearer, clean_redis, make_settings
from rq import Queue
from rq.job import Job
from rq.registry import ScheduledJobRegistry

from contract.jobs import JobError, JobStatus
from contract.queue import RQ_SERIALIZER, WEBHOOK_QUEUE, JobQueue
from contract.settings import Settings
from service import webhooks
from service.app import create_app


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


def _create(c: TestClient, webhook_url: str) -> str:
    r = c.post("/v1/videos", json={"prompt": "x", "size": "64x64", "webhook_url": webhook_url},
               headers=bearer(KEY_A))
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def _terminal_job(c: TestClient, webhook_url: str, status: JobStatus) -> str:
    vid = _create(c, webhook_url)
    err = JobError(code="generation_failed", message="out of memory") if status is JobStatus.failed else None
    c.app.state.turbovid.engine.store.finish(vid, status, ttl_s=60, error=err)
    return vid


def _enqueue(conn: redis.Redis, settings: Settings, vid: str, event_type: str, url: str) -> str:
    """What the worker (or the reaper) does when a job ends."""
    return JobQueue(conn, settings.queue).submit_webhook(vid, event_type, url, settings.webhooks)


def _drain(settings: Settings) -> None:
    webhooks.run_webhook_worker(settings, burst=True)


def test_signed_delivery_and_retry_with_backoff(tmp_path: Path, receiver: Receiver) -> None:
    settings = make_settings(tmp_path, egress={"allow_private_targets": True},
                             webhooks={"secret": "whsec_dGVzdHNlY3JldA=="})
    with clean_redis() as rconn, TestClient(create_app(settings)) as c:
        vid = _terminal_job(c, receiver.url, JobStatus.failed)
        receiver.statuses = [503]  # first attempt fails -> RQ schedules a retry
        job_id = _enqueue(rconn, settings, vid, "video.failed", receiver.url)
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
    settings = make_settings(tmp_path, egress={"allow_private_targets": True},
                             gateway={"public_url": "https://videos.example.com"})
    with clean_redis() as rconn, TestClient(create_app(settings)) as c:
        vid = _terminal_job(c, receiver.url, JobStatus.completed)
        _enqueue(rconn, settings, vid, "video.completed", receiver.url)
        _drain(settings)
        headers, body = receiver.calls[0]
        assert webhooks.verify(settings.webhooks.secret.get_secret_value(), headers, body)
        event = json.loads(body)
        assert event["type"] == "video.completed" and event["data"]["status"] == "completed"
        assert event["data"]["url"] == f"https://videos.example.com/v1/videos/{vid}/content"
        # the payload is the video object exactly as GET /v1/videos/{id} shows it (same base URL)
        get = c.get(f"https://videos.example.com/v1/videos/{vid}", headers=bearer(KEY_A)).json()
        assert event["data"] == get


def test_payload_is_rendered_from_the_record_at_delivery_time(tmp_path: Path, receiver: Receiver) -> None:
    settings = make_settings(tmp_path, egress={"allow_private_targets": True})
    with clean_redis() as rconn, TestClient(create_app(settings)) as c:
        vid = _create(c, receiver.url)
        # the delivery job carries only ids and the URL, nothing of the video
        job_id = _enqueue(rconn, settings, vid, "video.completed", receiver.url)
        delivery = json.loads(Job.fetch(job_id, connection=rconn, serializer=RQ_SERIALIZER).args[0])
        assert delivery == {"event_id": f"evt_{vid}_completed", "type": "video.completed", "job_id": vid,
                            "url": receiver.url}
        # the job changes after the enqueue: the payload shows the record as it is when delivered
        c.app.state.turbovid.engine.store.finish(vid, JobStatus.completed, ttl_s=60, timings={"total": 2.5})
        _drain(settings)
        event = json.loads(receiver.calls[0][1])
        assert event["data"]["status"] == "completed" and event["data"]["progress"] == 100
        assert event["data"]["timings"] == {"total": 2.5}


def test_delivery_for_a_deleted_job_is_dropped_without_a_post(tmp_path: Path, receiver: Receiver) -> None:
    settings = make_settings(tmp_path, egress={"allow_private_targets": True})
    with clean_redis() as rconn, TestClient(create_app(settings)) as c:
        vid = _terminal_job(c, receiver.url, JobStatus.failed)
        job_id = _enqueue(rconn, settings, vid, "video.failed", receiver.url)
        assert c.delete(f"/v1/videos/{vid}", headers=bearer(KEY_A)).status_code == 200
        _drain(settings)
        assert receiver.calls == []
        job = Job.fetch(job_id, connection=rconn, serializer=RQ_SERIALIZER)
        assert job.get_status() == "finished" and job.return_value()["dropped"] == "job record gone"


def test_gateway_queue_timeout_queues_a_failed_event_only_for_jobs_with_a_url(tmp_path: Path,
                                                                             receiver: Receiver) -> None:
    from contract.keys import Keys

    settings = make_settings(tmp_path, egress={"allow_private_targets": True}, queue={"queued_ttl_s": 1})
    with clean_redis() as rconn, TestClient(create_app(settings)) as c:
        with_url = _create(c, receiver.url)
        without = c.post("/v1/videos", json={"prompt": "x", "size": "64x64"}, headers=bearer(KEY_A)).json()["id"]
        for vid in (with_url, without):
            rconn.hset(Keys(settings.redis.key_prefix).job(vid), "created_at", "1.0")
            got = c.get(f"/v1/videos/{vid}", headers=bearer(KEY_A)).json()
            assert got["status"] == "failed" and got["error"]["code"] == "queue_timeout"
        assert Queue(WEBHOOK_QUEUE, connection=rconn, serializer=RQ_SERIALIZER).job_ids == [
            f"webhook-evt_{with_url}_failed"]
        _drain(settings)
        event = json.loads(receiver.calls[0][1])
        assert event["type"] == "video.failed" and event["data"]["error"]["code"] == "queue_timeout"


def test_the_task_refuses_to_run_outside_the_webhook_worker(tmp_path: Path) -> None:
    from rq import SimpleWorker

    settings = make_settings(tmp_path, webhooks={"max_attempts": 1})
    with clean_redis() as rconn:
        _enqueue(rconn, settings, "video_x", "video.failed", "https://example.com/hook")
        queue = Queue(WEBHOOK_QUEUE, connection=rconn, serializer=RQ_SERIALIZER)
        job = queue.jobs[0]
        SimpleWorker([queue], connection=rconn, serializer=RQ_SERIALIZER).work(burst=True)
        job = Job.fetch(job.id, connection=rconn, serializer=RQ_SERIALIZER)
        assert "runs only under service.webhooks.WebhookWorker" in (job.latest_result().exc_string or "")


def test_private_targets_are_refused_by_default(tmp_path: Path, receiver: Receiver) -> None:
    strict = make_settings(tmp_path)
    assert strict.egress.allow_private_targets is False
    with clean_redis() as rconn:
        with TestClient(create_app(strict)) as c:
            r = c.post("/v1/videos", json={"prompt": "x", "webhook_url": receiver.url}, headers=bearer(KEY_A))
            assert r.status_code == 400 and r.json()["error"]["param"] == "webhook_url"
        # a job accepted while private targets were allowed is still refused at delivery time
        lax = make_settings(tmp_path, egress={"allow_private_targets": True})
        strict = strict.model_copy(update={"redis": lax.redis})  # same key prefix: the deliverer finds the job
        with TestClient(create_app(lax)) as c:
            vid = _terminal_job(c, receiver.url, JobStatus.completed)
        job_id = _enqueue(rconn, strict, vid, "video.completed", receiver.url)
        _drain(strict)
        assert receiver.calls == []
        job = Job.fetch(job_id, connection=rconn, serializer=RQ_SERIALIZER)
        assert job.get_status() == "failed" and "refused" in (job.latest_result().exc_string or "")
        # failed at once, not scheduled for the retries a transient error would get
        assert job_id not in ScheduledJobRegistry(WEBHOOK_QUEUE, connection=rconn, serializer=RQ_SERIALIZER)
