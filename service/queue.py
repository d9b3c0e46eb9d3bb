"""The engine client: the one interface the HTTP layer uses to reach the queue and the job store.

Jobs go on the RQ queue named after the model id, called by dotted path (`TASK_PATH`) with the
spec's JSON as the only argument and the JSON serializer. `priority="high"` jobs are enqueued with
RQ's `at_front=True` on the same queue (no separate queue, so workers need no extra config).
Tests build it with nothing but a Redis URL and a key prefix.
"""

from __future__ import annotations

import time

import redis
from rq import Queue, worker_registration
from rq.job import Job

from contract.jobs import RQ_SERIALIZER, TASK_PATH, TERMINAL, JobError, JobSpec, JobStatus
from contract.jobstore import JobRecord, JobStore
from contract.settings import QueueSettings


class EngineClient:
    def __init__(self, client: redis.Redis, prefix: str, queue_cfg: QueueSettings) -> None:
        self.r = client
        self.cfg = queue_cfg
        self.store = JobStore(client, prefix)

    def queue(self, model: str) -> Queue:
        return Queue(model, connection=self.r, serializer=RQ_SERIALIZER)

    # ---------------------------------------------------------------------------------------------
    def record_ttl_s(self) -> int:
        """How long a job record may live before it is finished (then finish() sets result_ttl)."""
        return self.cfg.queued_ttl_s + self.cfg.job_timeout_s * (1 + self.cfg.max_requeues) + 3600

    def submit(self, spec: JobSpec, *, priority: str, metadata: dict[str, str] | None,
               webhook_url: str | None) -> JobRecord:
        record = self.store.create(spec, ttl_s=self.record_ttl_s(), metadata=metadata, webhook_url=webhook_url)
        try:
            self.queue(spec.model).enqueue_call(
                TASK_PATH,
                args=(spec.model_dump_json(),),
                job_id=spec.job_id,
                timeout=self.cfg.job_timeout_s,
                result_ttl=self.cfg.result_ttl_s,
                failure_ttl=self.cfg.failure_ttl_s,
                ttl=self.cfg.queued_ttl_s,
                at_front=priority == "high",
                description=f"turbovid {spec.kind} {spec.model} {spec.width}x{spec.height}x{spec.num_frames}",
            )
        except redis.RedisError:
            self.store.delete(spec.job_id)
            raise
        return record

    def get(self, job_id: str) -> JobRecord | None:
        """The job's record, expiring it first if it sat queued past the queue TTL."""
        record = self.store.get(job_id)
        if record is None or record.status is not JobStatus.queued:
            return record
        if time.time() - record.created_at > self.cfg.queued_ttl_s:
            self.store.finish(job_id, JobStatus.failed, ttl_s=self.cfg.failure_ttl_s,
                              error=JobError(code="queue_timeout",
                                             message=f"no worker started the job within {self.cfg.queued_ttl_s}s"))
            return self.store.get(job_id)
        return record

    def queue_position(self, record: JobRecord) -> int | None:
        """0-based place in the model's queue while queued; None otherwise."""
        if record.status is not JobStatus.queued:
            return None
        pos = self.queue(record.spec.model).get_job_position(record.spec.job_id)
        return None if pos is None else int(pos)

    def cancel(self, job_id: str) -> None:
        """Stop a queued job now; flag a running one (the worker checks the flag every step)."""
        record = self.store.get(job_id)
        if record is None or record.status in TERMINAL:
            return
        self.store.request_cancel(job_id, ttl_s=self.cfg.job_timeout_s + 3600)
        if record.status is JobStatus.queued:
            q = self.queue(record.spec.model)
            q.remove(job_id)
            job = Job.fetch(job_id, connection=self.r, serializer=RQ_SERIALIZER) if self._rq_exists(job_id) else None
            if job is not None:
                job.delete(remove_from_queue=True)
            self.store.finish(job_id, JobStatus.cancelled, ttl_s=self.cfg.failure_ttl_s,
                              error=JobError(code="cancelled", message="the job was cancelled"))

    def _rq_exists(self, job_id: str) -> bool:
        return bool(self.r.exists(Job.key_for(job_id)))

    def delete(self, job_id: str) -> None:
        self.cancel(job_id)
        self.store.delete(job_id)

    # ---------------------------------------------------------------------------------------------
    def live_workers(self, model: str) -> int:
        """Workers registered on the model's queue whose heartbeat key has not expired.

        RQ's own `Worker.count` also counts registrations left behind by killed workers until some
        worker cleans the registry, so each worker key is checked for existence here.
        """
        keys = worker_registration.get_keys(queue=self.queue(model))
        if not keys:
            return 0
        pipe = self.r.pipeline(transaction=False)
        for key in keys:
            pipe.exists(key)
        return sum(1 for alive in pipe.execute() if alive)

    def queue_depth(self, model: str) -> int:
        return int(self.queue(model).count)

    def ping(self) -> bool:
        try:
            return bool(self.r.ping())
        except redis.RedisError:
            return False
