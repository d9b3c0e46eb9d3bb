"""The reaper's decisions on real Redis/RQ state, with the clock passed in (no sleeping)."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

import redis
from rq import Queue
from rq.job import Job
from worker_support import submit, test_settings

from contract.jobs import JobStatus
from contract.jobstore import JobStore
from contract.keys import Keys
from contract.queue import RQ_SERIALIZER, WEBHOOK_QUEUE, JobQueue
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
    store = JobStore(client, Keys(settings.redis.key_prefix))
    jobs = JobQueue(client, settings.queue)
    q = Queue(settings.worker.queues[0], connection=client, serializer=RQ_SERIALIZER)
    spec = submit(settings, webhook_url="https://hooks.example.com/reaped")
    _start(q, store, spec.job_id, "w-dead")
    assert q.count == 0

    def reap_at(now: float):
        return reap(q, store, jobs, settings.queue, settings.webhooks, now=now)

    def webhooks() -> list[str]:
        return [j.args[0] for j in Queue(WEBHOOK_QUEUE, connection=client, serializer=RQ_SERIALIZER).get_jobs()
                if spec.job_id in j.args[0]]

    # Just started: its worker may not have written the lease yet.
    assert reap_at(time.time()) == []
    # A live worker's lease protects the job however old it is.
    lease = Lease(client, store.keys, "w-live", ttl_s=3)
    assert lease.acquire(spec.job_id) is None
    assert reap_at(time.time() + 60) == []
    lease.release()

    # Lease gone and old enough: re-queued once, at the front, same id and spec, and still with the
    # queued TTL (a re-queued job that no worker takes expires like any queued job).
    done = reap_at(time.time() + 10)
    assert [(r.job_id, r.action) for r in done] == [(spec.job_id, "requeued")]
    assert q.get_job_ids() == [spec.job_id]
    rec = store.get(spec.job_id)
    assert rec is not None and rec.status is JobStatus.queued and webhooks() == []
    job = Job.fetch(spec.job_id, connection=client, serializer=RQ_SERIALIZER)
    assert job.args == [spec.model_dump_json()]
    assert job.ttl == settings.queue.queued_ttl_s and 0 < client.ttl(job.key) <= settings.queue.queued_ttl_s
    assert job.timeout == settings.queue.job_timeout_s

    # Dies again: no re-queue left → failed with worker_crashed, naming the worker; webhook queued.
    client.delete(store.keys.reap(spec.job_id))
    _start(q, store, spec.job_id, "w-dead-again")
    done = reap_at(time.time() + 10)
    assert [(r.job_id, r.action) for r in done] == [(spec.job_id, "failed")]
    rec = store.get(spec.job_id)
    assert rec is not None and rec.status is JobStatus.failed and rec.attempts == 2
    assert rec.error is not None and rec.error.code == "worker_crashed" and "w-dead-again" in rec.error.message
    (delivery,) = webhooks()
    assert json.loads(delivery)["type"] == "video.failed"
    for j in Queue(WEBHOOK_QUEUE, connection=client, serializer=RQ_SERIALIZER).get_jobs():
        if spec.job_id in j.args[0]:
            j.delete(remove_from_queue=True)  # nobody should deliver to example.com
    assert q.count == 0 and spec.job_id in q.failed_job_registry.get_job_ids()
    assert client.zcard(q.started_job_registry.key) == 0


def test_reaper_clears_registry_entries_of_finished_or_deleted_jobs(tmp_path):
    settings = test_settings(tmp_path)
    client = redis.Redis.from_url(settings.redis.url)
    store = JobStore(client, Keys(settings.redis.key_prefix))
    q = Queue(settings.worker.queues[0], connection=client, serializer=RQ_SERIALIZER)
    finished, deleted = submit(settings), submit(settings)
    for spec in (finished, deleted):
        _start(q, store, spec.job_id, "w")
    store.finish(finished.job_id, JobStatus.completed, ttl_s=60)
    store.delete(deleted.job_id)

    done = reap(q, store, JobQueue(client, settings.queue), settings.queue, settings.webhooks, now=time.time() + 10)
    assert sorted((r.job_id, r.action) for r in done) == sorted(
        [(finished.job_id, "cleared"), (deleted.job_id, "cleared")])
    assert client.zcard(q.started_job_registry.key) == 0
    assert store.get(finished.job_id).status is JobStatus.completed  # type: ignore[union-attr]
    assert q.count == 0
