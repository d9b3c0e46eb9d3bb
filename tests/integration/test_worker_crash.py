"""A worker SIGKILLed mid-job: its job is re-queued once and finished by another worker, or failed
with "worker_crashed" when no re-queue is left — never left in_progress."""

from __future__ import annotations

import signal
import uuid

import redis
from worker_procs import record, start_worker, stop, wait_for
from worker_support import submit, test_settings

from contract.events import EventLog
from contract.jobs import JobStatus
from contract.keys import Keys


def _kill_mid_job(settings, tmp_path) -> str:
    a = start_worker(settings, name=f"crash-a-{uuid.uuid4().hex[:6]}", step_delay=1.0, log_dir=tmp_path)
    try:
        spec = submit(settings, steps=4)
        wait_for(lambda: record(settings, spec.job_id).progress >= 25, timeout=20, what="first step", proc=a)
        assert record(settings, spec.job_id).status is JobStatus.in_progress
        a.send_signal(signal.SIGKILL)
        a.wait(timeout=10)
    finally:
        stop(a)
    return spec.job_id


def test_killed_job_is_requeued_once_and_completed_by_another_worker(tmp_path):
    settings = test_settings(tmp_path)
    job_id = _kill_mid_job(settings, tmp_path)
    b = start_worker(settings, name=f"crash-b-{uuid.uuid4().hex[:6]}", step_delay=0.0, log_dir=tmp_path)
    try:
        wait_for(lambda: record(settings, job_id).status is JobStatus.completed, timeout=30,
                 what="re-queued job completed", proc=b)
    finally:
        stop(b)
    rec = record(settings, job_id)
    assert rec.attempts == 2 and rec.worker.startswith("crash-b-") and rec.output is not None


def test_killed_job_without_requeues_left_fails_with_worker_crashed(tmp_path):
    settings = test_settings(tmp_path)
    settings = settings.model_copy(update={"queue": settings.queue.model_copy(update={"max_requeues": 0})})
    job_id = _kill_mid_job(settings, tmp_path)
    b = start_worker(settings, name=f"crash-c-{uuid.uuid4().hex[:6]}", step_delay=0.0, log_dir=tmp_path)
    try:
        wait_for(lambda: record(settings, job_id).status is JobStatus.failed, timeout=30,
                 what="crashed job failed", proc=b)
    finally:
        stop(b)
    rec = record(settings, job_id)
    assert rec.error is not None and rec.error.code == "worker_crashed"
    assert "crash-a" in rec.error.message
    assert rec.attempts == 1
    # the job's live stream ends too (GET /v1/videos/{id}/events closes after a terminal event). The reaper
    # publishes that event right after it writes the record, so a reader may see the failed record first.
    events = EventLog(redis.Redis.from_url(settings.redis.url), Keys(settings.redis.key_prefix))
    wait_for(lambda: events.last(job_id)[1].event == "failed", timeout=10, what="the stream's failed event")
    _, last = events.last(job_id)
    assert last.event == "failed" and last.error["code"] == "worker_crashed" and last.progress >= 25
