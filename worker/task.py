"""One video job: `execute(ctx, spec_json)`, run in the worker process by `TurboJob`.

RQ jobs name `contract.queue.TASK_PATH` (`worker.task.run_job`) with the spec's JSON as their only
argument. The worker (worker/main.py) dequeues them as `TurboJob`s, hands each the `WorkerContext`
it built once (pipeline, job store, storage, metrics, lease) and `TurboJob` calls `execute` with it:
no fork (CUDA and preloaded weights don't survive one) and no module-global context. One job:

    parse JobSpec → (gone / terminal / cancel requested? stop) → lease + mark_started
    → params.check(card, pipeline.capabilities()) → [I2V] fetch + decode the image
    → pipeline.generate(params, image, on_step=JobProgress: progress + events + previews + cancel at
      every step and decode chunk; decoded chunks stream into the MP4 encoder's thread)
    → encode tail + thumbnail → upload → JobStore.finish(completed, output, timings) → "completed"
      event → metrics → webhook

Errors end the job visibly: JobStore.finish(failed, JobError(code, message)); the exception is
re-raised so RQ's own registries agree, and the worker goes on with the next job. Codes
(`contract.jobs.ErrorCode`): a knob the pipeline cannot honour is `unsupported_param` (naming it),
an unreadable input image `invalid_input`, a failed upload `storage_error`, an RQ timeout `timeout`,
a CUDA out-of-memory (by type) `out_of_memory`, anything else `generation_failed`. A SIGTERM
received mid-job stops at the next step boundary and the job is re-queued (worker/main.py
re-enqueues it after RQ has let go of it), unless the denoise loop is nearly done. A cancel (or a
DELETE) stops the job at the next denoise step or decode chunk, or before/after the upload; the
partial file, the preview and any uploaded object are removed. Progress and events: worker/progress.py.

Stage timings (seconds): queue_wait (spec.created_at → start), text_encode, image_encode, denoise,
vae_decode (from the pipeline), video_encode (the encode tail: from the last decoded chunk to the MP4
closed; all of the encode for a pipeline that does not stream frames), upload, total
(spec.created_at → finished).
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
from contract.events import EventLog
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
from models.pipeline_types import GenerationResult, StageEvent, StepCallback
from worker.encode import DEFAULT_THREAD_TYPE, Mp4Stream, decode_image, encode_thumbnail, pick_codec
from worker.metrics import WorkerMetrics
from worker.progress import NEARLY_DONE, JobCancelled, JobProgress, ShutdownRequeue
from worker.reaper import Lease

log = logging.getLogger("turbovid.worker")

__all__ = ["NEARLY_DONE", "JobCancelled", "JobFailed", "ShutdownRequeue", "WorkerContext", "execute", "fail_job"]


class Pipeline(Protocol):
    """What the worker needs of a loaded pipeline (models.pipeline.WanPipeline)."""

    card: ModelCard
    solver: str
    attention: str
    linear: str

    def capabilities(self) -> Capabilities: ...

    def generate(self, params: GenerationParams, *, image: np.ndarray | None = None,
                 on_step: StepCallback | None = None) -> GenerationResult: ...


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
    video_codec: str | None = None  # chosen by the first job (worker.encode.pick_codec)

    def codec(self) -> str:
        if self.video_codec is None:
            self.video_codec, reason = pick_codec("auto")
            log.info("video encoder: %s (%s)", self.video_codec, reason)
        return self.video_codec


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


def _terminal(ctx: WorkerContext, spec: JobSpec, status: JobStatus, progress: JobProgress | None = None,
              **kw: Any) -> None:
    """Finish the record with its end webhook queued in the same transaction, then publish the job's last
    event (when the record is still there: a deleted job's stream is gone with it) and metrics."""
    q = ctx.settings.queue
    ttl_s = q.result_ttl_s if status is JobStatus.completed else q.failure_ttl_s
    ctx.store.finish(spec.job_id, status, ttl_s=ttl_s, hook=ctx.jobs.end_webhook(ctx.settings.webhooks), **kw)
    ctx.metrics.job_finished(status.value)
    record = ctx.store.get(spec.job_id)
    if record is not None and record.status is status:
        if progress is None:
            progress = JobProgress(spec, store=ctx.store, events=_events(ctx), storage=ctx.storage, ttl_s=ttl_s)
        error = kw.get("error")
        progress.terminal("completed" if status is JobStatus.completed else "failed", ttl_s=ttl_s,
                          error={"code": str(error.code), "message": error.message} if error is not None else None)


def fail_job(ctx: WorkerContext, spec: JobSpec, code: ErrorCode, message: str) -> None:
    """End a running job failed from outside its own thread (worker/main.py: a lost rank left that
    thread blocked): the record, the "failed" event, metrics and the webhook, as `execute` would."""
    _terminal(ctx, spec, JobStatus.failed, error=JobError(code=code, message=message[:2000]))


def _events(ctx: WorkerContext) -> EventLog:
    return EventLog(ctx.store.r, ctx.store.keys)


def execute(ctx: WorkerContext, spec_json: str) -> dict[str, Any]:
    """Run one job from its JSON spec; returns a small summary for RQ's result."""
    entered = time.perf_counter()
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

    # 1. start: lease (heartbeat for the reaper) + job state + "started" event ---------------------
    started = time.time()
    record_ttl = int(ctx.store.r.ttl(ctx.store.keys.job(job_id)))  # type: ignore[arg-type]
    # The lease first, taken only if free: a job on its queue twice (a retrying client re-sent an enqueue
    # whose reply was lost: the workers' client retries ~15 s, e.g. a shutdown's re-queue) must not run on
    # two workers at once.
    holder = ctx.lease.acquire(job_id)
    if holder is not None:
        log.warning("job %s is being run by worker %s; this second delivery of it is skipped", job_id, holder)
        return {"status": "duplicate"}
    if not ctx.store.mark_started(job_id, ctx.worker_name):
        ctx.lease.release()
        return {"status": "gone"}  # deleted just now
    ctx.metrics.set_busy(True)
    progress = JobProgress(spec, store=ctx.store, events=_events(ctx), storage=ctx.storage,
                           ttl_s=max(record_ttl, 3600), refresh=ctx.lease.refresh, stop=ctx.stop)
    progress.started()
    timings: dict[str, float] = {Stage.queue_wait.value: max(0.0, started - spec.created_at)}
    ctx.metrics.observe_timings({Stage.queue_wait.value: timings[Stage.queue_wait.value]})
    wall: dict[str, float] = {"entered": entered}
    try:
        with tempfile.TemporaryDirectory(prefix=f"turbovid-{job_id}-") as tmp:
            output = _generate_and_upload(ctx, spec, timings, Path(tmp), progress, wall)
        timings[Stage.total.value] = time.time() - spec.created_at
        progress.remove_preview()
        _terminal(ctx, spec, JobStatus.completed, progress, output=output, timings=timings)
        wall["finished"] = time.perf_counter()
        _log_wall(job_id, wall, timings)
        ctx.metrics.observe_timings({k: v for k, v in timings.items() if k != Stage.queue_wait.value})
        return {"status": JobStatus.completed.value, "key": output.key, "timings": timings}
    except JobCancelled as exc:
        log.info("job %s cancelled (%s); stopped", job_id, exc)
        progress.remove_preview()
        timings[Stage.total.value] = time.time() - spec.created_at
        _terminal(ctx, spec, JobStatus.cancelled, progress, timings=timings,
                  error=JobError(code=ErrorCode.cancelled, message="cancelled while running"))
        return {"status": JobStatus.cancelled.value}
    except ShutdownRequeue:
        progress.remove_preview()
        ctx.store.requeue(job_id)
        ctx.requeue_after = job_id
        ctx.metrics.job_finished("requeued")
        log.warning("job %s interrupted by worker shutdown; it will be re-queued", job_id)
        return {"status": "requeued"}
    except BaseException as exc:
        progress.remove_preview()
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            raise  # a cold shutdown: with the lease released (below) the next reaper pass re-queues it
        code = error_code(exc)
        message = exc.message if isinstance(exc, JobFailed) else str(exc) if isinstance(exc, ParamError) \
            else f"{type(exc).__name__}: {exc}"
        timings[Stage.total.value] = time.time() - spec.created_at
        _terminal(ctx, spec, JobStatus.failed, progress, timings=timings,
                  error=JobError(code=code, message=message[:2000]))
        log.exception("job %s failed (%s)", job_id, code)
        raise
    finally:
        ctx.metrics.set_busy(False)
        ctx.lease.release()


_WALL_PHASES = (("setup", "entered", "generate"), ("generate", "generate", "generated"),
                ("encode_tail", "generated", "encoded"), ("upload", "encoded", "uploaded"),
                ("finish", "uploaded", "finished"))


def _log_wall(job_id: str, wall: dict[str, float], timings: dict[str, float]) -> None:
    """One line per completed job: the worker's wall-clock phases, from the job's dequeue to its record
    finished, beside the device time of the generation's stages (CUDA events on a GPU, which leave out the
    host's work between stages): where a job's time goes that the stage timings do not show."""
    if not all(k in wall for _, start, end in _WALL_PHASES for k in (start, end)):
        return
    stages = sum(timings.get(s.value, 0.0) for s in (Stage.text_encode, Stage.image_encode, Stage.denoise,
                                                      Stage.vae_decode))  # fmt: skip
    parts = " ".join(f"{name} {wall[b] - wall[a]:.4f}" for name, a, b in _WALL_PHASES)
    log.info("job %s wall s: %s (generate's device stages %.4f); dequeue to finished %.4f", job_id, parts, stages,
             wall["finished"] - wall["entered"])


class _Frames:
    """Decoded frame chunks → the MP4 encoder's thread, opened at the first chunk."""

    def __init__(self, path: Path, *, fps: int, num_frames: int, codec: str, threads: int,
                 thread_type: str = DEFAULT_THREAD_TYPE) -> None:
        self.path, self.fps, self.num_frames, self.codec, self.threads = path, fps, num_frames, codec, threads
        self.thread_type = thread_type
        self.encoder: Mp4Stream | None = None
        self.next = 0  # the next frame index expected

    def __call__(self, start: int, frames: np.ndarray) -> None:
        if start != self.next:
            raise RuntimeError(f"frames {start}.. arrived, expected {self.next}..")
        if self.encoder is None:
            _, h, w, _ = frames.shape
            self.encoder = Mp4Stream(self.path, width=w, height=h, fps=self.fps, codec=self.codec,
                                     threads=self.threads, thread_type=self.thread_type,
                                     thumbnail_index=self.num_frames // 2)
        self.encoder.write(frames)
        self.next += frames.shape[0]

    def abort(self) -> None:
        if self.encoder is not None:
            self.encoder.abort()


def _generate_and_upload(ctx: WorkerContext, spec: JobSpec, timings: dict[str, float], tmp: Path,
                         progress: JobProgress, wall: dict[str, float] | None = None) -> JobOutput:
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

    # 3. generate: progress, events, previews, cancel and shutdown at every step and decode chunk; the
    #    decoded chunks go to the MP4 encoder's thread as they come -----------------------------------
    sink = _Frames(tmp / "video.mp4", fps=params.fps, num_frames=params.num_frames, codec=ctx.codec(),
                   threads=ctx.settings.worker.encoder_threads,
                   thread_type=ctx.settings.worker.encoder_thread_type)
    progress.frames_sink = sink
    wall = {} if wall is None else wall
    try:
        wall["generate"] = time.perf_counter()
        result = pipe.generate(params, image=image, on_step=progress)
        t0 = wall["generated"] = time.perf_counter()  # the encode tail starts when the last chunk is decoded
        progress.close()  # no previews after the denoise
        if sink.next == 0:  # a pipeline that does not stream: all of the frames now
            sink(0, result.frames)
        if sink.next != result.frames.shape[0]:
            raise RuntimeError(f"the pipeline streamed {sink.next} of {result.frames.shape[0]} frames")
        timings.update(result.timings.as_dict())
        if params.kind != "i2v":
            timings.pop(Stage.image_encode.value, None)
        ctx.store.set_timings(job_id, timings)

        # 4. the encode tail -------------------------------------------------------------------------
        progress.on_stage(StageEvent(Stage.video_encode.value, 0, 1))
        assert sink.encoder is not None
        size = sink.encoder.close()
        thumbnail = sink.encoder.thumbnail or encode_thumbnail(result.frames)
        wall["encoded"] = time.perf_counter()
        timings[Stage.video_encode.value] = wall["encoded"] - t0
        progress.on_stage(StageEvent(Stage.video_encode.value, 1, 1))  # raises JobCancelled if cancelled
    except BaseException:
        sink.abort()
        raise

    # 5. upload ---------------------------------------------------------------------------------------
    progress.on_stage(StageEvent(Stage.upload.value, 0, 1))
    t0 = time.perf_counter()
    thumb_key = f"{spec.output_key}.jpg"
    try:
        ctx.storage.put_file(sink.path, spec.output_key, "video/mp4")
        ctx.storage.put_bytes(thumbnail, thumb_key, "image/jpeg")
    except Exception as exc:
        raise JobFailed(ErrorCode.storage_error, f"upload failed: {type(exc).__name__}: {exc}") from exc
    wall["uploaded"] = time.perf_counter()
    timings[Stage.upload.value] = wall["uploaded"] - t0
    try:
        progress.on_stage(StageEvent(Stage.upload.value, 1, 1))
    except JobCancelled:
        # Cancelled or deleted while uploading: don't leave orphaned objects behind.
        for key in (spec.output_key, thumb_key):
            ctx.storage.delete(key)
        raise

    f, h, w, _ = result.frames.shape
    return JobOutput(key=spec.output_key, thumbnail_key=thumb_key, bytes=size, num_frames=int(f),
                     fps=params.fps, width=int(w), height=int(h), seed=result.seed)
