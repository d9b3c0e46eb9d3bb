"""Webhooks: signed POSTs to a job's `webhook_url` when it completes or fails.

Signing follows Standard Webhooks: headers `webhook-id`, `webhook-timestamp` (unix seconds) and
`webhook-signature: v1,<base64 HMAC-SHA256(secret, f"{id}.{timestamp}.{body}")>`. The id is stable
across retries of one event so receivers can de-duplicate. A secret starting with `whsec_` is
used as its base64-decoded remainder when that decodes, else as raw UTF-8 bytes.

Flow: the worker calls `enqueue_webhook(conn, settings, record)` when a job reaches a terminal
state; that enqueues `deliver_webhook(event_json)` on `WEBHOOK_QUEUE` with an RQ `Retry` (backoff
intervals below). `run_webhook_worker(settings)` runs the RQ worker that delivers them. Delivery
re-checks the target with the SSRF guard (DNS may have changed since the job was created) and
never follows redirects; a refused target fails the RQ job at once, visibly (no retry helps it).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import time
from typing import Any

import httpx
import redis
from rq import Queue, Retry, SimpleWorker
from rq.job import get_current_job

from service.api_models import video_object
from contract.jobs import RQ_SERIALIZER, WEBHOOK_QUEUE, WEBHOOK_TASK_PATH, JobStatus
from contract.jobstore import JobRecord
from contract.netguard import UnsafeURL, check_url
from contract.settings import Settings

log = logging.getLogger(__name__)

BACKOFF_S = (5, 30, 120, 600, 1800, 3600)

# Set by run_webhook_worker (the entry point); tests and embedders may call configure() instead.
_settings: Settings | None = None


def configure(settings: Settings) -> None:
    global _settings
    _settings = settings


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


def event_for(record: JobRecord, base_url: str | None = None) -> dict[str, Any]:
    status = "completed" if record.status is JobStatus.completed else "failed"
    obj = video_object(record, base_url=base_url).model_dump(mode="json")
    return {
        "id": f"evt_{record.spec.job_id}_{status}",
        "type": f"video.{status}",
        "created_at": int(record.completed_at or time.time()),
        "data": obj,
    }


def enqueue_webhook(queue_conn: redis.Redis, settings: Settings, record: JobRecord) -> str | None:
    """Queue the delivery for a terminal job that has a webhook_url; returns the RQ job id."""
    if not record.webhook_url:
        return None
    event = event_for(record, settings.gateway.public_url)
    payload = json.dumps({"url": record.webhook_url, "event": event})
    attempts = settings.webhooks.max_attempts
    retries = attempts - 1
    job = Queue(WEBHOOK_QUEUE, connection=queue_conn, serializer=RQ_SERIALIZER).enqueue_call(
        WEBHOOK_TASK_PATH,
        args=(payload,),
        job_id=f"webhook-{event['id']}",
        timeout=int(settings.webhooks.timeout_s) + 30,
        result_ttl=settings.queue.result_ttl_s,
        failure_ttl=settings.queue.failure_ttl_s,
        ttl=settings.queue.queued_ttl_s,
        retry=Retry(max=retries, interval=list(BACKOFF_S[:retries]) or 0) if retries > 0 else None,
    )
    return str(job.id)


class WebhookRefused(RuntimeError):
    pass


def deliver_webhook(payload_json: str) -> dict[str, Any]:
    """RQ task: POST one signed event. Raises (so RQ retries) on network errors and non-2xx."""
    settings = _settings if _settings is not None else Settings()  # RQ entry point: build settings once
    payload = json.loads(payload_json)
    url, event = str(payload["url"]), payload["event"]
    try:
        check_url(url, allow_private=settings.webhooks.allow_private_targets)
    except UnsafeURL as exc:
        log.warning("webhook %s to %s refused: %s", event["id"], url, exc)
        job = get_current_job()
        if job is not None:
            job.retries_left = 0  # retrying cannot help; fail now (the failure is kept in RQ's registry)
        raise WebhookRefused(f"webhook target refused: {exc}") from exc
    body = json.dumps(event, separators=(",", ":"))
    ts = int(time.time())
    headers = {
        "content-type": "application/json",
        "user-agent": "turbovid-webhooks/1",
        "webhook-id": event["id"],
        "webhook-timestamp": str(ts),
        "webhook-signature": sign(settings.webhooks.secret.get_secret_value(), event["id"], ts, body),
    }
    resp = httpx.post(url, content=body, headers=headers, timeout=settings.webhooks.timeout_s,
                      follow_redirects=False)
    if not 200 <= resp.status_code < 300:
        raise RuntimeError(f"webhook {event['id']} to {url}: HTTP {resp.status_code}")
    return {"id": event["id"], "status": resp.status_code}


def run_webhook_worker(settings: Settings, *, burst: bool = False) -> None:
    """Run the RQ worker that delivers webhooks (with RQ's scheduler, which runs the retries)."""
    configure(settings)
    conn = redis.Redis.from_url(settings.redis.url)
    queue = Queue(WEBHOOK_QUEUE, connection=conn, serializer=RQ_SERIALIZER)
    worker = SimpleWorker([queue], connection=conn, serializer=RQ_SERIALIZER)
    worker.work(burst=burst, with_scheduler=True)
