"""The engine boundary: the one interface the HTTP layer uses to reach the queue, the job store and the
worker registry (vLLM's engine client). Routes and serving never hold a raw Redis client.

Built from a Redis client, the key table and the settings, so tests swap nothing but the Redis URL.
Everything Redis-shaped the gateway does goes through here or through the small stores it hands out
(`api_keys` for API keys, `limiter` for the per-minute rate, `idempotency` for Idempotency-Key claims).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import redis
import redis.asyncio
from fastapi.concurrency import run_in_threadpool
from rq import Queue

from contract import jobstore
from contract.catalog import ModelCard
from contract.events import AsyncEventLog, EventLog, EventType, JobEvent
from contract.jobs import TERMINAL, Capabilities, ErrorCode, JobError, JobSpec, JobStatus
from contract.jobstore import JobRecord, JobStore
from contract.keys import Keys, text
from contract.queue import JobQueue
from contract.settings import Settings
from contract.workers import WorkerInfo, WorkerRegistry, capabilities
from service.auth import KeyStore
from service.idempotency import Idempotency
from service.ratelimit import RateLimiter

log = logging.getLogger(__name__)
API_KEY_CACHE_S = 5.0
ASYNC_POOL_SIZE = 32  # Redis connections of the event loop's client, per gateway process
# SSE streams (service/videos/events.py) per gateway process: each holds a connection of its own while its
# blocking XREAD waits, never one of the request paths' pool; past this a stream ends and its client resumes
EVENT_STREAMS_MAX = 2000
QUEUE_KEY_PREFIX = Queue.redis_queue_namespace_prefix  # RQ keeps a queue's job ids in this list + name

# A job's hash and, while it is queued, its place in its model's RQ queue, in one round trip.
# KEYS[1] the job hash; ARGV[1] RQ's queue key prefix, ARGV[2] the job id. Returns {fields, position}.
_RECORD_AND_POSITION = """
local raw = redis.call('HGETALL', KEYS[1])
local status, spec = nil, nil
for i = 1, #raw, 2 do
  if raw[i] == 'status' then status = raw[i + 1] elseif raw[i] == 'spec' then spec = raw[i + 1] end
end
local pos = false
if status == 'queued' and spec then
  pos = redis.call('LPOS', ARGV[1] .. cjson.decode(spec)['model'], ARGV[2])
end
return {raw, pos}
"""
_CLIENT_OPTIONS: dict[str, Any] = {"socket_timeout": 5, "socket_connect_timeout": 5, "health_check_interval": 30}


class Engine:
    def __init__(self, client: redis.Redis, keys: Keys, settings: Settings) -> None:
        self._r = client
        # the event loop's client: the hot read paths (poll, list, auth) without a threadpool hop
        # (a bounded pool: a burst of requests waits for a connection instead of failing or opening hundreds)
        self._ar: redis.asyncio.Redis = redis.asyncio.Redis(connection_pool=redis.asyncio.BlockingConnectionPool.from_url(
            settings.redis.url, max_connections=ASYNC_POOL_SIZE, timeout=5, **_CLIENT_OPTIONS))
        self.cfg = settings.queue
        self.webhook_cfg = settings.webhooks
        self.store = JobStore(client, keys)
        self.queue = JobQueue(client, settings.queue)
        self.workers = WorkerRegistry(client, keys)
        self.api_keys = KeyStore(client, keys)
        self.limiter = RateLimiter(client, keys, settings.auth.rate_limit_per_minute)
        self.idempotency = Idempotency(client, keys)
        self.events = EventLog(client, keys)  # what the gateway decides: queued, cancelled, expired
        self.aevents = AsyncEventLog(redis.asyncio.Redis.from_url(  # the SSE route follows streams on the loop
            settings.redis.url, max_connections=EVENT_STREAMS_MAX, socket_timeout=5, socket_connect_timeout=5), keys)
        self._key_cache: dict[str, tuple[str, float]] = {}  # sha256 -> (key id, valid until)
        self._record_and_position = self._ar.register_script(_RECORD_AND_POSITION)

    @classmethod
    def from_settings(cls, settings: Settings) -> Engine:
        client = redis.Redis.from_url(settings.redis.url, **_CLIENT_OPTIONS)
        return cls(client, Keys(settings.redis.key_prefix), settings)

    def close(self) -> None:
        self._r.close()

    async def aclose(self) -> None:
        await self._ar.aclose()
        await self.aevents.r.aclose()

    async def bench_read(self) -> None:
        """One Redis read (a missing key): the floor of a route that touches Redis (load_tests/ only)."""
        await self._ar.get(f"{self.store.keys.prefix}:bench")

    def ping(self) -> bool:
        try:
            return bool(self._r.ping())
        except redis.RedisError:
            return False

    # jobs ---------------------------------------------------------------------------------------
    def record_ttl_s(self) -> int:
        """How long a job record may live before it is finished (then finish() sets result_ttl)."""
        return self.cfg.queued_ttl_s + self.cfg.job_timeout_s * (1 + self.cfg.max_requeues) + 3600

    def reserve_slot(self, owner: str, job_id: str, limit: int) -> bool:
        """One of the owner's `limit` concurrent-job slots for `job_id` (before its record exists).
        When they are all taken, the owner's stale slots are swept first (jobs whose record expired or
        that expired in the queue; reservations of creations still in flight are left alone) and the
        reservation is tried once more."""
        if self.store.reserve_slot(owner, job_id, limit):
            return True
        freed = self.store.sweep_slots(owner, queued_ttl_s=self.cfg.queued_ttl_s, failure_ttl_s=self.cfg.failure_ttl_s,
                                       hook=self.queue.end_webhook(self.webhook_cfg))
        for freed_id in freed:
            self._after_queue_timeout(self.store.get(freed_id))
        return bool(freed) and self.store.reserve_slot(owner, job_id, limit)

    def _after_queue_timeout(self, record: JobRecord | None) -> None:
        """Follow-up of a job the store just failed as queue_timeout (its webhook went with that): off the
        queue, its event."""
        if record is None or record.error is None or record.error.code is not ErrorCode.queue_timeout:
            return
        self.queue.remove(record.spec.model, record.spec.job_id)
        self._publish(record.spec, "failed", self.cfg.failure_ttl_s, error=record.error)

    def release_slot(self, owner: str, job_id: str) -> None:
        """Give back a slot reserved for a job that was never created."""
        if self.store.get(job_id) is None:
            self.store.release_slot(owner, job_id)

    def submit(self, spec: JobSpec, *, priority: str, metadata: dict[str, str] | None,
               webhook_url: str | None) -> JobRecord:
        """Create the job record and put the job on its model's queue (`priority="high"`: at the front)."""
        # The record, the slot, the "queued" event and the queue entry are one transaction: a creation that
        # loses Redis half-way leaves either nothing or a whole job (one that a worker will run and that
        # ends with its webhook), never a record "queued" with nothing on the queue. Its place: 0 at the
        # front, else the number of jobs ahead of it now (a concurrent creation may shift it by one; the
        # event stream reports the live place while the job waits). The event goes in before the enqueue,
        # so an idle worker's "started" always follows it.
        front = priority == "high"
        position = 0 if front else self.queue.depth(spec.model)
        pipe = self._r.pipeline(transaction=True)
        # Watching the (not yet existing) record makes the transaction run at most once: redis-py re-sends a
        # transaction whose reply was lost (its default retries), which would put the job on its queue twice;
        # while watching it raises WatchError instead, and the job is taken back below.
        pipe.watch(self.store.keys.job(spec.job_id))
        pipe.multi()  # explicit: RQ's enqueue on a caller's pipeline expects MULTI already issued
        record = self.store.create(spec, ttl_s=self.record_ttl_s(), metadata=metadata, webhook_url=webhook_url,
                                   pipeline=pipe)
        self._publish(spec, "queued", self.record_ttl_s(), queue_position=position, pipeline=pipe)
        self.queue.submit(spec, at_front=front, pipeline=pipe)
        try:
            pipe.execute()
        except redis.RedisError as exc:
            # The reply may be what was lost (the transaction ran): take the job back if Redis still
            # answers, so the client's retry does not run it twice. If it does not, the job stands whole.
            self._take_back(spec)
            if isinstance(exc, redis.WatchError):  # only a dropped connection trips this watch
                raise redis.ConnectionError(f"the connection to Redis dropped while creating {spec.job_id}") from exc
            raise
        finally:
            pipe.reset()
        return record

    def _take_back(self, spec: JobSpec) -> None:
        """Undo a creation whose transaction may or may not have run; logged, never raised."""
        try:
            self.queue.remove(spec.model, spec.job_id)
            self.store.delete(spec.job_id)
            self.events.delete(spec.job_id)
        except redis.RedisError as exc:
            log.warning("job %s: its creation failed and Redis is unreachable to undo it (%s); if the creation "
                        "did reach Redis, the job runs as created", spec.job_id, exc)

    def get(self, job_id: str) -> JobRecord | None:
        """The job's record, failing it first (with its webhook) if it sat queued past the queue TTL."""
        record = self.store.get(job_id)
        if record is None or record.status is not JobStatus.queued:
            return record
        now = self.store.expire_if_stale(record, queued_ttl_s=self.cfg.queued_ttl_s,
                                         failure_ttl_s=self.cfg.failure_ttl_s,
                                         hook=self.queue.end_webhook(self.webhook_cfg))
        if now.status is not JobStatus.queued:  # it just failed as queue_timeout
            self._after_queue_timeout(now)
        return now

    def list_ids(self, owner: str, *, after: str | None, limit: int, order: str) -> list[str]:
        return self.store.list_ids(owner, after=after, limit=limit, order=order)

    def queue_position(self, record: JobRecord) -> int | None:
        """0-based place in the model's queue while queued; None otherwise."""
        if record.status is not JobStatus.queued:
            return None
        pos = self._r.lpos(self._queue_key(record.spec.model), record.spec.job_id)
        return None if pos is None else int(pos)  # type: ignore[arg-type]

    def cancel(self, job_id: str) -> None:
        """Stop a queued job now; flag a running one (the worker checks the flag every step)."""
        record = self.store.get(job_id)
        if record is None or record.status in TERMINAL:
            return
        self.store.request_cancel(job_id, ttl_s=self.cfg.job_timeout_s + 3600)
        if record.status is JobStatus.queued:
            self.queue.remove(record.spec.model, job_id)
            self.store.finish(job_id, JobStatus.cancelled, ttl_s=self.cfg.failure_ttl_s,
                              error=JobError(code=ErrorCode.cancelled, message="the job was cancelled"))
            self._publish(record.spec, "failed", self.cfg.failure_ttl_s,
                          error=JobError(code=ErrorCode.cancelled, message="the job was cancelled"))

    def _publish(self, spec: JobSpec, event: EventType, ttl_s: int, *, queue_position: int | None = None,
                 error: JobError | None = None, pipeline: Any = None) -> None:
        """A job event the gateway decides (contract/events.py); the worker publishes the rest."""
        err = {"code": str(error.code), "message": error.message} if error is not None else None
        elapsed = round(time.time() - spec.created_at, 3)
        self.events.publish(spec.job_id, JobEvent(event=event, progress=0, elapsed_s=elapsed,
                                                  queue_position=queue_position, error=err), ttl_s=ttl_s,
                            pipeline=pipeline)

    def delete(self, job_id: str) -> None:
        self.cancel(job_id)
        self.store.delete(job_id)

    # the hot read paths, on the event loop (async Redis, one round trip per step) --------------------
    async def resolve_api_key(self, sha256_hex: str) -> str | None:
        """The key id of a hashed API key. Hits are remembered for API_KEY_CACHE_S (keys are only ever
        added, never changed); misses are not, so a key created a moment ago works at once."""
        now = time.monotonic()
        hit = self._key_cache.get(sha256_hex)
        if hit is not None and hit[1] > now:
            return hit[0]
        raw = await self._ar.hget(self.store.keys.api_keys(), sha256_hex)  # type: ignore[misc]
        if raw is None:
            return None
        key_id = text(raw)
        if len(self._key_cache) >= 10_000:
            self._key_cache.clear()
        self._key_cache[sha256_hex] = (key_id, now + API_KEY_CACHE_S)
        return key_id

    async def get_with_position(self, job_id: str) -> tuple[JobRecord | None, int | None]:
        """The job's record and, while queued, its 0-based queue position: one round trip. A queued job
        past the queue TTL goes through `get` (which fails it)."""
        raw, position = await self._record_and_position(keys=[self.store.keys.job(job_id)],
                                                        args=[QUEUE_KEY_PREFIX, job_id])
        return await self._checked(job_id, raw, position)

    async def list_with_positions(self, owner: str, *, after: str | None, limit: int,
                                  order: str) -> list[tuple[JobRecord, int | None]]:
        """The owner's records (and queue positions), newest first for order="desc", strictly after the
        cursor id: one round trip for the ids, one for the records and positions. Records that expired
        meanwhile are left out."""
        key = self.store.keys.owner(owner)
        start = 0
        if after is not None:
            rank = await (self._ar.zrevrank(key, after) if order == "desc" else self._ar.zrank(key, after))
            if rank is None:
                return []
            start = int(rank) + 1  # type: ignore[arg-type]
        stop = start + limit - 1
        raw_ids = await (self._ar.zrevrange(key, start, stop) if order == "desc"
                         else self._ar.zrange(key, start, stop))
        ids = [text(i) for i in raw_ids]
        if not ids:
            return []
        pipe = self._ar.pipeline(transaction=False)
        for job_id in ids:
            await self._record_and_position(keys=[self.store.keys.job(job_id)], args=[QUEUE_KEY_PREFIX, job_id],
                                            client=pipe)
        out = []
        for job_id, (raw, position) in zip(ids, await pipe.execute(), strict=True):
            record, position = await self._checked(job_id, raw, position)
            if record is not None:
                out.append((record, position))
        return out

    async def _checked(self, job_id: str, raw: list[bytes], position: int | None
                       ) -> tuple[JobRecord | None, int | None]:
        if not raw:
            return None, None
        record = jobstore.load_record(dict(zip(raw[::2], raw[1::2], strict=True)))
        if record.status is JobStatus.queued and time.time() - record.created_at > self.cfg.queued_ttl_s:
            failed: JobRecord | None = await run_in_threadpool(self.get, job_id)  # rare: fails it as queue_timeout
            return failed, None
        return record, (None if position is None else int(position))

    def _queue_key(self, model: str) -> str:
        return QUEUE_KEY_PREFIX + model

    # models and workers -------------------------------------------------------------------------
    def live_workers(self, model: str) -> list[WorkerInfo]:
        """Workers advertising `model` whose liveness key has not expired (ready or loading)."""
        return self.workers.live(model)

    def ready_workers(self, model: str) -> int:
        return sum(1 for w in self.live_workers(model) if w.ready)

    def capabilities(self, card: ModelCard) -> tuple[Capabilities, list[WorkerInfo]]:
        """What the model's live workers all honour (MixedWorkers when they disagree on the solver)."""
        workers = self.live_workers(card.id)
        return capabilities(card, workers), workers

    def queue_depth(self, model: str) -> int:
        return self.queue.depth(model)


def worker_pools(workers: list[WorkerInfo]) -> list[dict[str, Any]]:
    """Live workers grouped by what they run: solver, attention, linear, GPUs per worker (ranks), memory budget,
    what it offloads and which kernels run its fast path, with ready/loading counts; no budget (None) sorts before
    any budget."""
    pools: dict[tuple[Any, ...], dict[str, Any]] = {}
    for w in workers:
        key = (w.solver, w.attention, w.linear, w.ranks, w.gpu_memory_gb, tuple(w.offload),
               tuple(sorted(w.kernels.items())))
        pool = pools.setdefault(key, {"solver": w.solver, "attention": w.attention, "linear": w.linear,
                                      "ranks": w.ranks, "gpu_memory_gb": w.gpu_memory_gb, "offload": list(w.offload),
                                      "kernels": dict(w.kernels), "ready": 0, "loading": 0})
        pool["ready" if w.ready else "loading"] += 1
    return [pools[k] for k in sorted(pools, key=lambda k: (*k[:4], k[4] is not None, k[4] or 0.0, *k[5:]))]
