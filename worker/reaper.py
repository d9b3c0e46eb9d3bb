"""Crash recovery: per-job leases kept alive by the running worker, and a reaper that finds jobs
whose worker died.

A worker holds `Keys.lease(job_id)` (value: worker name, TTL `lease_ttl_s`) for the whole job and
refreshes it from its heartbeat thread and at every denoise step. `reap()` — run by every worker at
start and on each heartbeat tick — scans RQ's StartedJobRegistry of a queue: a job there without a
lease, started longer than `lease_ttl_s` ago and not yet terminal in the JobStore, lost its worker
(SIGKILL, OOM kill, node loss). It is re-enqueued through `JobQueue.submit` (same job id, same
spec, at the front, with the queued TTL) up to `settings.queue.max_requeues` times — counted in
`Keys.crashes(job_id)` — and otherwise failed with code "worker_crashed". A `SET NX` lock per job
(`Keys.reap`) keeps two reapers from both acting.

`sweep_slots()` — also on every heartbeat tick, but run by one worker of the fleet per
`SLOT_SWEEP_HEARTBEATS` heartbeats (a `SET NX` lock, `Keys.slot_sweep`) — gives back the concurrency
slots (contract/jobstore.py's active sets) of jobs that ended without `JobStore.finish` running for
them: jobs that expired in the queue (failed here as queue_timeout, with their webhook) and jobs
whose record expired. Workers run it because they are the processes that always run while jobs
exist; the gateway frees its own on the paths it sees (finish/delete, polling a stale job).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import redis
from rq import Queue
from rq.job import Job
from rq.registry import StartedJobRegistry

from contract.events import EventLog, JobEvent
from contract.jobs import TERMINAL, ErrorCode, JobError, JobStatus
from contract.jobstore import JobStore
from contract.keys import Keys, text
from contract.queue import RQ_SERIALIZER, JobQueue, registry_members, remove_from_registry
from contract.settings import QueueSettings, WebhookSettings

log = logging.getLogger("turbovid.reaper")


# One slot sweep per this many heartbeats, fleet-wide (60 s with the default 10 s heartbeat).
SLOT_SWEEP_HEARTBEATS = 6
# A queued job seen with nothing on its queue (and no worker holding it) at two sweeps this far apart is
# put back on its queue. A worker takes a job off its queue and into the started registry within
# moments, and a shutdown's re-queue re-enqueues within seconds, so 30 s apart means nobody will.
ORPHAN_CONFIRM_S = 30


def lease_ttl_s(q: QueueSettings) -> int:
    """Seconds after the last heartbeat at which a running job (or a worker) counts as gone."""
    return 3 * q.heartbeat_s


class Lease:
    """The lease of the job this worker is running (at most one: workers run jobs one at a time)."""

    def __init__(self, client: redis.Redis, keys: Keys, worker_name: str, ttl_s: int) -> None:
        self.r = client
        self.keys = keys
        self.worker_name = worker_name
        self.ttl_s = ttl_s
        self._job_id: str | None = None
        self._lock = threading.Lock()

    @property
    def job_id(self) -> str | None:
        return self._job_id

    def acquire(self, job_id: str) -> str | None:
        """Take the job's lease unless a live worker holds it; None when taken, else the holder's name
        (the job is running elsewhere: this delivery of it is a duplicate)."""
        with self._lock:
            if self.r.set(self.keys.lease(job_id), self.worker_name, ex=self.ttl_s, nx=True):
                self._job_id = job_id
                return None
            holder = self.r.get(self.keys.lease(job_id))
            return "unknown" if holder is None else text(holder)

    def refresh(self) -> None:
        with self._lock:
            if self._job_id is not None:
                self.r.set(self.keys.lease(self._job_id), self.worker_name, ex=self.ttl_s)

    def release(self) -> None:
        with self._lock:
            if self._job_id is not None:
                self.r.delete(self.keys.lease(self._job_id))
            self._job_id = None


def publish_failed(store: JobStore, job_id: str, ttl_s: int) -> None:
    """The "failed" event that ends a job's live stream, for jobs failed outside a running task
    (worker_crashed here, queue_timeout by the sweep); progress stays where the stream left it."""
    record = store.get(job_id)
    if record is None or record.status is not JobStatus.failed or record.error is None:
        return
    events = EventLog(store.r, store.keys)
    last = events.last(job_id)
    events.publish(job_id, JobEvent(event="failed", progress=last[1].progress if last else 0,
                                    elapsed_s=round(time.time() - record.spec.created_at, 3),
                                    error={"code": str(record.error.code), "message": record.error.message}),
                   ttl_s=ttl_s)


@dataclass(frozen=True)
class Reaped:
    job_id: str
    action: str  # "requeued" | "failed" | "cleared" (already terminal or deleted)


def reap(
    queue: Queue,
    store: JobStore,
    jobs: JobQueue,
    q: QueueSettings,
    webhooks: WebhookSettings,
    *,
    now: float | None = None,
) -> list[Reaped]:
    """Recover the abandoned jobs of `queue`; returns what was done (empty when all is well)."""
    client = store.r
    now = time.time() if now is None else now
    ttl = lease_ttl_s(q)
    registry = StartedJobRegistry(queue.name, connection=client)
    out: list[Reaped] = []
    for job_id in sorted({m.split(":", 1)[0] for m in registry_members(client, registry.key)}):
        if client.exists(store.keys.lease(job_id)):
            continue
        job = Job.fetch(job_id, connection=client, serializer=RQ_SERIALIZER) if Job.exists(
            job_id, connection=client) else None
        started_at = job.started_at.timestamp() if job is not None and job.started_at else None
        if started_at is not None and now - started_at < ttl:
            continue  # just started: its worker sets the lease within moments
        if not client.set(store.keys.reap(job_id), "1", nx=True, ex=ttl):
            continue  # another reaper is on it
        # The record is watched from this read to the re-queue's write: a worker that ends the job meanwhile
        # (alive after all, its lease lost to a Redis outage) makes the re-queue fail instead of turning a
        # completed job back into a queued one.
        pipe, record = store.watch(job_id)
        if record is None or record.status in TERMINAL or job is None:
            pipe.reset()
            remove_from_registry(client, registry.key, job_id)
            out.append(Reaped(job_id, "cleared"))
            continue
        # The crash is counted in the transaction that acts on it (the reap marker above keeps other
        # reapers off this job meanwhile): a pass cut off by Redis counts nothing and changes nothing.
        crashes_key = store.keys.crashes(job_id)
        crashes = int(client.get(crashes_key) or 0) + 1  # type: ignore[arg-type]
        if crashes <= q.max_requeues:
            try:  # back to queued and on the queue, or neither
                pipe.multi()  # explicit, as RQ's enqueue on a given pipeline expects
                _count_crash(pipe, crashes_key, q.result_ttl_s)
                store.requeue(job_id, pipeline=pipe)
                jobs.submit(record.spec, at_front=True, queue_name=queue.name, pipeline=pipe)
                pipe.execute()
            except redis.WatchError:
                log.info("job %s changed while being re-queued (its worker is alive); left to it", job_id)
                client.delete(store.keys.reap(job_id))  # the next pass looks again
                continue
            finally:
                pipe.reset()
            log.warning("job %s lost its worker %s; re-queued (%d/%d)", job_id, record.worker, crashes,
                        q.max_requeues)
            out.append(Reaped(job_id, "requeued"))
        else:
            pipe.reset()  # finish() watches the record itself
            message = (f"the worker running this job ({record.worker or 'unknown'}) stopped responding "
                       f"{crashes} time(s); giving up after {q.max_requeues} re-queue(s)")
            ended = store.finish(job_id, JobStatus.failed, ttl_s=q.failure_ttl_s, hook=jobs.end_webhook(webhooks),
                                 error=JobError(code=ErrorCode.worker_crashed, message=message))
            remove_from_registry(client, registry.key, job_id)
            if not ended:  # its worker ended it meanwhile (or it was deleted): that end stands
                out.append(Reaped(job_id, "cleared"))
                continue
            _count_crash(client, crashes_key, q.result_ttl_s)
            queue.failed_job_registry.add(job, ttl=q.failure_ttl_s, exc_string=message)
            log.error("job %s failed: %s", job_id, message)
            publish_failed(store, job_id, q.failure_ttl_s)
            out.append(Reaped(job_id, "failed"))
    return out


def _count_crash(r: redis.Redis | redis.client.Pipeline, key: str, ttl_s: int) -> None:
    """One more lost worker on the job's crash counter (kept as long as its result)."""
    r.incr(key)
    r.expire(key, ttl_s)


def sweep_slots(store: JobStore, jobs: JobQueue, q: QueueSettings, webhooks: WebhookSettings, *,
                force: bool = False) -> list[str]:
    """Free every owner's leaked concurrency slots (`JobStore.sweep_slots`), at most once per
    `SLOT_SWEEP_HEARTBEATS` heartbeats across all workers unless `force`. A job the sweep fails as
    queue_timeout leaves its queue and gets its "video.failed" webhook. Returns the freed job ids."""
    client = store.r
    if not force and not client.set(store.keys.slot_sweep(), "1", nx=True, ex=SLOT_SWEEP_HEARTBEATS * q.heartbeat_s):
        return []
    started = time.time()
    freed: list[str] = []
    end_webhook = jobs.end_webhook(webhooks)
    for owner in store.active_owners():
        freed += store.sweep_slots(owner, queued_ttl_s=q.queued_ttl_s, failure_ttl_s=q.failure_ttl_s,
                                   hook=end_webhook)
    for job_id, record in zip(freed, store.get_many(freed), strict=True):
        if (record is not None and record.status is JobStatus.failed and record.error is not None
                and record.error.code == ErrorCode.queue_timeout and (record.completed_at or 0) >= started):
            jobs.remove(record.spec.model, job_id)
            publish_failed(store, job_id, q.failure_ttl_s)
    if freed:
        log.warning("freed %d concurrency slot(s) of jobs that ended without giving them back: %s", len(freed),
                    ", ".join(freed[:20]))
    rescue_orphans(store, jobs, q)
    return freed


def rescue_orphans(store: JobStore, jobs: JobQueue, q: QueueSettings, *, now: float | None = None) -> list[str]:
    """Put back on its queue every job whose record says queued while nothing runs or waits for it: not on
    its model's queue, not in its started registry (nor claimed by a live worker's lease), at two sweeps
    ORPHAN_CONFIRM_S apart. Such a job would otherwise wait out its whole queued TTL (a day by default)
    and then fail as queue_timeout. What leaves one: a worker shutting down that lost Redis between
    giving its job back and re-enqueueing it, an RQ worker dying between taking a job and registering
    it, a Redis that lost its last second of writes. Jobs past their queued TTL are left to the slot
    sweep (they fail as queue_timeout). Returns the re-queued job ids."""
    client = store.r
    now = time.time() if now is None else now
    ids = [text(raw) for owner in store.active_owners()
           for raw in client.zrange(store.keys.active(owner), 0, -1)]  # type: ignore[union-attr]
    if not ids:
        return []
    # every read batched: the records, the orphan markers, then (for queued jobs nothing queues) the leases
    records = store.get_many(ids)
    markers = [store.keys.orphan(job_id) for job_id in ids]
    seen: list[Any] = client.mget(markers)  # type: ignore[assignment]
    queued = [i for i, record in enumerate(records) if record is not None and record.status is JobStatus.queued
              and now - record.created_at <= q.queued_ttl_s]
    present = _ids_on_queues(client) if queued else set()
    unseen = [i for i in queued if ids[i] not in present]
    pipe = client.pipeline(transaction=False)
    for i in unseen:
        pipe.exists(store.keys.lease(ids[i]))
    orphans = {i for i, leased in zip(unseen, pipe.execute(), strict=True) if not leased}
    # markers of jobs that are not (or no longer) orphans go, in one command; first sightings are marked
    gone = [markers[i] for i in range(len(ids)) if i not in orphans and seen[i] is not None]
    if gone:
        client.delete(*gone)
    pipe = client.pipeline(transaction=False)
    for i in orphans:
        if seen[i] is None:
            pipe.set(markers[i], repr(now), ex=max(600, 4 * ORPHAN_CONFIRM_S))
    pipe.execute()
    rescued: list[str] = []
    for i in sorted(orphans):
        if seen[i] is None or now - float(seen[i]) < ORPHAN_CONFIRM_S:
            continue
        job_id = ids[i]
        pipe, current = store.watch(job_id)
        try:
            if current is None or current.status is not JobStatus.queued:
                continue
            pipe.multi()
            jobs.submit(current.spec, at_front=True, pipeline=pipe)
            pipe.delete(markers[i])
            pipe.execute()
        except redis.WatchError:
            continue  # it moved meanwhile: somebody has it
        finally:
            pipe.reset()
        log.warning("job %s was queued with nothing on its queue for %.0f s; put back on queue %s", job_id,
                    now - float(seen[i]), current.spec.model)
        rescued.append(job_id)
    return rescued


def _ids_on_queues(client: redis.Redis) -> set[str]:
    """The job ids waiting on any RQ queue, or taken by a worker (any started registry, RQ's intermediate
    lists): a queued job found here has someone to run it."""
    ids: set[str] = set()
    for queue in Queue.all(connection=client, serializer=RQ_SERIALIZER):
        ids.update(queue.get_job_ids())
        ids.update(m.split(":", 1)[0] for m in registry_members(client, queue.started_job_registry.key))
        for raw in client.lrange(f"{queue.key}:intermediate", 0, -1):  # type: ignore[union-attr]
            ids.add(text(raw))
    return ids
