"""The worker process: load the pipeline once, warm it up, serve the model's RQ queue in-process.

    settings → redis, JobStore, storage, metrics (/metrics) → pipeline (loaded ONCE) → warm-up
    → reaper pass → TurboWorker(queue=<model id>).work()  [+ heartbeat thread: lease, RQ worker key,
      reaper every settings.queue.heartbeat_s]

Jobs run in this process (rq's SimpleWorker: CUDA contexts and preloaded weights do not survive a
fork). Signals: the first SIGTERM/SIGINT sets the stop flag — an idle worker exits at once, a busy
one stops at the next denoise step and re-queues the job (or lets it finish when nearly done), then
exits; a second signal is a cold shutdown whose job the reaper recovers via its expired lease.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable, Sequence
from typing import Any, Literal

import redis
from rq import Queue, SimpleWorker
from rq.job import Job

from models.pipeline_types import GenerationRequest
from contract.jobs import RQ_SERIALIZER, JobStatus
from contract.jobstore import JobStore
from contract.settings import Settings
from contract.storage import make_storage
from worker import task
from worker.metrics import WorkerMetrics, cuda_memory_reader
from worker.reaper import Lease, enqueue_spec, lease_ttl_s, reap

log = logging.getLogger("turbovid.worker")


def load_model_pipeline(settings: Settings) -> task.Pipeline:
    """The real pipeline for `settings.worker` (imports torch and models lazily)."""
    import torch

    from models.pipeline import load_pipeline

    w = settings.worker
    return load_pipeline(  # type: ignore[no-any-return]
        w.model, list(w.checkpoint), device=w.device, dtype=getattr(torch, w.dtype), attention=w.attention,
        linear=w.linear, cache_dir=w.cache_dir,
    )


def warm_up(pipeline: task.Pipeline) -> None:
    """One tiny generation (64×64, 5 frames, 1 step) so the first real job does not pay for lazy
    init (CUDA context, cuBLAS handles, Triton compiles of the small shapes). I2V-only models warm
    up on a grey image."""
    import numpy as np

    kinds = getattr(getattr(pipeline, "spec", None), "kinds", ("t2v",))
    kind: Literal["t2v", "i2v"] = "t2v" if "t2v" in kinds else "i2v"
    image = np.full((64, 64, 3), 128, np.uint8) if kind == "i2v" else None
    pipeline.generate(GenerationRequest(prompt="warm-up", width=64, height=64, num_frames=5, seed=0,
                                        num_steps=1, kind=kind, image=image))


def make_notifier(settings: Settings, client: redis.Redis, store: JobStore) -> Callable[[str], None]:
    """A callable that enqueues the webhook delivery of a finished job (if it has a webhook_url)."""
    from service.webhooks import enqueue_webhook

    def notify(job_id: str) -> None:
        record = store.get(job_id)
        if record is not None and record.webhook_url:
            enqueue_webhook(client, settings, record)

    return notify


class TurboWorker(SimpleWorker):
    """SimpleWorker that shares its stop flag with the job and re-queues interrupted jobs."""

    ctx: task.WorkerContext

    def request_stop(self, signum: Any, frame: Any) -> None:
        self.ctx.stop.set()
        super().request_stop(signum, frame)

    def execute_job(self, job: Job, queue: Queue) -> None:
        self.ctx.requeue_after = None
        super().execute_job(job, queue)
        if self.ctx.requeue_after == job.id:
            record = self.ctx.store.get(job.id)
            if record is not None and record.status is JobStatus.queued:
                enqueue_spec(queue, job.id, record.spec.model_dump_json(), self.ctx.settings.queue,
                             at_front=True)
            self.ctx.requeue_after = None


class Heartbeat(threading.Thread):
    """Every `interval` s: refresh the running job's lease and the RQ worker key, then run the reaper."""

    def __init__(self, worker: TurboWorker, queues: list[Queue], interval: float) -> None:
        super().__init__(name="turbovid-heartbeat", daemon=True)
        self.worker = worker
        self.queues = queues
        self.interval = interval
        self.done = threading.Event()

    def run(self) -> None:
        ctx = self.worker.ctx
        q = ctx.settings.queue
        while not self.done.wait(self.interval):
            try:
                ctx.lease.refresh()
                if ctx.lease.job_id is not None:
                    # SimpleWorker sets its key's TTL to the job timeout while busy; keep it short so
                    # a dead worker disappears from the worker count within a few heartbeats.
                    self.worker.heartbeat(timeout=max(lease_ttl_s(q), 15))
                for queue in self.queues:
                    reap(queue, ctx.store, q, notify=ctx.notify)
            except Exception:
                log.exception("heartbeat/reaper tick failed")


def run_worker(
    settings: Settings,
    *,
    pipeline: task.Pipeline | None = None,
    burst: bool = False,
    also_serve: Sequence[str] = (),
    metrics: WorkerMetrics | None = None,
) -> int:
    """Serve `settings.worker.model`'s queue until stopped; returns a process exit code.

    `also_serve`: more queue names answered by the same pipeline (e.g. a separate I2V model id
    whose jobs the loaded model can run too)."""
    w, q = settings.worker, settings.queue
    client = redis.Redis.from_url(settings.redis.url)
    client.ping()
    store = JobStore(client, settings.redis.key_prefix)
    storage = make_storage(settings.storage)
    if metrics is None:
        metrics = WorkerMetrics(w.model, gpu_memory=cuda_memory_reader(w.device))
    server = metrics.serve(w.metrics_port) if w.metrics_port else None
    name = w.name or f"{socket.gethostname()}:{os.getpid()}"

    # 1. the model, once --------------------------------------------------------------------------
    if pipeline is None:
        log.info("loading pipeline %s (device=%s dtype=%s)", w.model, w.device, w.dtype)
        pipeline = load_model_pipeline(settings)
    if w.warmup:
        warm_up(pipeline)
    ctx = task.WorkerContext(
        settings=settings, pipeline=pipeline, redis=client, store=store, storage=storage, metrics=metrics,
        worker_name=name, lease=Lease(client, store.p, name, lease_ttl_s(q)),
    )
    ctx.notify = make_notifier(settings, client, store)
    task.install_context(ctx)

    # 2. the queue ----------------------------------------------------------------------------------
    queues = [Queue(n, connection=client, serializer=RQ_SERIALIZER) for n in dict.fromkeys([w.model, *also_serve])]
    worker = TurboWorker(queues, name=name, connection=client, worker_ttl=max(30, lease_ttl_s(q)),
                         default_result_ttl=q.result_ttl_s, serializer=RQ_SERIALIZER)
    worker.ctx = ctx
    for queue in queues:
        reap(queue, store, q, notify=ctx.notify)  # jobs of a worker that died before we started
    beat = Heartbeat(worker, queues, q.heartbeat_s)
    beat.start()
    log.info("worker %s serving queues %s", name, [queue.name for queue in queues])
    try:
        worker.work(burst=burst, logging_level="INFO")
    finally:
        beat.done.set()
        task.install_context(None)
        if server is not None:
            server.shutdown()
    return 0
