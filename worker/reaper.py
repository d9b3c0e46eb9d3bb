"""Crash recovery: per-job leases kept alive by the running worker, and a reaper that finds jobs
whose worker died.

A worker holds `<prefix>:lease:<job_id>` (value: worker name, TTL `lease_ttl`) for the whole job
and refreshes it from a heartbeat thread and at every denoise step. `reap()` — run by every worker
at start and on each heartbeat tick — scans RQ's StartedJobRegistry of its model queue: a job
there without a lease, started longer than `lease_ttl` ago and not yet terminal in the JobStore,
lost its worker (SIGKILL, OOM kill, node loss). It is re-enqueued (same job id, same spec) up to
`settings.queue.max_requeues` times — counted in `<prefix>:crashes:<job_id>` — and otherwise
failed with code "worker_crashed". A `SET NX` lock per job keeps two reapers from both acting.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis
from rq import Queue
from rq.job import Job
from rq.registry import StartedJobRegistry

from contract.jobs import RQ_SERIALIZER, TASK_PATH, TERMINAL, JobError, JobStatus
from contract.jobstore import JobStore
from contract.settings import QueueSettings

log = logging.getLogger("turbovid.reaper")


def lease_key(prefix: str, job_id: str) -> str:
    return f"{prefix}:lease:{job_id}"


def crashes_key(prefix: str, job_id: str) -> str:
    return f"{prefix}:crashes:{job_id}"


def lease_ttl_s(q: QueueSettings) -> int:
    """Seconds after the last heartbeat at which a running job counts as abandoned."""
    return 3 * q.heartbeat_s


class Lease:
    """The lease of the job this worker is running (at most one: workers run jobs one at a time)."""

    def __init__(self, client: redis.Redis, prefix: str, worker_name: str, ttl_s: int) -> None:
        self.r = client
        self.prefix = prefix
        self.worker_name = worker_name
        self.ttl_s = ttl_s
        self._job_id: str | None = None
        self._lock = threading.Lock()

    @property
    def job_id(self) -> str | None:
        return self._job_id

    def hold(self, job_id: str) -> None:
        with self._lock:
            self._job_id = job_id
            self.r.set(lease_key(self.prefix, job_id), self.worker_name, ex=self.ttl_s)

    def refresh(self) -> None:
        with self._lock:
            if self._job_id is not None:
                self.r.set(lease_key(self.prefix, self._job_id), self.worker_name, ex=self.ttl_s)

    def release(self) -> None:
        with self._lock:
            if self._job_id is not None:
                self.r.delete(lease_key(self.prefix, self._job_id))
            self._job_id = None


def enqueue_spec(queue: Queue, job_id: str, spec_json: str, q: QueueSettings, *, at_front: bool = False) -> Job:
    """(Re-)enqueue a job spec under its TurboVid id, replacing any RQ job of that id.

    `queue` must use `RQ_SERIALIZER` (as the gateway's queues do)."""
    for registry in (queue.started_job_registry, queue.finished_job_registry, queue.failed_job_registry):
        _remove_from_registry(registry.connection, registry.key, job_id)
    return queue.enqueue(
        TASK_PATH, spec_json, job_id=job_id, job_timeout=q.job_timeout_s, result_ttl=q.result_ttl_s,
        failure_ttl=q.failure_ttl_s, at_front=at_front,
    )


def _remove_from_registry(client: redis.Redis, key: str, job_id: str) -> None:
    """Registry members are `job_id` or `job_id:execution_id` (RQ ≥ 2)."""
    members = _members(client, key)
    stale = [m for m in members if m == job_id or m.startswith(f"{job_id}:")]
    if stale:
        client.zrem(key, *stale)


def _members(client: redis.Redis, key: str) -> list[str]:
    raw: list[Any] = client.zrange(key, 0, -1)  # type: ignore[assignment]
    return [m.decode() if isinstance(m, bytes) else str(m) for m in raw]


@dataclass(frozen=True)
class Reaped:
    job_id: str
    action: str  # "requeued" | "failed" | "cleared" (already terminal or deleted)


def reap(
    queue: Queue,
    store: JobStore,
    q: QueueSettings,
    *,
    notify: Callable[[str], None] | None = None,
    now: float | None = None,
) -> list[Reaped]:
    """Recover the abandoned jobs of `queue`; returns what was done (empty when all is well)."""
    client = queue.connection
    now = time.time() if now is None else now
    ttl = lease_ttl_s(q)
    registry = StartedJobRegistry(queue.name, connection=client)
    members = _members(client, registry.key)
    out: list[Reaped] = []
    for job_id in sorted({m.split(":", 1)[0] for m in members}):
        if client.exists(lease_key(store.p, job_id)):
            continue
        job = Job.fetch(job_id, connection=client, serializer=RQ_SERIALIZER) if Job.exists(job_id, connection=client) else None
        started_at = job.started_at.timestamp() if job is not None and job.started_at else None
        if started_at is not None and now - started_at < ttl:
            continue  # just started: its worker sets the lease within moments
        if not client.set(f"{store.p}:reap:{job_id}", "1", nx=True, ex=ttl):
            continue  # another reaper is on it
        record = store.get(job_id)
        if record is None or record.status in TERMINAL or job is None:
            _remove_from_registry(client, registry.key, job_id)
            out.append(Reaped(job_id, "cleared"))
            continue
        crashes = int(client.incr(crashes_key(store.p, job_id)))
        client.expire(crashes_key(store.p, job_id), q.result_ttl_s)
        if crashes <= q.max_requeues:
            store.requeue(job_id)
            enqueue_spec(queue, job_id, record.spec.model_dump_json(), q, at_front=True)
            log.warning("job %s lost its worker %s; re-queued (%d/%d)", job_id, record.worker, crashes,
                        q.max_requeues)
            out.append(Reaped(job_id, "requeued"))
        else:
            message = (f"the worker running this job ({record.worker or 'unknown'}) stopped responding "
                       f"{crashes} time(s); giving up after {q.max_requeues} re-queue(s)")
            store.finish(job_id, JobStatus.failed, ttl_s=q.failure_ttl_s,
                         error=JobError(code="worker_crashed", message=message))
            _remove_from_registry(client, registry.key, job_id)
            queue.failed_job_registry.add(job, ttl=q.failure_ttl_s, exc_string=message)
            log.error("job %s failed: %s", job_id, message)
            if notify is not None:
                notify(job_id)
            out.append(Reaped(job_id, "failed"))
    return out
