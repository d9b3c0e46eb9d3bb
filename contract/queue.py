"""The one place RQ jobs are enqueued: video jobs (by the gateway, and re-queued by workers and the
reaper) and webhook deliveries.

Video jobs go on the RQ queue named after the model id and call `TASK_PATH` with the spec's JSON as the
only argument (JSON serializer: nothing is pickled). The RQ job id equals the TurboVid job id. Every
enqueue states `job_timeout`, `result_ttl`, `failure_ttl` and the queued TTL. `at_front=True` puts a
job first (priority "high", and re-queues of interrupted jobs). Webhook deliveries go on
`WEBHOOK_QUEUE` carrying only the job id and the event type: the deliverer renders the payload from
the job record at delivery time.
"""

from __future__ import annotations

import json
from typing import Any

import redis
from rq import Queue, Retry
from rq.job import Job

from contract.jobs import JobSpec, JobStatus
from contract.jobstore import FinishHook, JobRecord
from contract.keys import text
from contract.settings import QueueSettings, WebhookSettings

# The RQ job functions, called by dotted path (the enqueuing process never imports them).
TASK_PATH = "worker.task.run_job"
WEBHOOK_TASK_PATH = "service.webhooks.deliver_webhook"
WEBHOOK_QUEUE = "turbovid-webhooks"
# Every RQ queue, job and worker on both sides uses this serializer.
RQ_SERIALIZER = "rq.serializers.JSONSerializer"
WEBHOOK_BACKOFF_S = (5, 30, 120, 600, 1800, 3600)
# RQ's limit for one delivery attempt; the deliverer's own HTTP deadline (settings.egress) is shorter.
WEBHOOK_JOB_TIMEOUT_S = 120


class JobQueue:
    def __init__(self, client: redis.Redis, cfg: QueueSettings) -> None:
        self.r = client
        self.cfg = cfg

    def queue(self, name: str) -> Queue:
        return Queue(name, connection=self.r, serializer=RQ_SERIALIZER)

    # video jobs ---------------------------------------------------------------------------------
    def submit(self, spec: JobSpec, *, at_front: bool = False, queue_name: str | None = None,
               pipeline: Any = None) -> Job:
        """Put a job on its model's queue (or `queue_name`), replacing any earlier RQ job of that id
        (a re-queue after a crash or a shutdown); the queued TTL counts again from now. The registry
        clean-up and the enqueue are one transaction: `pipeline`'s when given (the caller executes it),
        else one of its own."""
        queue = self.queue(queue_name or spec.model)
        if pipeline is None:
            pipe = self.r.pipeline(transaction=True)
            pipe.multi()  # RQ's enqueue on a given pipeline expects MULTI already issued
        else:
            pipe = pipeline
        for registry in (queue.started_job_registry, queue.finished_job_registry, queue.failed_job_registry):
            remove_from_registry(self.r, registry.key, spec.job_id, pipeline=pipe)
        p = spec.params
        job = queue.enqueue_call(
            TASK_PATH,
            args=(spec.model_dump_json(),),
            job_id=spec.job_id,
            timeout=self.cfg.job_timeout_s,
            result_ttl=self.cfg.result_ttl_s,
            failure_ttl=self.cfg.failure_ttl_s,
            ttl=self.cfg.queued_ttl_s,
            at_front=at_front,
            description=f"turbovid {p.kind} {spec.model} {p.width}x{p.height}x{p.num_frames}",
            pipeline=pipe,
        )
        if pipeline is None:
            pipe.execute()
        return job

    def remove(self, model: str, job_id: str) -> None:
        """Take a queued job off the queue and delete its RQ job."""
        self.queue(model).remove(job_id)
        if self.r.exists(Job.key_for(job_id)):
            Job.fetch(job_id, connection=self.r, serializer=RQ_SERIALIZER).delete(remove_from_queue=True)

    def position(self, model: str, job_id: str) -> int | None:
        """0-based place in the model's queue; None when it is not queued."""
        pos = self.queue(model).get_job_position(job_id)
        return None if pos is None else int(pos)

    def depth(self, model: str) -> int:
        return int(self.queue(model).count)

    # webhooks -----------------------------------------------------------------------------------
    def end_webhook(self, cfg: WebhookSettings) -> FinishHook:
        """The `JobStore.finish` hook that queues a job's end webhook ("video.completed", or "video.failed"
        for any other end) in the transaction that ends it, if its creator asked for one."""
        def add(pipe: Any, record: JobRecord, status: JobStatus) -> None:
            if record.webhook_url:
                event = "video.completed" if status is JobStatus.completed else "video.failed"
                self.submit_webhook(record.spec.job_id, event, record.webhook_url, cfg, pipeline=pipe)
        return add

    def submit_webhook(self, job_id: str, event_type: str, url: str, cfg: WebhookSettings, *,
                       pipeline: Any = None) -> str:
        """Queue the delivery of `event_type` ("video.completed" / "video.failed") for a job; on
        `pipeline` (a transaction in MULTI, executed by the caller) when given."""
        retries = cfg.max_attempts - 1
        event_id = f"evt_{job_id}_{event_type.rsplit('.', 1)[-1]}"
        payload = json.dumps({"event_id": event_id, "type": event_type, "job_id": job_id, "url": url})
        job = self.queue(WEBHOOK_QUEUE).enqueue_call(
            WEBHOOK_TASK_PATH,
            args=(payload,),
            job_id=f"webhook-{event_id}",
            timeout=WEBHOOK_JOB_TIMEOUT_S,
            result_ttl=self.cfg.result_ttl_s,
            failure_ttl=self.cfg.failure_ttl_s,
            ttl=self.cfg.queued_ttl_s,
            retry=Retry(max=retries, interval=list(WEBHOOK_BACKOFF_S[:retries]) or 0) if retries > 0 else None,
            pipeline=pipeline,
        )
        return str(job.id)


def remove_from_registry(client: redis.Redis, key: str, job_id: str, *, pipeline: Any = None) -> None:
    """Registry members are `job_id` or `job_id:execution_id` (RQ >= 2). The members are read now; their
    removal goes on `pipeline` when given."""
    stale = [m for m in registry_members(client, key) if m == job_id or m.startswith(f"{job_id}:")]
    if stale:
        (client if pipeline is None else pipeline).zrem(key, *stale)


def registry_members(client: redis.Redis, key: str) -> list[str]:
    raw: list[Any] = client.zrange(key, 0, -1)  # type: ignore[assignment]
    return [text(m) for m in raw]

