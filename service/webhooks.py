"""The webhook deliverer (`turbovid webhooks`): signed POSTs to a job's `webhook_url` when it ends.

Flow: whoever moves a job to a terminal state (the worker, the reaper, the gateway's queue-TTL expiry)
calls `JobQueue.submit_webhook(job_id, "video.completed" | "video.failed", url, settings.webhooks)`,
which queues a delivery job carrying only {event_id, type, job_id, url} on `WEBHOOK_QUEUE` with an RQ
`Retry` (backoff in contract/queue.py). This process runs the RQ worker that delivers them: at each
attempt it reads the job record and renders the payload, the video object exactly as
`GET /v1/videos/{id}` shows it, so a payload is never staler than the record.

A delivery whose job record is gone (the client deleted the video, or it expired) is dropped, logged
and finished without a POST: the video no longer exists, so there is nothing true to report, and
the receiver can still GET the id and see 404.

Signing follows Standard Webhooks: headers `webhook-id` (the event id, stable across retries so
receivers can de-duplicate), `webhook-timestamp` (unix seconds) and
`webhook-signature: v1,<base64 HMAC-SHA256(secret, f"{id}.{timestamp}.{body}")>`. A secret starting
with `whsec_` is used as its base64-decoded remainder when that decodes, else as raw UTF-8 bytes.
Each attempt re-checks the target with the egress guard (`settings.egress`: DNS may have changed since
the job was created), connects to the address it checked (service/egress.py) and never follows
redirects; a refused target fails the RQ job at once (no retry
helps it).

Settings are built once by the entry point (`run_webhook_worker(settings)`) and carried by the RQ
worker object (`WebhookWorker`), which hands its `Deliverer` to each job it runs (`WebhookJob`): the
task reads it from the job it is running, never from module state or the environment.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import httpx
import redis
from rq import Queue, SimpleWorker
from rq.job import Job, get_current_job

from contract.jobstore import JobStore
from contract.keys import Keys
from contract.netguard import UnsafeURL
from contract.queue import RQ_SERIALIZER, WEBHOOK_QUEUE
from contract.settings import Settings
from service import egress
from service.videos.protocol import video_object

log = logging.getLogger(__name__)


def _secret_bytes(secret: str) -> bytes:
    if secret.startswith("whsec_"):
        try:
            return base64.b64decode(secret[len("whsec_"):], validate=True)
        except (binascii.Error, ValueError):
            pass
    return secret.encode()


def sign(secret: str, msg_id: str, timestamp: int, body: str) -> str:
    mac = hmac.new(_secret_bytes(secret), f"{msg_id}.{timestamp}.{body}".encode(), hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode()


def verify(secret: str, headers: dict[str, str], body: str, *, tolerance_s: int = 300) -> bool:
    """Receiver-side check (used by tests and documented for clients)."""
    msg_id, ts = headers["webhook-id"], int(headers["webhook-timestamp"])
    if abs(time.time() - ts) > tolerance_s:
        return False
    expected = sign(secret, msg_id, ts, body)
    return any(hmac.compare_digest(expected, s) for s in headers["webhook-signature"].split())


class WebhookRefused(RuntimeError):
    pass


@dataclass(frozen=True)
class Deliverer:
    """Everything a delivery needs, built once per deliverer process."""

    settings: Settings
    store: JobStore

    def render(self, event_id: str, event_type: str, job_id: str) -> dict[str, Any] | None:
        """The event body from the job record as it is now; None when the record is gone."""
        record = self.store.get(job_id)
        if record is None:
            return None
        data = video_object(record, base_url=self.settings.gateway.public_url).model_dump(mode="json")
        return {"id": event_id, "type": event_type, "created_at": int(record.completed_at or time.time()),
                "data": data}

    def deliver(self, event_id: str, event_type: str, job_id: str, url: str) -> dict[str, Any]:
        """POST one signed event. Raises (so RQ retries) on network errors and non-2xx."""
        try:
            target = egress.pin(url, self.settings.egress)
        except UnsafeURL as exc:
            log.warning("webhook %s to %s refused: %s", event_id, url, exc)
            job = get_current_job()
            if job is not None:
                job.retries_left = 0  # retrying cannot help; fail now (the failure is kept in RQ's registry)
            raise WebhookRefused(f"webhook target refused: {exc}") from exc
        event = self.render(event_id, event_type, job_id)
        if event is None:
            log.warning("webhook %s dropped: job %s no longer exists (deleted or expired)", event_id, job_id)
            return {"id": event_id, "dropped": "job record gone"}
        body = json.dumps(event, separators=(",", ":"))
        ts = int(time.time())
        headers = {
            "content-type": "application/json",
            "user-agent": "turbovid-webhooks/1",
            "webhook-id": event_id,
            "webhook-timestamp": str(ts),
            "webhook-signature": sign(self.settings.webhooks.secret.get_secret_value(), event_id, ts, body),
        }
        with httpx.Client(timeout=self.settings.egress.timeout_s, follow_redirects=False) as client:
            resp = client.post(target.url, content=body, headers={**headers, **target.headers},
                               extensions=target.extensions)
        if not 200 <= resp.status_code < 300:
            raise RuntimeError(f"webhook {event_id} to {url}: HTTP {resp.status_code}")
        return {"id": event_id, "status": resp.status_code}


class WebhookJob(Job):
    """An RQ job that carries the running worker's `Deliverer` while it executes (not serialized)."""

    deliverer: Deliverer | None = None


class WebhookWorker(SimpleWorker):
    """Runs deliveries in-process, handing each job this process's `Deliverer`."""

    def __init__(self, queues: list[Queue], deliverer: Deliverer, **kwargs: Any) -> None:
        super().__init__(queues, job_class=WebhookJob, **kwargs)
        self.deliverer = deliverer

    def execute_job(self, job: Job, queue: Queue) -> None:
        if isinstance(job, WebhookJob):
            job.deliverer = self.deliverer
        super().execute_job(job, queue)


def deliver_webhook(delivery_json: str) -> dict[str, Any]:
    """RQ task (`contract.queue.WEBHOOK_TASK_PATH`): deliver one event; runs only under `WebhookWorker`."""
    job = get_current_job()
    deliverer = job.deliverer if isinstance(job, WebhookJob) else None
    if deliverer is None:
        raise RuntimeError("deliver_webhook runs only under service.webhooks.WebhookWorker (turbovid webhooks)")
    d = json.loads(delivery_json)
    return deliverer.deliver(str(d["event_id"]), str(d["type"]), str(d["job_id"]), str(d["url"]))


def run_webhook_worker(settings: Settings, *, burst: bool = False) -> None:
    """Run the RQ worker that delivers webhooks (with RQ's scheduler, which runs the retries); blocks
    unless `burst` (deliver what is queued, then return)."""
    conn = redis.Redis.from_url(settings.redis.url)
    try:
        deliverer = Deliverer(settings, JobStore(conn, Keys(settings.redis.key_prefix)))
        queue = Queue(WEBHOOK_QUEUE, connection=conn, serializer=RQ_SERIALIZER)
        worker = WebhookWorker([queue], deliverer, connection=conn, serializer=RQ_SERIALIZER)
        worker.work(burst=burst, with_scheduler=True)
    finally:
        conn.close()
