"""Worker liveness with real processes on a private redis-server: a worker SIGKILLed right after it
starts a job stops counting (registry, /v1/models, /healthz/models, metrics) within its heartbeat
TTL — not RQ's worker key, which lives job_timeout + 60 s — and its job is re-queued and completed
by another worker; a worker re-registers by itself after Redis loses its data; the worker's /ready
answers 200 only once its pipeline is warm."""

from __future__ import annotations

import signal
import time
import urllib.error
import urllib.request
import uuid

import pytest
import redis
from fastapi.testclient import TestClient
from rq import Worker
from worker_procs import RedisServer, record, settings_on, spawn_worker, start_worker, stop, wait_for
from worker_support import free_port, submit, test_settings

from contract.jobs import JobStatus
from contract.keys import Keys
from contract.workers import WorkerRegistry
from worker.reaper import lease_ttl_s

MODEL = "wan-tiny"


@pytest.fixture
def private_redis(tmp_path):
    with RedisServer(tmp_path / "redis", appendonly=False) as server:  # no fsync waits on a busy disk
        yield server


def _settings(tmp_path, url):
    # Serve the model's own queue (the gateway counts workers per model): safe on a private Redis.
    s = test_settings(tmp_path, queues=[MODEL])
    return settings_on(s, url, heartbeat_s=1, job_timeout_s=600)


def _live(settings) -> list[str]:
    client = redis.Redis.from_url(settings.redis.url)
    return [w.name for w in WorkerRegistry(client, Keys(settings.redis.key_prefix)).live(MODEL)]


def _status(url: str) -> int:
    try:
        return int(urllib.request.urlopen(url, timeout=2).status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_worker_killed_at_job_start_stops_counting_within_its_ttl_and_its_job_is_requeued(tmp_path, private_redis):
    from service.app import create_app

    settings = _settings(tmp_path, private_redis.url)
    ttl = lease_ttl_s(settings.queue)
    name_a = f"live-a-{uuid.uuid4().hex[:6]}"
    a = start_worker(settings, name=name_a, step_delay=5.0, log_dir=tmp_path)
    with TestClient(create_app(settings)) as gw:
        try:
            wait_for(lambda: name_a in _live(settings), timeout=10, what="worker advertised", proc=a)
            assert gw.get("/v1/models").json()["data"][0]["workers"]["ready"] == 1
            assert gw.get("/healthz/models").status_code == 200
            spec = submit(settings, steps=4)
            wait_for(lambda: record(settings, spec.job_id).status is JobStatus.in_progress, timeout=10,
                     what="job started", proc=a)
            a.send_signal(signal.SIGKILL)  # right at job start: progress 0, before any step ended
            killed = time.monotonic()
            a.wait(timeout=10)
        finally:
            stop(a)
        assert record(settings, spec.job_id).progress < 100  # killed in its first denoise step (5 s long)

        wait_for(lambda: gw.get("/v1/models").json()["data"][0]["workers"]["ready"] == 0, timeout=ttl + 2,
                 what="/v1/models drops the killed worker")
        gone_after = time.monotonic() - killed
        print(f"killed worker gone from /v1/models after {gone_after:.2f} s (TTL {ttl} s)")
        assert gone_after <= ttl + 1.5, gone_after
        assert name_a not in _live(settings)
        assert gw.get("/healthz/models").status_code == 503
        assert gw.get("/v1/models").json()["data"][0]["available"] is False
        assert 'turbovid_model_available{model="wan-tiny"} 0.0' in gw.get("/metrics").text
        assert gw.get("/readyz").status_code == 200  # the gateway itself stays in service
        # RQ's own worker key still says the dead worker is there (TTL job_timeout + 60 s at job start):
        # counting by it is the ~31 min ghost this test guards against.
        client = redis.Redis.from_url(settings.redis.url)
        assert any(w.name == name_a for w in Worker.all(connection=client))
        assert record(settings, spec.job_id).status is JobStatus.in_progress  # nobody reaped it yet

        b = start_worker(settings, name=f"live-b-{uuid.uuid4().hex[:6]}", step_delay=0.0, log_dir=tmp_path)
        try:
            wait_for(lambda: record(settings, spec.job_id).status is JobStatus.completed, timeout=30,
                     what="re-queued job completed by the second worker", proc=b)
            assert gw.get("/v1/models").json()["data"][0]["workers"]["ready"] == 1
        finally:
            stop(b)
    rec = record(settings, spec.job_id)
    assert rec.attempts == 2 and rec.worker is not None and rec.worker.startswith("live-b-")


def test_worker_re_registers_after_redis_loses_its_data(tmp_path, private_redis):
    settings = _settings(tmp_path, private_redis.url)
    name = f"flush-{uuid.uuid4().hex[:6]}"
    w = start_worker(settings, name=name, step_delay=0.0, log_dir=tmp_path)
    try:
        wait_for(lambda: name in _live(settings), timeout=10, what="worker advertised", proc=w)
        redis.Redis.from_url(private_redis.url).flushall()
        assert name not in _live(settings)
        wait_for(lambda: name in _live(settings), timeout=2 * settings.queue.heartbeat_s + 1,
                 what="worker re-advertised on its next heartbeat", proc=w)
        spec = submit(settings)  # and it still serves its queue
        wait_for(lambda: record(settings, spec.job_id).status is JobStatus.completed, timeout=20,
                 what="job after FLUSHALL completed", proc=w)
    finally:
        stop(w)


def test_worker_ready_endpoint_waits_for_the_warm_pipeline(tmp_path, private_redis):
    settings = _settings(tmp_path, private_redis.url)
    name = f"warm-{uuid.uuid4().hex[:6]}"
    port = free_port()
    # Warm-up runs one 1-step generation: with 3 s per step the worker is "loading" for ~3 s.
    w = spawn_worker(settings, name=name, step_delay=3.0, metrics_port=port, log_dir=tmp_path,
                     env={"TURBOVID_WORKER__WARMUP": "true"})
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _status(f"{base}/healthz") == 200 if _port_open(port) else False, timeout=15,
                 what="metrics server up", proc=w)
        assert _status(f"{base}/ready") == 503
        client = redis.Redis.from_url(settings.redis.url)
        (info,) = WorkerRegistry(client, Keys(settings.redis.key_prefix)).live(MODEL)
        assert info.name == name and info.ready is False
        wait_for(lambda: _status(f"{base}/ready") == 200, timeout=40, what="/ready after warm-up", proc=w)
        (info,) = WorkerRegistry(client, Keys(settings.redis.key_prefix)).live(MODEL)
        assert info.ready is True
        assert b"turbovid_worker_busy" in urllib.request.urlopen(f"{base}/metrics", timeout=2).read()
    finally:
        stop(w)


def _port_open(port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0
