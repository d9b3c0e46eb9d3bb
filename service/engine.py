"""The engine boundary: the one interface the HTTP layer uses to reach the queue, the job store and the
worker registry (vLLM's engine client). Routes and serving never hold a raw Redis client.

Built from a Redis client, the key table and the settings, so tests swap nothing but the Redis URL.
Everything Redis-shaped the gateway does goes through here or through the small stores it hands out
(`api_keys` for API keys, `limiter` for the per-minute rate, `idempotency` for Idempotency-Key claims).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import Any

import redis
import redis.asyncio

from contract.catalog import ModelCard
from contract.events import AsyncEventLog, EventLog, EventType, JobEvent
from contract.jobs import TERMINAL, Capabilities, ErrorCode, JobError, JobSpec, JobStatus
from contract.jobstore import JobRecord, JobStore
from contract.keys import Keys
from contract.queue import JobQueue
from contract.settings import Settings
from contract.workers import WorkerInfo, WorkerRegistry, capabilities
from service.auth import KeyStore
from service.idempotency import Idempotency
from service.ratelimit import RateLimiter

log = logging.getLogger(__name__)


class Engine:
    def __init__(self, client: redis.Redis, keys: Keys, settings: Settings) -> None:
        self._r = client
        self.cfg = settings.queue
        self.webhook_cfg = settings.webhooks
        self.store = JobStore(client, keys)
        self.queue = JobQueue(client, settings.queue)
        self.workers = WorkerRegistry(client, keys)
        self.api_keys = KeyStore(client, keys)
        self.limiter = RateLimiter(client, keys, settings.auth.rate_limit_per_minute)
        self.idempotency = Idempotency(client, keys)
        self.events = EventLog(client, keys)  # what the gateway decides: queued, cancelled, expired
        # the SSE route follows streams on the event loop
        self.aevents = AsyncEventLog(redis.asyncio.Redis.from_url(settings.redis.url, socket_timeout=5), keys)

    @classmethod
    def from_settings(cls, settings: Settings) -> Engine:
        client = redis.Redis.from_url(settings.redis.url, socket_timeout=5, socket_connect_timeout=5,
                                      health_check_interval=30)
        return cls(client, Keys(settings.redis.key_prefix), settings)

    def close(self) -> None:
        self._r.close()

    def ping(self) -> bool:
        try:
            return bool(self._r.ping())
        except redis.RedisError:
            return False

    # jobs ---------------------------------------------------------------------------------------
    def record_ttl_s(self) -> int:
        """How long a job record may live before it is finished (then finish() sets result_ttl)."""
        return self.cfg.queued_ttl_s + self.cfg.job_timeout_s * (1 + self.cfg.max_requeues) + 3600

    def reserve_slot(self, owner: str, job_id: str, limit: int) -> bool:
        """One of the owner's `limit` concurrent-job slots for `job_id` (before its record exists).
        Not followed by `JobStore.sweep_slots` here: the sweep frees slots whose record is missing, which
        includes the reservations of creations still in flight in other requests."""
        return self.store.reserve_slot(owner, job_id, limit)

    def release_slot(self, owner: str, job_id: str) -> None:
        """Give back a slot reserved for a job that was never created."""
        if self.store.get(job_id) is None:
            self.store.release_slot(owner, job_id)

    def submit(self, spec: JobSpec, *, priority: str, metadata: dict[str, str] | None,
               webhook_url: str | None) -> JobRecord:
        """Create the job record and put the job on its model's queue (`priority="high"`: at the front)."""
        record = self.store.create(spec, ttl_s=self.record_ttl_s(), metadata=metadata, webhook_url=webhook_url)
        try:
            self.queue.submit(spec, at_front=priority == "high")
        except redis.RedisError:
            self.store.delete(spec.job_id)
            raise
        self._publish(spec, "queued", self.record_ttl_s(), queue_position=self.queue_position(record))
        return record

    def get(self, job_id: str) -> JobRecord | None:
        """The job's record, failing it first (with its webhook) if it sat queued past the queue TTL."""
        record = self.store.get(job_id)
        if record is None or record.status is not JobStatus.queued:
            return record
        now = self.store.expire_if_stale(record, queued_ttl_s=self.cfg.queued_ttl_s,
                                         failure_ttl_s=self.cfg.failure_ttl_s)
        if now.status is not JobStatus.queued:  # it just failed as queue_timeout
            self.queue.remove(record.spec.model, job_id)
            self._publish(record.spec, "failed", self.cfg.failure_ttl_s, error=now.error)
            if record.webhook_url:
                self.queue.submit_webhook(job_id, "video.failed", record.webhook_url, self.webhook_cfg)
        return now

    def list_ids(self, owner: str, *, after: str | None, limit: int, order: str) -> list[str]:
        return self.store.list_ids(owner, after=after, limit=limit, order=order)

    def queue_position(self, record: JobRecord) -> int | None:
        """0-based place in the model's queue while queued; None otherwise."""
        if record.status is not JobStatus.queued:
            return None
        return self.queue.position(record.spec.model, record.spec.job_id)

    def cancel(self, job_id: str) -> None:
        """Stop a queued job now; flag a running one (the worker checks the flag every step)."""
        record = self.store.get(job_id)
        if record is None or record.status in TERMINAL:
            return
        self.store.request_cancel(job_id, ttl_s=self.cfg.job_timeout_s + 3600)
        if record.status is JobStatus.queued:
            self.queue.remove(record.spec.model, job_id)
            self.store.finish(job_id, JobStatus.cancelled, ttl_s=self.cfg.failure_ttl_s,
                              error=JobError(code=ErrorCode.cancelled, message="the job was cancelled"))
            self._publish(record.spec, "failed", self.cfg.failure_ttl_s,
                          error=JobError(code=ErrorCode.cancelled, message="the job was cancelled"))

    def _publish(self, spec: JobSpec, event: EventType, ttl_s: int, *, queue_position: int | None = None,
                 error: JobError | None = None) -> None:
        """A job event the gateway decides (contract/events.py); the worker publishes the rest."""
        err = {"code": str(error.code), "message": error.message} if error is not None else None
        elapsed = round(time.time() - spec.created_at, 3)
        self.events.publish(spec.job_id, JobEvent(event=event, progress=0, elapsed_s=elapsed,
                                                  queue_position=queue_position, error=err), ttl_s=ttl_s)

    def delete(self, job_id: str) -> None:
        self.cancel(job_id)
        self.store.delete(job_id)

    # models and workers -------------------------------------------------------------------------
    def live_workers(self, model: str) -> list[WorkerInfo]:
        """Workers advertising `model` whose liveness key has not expired (ready or loading)."""
        return self.workers.live(model)

    def ready_workers(self, model: str) -> int:
        return sum(1 for w in self.live_workers(model) if w.ready)

    def capabilities(self, card: ModelCard) -> tuple[Capabilities, list[WorkerInfo]]:
        """What the model's live workers all honour (MixedWorkers when they disagree on the solver)."""
        workers = self.live_workers(card.id)
        return capabilities(card, workers), workers

    def queue_depth(self, model: str) -> int:
        return self.queue.depth(model)


def worker_pools(workers: list[WorkerInfo]) -> list[dict[str, Any]]:
    """Live workers grouped by what they run: solver, attention, linear, with ready/loading counts."""
    counts: Counter[tuple[str, str, str, bool]] = Counter(
        (w.solver, w.attention, w.linear, w.ready) for w in workers)
    pools: dict[tuple[str, str, str], dict[str, Any]] = {}
    for (solver, attention, linear, ready), n in sorted(counts.items()):
        pool = pools.setdefault((solver, attention, linear), {"solver": solver, "attention": attention,
                                                              "linear": linear, "ready": 0, "loading": 0})
        pool["ready" if ready else "loading"] += n
    return list(pools.values())
