"""Concurrency slots (contract/jobstore.py's active sets) are given back however a job ends: by
`finish` when it ends normally, and by the workers' periodic sweep (worker/reaper.py `sweep_slots`,
run from the heartbeat) when it expired in the queue or its record expired — the paths on which
nothing else would ever release them (that owner would get 429 for good)."""

from __future__ import annotations

import time
import uuid

import redis
from rq.job import Job
from worker_procs import start_worker, stop, wait_for
from worker_support import PatternPipeline, submit, test_settings

from contract.events import EventLog
from contract.jobs import ErrorCode, JobStatus
from contract.jobstore import RESERVATION_GRACE_S, JobStore
from contract.keys import Keys
from contract.queue import JobQueue
from worker.main import run_worker
from worker.reaper import SLOT_SWEEP_HEARTBEATS, sweep_slots

OWNER = "test"  # worker_support.submit's owner


def _parts(settings):
    client = redis.Redis.from_url(settings.redis.url)
    store = JobStore(client, Keys(settings.redis.key_prefix))
    return client, store, JobQueue(client, settings.queue)


def _sweep(settings, **kw):
    _, store, jobs = _parts(settings)
    return sweep_slots(store, jobs, settings.queue, settings.webhooks, **kw)


def test_slot_is_released_when_the_job_ends(tmp_path):
    settings = test_settings(tmp_path)
    _, store, _ = _parts(settings)
    done = submit(settings)
    failed = submit(settings, prompt="boom")
    assert store.active_count(OWNER) == 2
    run_worker(settings, pipeline=PatternPipeline(), burst=True)
    assert store.get(done.job_id).status is JobStatus.completed
    assert store.get(failed.job_id).status is JobStatus.failed
    assert store.active_count(OWNER) == 0


def test_slot_of_a_job_that_expired_in_the_queue_is_released_with_its_webhook(tmp_path):
    settings = test_settings(tmp_path)
    settings = settings.model_copy(update={"queue": settings.queue.model_copy(update={"queued_ttl_s": 60})})
    client, store, jobs = _parts(settings)
    stale = submit(settings, created_at=time.time() - 120, webhook_url="http://127.0.0.1:9/hook")
    fresh = submit(settings)
    assert store.active_count(OWNER) == 2
    freed = _sweep(settings, force=True)
    assert freed == [stale.job_id]
    rec = store.get(stale.job_id)
    assert rec.status is JobStatus.failed and rec.error.code == ErrorCode.queue_timeout
    assert store.active_count(OWNER) == 1 and store.get(fresh.job_id).status is JobStatus.queued
    assert Job.exists(f"webhook-evt_{stale.job_id}_failed", connection=client)  # the client hears of it
    _, last = EventLog(client, Keys(settings.redis.key_prefix)).last(stale.job_id)  # and its live stream ends
    assert last.event == "failed" and last.error["code"] == "queue_timeout"


def test_slot_whose_record_expired_is_released_but_a_creation_in_flight_is_not(tmp_path):
    settings = test_settings(tmp_path)
    client, store, _ = _parts(settings)
    keys = Keys(settings.redis.key_prefix)
    expired = submit(settings)
    client.delete(keys.job(expired.job_id))  # what the record's TTL does
    # its reservation is older than the grace period (a creation still in flight is younger)
    client.zadd(keys.active(OWNER), {expired.job_id: time.time() - RESERVATION_GRACE_S - 1})
    in_flight = f"video_{uuid.uuid4().hex[:16]}"
    assert store.reserve_slot(OWNER, in_flight, limit=10)  # reserved, record not written yet
    assert store.active_count(OWNER) == 2
    assert _sweep(settings, force=True) == [expired.job_id]
    assert client.zrange(keys.active(OWNER), 0, -1) == [in_flight.encode()]


def test_sweep_runs_once_per_interval_across_the_fleet(tmp_path):
    settings = test_settings(tmp_path)
    client, store, _ = _parts(settings)
    keys = Keys(settings.redis.key_prefix)
    assert _sweep(settings) == []  # took the lock, nothing to free
    ghost = f"video_{uuid.uuid4().hex[:16]}"
    client.zadd(keys.active(OWNER), {ghost: time.time() - RESERVATION_GRACE_S - 1})
    assert _sweep(settings) == []  # another worker swept within the interval
    ttl = client.ttl(keys.slot_sweep())
    assert 0 < ttl <= SLOT_SWEEP_HEARTBEATS * settings.queue.heartbeat_s
    client.delete(keys.slot_sweep())
    assert _sweep(settings) == [ghost]


def test_a_running_workers_heartbeat_sweeps_leaked_slots(tmp_path):
    settings = test_settings(tmp_path)  # heartbeat 1 s: a sweep at most every SLOT_SWEEP_HEARTBEATS s
    client, store, _ = _parts(settings)
    keys = Keys(settings.redis.key_prefix)
    ghost = f"video_{uuid.uuid4().hex[:16]}"
    client.zadd(keys.active(OWNER), {ghost: time.time() - RESERVATION_GRACE_S - 1})
    w = start_worker(settings, name=f"sweep-{uuid.uuid4().hex[:6]}", step_delay=0.0, log_dir=tmp_path)
    try:
        wait_for(lambda: store.active_count(OWNER) == 0, timeout=SLOT_SWEEP_HEARTBEATS + 4,
                 what="the heartbeat's slot sweep", proc=w)
    finally:
        stop(w)
