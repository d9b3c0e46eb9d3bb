"""The one queue, the job store's concurrency slots and the worker registry, on a real Redis."""

from __future__ import annotations

import json
import time
import uuid

import pytest
import redis
from rq.job import Job

from contract.catalog import get_card
from contract.jobs import Capabilities, GenerationParams, JobSpec, JobStatus
from contract.jobstore import JobStore
from contract.keys import Keys
from contract.queue import RQ_SERIALIZER, TASK_PATH, WEBHOOK_QUEUE, WEBHOOK_TASK_PATH, JobQueue
from contract.settings import QueueSettings, WebhookSettings
from contract.workers import MixedWorkers, WorkerInfo, WorkerRegistry, capabilities


@pytest.fixture
def client():
    c = redis.Redis.from_url("redis://127.0.0.1:6379/9")
    c.flushdb()
    yield c
    c.flushdb()
    c.close()


@pytest.fixture
def keys():
    return Keys(f"t{uuid.uuid4().hex[:8]}")


def _spec(job_id: str, model: str = "wan-tiny", owner: str = "dev") -> JobSpec:
    params = GenerationParams(prompt="p", width=64, height=64, num_frames=9).resolve(get_card("wan-tiny"),
                                                                                    Capabilities())
    return JobSpec(job_id=job_id, owner=owner, model=model, params=params, output_key=f"o/{job_id}.mp4",
                   created_at=time.time())


def test_enqueue_states_every_ttl_and_requeue_replaces_the_job(client):
    cfg = QueueSettings(job_timeout_s=123, result_ttl_s=456, failure_ttl_s=789, queued_ttl_s=321)
    jq = JobQueue(client, cfg)
    spec = _spec("video_a")
    job = jq.submit(spec)
    assert (job.func_name, job.timeout, job.result_ttl, job.failure_ttl, job.ttl) == (TASK_PATH, 123, 456, 789, 321)
    assert JobSpec.model_validate_json(job.args[0]) == spec
    assert client.ttl(Job.key_for("video_a")) > 0  # the queued TTL is on the RQ job itself
    jq.submit(_spec("video_b"))
    assert (jq.position("wan-tiny", "video_a"), jq.position("wan-tiny", "video_b"), jq.depth("wan-tiny")) == (0, 1, 2)
    # a re-queue (after a crash or shutdown) goes to the front and keeps every TTL, the queued one included
    jq.remove("wan-tiny", "video_a")
    again = jq.submit(spec, at_front=True)
    assert again.ttl == 321 and jq.position("wan-tiny", "video_a") == 0 and jq.depth("wan-tiny") == 2
    jq.remove("wan-tiny", "video_b")
    assert jq.position("wan-tiny", "video_b") is None and not client.exists(Job.key_for("video_b"))


def test_webhook_delivery_carries_ids_not_a_rendered_payload(client):
    jq = JobQueue(client, QueueSettings())
    job_id = jq.submit_webhook("video_x", "video.completed", "https://example.com/h", WebhookSettings(max_attempts=3))
    job = Job.fetch(job_id, connection=client, serializer=RQ_SERIALIZER)
    assert job.origin == WEBHOOK_QUEUE and job.func_name == WEBHOOK_TASK_PATH
    assert json.loads(job.args[0]) == {"event_id": "evt_video_x_completed", "type": "video.completed",
                                       "job_id": "video_x", "url": "https://example.com/h"}
    assert job.retries_left == 2


def test_slots_are_reserved_atomically_and_given_back_on_finish_and_delete(client, keys):
    store = JobStore(client, keys)
    assert store.reserve_slot("k1", "video_1", limit=2) and store.reserve_slot("k1", "video_2", limit=2)
    assert not store.reserve_slot("k1", "video_3", limit=2)
    store.create(_spec("video_1", owner="k1"), ttl_s=60)
    store.finish("video_1", JobStatus.completed, ttl_s=60)
    assert store.active_count("k1") == 1
    store.release_slot("k1", "video_2")  # a creation that failed before `create`
    assert store.active_count("k1") == 0
    store.reserve_slot("dev", "video_9", limit=1)
    store.create(_spec("video_9"), ttl_s=60)
    store.delete("video_9")
    assert store.active_count("dev") == 0


def _info(name: str, **kw) -> WorkerInfo:
    base = dict(name=name, models=["wan-tiny", "wan-tiny-i2v"], solver="rcm", attention="dense", linear="native",
                device="cpu", dtype="float32", started_at=time.time())
    return WorkerInfo(**{**base, **kw})


def test_registry_lists_live_workers_and_forgets_dead_ones(client, keys):
    reg = WorkerRegistry(client, keys)
    reg.advertise(_info("w1", attention="sla"), ttl_s=30)
    reg.advertise(_info("w2", attention="sagesla"), ttl_s=1)
    assert {w.name for w in reg.live("wan-tiny-i2v")} == {"w1", "w2"}
    assert 0 < client.ttl(keys.worker("w1")) <= 30
    card = get_card("wan-tiny")
    assert capabilities(card, reg.live("wan-tiny")) == Capabilities(solver="rcm", sla=True)
    time.sleep(1.2)  # w2 stops heartbeating: gone within its TTL
    assert [w.name for w in reg.live("wan-tiny")] == ["w1"]
    assert client.smembers(keys.workers("wan-tiny")) == {b"w1"}
    reg.withdraw(_info("w1"))
    assert reg.live("wan-tiny") == []


def test_capabilities_from_workers():
    card = get_card("wan-tiny")
    assert capabilities(card, []) == Capabilities(solver="rcm", sla=False)  # catalog defaults
    assert capabilities(card, [_info("a", attention="sla"), _info("b")]).sla is False  # every worker must
    assert capabilities(card, [_info("a", solver="flow"), _info("b", solver="flow", ready=False)]).solver == "flow"
    assert capabilities(card, [_info("a", ready=False, attention="sla")]) == Capabilities()  # loading only
    with pytest.raises(MixedWorkers):
        capabilities(card, [_info("a"), _info("b", solver="flow")])


def test_slots_of_jobs_that_ended_unnoticed_are_swept(client, keys):
    store = JobStore(client, keys)
    ttl = dict(queued_ttl_s=100, failure_ttl_s=60)
    for jid in ("video_gone", "video_old", "video_new", "video_done"):
        assert store.reserve_slot("k", jid, limit=10)
        store.create(_spec(jid, owner="k"), ttl_s=600)
    client.delete(keys.job("video_gone"))  # the record expired before anyone polled it
    client.zadd(keys.active("k"), {"video_gone": time.time() - 500})  # ... long after its reservation
    assert store.reserve_slot("k", "video_inflight", limit=10)  # a creation whose record is not written yet
    client.hset(keys.job("video_old"), "created_at", repr(time.time() - 101))  # expired in the queue
    client.hset(keys.job("video_done"), "status", "completed")  # terminal, slot not given back (a crash)
    freed = store.sweep_slots("k", **ttl)
    assert sorted(freed) == ["video_done", "video_gone", "video_old"]
    assert store.active_count("k") == 2  # video_new and the in-flight reservation keep their slots
    old = store.get("video_old")
    assert old.status is JobStatus.failed and old.error.code == "queue_timeout"
    assert store.sweep_all_slots(**ttl) == 0  # nothing more to free anywhere
    client.delete(keys.job("video_new"))
    client.zadd(keys.active("k"), {"video_new": time.time() - 500, "video_inflight": time.time() - 500})
    assert store.sweep_all_slots(**ttl) == 2 and store.active_count("k") == 0


def test_records_read_in_one_batch_match_single_reads(client, keys):
    store = JobStore(client, keys)
    for jid in ("video_a", "video_b"):
        store.create(_spec(jid, owner="k"), ttl_s=600)
    client.hset(keys.job("video_b"), "status", "completed")
    got = store.get_many(["video_b", "video_missing", "video_a"])
    assert got[1] is None and got[0] == store.get("video_b") and got[2] == store.get("video_a")
    assert got[0].status is JobStatus.completed and got[2].status is JobStatus.queued
    assert store.get_many([]) == []


def test_worker_pools_show_ranks_budget_and_offloads_and_read_older_records(client, keys):
    from service.engine import worker_pools

    reg = WorkerRegistry(client, keys)
    reg.advertise(_info("a", linear="w8a8"), ttl_s=30)
    reg.advertise(_info("b", linear="w8a8", gpu_memory_gb=32.0, offload=["experts"]), ttl_s=30)
    reg.advertise(_info("c", linear="w8a8", gpu_memory_gb=32.0, offload=["experts"], ready=False), ttl_s=30)
    reg.advertise(_info("d", linear="w8a8", ranks=2), ttl_s=30)
    # a record written before these fields existed (a worker of the previous release) still reads
    old = _info("e", linear="w8a8").model_dump()
    for field in ("gpu_memory_gb", "offload", "kernels"):
        old.pop(field)
    client.set(keys.worker("e"), json.dumps(old), ex=30)
    client.sadd(keys.workers("wan-tiny"), "e")
    pools = worker_pools(reg.live("wan-tiny"))
    common = {"solver": "rcm", "attention": "dense", "linear": "w8a8"}
    assert pools == [
        {**common, "ranks": 1, "gpu_memory_gb": None, "offload": [], "kernels": {}, "ready": 2, "loading": 0},  # a, e
        {**common, "ranks": 1, "gpu_memory_gb": 32.0, "offload": ["experts"], "kernels": {}, "ready": 1, "loading": 1},
        {**common, "ranks": 2, "gpu_memory_gb": None, "offload": [], "kernels": {}, "ready": 1, "loading": 0},
    ]


def test_redis_replies_as_text() -> None:
    from contract.keys import text

    # a client without decode_responses returns bytes, one with it str; ids and keys are read either way
    assert text(b"job-\xc3\xa9") == "job-é" and text("job-é") == "job-é" and text(7) == "7"
    with pytest.raises(UnicodeDecodeError):
        text(b"\xff")  # not UTF-8: an error, not a mangled id
