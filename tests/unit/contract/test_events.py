"""The job event stream on a real Redis: order, resume after an id, blocking read, cap, expiry."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
import redis

from contract.events import EventLog, JobEvent
from contract.keys import Keys


@pytest.fixture
def log():
    client = redis.Redis.from_url("redis://127.0.0.1:6379/9")
    yield EventLog(client, Keys(f"t{uuid.uuid4().hex[:8]}"), max_events=50)
    client.close()


def test_events_come_back_in_order_and_resume_after_an_id(log):
    ids = [log.publish("v1", JobEvent(event="stage", progress=p, elapsed_s=p / 10, stage="denoise", step=i,
                                      steps=4), ttl_s=60) for i, p in enumerate((10, 30, 50, 70), 1)]
    got = log.read("v1")
    assert [eid for eid, _ in got] == ids and [e.progress for _, e in got] == [10, 30, 50, 70]
    assert [e.step for _, e in log.read("v1", after=ids[1])] == [3, 4]  # Last-Event-ID = ids[1]
    assert log.read("v1", after=ids[-1]) == []
    assert log.last("v1") == (ids[-1], got[-1][1])
    assert 0 < log.r.ttl(log.keys.events("v1")) <= 60


def test_a_blocking_read_wakes_on_the_next_event(log):
    published: list[str] = []
    timer = threading.Timer(0.3, lambda: published.append(
        log.publish("v2", JobEvent(event="completed", progress=100, elapsed_s=1.0), ttl_s=60)))
    timer.start()
    t0 = time.monotonic()
    got = log.read("v2", block_ms=5000)
    assert got and got[0][1].event == "completed" and time.monotonic() - t0 < 3
    # the read wakes on the XADD, before the publisher has read the rest of its pipeline's replies: wait for
    # it, or the fixture's teardown closes the connection under it
    timer.join(5)
    assert published == [got[0][0]]


def test_the_stream_is_capped_and_deleted_with_the_job(log):
    for i in range(200):
        log.publish("v3", JobEvent(event="stage", progress=min(i, 99), elapsed_s=0.0), ttl_s=60)
    assert log.r.xlen(log.keys.events("v3")) < 200
    log.delete("v3")
    assert log.read("v3") == [] and log.last("v3") is None
