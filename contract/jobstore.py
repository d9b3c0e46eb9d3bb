"""Job state in Redis: the one place the gateway and the workers meet besides the RQ queue.

Keys are listed in contract/keys.py: the job hash, the owner's job index, the owner's active set
(concurrency slots; this module is its only writer) and the cancel flag. The RQ job id equals the
TurboVid job id, so the gateway can also read RQ's own state.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import redis
from pydantic import BaseModel

from contract.jobs import TERMINAL, ErrorCode, JobError, JobOutput, JobSpec, JobStatus
from contract.keys import Keys, text


class JobRecord(BaseModel):
    spec: JobSpec
    status: JobStatus
    progress: int = 0
    created_at: float
    started_at: float | None = None
    completed_at: float | None = None
    expires_at: float | None = None
    timings: dict[str, float] = {}
    output: JobOutput | None = None
    error: JobError | None = None
    metadata: dict[str, Any] | None = None
    webhook_url: str | None = None
    attempts: int = 0  # how many times a worker started it
    worker: str | None = None


# HSET field/value pairs (and optionally HINCRBY one field) only when the hash still exists, so a
# worker writing to a job the gateway just deleted does not resurrect a partial record.
_HSET_IF_EXISTS = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
for i = 2, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
if ARGV[1] ~= '' then redis.call('HINCRBY', KEYS[1], ARGV[1], 1) end
return 1
"""

# Add the job id to the owner's active set (a zset scored by reservation time) only while the set is
# smaller than the limit, atomically, so parallel creations cannot overshoot. Returns the set size
# before the add, or -1 when full.
_RESERVE = """
local n = redis.call('ZCARD', KEYS[1])
if n >= tonumber(ARGV[2]) then return -1 end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
return n
"""
# What else a job's move to a terminal state must do in the same transaction (the end webhook's enqueue):
# called as hook(pipeline, record before the move, new status); it adds commands, it executes nothing.
FinishHook = Callable[[Any, "JobRecord", JobStatus], None]

# How often a watched read-then-write (`JobStore.finish`) is tried when the record keeps changing under it.
WATCH_TRIES = 10

# A reservation younger than this may belong to a creation still in flight (its record not written
# yet): the sweep leaves it alone.
RESERVATION_GRACE_S = 120


class JobStore:
    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.r = client
        self.keys = keys
        self._hset_if_exists = client.register_script(_HSET_IF_EXISTS)
        self._reserve = client.register_script(_RESERVE)

    def _update(self, job_id: str, fields: dict[str, str], *, incr: str = "", client: Any = None) -> bool:
        """Set `fields` (and +1 on `incr`) of an existing job hash; False when the job is gone."""
        args = [incr] + [x for kv in fields.items() for x in kv]
        return bool(self._hset_if_exists(keys=[self.keys.job(job_id)], args=args, client=client))

    # concurrency slots: the owner's active set ----------------------------------------------------
    def reserve_slot(self, owner: str, job_id: str, limit: int) -> bool:
        """Take one of the owner's `limit` slots for `job_id` (before creating it); False when full.
        `finish` and `delete` give it back; a caller that fails before `create` calls `release_slot`."""
        args = [job_id, str(limit), repr(time.time())]
        return int(self._reserve(keys=[self.keys.active(owner)], args=args)) >= 0

    def release_slot(self, owner: str, job_id: str) -> None:
        self.r.zrem(self.keys.active(owner), job_id)

    def expire_if_stale(self, record: JobRecord, *, queued_ttl_s: int, failure_ttl_s: int,
                        now: float | None = None, hook: FinishHook | None = None) -> JobRecord:
        """A job still queued after `queued_ttl_s` (RQ dropped it from the queue) fails as queue_timeout
        (with `hook`, as in `finish`); returns the record as it now is."""
        now = time.time() if now is None else now
        if record.status is not JobStatus.queued or now - record.created_at <= queued_ttl_s:
            return record
        self.finish(record.spec.job_id, JobStatus.failed, ttl_s=failure_ttl_s, hook=hook,
                    error=JobError(code=ErrorCode.queue_timeout,
                                   message=f"no worker started the job within {queued_ttl_s}s"))
        return self.get(record.spec.job_id) or record

    def sweep_slots(self, owner: str, *, queued_ttl_s: int, failure_ttl_s: int,
                    now: float | None = None, hook: FinishHook | None = None) -> list[str]:
        """Give back the owner's slots held by jobs that ended without `finish` running for them: records
        that expired, jobs already terminal, jobs that expired in the queue (failed here). Reservations
        younger than RESERVATION_GRACE_S without a record are left alone (a creation in flight).
        Returns the freed job ids."""
        now = time.time() if now is None else now
        members: list[tuple[Any, float]] = self.r.zrange(  # type: ignore[assignment]
            self.keys.active(owner), 0, -1, withscores=True)
        freed = []
        ids = [text(raw) for raw, _ in members]
        for job_id, (_, reserved_at), record in zip(ids, members, self.get_many(ids), strict=True):
            if record is None and now - float(reserved_at) < RESERVATION_GRACE_S:
                continue
            if record is not None:
                record = self.expire_if_stale(record, queued_ttl_s=queued_ttl_s, failure_ttl_s=failure_ttl_s,
                                              now=now, hook=hook)
                if record.status not in TERMINAL:
                    continue
            self.r.zrem(self.keys.active(owner), job_id)
            freed.append(job_id)
        return freed

    def active_owners(self) -> Iterator[str]:
        """The owners that have an active set (unfinished jobs holding concurrency slots), by a SCAN."""
        prefix = self.keys.active("")
        for key in self.r.scan_iter(match=self.keys.active("*"), count=500):
            yield text(key).removeprefix(prefix)

    def sweep_all_slots(self, *, queued_ttl_s: int, failure_ttl_s: int) -> int:
        """`sweep_slots` for every owner with an active set (a periodic task); returns slots freed."""
        return sum(len(self.sweep_slots(owner, queued_ttl_s=queued_ttl_s, failure_ttl_s=failure_ttl_s))
                   for owner in self.active_owners())

    # gateway side -------------------------------------------------------------------------------
    def create(
        self,
        spec: JobSpec,
        *,
        ttl_s: int,
        metadata: dict[str, Any] | None = None,
        webhook_url: str | None = None,
        pipeline: Any = None,
    ) -> JobRecord:
        """The job's record (queued), its place in the owner's list and its concurrency slot, in one
        transaction; with `pipeline` the commands are only added to it (the caller's transaction also
        enqueues the job, so a job is never recorded without being queued, or queued without a record)."""
        record = JobRecord(
            spec=spec,
            status=JobStatus.queued,
            created_at=spec.created_at,
            metadata=metadata,
            webhook_url=webhook_url,
        )
        pipe = self.r.pipeline(transaction=True) if pipeline is None else pipeline
        pipe.hset(self.keys.job(spec.job_id), mapping=_dump(record))  # type: ignore[arg-type]
        pipe.expire(self.keys.job(spec.job_id), ttl_s)
        pipe.zadd(self.keys.owner(spec.owner), {spec.job_id: spec.created_at})
        pipe.zadd(self.keys.active(spec.owner), {spec.job_id: time.time()}, nx=True)
        if pipeline is None:
            pipe.execute()
        return record

    def get(self, job_id: str) -> JobRecord | None:
        raw = self.r.hgetall(self.keys.job(job_id))
        if not raw:
            return None
        return load_record(raw)

    def get_many(self, job_ids: list[str]) -> list[JobRecord | None]:
        """The records of `job_ids` (None where there is none), read in one round trip (a sweep over every
        active job would otherwise wait on Redis once per job)."""
        pipe = self.r.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hgetall(self.keys.job(job_id))
        return [load_record(raw) if raw else None for raw in pipe.execute()]

    def list_ids(self, owner: str, *, after: str | None, limit: int, order: str) -> list[str]:
        """Job ids of `owner`, newest first for order="desc", strictly after the cursor id."""
        key = self.keys.owner(owner)
        ids: list[str] = [
            text(i)
            for i in (self.r.zrevrange(key, 0, -1) if order == "desc" else self.r.zrange(key, 0, -1))
        ]
        if after is not None:
            if after not in ids:
                return []
            ids = ids[ids.index(after) + 1 :]
        return ids[:limit]

    def active_count(self, owner: str) -> int:
        return int(self.r.zcard(self.keys.active(owner)))

    def request_cancel(self, job_id: str, ttl_s: int) -> None:
        self.r.set(self.keys.cancel(job_id), "1", ex=ttl_s)

    def delete(self, job_id: str) -> None:
        record = self.get(job_id)
        pipe = self.r.pipeline(transaction=True)
        pipe.delete(self.keys.job(job_id))
        pipe.delete(self.keys.events(job_id))
        if record is not None:
            pipe.zrem(self.keys.owner(record.spec.owner), job_id)
            pipe.zrem(self.keys.active(record.spec.owner), job_id)
        pipe.execute()

    # worker side --------------------------------------------------------------------------------
    def cancel_requested(self, job_id: str) -> bool:
        return bool(self.r.exists(self.keys.cancel(job_id)))

    def mark_started(self, job_id: str, worker: str) -> bool:
        """in_progress, attempts+1; False when the job no longer exists (deleted)."""
        return self._update(job_id, {"status": JobStatus.in_progress.value, "started_at": repr(time.time()),
                                     "worker": worker, "progress": "0"}, incr="attempts")

    def set_progress(self, job_id: str, progress: int) -> bool:
        """False when the job no longer exists (deleted)."""
        return self._update(job_id, {"progress": str(max(0, min(100, int(progress))))})

    def set_timings(self, job_id: str, timings: dict[str, float]) -> bool:
        return self._update(job_id, {"timings": json.dumps(timings)})

    def finish(
        self,
        job_id: str,
        status: JobStatus,
        *,
        ttl_s: int,
        output: JobOutput | None = None,
        error: JobError | None = None,
        timings: dict[str, float] | None = None,
        hook: FinishHook | None = None,
    ) -> bool:
        """Move a job to a terminal state, giving back its slot, in one transaction that also holds what
        `hook` adds (the end webhook: a job never ends without it, nor gets it without ending). A job
        already terminal (or gone) is left as it is: False. The record is watched from the read to the
        write, so two parties ending one job at once (its worker completing it while a reaper gives up on
        it) cannot both win: the second sees the first's end and leaves it."""
        if status not in TERMINAL:
            raise ValueError(f"{status} is not terminal")
        for attempt in range(WATCH_TRIES):
            pipe, record = self.watch(job_id)
            try:
                if record is None or record.status in TERMINAL:
                    return False
                self._finish_on(pipe, record, status, ttl_s=ttl_s, output=output, error=error, timings=timings,
                                hook=hook)
                pipe.execute()
                return True
            except redis.WatchError:
                if attempt == WATCH_TRIES - 1:
                    raise
            finally:
                pipe.reset()
        raise AssertionError("unreachable")

    def watch(self, job_id: str) -> tuple[Any, JobRecord | None]:
        """A transaction pipeline WATCHing the job's record, and the record as read under that watch: the
        caller issues `multi()`, its writes and `execute()`, which raises redis.WatchError if anyone
        changed the record since (then read again), and `reset()`s the pipeline in every case."""
        pipe = self.r.pipeline(transaction=True)
        key = self.keys.job(job_id)
        pipe.watch(key)
        raw = pipe.hgetall(key)
        return pipe, (load_record(raw) if raw else None)

    def _finish_on(self, pipe: Any, record: JobRecord, status: JobStatus, *, ttl_s: int, output: JobOutput | None,
                   error: JobError | None, timings: dict[str, float] | None, hook: FinishHook | None) -> None:
        job_id = record.spec.job_id
        now = time.time()
        fields: dict[str, str] = {
            "status": status.value,
            "completed_at": repr(now),
            "expires_at": repr(now + ttl_s),
        }
        if status is JobStatus.completed:
            fields["progress"] = "100"
        if output is not None:
            fields["output"] = output.model_dump_json()
        if error is not None:
            fields["error"] = error.model_dump_json()
        if timings is not None:
            fields["timings"] = json.dumps(timings)
        pipe.multi()  # explicit: a hook's RQ enqueue expects MULTI already issued
        pipe.hset(self.keys.job(job_id), mapping=fields)
        pipe.expire(self.keys.job(job_id), ttl_s)
        pipe.zrem(self.keys.active(record.spec.owner), job_id)
        pipe.delete(self.keys.cancel(job_id))
        if hook is not None:
            hook(pipe, record, status)

    def requeue(self, job_id: str, *, pipeline: Any = None) -> None:
        """Back to queued after a worker died mid-job (the caller re-enqueues the RQ job, in the same
        transaction when it passes its `pipeline`)."""
        self._update(job_id, {"status": JobStatus.queued.value, "progress": "0"}, client=pipeline)


_JSON_FIELDS = ("spec", "timings", "output", "error", "metadata")
_FLOAT_FIELDS = ("created_at", "started_at", "completed_at", "expires_at")


def _dump(record: JobRecord) -> dict[str, str]:
    out: dict[str, str] = {
        "spec": record.spec.model_dump_json(),
        "status": record.status.value,
        "progress": str(record.progress),
        "created_at": repr(record.created_at),
        "timings": json.dumps(record.timings),
        "attempts": str(record.attempts),
    }
    if record.metadata is not None:
        out["metadata"] = json.dumps(record.metadata)
    if record.webhook_url is not None:
        out["webhook_url"] = record.webhook_url
    return out


def load_record(raw: dict[Any, Any]) -> JobRecord:
    """A JobRecord from the job hash as HGETALL returns it (bytes or str)."""
    d = {text(k): text(v) for k, v in raw.items()}
    data: dict[str, Any] = {}
    for k, v in d.items():
        if k in _JSON_FIELDS:
            data[k] = json.loads(v)
        elif k in _FLOAT_FIELDS:
            data[k] = float(v)
        elif k in ("progress", "attempts"):
            data[k] = int(v)
        else:
            data[k] = v
    return JobRecord.model_validate(data)
