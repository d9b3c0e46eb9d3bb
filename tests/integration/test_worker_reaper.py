"""The reaper's decisions on real Redis/RQ state, with the clock passed in (no sleeping)."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import redis
from rq import Queue
from rq.job import Job
from worker_support import submit, test_settings

from contract.jobs import RQ_SERIALIZER, JobStatus
from contract.jobstore import JobStore
from worker.reaper import Lease, reap


def _start(q: Queue, store: JobStore, job_id: str, worker: str) -> None:
    """What a worker does when it takes a job, minus running it (then it 'dies')."""
    q.remove(job_id)
    job = Job.fetch(job_id, connection=q.connection, serializer=RQ_SERIALIZER)
    job.started_at = datetime.now(UTC)
    job.save()
    q.connection.zadd(q.started_job_registry.key, {f"{job_id}:exec-1": time.time() + 3600})
    store.mark_started(job_id, worker)


def test_reaper_requeues_once_then_fails_and_respects_leases(tmp_path):
    settings = test_settings(tmp_path)  # heartbeat 1 s → lease TTL 3 s, max_requeues 1
    client = redis.Redis.from_url(settings.redis.url)
    store = JobStore(client, settings.redis.key_prefix)
    q = Queue(settings.worker.model, connection=client, serializer=RQ_SERIALIZER)
    spec = submit(settings)
    _start(q, store, spec.job_id, "w-dead")
    assert q.count == 0

    # Just started: its worker may not have written the lease yet.
    assert reap(q, store, settings.queue, now=time.time()) == []
    # A live worker's lease protects the job however old it is.
    lease = Lease(client, store.p, "w-live", ttl_s=3)
    lease.hold(spec.job_id)
    assert reap(q, store, settings.queue, now=time.time() + 60) == []
    lease.release()

    # Lease gone and old enough: re-queued once, at the front, same id and spec.
    notified: list[str] = []
    done = reap(q, store, settings.queue, now=time.time() + 10, notify=notified.append)
    assert [(r.job_id, r.action) for r in done] == [(spec.job_id, "requeued")]
    assert q.get_job_ids() == [spec.job_id]
    rec = store.get(spec.job_id)
    assert rec is not None and rec.status is JobStatus.queued and notified == []
    assert Job.fetch(spec.job_id, connection=client, serializer=RQ_SERIALIZER).args == [spec.model_dump_json()]

    # Dies again: no re-queue left → failed with worker_crashed, naming the worker; webhook notified.
    client.delete(f"{store.p}:reap:{spec.job_id}")
    _start(q, store, spec.job_id, "w-dead-again")
    done = reap(q, store, settings.queue, now=time.time() + 10, notify=notified.append)
    assert [(r.job_id, r.action) for r in done] == [(spec.job_id, "failed")]
    rec = store.get(spec.job_id)
    assert rec is not None and rec.status is JobStatus.failed and rec.attempts == 2
    assert rec.error is not None and rec.error.code == "worker_crashed" and "w-dead-again" in rec.error.message
    assert notified == [spec.job_id]
    assert q.count == 0 and spec.job_id in q.failed_job_registry.get_job_ids()
    assert client.zcard(q.started_job_registry.key) == 0


def test_reaper_clears_registry_entries_of_finished_or_deleted_jobs(tmp_path):
    settings = test_settings(tmp_path)
    client = redis.Redis.from_url(settings.redis.url)
    store = JobStore(client, settings.redis.key_prefix)
    q = Queue(settings.worker.model, connection=client, serializer=RQ_SERIALIZER)
    finished, deleted = submit(settings), submit(settings)
    for spec in (finished, deleted):
        _start(q, store, spec.job_id, "w")
    store.finish(finished.job_id, JobStatus.completed, ttl_s=60)
    store.delete(deleted.job_id)

    done = reap(q, store, settings.queue, now=time.time() + 10)
    assert sorted((r.job_id, r.action) for r in done) == sorted(
        [(finished.job_id, "cleared"), (deleted.job_id, "cleared")])
    assert client.zcard(q.started_job_registry.key) == 0
    assert store.get(finished.job_id).status is JobStatus.completed  # type: ignore[union-attr]
    assert q.count == 0
