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


# concurrency and per-receiver isolation ----------------------------------------------------------

class HangingReceiver:
    """Accepts connections and never answers (a receiver that hangs)."""

    def __init__(self) -> None:
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/hook"
        self.conns: list[object] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)

    def close(self) -> None:
        self.sock.close()
        for c in self.conns:
            c.close()  # type: ignore[attr-defined]


def test_a_hanging_receiver_delays_only_its_own_events(tmp_path: Path, receiver: Receiver) -> None:
    """Four receivers hang on 3 events each; the healthy receiver's event, queued after all of them,
    arrives within 2 s (one deliverer in line would make it wait 12 timeouts)."""
    import os
    import subprocess
    import sys
    import time

    from worker_procs import REPO, RedisServer, settings_on, wait_for
    from worker_support import submit, test_settings

    from contract.jobstore import JobStore
    from contract.keys import Keys

    hanging = [HangingReceiver() for _ in range(4)]
    with RedisServer(tmp_path / "redis") as server:
        settings = settings_on(test_settings(tmp_path), server.url)
        settings = settings.model_copy(update={"egress": settings.egress.model_copy(
            update={"allow_private_targets": True, "timeout_s": 5.0})})
        conn = redis.Redis.from_url(server.url)
        store = JobStore(conn, Keys(settings.redis.key_prefix))

        def finished_job(url: str) -> str:
            spec = submit(settings, webhook_url=url)
            store.finish(spec.job_id, JobStatus.completed, ttl_s=600)
            return spec.job_id

        env = {k: v for k, v in os.environ.items() if not k.startswith("TURBOVID_")}
        env.update({"PYTHONPATH": str(REPO), "TURBOVID_DEV_MODE": "true", "TURBOVID_REDIS__URL": server.url,
                    "TURBOVID_REDIS__KEY_PREFIX": settings.redis.key_prefix,
                    "TURBOVID_EGRESS__ALLOW_PRIVATE_TARGETS": "true", "TURBOVID_EGRESS__TIMEOUT_S": "5"})
        proc = subprocess.Popen([sys.executable, "-m", "cli.main", "webhooks"], cwd=REPO, env=env,
                                stdout=(tmp_path / "webhooks.log").open("wb"), stderr=subprocess.STDOUT)
        try:
            warm = finished_job(receiver.url)  # the deliverer is up and serving
            _enqueue(conn, settings, warm, "video.completed", receiver.url)
            wait_for(lambda: len(receiver.calls) == 1, timeout=20, what="first delivery", proc=proc)  # type: ignore[arg-type]
            for h in hanging:
                for _ in range(3):
                    _enqueue(conn, settings, finished_job(h.url), "video.completed", h.url)
            wait_for(lambda: sum(len(h.conns) for h in hanging) >= 8, timeout=5,
                     what="2 deliveries in flight to each hanging receiver")
            vid = finished_job(receiver.url)
            t0 = time.monotonic()
            _enqueue(conn, settings, vid, "video.completed", receiver.url)
            wait_for(lambda: len(receiver.calls) == 2, timeout=10, what="the healthy receiver's event")
            waited = time.monotonic() - t0
            print(f"healthy receiver's event delivered {waited:.2f} s after it was queued, behind 12 hanging ones")
            assert waited < 2.0, waited
            assert json.loads(receiver.calls[1][1])["data"]["id"] == vid
            # per-receiver cap: never more than webhooks.per_target connections to one hanging receiver
            assert all(len(h.conns) == settings.webhooks.per_target for h in hanging), [len(h.conns) for h in hanging]
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            for h in hanging:
                h.close()


def test_dispatcher_caps_each_target_and_lets_targets_take_turns() -> None:
    import time

    d = webhooks.Dispatcher(threads=4, per_target=2, max_held=100)
    lock = threading.Lock()
    running: dict[str, int] = {}
    peak: dict[str, int] = {}
    order: list[str] = []

    def job(target: str, seconds: float):
        def run() -> None:
            with lock:
                running[target] = running.get(target, 0) + 1
                peak[target] = max(peak.get(target, 0), running[target])
                order.append(target)
            time.sleep(seconds)
            with lock:
                running[target] -= 1
        return run

    for _ in range(6):
        d.submit("slow", job("slow", 0.3))
    for _ in range(3):
        d.submit("fast", job("fast", 0.0))
    time.sleep(0.1)
    assert d.line("slow") == 4  # two run, four wait in their own line
    assert order.count("fast") == 3  # the fast target was not stuck behind the slow one
    assert d.close(drain=True) == 0
    assert peak["slow"] == 2  # never more than per_target at once
    assert order.count("slow") == 6

    d = webhooks.Dispatcher(threads=1, per_target=1, max_held=10)
    d.submit("a", job("a", 0.3))
    d.submit("a", job("a", 0.0))
    time.sleep(0.05)
    assert d.close(drain=False) == 1  # the waiting one is handed back (RQ retries it), the running one ends


@pytest.mark.parametrize("url", ["http://100.100.100.200/latest/meta-data", "http://100.64.0.1/hook",
                                 "http://[fec0::1]/hook", "http://[2002:7f00:1::1]/hook"])
def test_the_deliverer_refuses_carrier_nat_site_local_and_6to4_targets(tmp_path: Path, url: str) -> None:
    from contract.jobstore import JobStore
    from contract.keys import Keys

    settings = make_settings(tmp_path)
    conn = redis.Redis.from_url(settings.redis.url)
    deliverer = webhooks.Deliverer(settings, JobStore(conn, Keys(settings.redis.key_prefix)))
    with pytest.raises(webhooks.WebhookRefused, match="refused"):
        deliverer.deliver("evt_x_completed", "video.completed", "video_x", url)
