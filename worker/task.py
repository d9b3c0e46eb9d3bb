"""One video job: `execute(ctx, spec_json)`, run in the worker process by `TurboJob`.

RQ jobs name `contract.queue.TASK_PATH` (`worker.task.run_job`) with the spec's JSON as their only
argument. The worker (worker/main.py) dequeues them as `TurboJob`s, hands each the `WorkerContext`
it built once (pipeline, job store, storage, metrics, lease) and `TurboJob` calls `execute` with it:
no fork (CUDA and preloaded weights don't survive one) and no module-global context. One job:

    parse JobSpec → (gone / terminal / cancel requested? stop) → lease + mark_started
    → params.check(card, pipeline.capabilities()) → [I2V] fetch + decode the image
    → pipeline.generate(params, image, on_step: progress, cancel, shutdown)
    → MP4 + thumbnail → upload → JobStore.finish(completed, output, timings) → metrics → webhook

Errors end the job visibly: JobStore.finish(failed, JobError(code, message)); the exception is
re-raised so RQ's own registries agree, and the worker goes on with the next job. Codes
(`contract.jobs.ErrorCode`): a knob the pipeline cannot honour is `unsupported_param` (naming it),
an unreadable input image `invalid_input`, a failed upload `storage_error`, an RQ timeout `timeout`,
a CUDA out-of-memory (by type) `out_of_memory`, anything else `generation_failed`. A SIGTERM
received mid-job stops at the next step boundary and the job is re-queued (worker/main.py
re-enqueues it after RQ has let go of it), unless the denoise loop is nearly done.

Stage timings (seconds): queue_wait (spec.created_at → start), text_encode, image_encode, denoise,
vae_decode (from the pipeline), video_encode, upload, total (spec.created_at → finished).
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from rq.job import Job
from rq.timeouts import JobTimeoutException

from contract.catalog import ModelCard
from contract.jobs import (
    TERMINAL,
    Capabilities,
    ErrorCode,
    GenerationParams,
    JobError,
    JobOutput,
    JobSpec,
    JobStatus,
    ParamError,
    Stage,
)
from contract.jobstore import JobStore
from contract.queue import TASK_PATH, JobQueue
from contract.settings import Settings
from contract.storage import Storage, StorageError
from models.pipeline_types import GenerationResult, StepCallback
from worker.encode import decode_image, encode_mp4, encode_thumbnail
from worker.metrics import WorkerMetrics
from worker.reaper import Lease, submit_end_webhook

log = logging.getLogger("turbovid.worker")

# A SIGTERM after this fraction of the denoise steps lets the job finish instead of re-queueing it.
NEARLY_DONE = 0.75


class Pipeline(Protocol):
    """What the worker needs of a loaded pipeline (models.pipeline.WanPipeline)."""

    card: ModelCard
    solver: str
    attention: str
    linear: str

    def capabilities(self) -> Capabilities: ...

    def generate(self, params: GenerationParams, *, image: np.ndarray | None = None,
                 on_step: StepCallback | None = None) -> GenerationResult: ...


class JobCancelled(Exception):
    """Raised from the step callback when the job's cancel flag is set."""


class ShutdownRequeue(Exception):
    """Raised from the step callback when the worker is asked to stop and the job is not nearly done."""


class JobFailed(Exception):
    """A job failure with an API error code (what `JobError.code` reports)."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass
class WorkerContext:
    """What a job needs from its worker; built once by worker/main.py, held by the TurboWorker."""

    settings: Settings
    pipeline: Pipeline
    store: JobStore
    jobs: JobQueue
    storage: Storage
    metrics: WorkerMetrics
    worker_name: str
    lease: Lease
    stop: threading.Event = field(default_factory=threading.Event)
    requeue_after: str | None = None  # job id to put back on the queue once RQ is done with it


class TurboJob(Job):
    """An RQ job run with the worker's context: the TurboWorker sets `ctx` before performing it."""

    ctx: WorkerContext | None = None

    def _execute(self) -> Any:  # Job.perform() → _execute(): RQ's call of the job function
        if self.func_name != TASK_PATH:
            raise ValueError(f"a TurboVid worker runs only {TASK_PATH} jobs, not {self.func_name}")
        if self.ctx is None:
            raise RuntimeError("TurboJob performed without a WorkerContext")
        return execute(self.ctx, *self.args)


def run_job(spec_json: str) -> dict[str, Any]:
    """The RQ function `TASK_PATH` names. Only a TurboVid worker runs it (as `TurboJob`, with its
    loaded pipeline); a plain `rq worker` that picks the job up fails it here."""
    raise RuntimeError(f"{TASK_PATH} jobs run only in a TurboVid worker (`turbovid worker`)")


def _is_out_of_memory(exc: BaseException) -> bool:
    import torch

    oom = tuple(t for t in (getattr(torch, "OutOfMemoryError", None), getattr(torch.cuda, "OutOfMemoryError", None))
                if isinstance(t, type))
    return bool(oom) and isinstance(exc, oom)


def error_code(exc: BaseException) -> ErrorCode:
    """The client-visible code of a job that raised `exc`."""
    if isinstance(exc, JobFailed):
        return exc.code
    if isinstance(exc, ParamError):
        return ErrorCode.unsupported_param
    if isinstance(exc, JobTimeoutException):
        return ErrorCode.timeout
    if _is_out_of_memory(exc):
        return ErrorCode.out_of_memory
    return ErrorCode.generation_failed  # internal errors (ValueErrors included) are not the client's


def _terminal(ctx: WorkerContext, spec: JobSpec, status: JobStatus, **kw: Any) -> None:
    q = ctx.settings.queue
    ctx.store.finish(spec.job_id, status, ttl_s=q.result_ttl_s if status is JobStatus.completed else q.failure_ttl_s,
                     **kw)
    ctx.metrics.job_finished(status.value)
    try:
        submit_end_webhook(ctx.store, ctx.jobs, ctx.settings.webhooks, spec.job_id)
    except Exception:  # a webhook problem must not fail the job a second time
        log.exception("webhook enqueue failed for job %s", spec.job_id)


def execute(ctx: WorkerContext, spec_json: str) -> dict[str, Any]:
    """Run one job from its JSON spec; returns a small summary for RQ's result."""
    spec = JobSpec.model_validate_json(spec_json)
    job_id = spec.job_id
    record = ctx.store.get(job_id)
    if record is None:
        log.info("job %s was deleted before it started; skipping", job_id)
        return {"status": "gone"}
    if record.status in TERMINAL:
        return {"status": record.status.value}
    if ctx.store.cancel_requested(job_id):
        _terminal(ctx, spec, JobStatus.cancelled,
                  error=JobError(code=ErrorCode.cancelled, message="cancelled before start"))
        return {"status": JobStatus.cancelled.value}

    # 1. start: lease (heartbeat for the reaper) + job state ---------------------------------------
    started = time.time()
    if not ctx.store.mark_started(job_id, ctx.worker_name):
        return {"status": "gone"}  # deleted just now
    ctx.lease.hold(job_id)
    ctx.metrics.set_busy(True)
    timings: dict[str, float] = {Stage.queue_wait.value: max(0.0, started - spec.created_at)}
    ctx.metrics.observe_timings({Stage.queue_wait.value: timings[Stage.queue_wait.value]})
    try:
        with tempfile.TemporaryDirectory(prefix=f"turbovid-{job_id}-") as tmp:
            output = _generate_and_upload(ctx, spec, timings, Path(tmp))
        timings[Stage.total.value] = time.time() - spec.created_at
        _terminal(ctx, spec, JobStatus.completed, output=output, timings=timings)
        ctx.metrics.observe_timings({k: v for k, v in timings.items() if k != Stage.queue_wait.value})
        return {"status": JobStatus.completed.value, "key": output.key, "timings": timings}
    except JobCancelled:
        timings[Stage.total.value] = time.time() - spec.created_at
        _terminal(ctx, spec, JobStatus.cancelled, timings=timings,
                  error=JobError(code=ErrorCode.cancelled, message="cancelled while running"))
        return {"status": JobStatus.cancelled.value}
    except ShutdownRequeue:
        ctx.store.requeue(job_id)
        ctx.requeue_after = job_id
        ctx.metrics.job_finished("requeued")
        log.warning("job %s interrupted by worker shutdown; it will be re-queued", job_id)
        return {"status": "requeued"}
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            raise  # a cold shutdown: with the lease released (below) the next reaper pass re-queues it
        code = error_code(exc)
        message = exc.message if isinstance(exc, JobFailed) else str(exc) if isinstance(exc, ParamError) \
            else f"{type(exc).__name__}: {exc}"
        timings[Stage.total.value] = time.time() - spec.created_at
        _terminal(ctx, spec, JobStatus.failed, timings=timings, error=JobError(code=code, message=message[:2000]))
        log.exception("job %s failed (%s)", job_id, code)
        raise
    finally:
        ctx.metrics.set_busy(False)
        ctx.lease.release()


def _generate_and_upload(ctx: WorkerContext, spec: JobSpec, timings: dict[str, float], tmp: Path) -> JobOutput:
    job_id, params, pipe = spec.job_id, spec.params, ctx.pipeline

    # 2. what this pipeline honours, then the inputs -------------------------------------------------
    params.check(pipe.card, pipe.capabilities())  # ParamError → unsupported_param naming the knob
    image = None
    if params.kind == "i2v":
        if not spec.image_key:
            raise JobFailed(ErrorCode.invalid_input, "an i2v job needs an input image")
        try:
            image = decode_image(ctx.storage.get_bytes(spec.image_key))
        except (OSError, ValueError, StorageError) as exc:
            raise JobFailed(ErrorCode.invalid_input,
                            f"cannot read the input image: {type(exc).__name__}: {exc}") from exc

    # 3. generate: progress, cancel and shutdown checked at every denoise step -----------------------
    def on_step(done: int, total: int) -> None:
        ctx.lease.refresh()
        exists = ctx.store.set_progress(job_id, min(99, round(100 * done / max(total, 1))))
        if not exists or ctx.store.cancel_requested(job_id):
            raise JobCancelled(job_id)
        if ctx.stop.is_set() and done < total and done / total < NEARLY_DONE:
            raise ShutdownRequeue(job_id)

    result = pipe.generate(params, image=image, on_step=on_step)
    timings.update(result.timings.as_dict())
    if params.kind != "i2v":
        timings.pop(Stage.image_encode.value, None)
    ctx.store.set_timings(job_id, timings)
    frames = result.frames
    if ctx.store.cancel_requested(job_id):
        raise JobCancelled(job_id)

    # 4. encode ---------------------------------------------------------------------------------------
    t0 = time.perf_counter()
    mp4 = tmp / "video.mp4"
    size = encode_mp4(frames, mp4, fps=params.fps)
    thumbnail = encode_thumbnail(frames)
    timings[Stage.video_encode.value] = time.perf_counter() - t0

    # 5. upload ---------------------------------------------------------------------------------------
    t0 = time.perf_counter()
    thumb_key = f"{spec.output_key}.jpg"
    try:
        ctx.storage.put_file(mp4, spec.output_key, "video/mp4")
        ctx.storage.put_bytes(thumbnail, thumb_key, "image/jpeg")
    except Exception as exc:
        raise JobFailed(ErrorCode.storage_error, f"upload failed: {type(exc).__name__}: {exc}") from exc
    timings[Stage.upload.value] = time.perf_counter() - t0
    if ctx.store.cancel_requested(job_id) or ctx.store.get(job_id) is None:
        # Cancelled or deleted while encoding/uploading: don't leave orphaned objects behind.
        for key in (spec.output_key, thumb_key):
            ctx.storage.delete(key)
        raise JobCancelled(job_id)

    f, h, w, _ = frames.shape
    return JobOutput(key=spec.output_key, thumbnail_key=thumb_key, bytes=size, num_frames=int(f),
                     fps=params.fps, width=int(w), height=int(h), seed=result.seed)
