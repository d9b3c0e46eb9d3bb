"""Redis cut off in the middle of a write: a job's creation and a reaper's re-queue leave either nothing
or a whole, consistent job, never a record "queued" with nothing on the queue (a job nobody runs and whose
concurrency slot stays taken until the queued TTL).

The Redis is real; the cut is a connection class that stops talking at a chosen point — before a
transaction reaches the server ("unreachable") or after the server ran it but before its reply arrives
("reply lost") — and then refuses every command until the test brings Redis "back"."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
import redis
from rq import Queue
from rq.job import Job
from worker_support import submit, test_settings

from contract.catalog import get_card
from contract.jobs import Capabilities, GenerationParams, JobSpec, JobStatus
from contract.jobstore import JobStore
from contract.keys import Keys
from contract.queue import RQ_SERIALIZER, JobQueue
from service.engine import Engine
from worker.reaper import reap


class Cut:
    """Shared state of the CuttableConnections of one client."""

    def __init__(self) -> None:
        self.at: str | None = None  # "unreachable" | "reply_lost": armed for the next transaction
        self.down = False
        self.back_after_cut = False  # Redis answers again right after the cut (the reply alone was lost)
        self.fired = 0
        self.before_exec: Any = None  # a callable run once just before the next transaction is sent
        self.pending_loss = False  # the transaction just sent ran; its reply is to be lost

    def send(self, conn: redis.Connection, packed: Any) -> None:
        if self.down:
            raise redis.ConnectionError("test: Redis is unreachable")
        is_exec = b"EXEC" in b"".join(bytes(part) for part in (packed if isinstance(packed, list) else [packed]))
        if is_exec and self.before_exec is not None:
            other, self.before_exec = self.before_exec, None
            other()
        if is_exec and self.at == "unreachable":
            self._fire()
            raise redis.ConnectionError("test: Redis became unreachable before the transaction reached it")
        redis.Connection.send_packed_command(conn, packed)
        if is_exec and self.at == "reply_lost":
            self._fire()
            self.pending_loss = True

    def _fire(self) -> None:
        self.at = None
        self.fired += 1
        self.down = not self.back_after_cut

    def read(self, conn: redis.Connection, *args: Any, **kwargs: Any) -> Any:
        if self.pending_loss:
            self.pending_loss = False
            conn.disconnect()
            raise redis.ConnectionError("test: the connection dropped before the reply arrived")
        if self.down:
            raise redis.ConnectionError("test: Redis is unreachable")
        return redis.Connection.read_response(conn, *args, **kwargs)


def _client(url: str, cut: Cut, *, retry: bool = False) -> redis.Redis:
    class CuttableConnection(redis.Connection):
        def send_packed_command(self, command: Any, check_health: bool = True) -> None:
            cut.send(self, command)

        def read_response(self, *args: Any, **kwargs: Any) -> Any:
            return cut.read(self, *args, **kwargs)

    if retry:  # a dropped connection is retried, as the workers' client does (worker.main.redis_client)
        from redis.backoff import ExponentialBackoff
        from redis.retry import Retry

        pool = redis.ConnectionPool.from_url(url, connection_class=CuttableConnection,
                                             retry=Retry(ExponentialBackoff(cap=0.01, base=0.001), 3),
                                             retry_on_error=[redis.ConnectionError])
        return redis.Redis(connection_pool=pool)
    pool = redis.ConnectionPool.from_url(url, connection_class=CuttableConnection)
    return redis.Redis(connection_pool=pool, retry=None)  # no client retry: the cut must reach the caller


@pytest.fixture
def settings(tmp_path):
    return test_settings(tmp_path)


def _spec(model: str) -> JobSpec:
    job_id = f"video_{uuid.uuid4().hex}"
    params = GenerationParams(prompt="p", width=64, height=64, num_frames=9).resolve(get_card("wan-tiny"),
                                                                                    Capabilities())
    return JobSpec(job_id=job_id, owner="dev", model=model, params=params, output_key=f"o/{job_id}.mp4",
                   created_at=time.time())


def _state(client: redis.Redis, keys: Keys, spec: JobSpec) -> dict[str, object]:
    """What Redis holds of a job: its record's status, its slot, its place on the queue, its events."""
    store = JobStore(client, keys)
    record = store.get(spec.job_id)
    q = Queue(spec.model, connection=client, serializer=RQ_SERIALIZER)
    return {
        "record": None if record is None else record.status.value,
        "slot": client.zscore(keys.active(spec.owner), spec.job_id) is not None,
        "queued": spec.job_id in q.get_job_ids(),
        "events": int(client.xlen(keys.events(spec.job_id))),  # type: ignore[arg-type]
    }


NOTHING = {"record": None, "slot": False, "queued": False, "events": 0}
WHOLE = {"record": "queued", "slot": True, "queued": True, "events": 1}


@pytest.mark.parametrize(("at", "back_after_cut", "expected"), [
    ("unreachable", False, NOTHING),   # the transaction never ran
    ("reply_lost", False, WHOLE),      # it ran, and Redis stayed away: the job stands whole and will run
    ("reply_lost", True, NOTHING),     # it ran, and Redis answered the take-back: undone
])
def test_a_creation_cut_mid_write_leaves_nothing_or_a_whole_job(settings, at, back_after_cut, expected):
    cut = Cut()
    model = settings.worker.queues[0]
    keys = Keys(settings.redis.key_prefix)
    engine = Engine(_client(settings.redis.url, cut), keys, settings)
    plain = redis.Redis.from_url(settings.redis.url)
    spec = _spec(model)
    cut.at, cut.back_after_cut = at, back_after_cut
    with pytest.raises(redis.ConnectionError):
        engine.submit(spec, priority="normal", metadata=None, webhook_url=None)
    assert cut.fired == 1
    assert _state(plain, keys, spec) == expected
    # and with Redis answering, the next creation is whole
    cut.down = False
    again = _spec(model)
    engine.submit(again, priority="normal", metadata=None, webhook_url=None)
    assert _state(plain, keys, again) == WHOLE
    Queue(model, connection=plain, serializer=RQ_SERIALIZER).empty()


def test_a_creation_whose_reply_was_lost_is_not_resent_by_the_client_retry(settings):
    """A client that retries a dropped connection (the workers' does; the gateway's today does not) would
    re-send a transaction whose reply was lost, putting the job on its queue twice. The creation's watched
    transaction fails instead, and the job is taken back (Redis answers again at once here)."""
    cut = Cut()
    model = settings.worker.queues[0]
    keys = Keys(settings.redis.key_prefix)
    engine = Engine(_client(settings.redis.url, cut, retry=True), keys, settings)
    plain = redis.Redis.from_url(settings.redis.url)
    spec = _spec(model)
    cut.at, cut.back_after_cut = "reply_lost", True
    with pytest.raises(redis.ConnectionError):
        engine.submit(spec, priority="normal", metadata=None, webhook_url=None)
    assert cut.fired == 1
    assert _state(plain, keys, spec) == NOTHING
    assert Queue(model, connection=plain, serializer=RQ_SERIALIZER).get_job_ids() == []


def _take_and_die(client: redis.Redis, store: JobStore, q: Queue, job_id: str) -> None:
    """A worker takes the job and dies: off the queue, in the started registry, in_progress, no lease."""
    q.remove(job_id)
    job = Job.fetch(job_id, connection=client, serializer=RQ_SERIALIZER)
    job.started_at = datetime.now(UTC)
    job.save()
    client.zadd(q.started_job_registry.key, {f"{job_id}:exec-1": time.time() + 3600})
    store.mark_started(job_id, "w-dead")


def test_a_requeue_cut_mid_write_is_retried_by_the_next_pass_never_half_done(settings):
    plain = redis.Redis.from_url(settings.redis.url)
    keys = Keys(settings.redis.key_prefix)
    spec = submit(settings)
    q_plain = Queue(settings.worker.queues[0], connection=plain, serializer=RQ_SERIALIZER)
    _take_and_die(plain, JobStore(plain, keys), q_plain, spec.job_id)

    cut = Cut()
    client = _client(settings.redis.url, cut)
    store, jobs = JobStore(client, keys), JobQueue(client, settings.queue)
    q = Queue(settings.worker.queues[0], connection=client, serializer=RQ_SERIALIZER)
    cut.at = "unreachable"  # Redis goes away just as the re-queue's transaction is sent
    with pytest.raises(redis.ConnectionError):
        reap(q, store, jobs, settings.queue, settings.webhooks, now=time.time() + 10)
    # Nothing of the re-queue happened: still in_progress and in the started registry, so a later pass
    # (after the reap marker's TTL; deleted here instead of waiting) re-queues it.
    rec = JobStore(plain, keys).get(spec.job_id)
    assert rec is not None and rec.status is JobStatus.in_progress
    assert q_plain.get_job_ids() == [] and any(m.startswith(spec.job_id) for m in q_plain.started_job_registry
                                               .get_job_ids(cleanup=False))
    cut.down = False
    plain.delete(keys.reap(spec.job_id))
    done = reap(q, store, jobs, settings.queue, settings.webhooks, now=time.time() + 10)
    assert [(r.job_id, r.action) for r in done] == [(spec.job_id, "requeued")]
    rec = JobStore(plain, keys).get(spec.job_id)
    assert rec is not None and rec.status is JobStatus.queued and q_plain.get_job_ids() == [spec.job_id]
    assert not [m for m in q_plain.started_job_registry.get_job_ids(cleanup=False) if m.startswith(spec.job_id)]
    q_plain.empty()


@pytest.mark.parametrize(("at", "ended"), [("unreachable", False), ("reply_lost", True)])
def test_a_job_ends_together_with_its_webhook_or_not_at_all(settings, at, ended):
    """The reaper gives up on a job (its worker died once too often): the failed record, the freed slot and the
    "video.failed" webhook's enqueue are one transaction, so a cut leaves all of them or none."""
    from contract.queue import WEBHOOK_QUEUE

    plain = redis.Redis.from_url(settings.redis.url)
    keys = Keys(settings.redis.key_prefix)
    spec = submit(settings, webhook_url="https://hooks.example.com/end")
    q_plain = Queue(settings.worker.queues[0], connection=plain, serializer=RQ_SERIALIZER)
    plain.set(keys.crashes(spec.job_id), settings.queue.max_requeues)  # no re-queue left
    _take_and_die(plain, JobStore(plain, keys), q_plain, spec.job_id)

    def webhooks() -> list[str]:
        hooks = Queue(WEBHOOK_QUEUE, connection=plain, serializer=RQ_SERIALIZER)
        return [j.id for j in hooks.get_jobs() if spec.job_id in j.args[0]]

    cut = Cut()
    client = _client(settings.redis.url, cut)
    q = Queue(settings.worker.queues[0], connection=client, serializer=RQ_SERIALIZER)
    cut.at = at
    with pytest.raises(redis.ConnectionError):
        reap(q, JobStore(client, keys), JobQueue(client, settings.queue), settings.queue, settings.webhooks,
             now=time.time() + 10)
    rec = JobStore(plain, keys).get(spec.job_id)
    assert rec is not None
    slot = plain.zscore(keys.active(spec.owner), spec.job_id) is not None
    if ended:
        assert rec.status is JobStatus.failed and rec.error is not None and rec.error.code == "worker_crashed"
        assert not slot and webhooks() == [f"webhook-evt_{spec.job_id}_failed"]
    else:
        assert rec.status is JobStatus.in_progress and slot and webhooks() == []
    for j in Queue(WEBHOOK_QUEUE, connection=plain, serializer=RQ_SERIALIZER).get_jobs():
        if spec.job_id in j.args[0]:
            j.delete(remove_from_queue=True)  # nobody should deliver to example.com


@pytest.mark.parametrize("crashes_before", [0, 1])
def test_a_worker_ending_the_job_while_the_reaper_acts_keeps_its_end(settings, crashes_before):
    """The reaper read the job as abandoned (no lease), but its worker was alive (its lease lost to a Redis
    outage) and completes it just before the reaper's transaction. Neither the re-queue (crashes_before 0)
    nor the give-up (1: no re-queue left) may overwrite that end: the record stays completed, nothing is
    queued, no "video.failed" webhook goes out, the crash is not counted."""
    from contract.jobs import JobOutput
    from contract.queue import WEBHOOK_QUEUE

    plain = redis.Redis.from_url(settings.redis.url)
    keys = Keys(settings.redis.key_prefix)
    spec = submit(settings, webhook_url="https://hooks.example.com/end")
    q_plain = Queue(settings.worker.queues[0], connection=plain, serializer=RQ_SERIALIZER)
    if crashes_before:
        plain.set(keys.crashes(spec.job_id), crashes_before)
    _take_and_die(plain, JobStore(plain, keys), q_plain, spec.job_id)
    worker_jobs = JobQueue(plain, settings.queue)

    def the_worker_completes() -> None:
        out = JobOutput(key=spec.output_key, bytes=1, width=64, height=48, num_frames=5, fps=16, seed=7)
        assert JobStore(plain, keys).finish(spec.job_id, JobStatus.completed, ttl_s=60, output=out,
                                            hook=worker_jobs.end_webhook(settings.webhooks))

    cut = Cut()
    cut.before_exec = the_worker_completes
    client = _client(settings.redis.url, cut)
    q = Queue(settings.worker.queues[0], connection=client, serializer=RQ_SERIALIZER)
    done = reap(q, JobStore(client, keys), JobQueue(client, settings.queue), settings.queue, settings.webhooks,
                now=time.time() + 10)
    assert cut.before_exec is None  # the worker's end did land inside the reaper's read-to-write window
    assert [r.action for r in done] == ([] if crashes_before == 0 else ["cleared"])
    rec = JobStore(plain, keys).get(spec.job_id)
    assert rec is not None and rec.status is JobStatus.completed and rec.error is None
    assert q_plain.get_job_ids() == []
    assert int(plain.get(keys.crashes(spec.job_id)) or 0) == crashes_before
    hooks = Queue(WEBHOOK_QUEUE, connection=plain, serializer=RQ_SERIALIZER)
    mine = [j for j in hooks.get_jobs() if spec.job_id in j.args[0]]
    assert [j.id for j in mine] == [f"webhook-evt_{spec.job_id}_completed"]
    for j in mine:
        j.delete(remove_from_queue=True)  # nobody should deliver to example.com


class _CountingRedis(redis.Redis):
    """A real client that counts its round trips to Redis: single commands and pipeline executions. SCAN pages
    are not counted: how many there are depends on the whole keyspace (other tests' keys), not on the caller."""

    trips = 0

    def execute_command(self, *args: Any, **options: Any) -> Any:
        if str(args[0]).upper() != "SCAN":
            self.trips += 1
        return super().execute_command(*args, **options)

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> Any:
        outer = self

        class _Pipeline(redis.client.Pipeline):
            def execute(self, raise_on_error: bool = True) -> Any:
                outer.trips += 1
                return super().execute(raise_on_error)

        return _Pipeline(self.connection_pool, self.response_callbacks, transaction, shard_hint)


def test_the_orphan_sweep_waits_on_redis_as_often_for_forty_jobs_as_for_five(settings):
    """The sweep runs on every heartbeat of one worker of the fleet and looks at every active job: its reads go
    in batches (records, markers, leases) and it writes nothing when nothing changed, so its round trips do not
    grow with the number of jobs (it used to read each record, and delete each job's marker, one at a time)."""
    from worker.reaper import rescue_orphans

    client = _CountingRedis.from_url(settings.redis.url)
    keys = Keys(settings.redis.key_prefix)
    store, jobs = JobStore(client, keys), JobQueue(client, settings.queue)
    model = settings.worker.queues[0]
    q = Queue(model, connection=client, serializer=RQ_SERIALIZER)
    leased = _spec(model)  # queued, off the queue, but a live worker's lease says it is taken
    store.create(leased, ttl_s=3600)
    client.set(keys.lease(leased.job_id), "w-live", ex=60)
    client.set(keys.orphan(leased.job_id), repr(time.time()), ex=60)  # seen once before it was taken

    assert rescue_orphans(store, jobs, settings.queue) == []
    assert not client.exists(keys.orphan(leased.job_id))  # its stale marker went (one DEL)
    trips = []
    for n in (5, 40):
        while len(q.get_job_ids()) < n:
            spec = _spec(model)
            store.create(spec, ttl_s=3600)
            jobs.submit(spec)
        client.trips = 0
        assert rescue_orphans(store, jobs, settings.queue) == []
        trips.append(client.trips)
        assert not [k for k in client.scan_iter(match=keys.orphan("*"))]  # no job was marked
    assert trips[0] == trips[1], trips  # (reading the RQ queues' contents takes a few per queue in Redis)
    q.empty()


def test_a_queued_job_with_nothing_on_its_queue_is_put_back_after_two_sightings(settings):
    """A record "queued" that no queue holds and no worker has (what a lost write leaves) goes back on its
    queue at the front once two sweeps ORPHAN_CONFIRM_S apart saw it so; jobs that wait on a queue, that a
    worker took, that hold a lease, or that are past their queued TTL are left alone."""
    from worker.reaper import ORPHAN_CONFIRM_S, rescue_orphans

    plain = redis.Redis.from_url(settings.redis.url)
    keys = Keys(settings.redis.key_prefix)
    store, jobs = JobStore(plain, keys), JobQueue(plain, settings.queue)
    model = settings.worker.queues[0]
    q = Queue(model, connection=plain, serializer=RQ_SERIALIZER)

    def made(*, enqueued: bool, age_s: float = 0.0) -> JobSpec:
        spec = _spec(model).model_copy(update={"created_at": time.time() - age_s})
        store.create(spec, ttl_s=3600)
        if enqueued:
            jobs.submit(spec)
        return spec

    waiting = made(enqueued=True)
    orphan = made(enqueued=False)
    taken = made(enqueued=True)
    q.remove(taken.job_id)
    plain.zadd(q.started_job_registry.key, {f"{taken.job_id}:exec-1": time.time() + 3600})
    leased = made(enqueued=False)
    plain.set(keys.lease(leased.job_id), "w-live", ex=60)
    stale = made(enqueued=False, age_s=settings.queue.queued_ttl_s + 10)

    t = time.time()
    assert rescue_orphans(store, jobs, settings.queue, now=t) == []  # first sighting only
    assert plain.exists(keys.orphan(orphan.job_id)) and not any(
        plain.exists(keys.orphan(s.job_id)) for s in (waiting, taken, leased, stale))
    assert rescue_orphans(store, jobs, settings.queue, now=t + ORPHAN_CONFIRM_S / 2) == []  # not yet
    assert rescue_orphans(store, jobs, settings.queue, now=t + ORPHAN_CONFIRM_S + 1) == [orphan.job_id]
    assert q.get_job_ids() == [orphan.job_id, waiting.job_id]  # at the front
    assert not plain.exists(keys.orphan(orphan.job_id))
    rec = store.get(orphan.job_id)
    assert rec is not None and rec.status is JobStatus.queued
    job = Job.fetch(orphan.job_id, connection=plain, serializer=RQ_SERIALIZER)
    assert JobSpec.model_validate_json(job.args[0]) == orphan
    # on its queue now: later sweeps leave it
    assert rescue_orphans(store, jobs, settings.queue, now=t + 10 * ORPHAN_CONFIRM_S) == []
    # the workers' periodic sweep (heartbeat) is what looks
    from worker.reaper import sweep_slots

    another = made(enqueued=False)
    sweep_slots(store, jobs, settings.queue, settings.webhooks, force=True)
    assert plain.exists(keys.orphan(another.job_id))
    q.empty()
