"""The webhook deliverer (`turbovid webhooks`): signed POSTs to a job's `webhook_url` when it ends.

Flow: whoever moves a job to a terminal state (the worker, the reaper, the gateway's queue-TTL expiry)
does it with `JobStore.finish(..., hook=JobQueue.end_webhook(settings.webhooks))`, which calls
`JobQueue.submit_webhook(job_id, "video.completed" | "video.failed", url, settings.webhooks)` inside
the transaction that ends the job (no job ends without its delivery queued). That queues a delivery job carrying only {event_id, type, job_id, url} on `WEBHOOK_QUEUE` with an RQ
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

Concurrency and isolation: the RQ worker's loop dequeues deliveries and hands them to a
`Dispatcher`: `settings.webhooks.concurrency` threads, at most `settings.webhooks.per_target` of
them POSTing to one receiver (host:port) at a time, the rest of that receiver's deliveries waiting in
its own line. A receiver that hangs therefore holds at most `per_target` threads for at most its
timeouts, and everyone else's events go out on the other threads. A receiver whose line is already
`LINE_PER_TARGET` long gets its next deliveries failed at once as "busy" (no POST), so RQ's retry
with backoff takes them later, instead of them filling the process. The loop stops dequeuing while
`HELD_PER_THREAD × concurrency` deliveries are held (the rest wait in Redis). Each delivery is still an
RQ job: prepared (StartedJobRegistry) before it waits, retried by RQ with backoff when it raises, and
bounded by RQ's job timeout (a timer in its thread). On SIGTERM the deliveries in flight finish;
those not yet started stay in RQ's StartedJobRegistry, which retries them as abandoned jobs (the
event id is stable, receivers de-duplicate). Delivery is at least once.

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
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry
from rq import Queue, SimpleWorker
from rq.executions import Execution
from rq.job import Job, get_current_job
from rq.timeouts import TimerDeathPenalty

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
    busy: bool = False  # its receiver's line is full: fail this attempt at once (RQ retries it later)


class TargetBusy(RuntimeError):
    pass


# A receiver's line (deliveries waiting for one of its `per_target` slots) is at most this long. With
# the defaults a hung receiver's last waiting delivery starts within 32 / 2 × 10 s = 160 s, inside
# the 180 s (job timeout + 60) after which RQ would treat a prepared job as abandoned and retry it.
LINE_PER_TARGET = 32
# The RQ loop holds at most this many deliveries per delivery thread (running or waiting).
HELD_PER_THREAD = 4


class Dispatcher:
    """Runs callables on `threads` threads, at most `per_target` at once per target, the others waiting
    in a FIFO line per target; targets take turns. `submit` blocks while `max_held` are held."""

    def __init__(self, threads: int, per_target: int, max_held: int) -> None:
        self.per_target = per_target
        self.max_held = max_held
        self._cond = threading.Condition()
        self._lines: dict[str, deque[Callable[[], None]]] = {}
        self._running: Counter[str] = Counter()
        self._held = 0
        self._closed = False
        self._threads = [threading.Thread(target=self._loop, name=f"webhook-{i}", daemon=True)
                         for i in range(threads)]
        for t in self._threads:
            t.start()

    def line(self, target: str) -> int:
        """How many deliveries to `target` wait for a slot."""
        with self._cond:
            return len(self._lines.get(target, ()))

    def submit(self, target: str, fn: Callable[[], None]) -> None:
        with self._cond:
            while self._held >= self.max_held:
                self._cond.wait()
            self._lines.setdefault(target, deque()).append(fn)
            self._held += 1
            self._cond.notify_all()

    def close(self, *, drain: bool) -> int:
        """Stop taking work; run what is held (`drain`) or only let the running ones finish; waits for
        the threads. Returns how many waiting callables were dropped."""
        with self._cond:
            dropped = 0
            if not drain:
                dropped = sum(len(line) for line in self._lines.values())
                self._held -= dropped
                self._lines.clear()
            self._closed = True
            self._cond.notify_all()
        for t in self._threads:
            t.join()
        return dropped

    def _take(self) -> tuple[str, Callable[[], None]] | None:
        for target, line in self._lines.items():
            if self._running[target] < self.per_target:
                fn = line.popleft()
                del self._lines[target]
                if line:
                    self._lines[target] = line  # to the back: targets take turns
                self._running[target] += 1
                return target, fn
        return None

    def _loop(self) -> None:
        while True:
            with self._cond:
                while (item := self._take()) is None:
                    if self._closed and not self._lines:
                        return
                    self._cond.wait()
            target, fn = item
            try:
                fn()
            except Exception:
                log.exception("webhook delivery thread: unexpected error")
            finally:
                with self._cond:
                    self._running[target] -= 1
                    self._held -= 1
                    self._cond.notify_all()


def delivery_target(job: Job) -> str:
    """The receiver a delivery job POSTs to (host:port of its URL), the unit of isolation."""
    try:
        url = httpx.URL(str(json.loads(job.args[0])["url"]))
        return f"{url.host.lower()}:{url.port or (443 if url.scheme == 'https' else 80)}"
    except Exception:  # a malformed delivery fails in the task itself, with its own message
        return "?"


class WebhookWorker(SimpleWorker):
    """Dequeues deliveries in its main loop and runs them on a `Dispatcher` (bounded, per-receiver
    isolation), handing each job this process's `Deliverer`."""

    death_penalty_class = TimerDeathPenalty  # jobs run in dispatcher threads: SIGALRM is main-thread only

    def __init__(self, queues: list[Queue], deliverer: Deliverer, **kwargs: Any) -> None:
        super().__init__(queues, job_class=WebhookJob, **kwargs)
        self.deliverer = deliverer
        cfg = deliverer.settings.webhooks
        self.dispatcher = Dispatcher(cfg.concurrency, cfg.per_target, HELD_PER_THREAD * cfg.concurrency)

    def execute_job(self, job: Job, queue: Queue) -> None:
        if isinstance(job, WebhookJob):
            job.deliverer = self.deliverer
        execution = self.prepare_execution(job)  # from here RQ's StartedJobRegistry knows the job
        target = delivery_target(job)
        if isinstance(job, WebhookJob) and self.dispatcher.line(target) >= LINE_PER_TARGET:
            job.busy = True  # fails at once without a POST; RQ's retry brings it back later
            self._perform(job, queue, execution)
            return
        self.dispatcher.submit(target, lambda: self._perform(job, queue, execution))

    def _perform(self, job: Job, queue: Queue, execution: Execution) -> None:
        self.perform_job(job, queue, execution)

    def teardown(self) -> None:
        dropped = self.dispatcher.close(drain=not self._stop_requested)
        if dropped:
            log.warning("stopping with %d webhook deliveries not started; RQ retries them as abandoned jobs",
                        dropped)
        super().teardown()


def deliver_webhook(delivery_json: str) -> dict[str, Any]:
    """RQ task (`contract.queue.WEBHOOK_TASK_PATH`): deliver one event; runs only under `WebhookWorker`."""
    job = get_current_job()
    deliverer = job.deliverer if isinstance(job, WebhookJob) else None
    if deliverer is None:
        raise RuntimeError("deliver_webhook runs only under service.webhooks.WebhookWorker (turbovid webhooks)")
    d = json.loads(delivery_json)
    if isinstance(job, WebhookJob) and job.busy:
        raise TargetBusy(f"webhook {d['event_id']}: {LINE_PER_TARGET} deliveries to its receiver are already "
                         "waiting; retried later")
    return deliverer.deliver(str(d["event_id"]), str(d["type"]), str(d["job_id"]), str(d["url"]))


def run_webhook_worker(settings: Settings, *, burst: bool = False) -> None:
    """Run the RQ worker that delivers webhooks (with RQ's scheduler, which runs the retries); blocks
    unless `burst` (deliver what is queued, then return once every delivery has ended)."""
    # a dropped connection (Redis restarting) is retried with backoff rather than failing deliveries
    conn = redis.Redis.from_url(settings.redis.url, retry=Retry(ExponentialBackoff(cap=2.0, base=0.05), retries=12),
                                retry_on_error=[redis.ConnectionError, redis.TimeoutError])
    try:
        deliverer = Deliverer(settings, JobStore(conn, Keys(settings.redis.key_prefix)))
        queue = Queue(WEBHOOK_QUEUE, connection=conn, serializer=RQ_SERIALIZER)
        worker = WebhookWorker([queue], deliverer, connection=conn, serializer=RQ_SERIALIZER)
        worker.work(burst=burst, with_scheduler=True)
    finally:
        conn.close()
