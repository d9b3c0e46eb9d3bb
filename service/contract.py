"""The job contract between the gateway and the workers: pure pydantic, serialised as JSON.

The gateway validates an HTTP request into a `JobSpec` and enqueues it on the RQ queue named after
the model id, calling the worker task by dotted path (`TASK_PATH`) with the spec's JSON as the only
argument. Nothing here imports torch; the worker turns a `JobSpec` into a pipeline request.

Job state (status, progress, timings, error, output) lives in Redis under `JobStore`
(service/jobstore.py) and is what the gateway reports.
"""

from __future__ import annotations

import enum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# The RQ job function the gateway enqueues by dotted path; the gateway never imports it.
TASK_PATH = "worker.task.run_job"
WEBHOOK_TASK_PATH = "service.webhooks.deliver_webhook"
WEBHOOK_QUEUE = "turbovid-webhooks"
# Every RQ queue, job and worker on both sides uses this serializer (job args are JSON strings, so
# nothing is pickled); pass it as `serializer=` to rq's Queue/Worker/Job calls.
RQ_SERIALIZER = "rq.serializers.JSONSerializer"

FPS = 16


class JobStatus(enum.StrEnum):
    queued = "queued"
    in_progress = "in_progress"
    completed = "completed"
    failed = "failed"
    cancelled = "cancelled"  # internal terminal state; shown as "failed" with code "cancelled"


TERMINAL = frozenset({JobStatus.completed, JobStatus.failed, JobStatus.cancelled})


class Stage(enum.StrEnum):
    """Stages timed per job; also the `stage` label of the latency histograms."""

    queue_wait = "queue_wait"
    text_encode = "text_encode"
    image_encode = "image_encode"
    denoise = "denoise"
    vae_decode = "vae_decode"
    video_encode = "video_encode"
    upload = "upload"
    total = "total"


class JobSpec(BaseModel):
    """Everything a worker needs to produce one video. Validated by the gateway."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    job_id: str
    owner: str  # API key id (or "dev"); tenancy is checked by the gateway
    model: str
    kind: Literal["t2v", "i2v"]
    prompt: str
    negative_prompt: str | None = None
    width: int = Field(gt=0)
    height: int = Field(gt=0)
    num_frames: int = Field(gt=0)  # 4k + 1
    fps: int = FPS
    num_steps: int = Field(default=4, ge=1, le=50)
    seed: int = Field(ge=0, lt=2**63)
    sigma_max: float | None = None  # None: the model's default (T2V 80, I2V 200)
    sla_topk: float | None = Field(default=None, gt=0.0, le=1.0)
    guidance_scale: float | None = None  # original (non-distilled) checkpoints only
    # I2V: object-store key of the uploaded conditioning image (PNG/JPEG/WebP bytes).
    image_key: str | None = None
    output_key: str  # object-store key for the MP4; the thumbnail goes to `<output_key>.jpg`
    created_at: float  # unix seconds, set by the gateway at enqueue


class JobOutput(BaseModel):
    """What a finished job produced: stored by the worker, reported by the gateway."""

    model_config = ConfigDict(extra="forbid")

    key: str
    thumbnail_key: str | None = None
    content_type: str = "video/mp4"
    bytes: int
    num_frames: int
    fps: int
    width: int
    height: int
    seed: int


class JobError(BaseModel):
    model_config = ConfigDict(extra="forbid")

    code: str  # e.g. "cancelled", "worker_crashed", "timeout", "generation_failed", "invalid_input"
    message: str


def job_metadata(spec: JobSpec) -> dict[str, Any]:
    """The fields of a spec that are safe to echo back in API objects and webhooks."""
    return spec.model_dump(include={"model", "prompt", "width", "height", "num_frames", "fps", "seed"})
