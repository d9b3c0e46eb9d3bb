"""SIGTERM handling of a worker process, and its /metrics after jobs."""

from __future__ import annotations

import signal
import urllib.request
import uuid

import redis
from rq import Queue
from worker_procs import record, start_worker, stop, wait_for
from worker_support import free_port, submit, test_settings

from contract.jobs import JobStatus
from worker.progress import BANDS


def _sample(text: str, name: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(name + "{"):
            got = line[len(name) + 1 : line.index("}")]
            if ",".join(sorted(got.split(","))) == want:
                return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name}{{{want}}} not in metrics")


def test_sigterm_requeues_early_job_finishes_late_job_and_exits(tmp_path):
    settings = test_settings(tmp_path)
    model = settings.worker.model  # the metrics' model label

    # Early in the denoise loop: stop at the next step, re-queue, exit 0.
    # (4 steps, rCM's most: SIGTERM lands before step 2 ends, at half the loop, below NEARLY_DONE.)
    a = start_worker(settings, name=f"term-a-{uuid.uuid4().hex[:6]}", step_delay=1.0, log_dir=tmp_path)
    try:
        early = submit(settings, steps=4)
        wait_for(lambda: record(settings, early.job_id).progress >= 25, timeout=20, what="step 1", proc=a)
        a.send_signal(signal.SIGTERM)
        assert a.wait(timeout=20) == 0
    finally:
        stop(a)
    rec = record(settings, early.job_id)
    assert rec.status is JobStatus.queued and rec.progress == 0 and rec.attempts == 1
    assert early.job_id in Queue(settings.worker.queues[0],
                                 connection=redis.Redis.from_url(settings.redis.url)).get_job_ids()

    # Nearly done: the job is finished before the worker exits. The new worker first picks up the
    # re-queued early job (fast), then the late one.
    port = free_port()
    b = start_worker(settings, name=f"term-b-{uuid.uuid4().hex[:6]}", step_delay=0.5, metrics_port=port,
                     log_dir=tmp_path)
    try:
        wait_for(lambda: record(settings, early.job_id).status is JobStatus.completed, timeout=30,
                 what="re-queued job completed", proc=b)
        late = submit(settings, steps=4)
        lo, hi = BANDS["denoise"]  # progress after step 3 of 4, still denoising (step 4 takes 0.5 s)
        wait_for(lambda: record(settings, late.job_id).progress >= lo + (hi - lo) * 3 // 4, timeout=20,
                 what="step 3", proc=b)
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        b.send_signal(signal.SIGTERM)
        assert b.wait(timeout=20) == 0
    finally:
        stop(b)
    assert record(settings, late.job_id).status is JobStatus.completed
    assert record(settings, early.job_id).attempts == 2

    # Scraped while the late job was running: one finished job, its stage histograms, busy=1.
    assert _sample(metrics, "turbovid_jobs_finished_total", model=model, status="completed") == 1
    assert _sample(metrics, "turbovid_worker_busy", model=model) == 1
    for stage in ("queue_wait", "denoise", "video_encode", "upload", "total"):
        assert _sample(metrics, "turbovid_stage_duration_seconds_count", model=model, stage=stage) >= 1
    assert _sample(metrics, "turbovid_stage_duration_seconds_sum", model=model, stage="denoise") > 0.5
