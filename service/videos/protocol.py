"""HTTP shapes: the OpenAI video object (plus our fields) and the create request body.

`POST /v1/videos` accepts the OpenAI fields (prompt, model, seconds, size, input_reference) and our
extensions (num_steps, seed, sigma_max, sla_topk, negative_prompt, num_frames, image, image_url,
webhook_url, metadata, priority) either as JSON or as multipart/form-data.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from contract.catalog import seconds_of
from contract.jobs import JobStatus
from contract.jobstore import JobRecord


class ImageReference(BaseModel):
    """OpenAI's reference object: {"image_url": "https://..." | "data:image/png;base64,..."}."""

    model_config = ConfigDict(extra="forbid")

    image_url: str | None = None
    file_id: str | None = None


class CreateVideoBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1)
    model: str | None = None
    seconds: str | float | None = None
    size: str | None = None
    input_reference: ImageReference | None = None  # multipart uploads are handled separately
    num_frames: int | None = None
    num_steps: int = Field(default=4, ge=1, le=4)
    seed: int | None = Field(default=None, ge=0, lt=2**63)
    sigma_max: float | None = Field(default=None, gt=0.0, le=1000.0)
    sla_topk: float | None = Field(default=None, gt=0.0, le=1.0)
    negative_prompt: str | None = None
    image: str | None = None  # data URL or bare base64
    image_url: str | None = None
    webhook_url: str | None = None
    metadata: dict[str, str] | None = None
    priority: Literal["normal", "high"] = "normal"


class VideoError(BaseModel):
    code: str
    message: str


class VideoObject(BaseModel):
    id: str
    object: Literal["video"] = "video"
    created_at: int
    completed_at: int | None = None
    expires_at: int | None = None
    status: Literal["queued", "in_progress", "completed", "failed"]
    progress: int
    model: str
    prompt: str
    seconds: str
    size: str
    error: VideoError | None = None
    remixed_from_video_id: str | None = None
    # ours
    seed: int
    num_frames: int
    fps: int
    num_steps: int
    queue_position: int | None = None
    timings: dict[str, float] = {}
    url: str | None = None
    metadata: dict[str, Any] | None = None


class VideoList(BaseModel):
    object: Literal["list"] = "list"
    data: list[VideoObject]
    first_id: str | None
    last_id: str | None
    has_more: bool


class VideoDeleted(BaseModel):
    id: str
    object: Literal["video.deleted"] = "video.deleted"
    deleted: bool = True


def public_status(status: JobStatus) -> Literal["queued", "in_progress", "completed", "failed"]:
    if status is JobStatus.cancelled:
        return "failed"
    return status.value  # type: ignore[return-value]


def video_object(
    record: JobRecord, *, queue_position: int | None = None, base_url: str | None = None
) -> VideoObject:
    spec = record.spec
    err = record.error
    if record.status is JobStatus.cancelled and err is None:
        err_obj: VideoError | None = VideoError(code="cancelled", message="the job was cancelled")
    else:
        err_obj = VideoError(code=err.code, message=err.message) if err is not None else None
    url = None
    if record.status is JobStatus.completed and base_url is not None:
        url = f"{base_url.rstrip('/')}/v1/videos/{spec.job_id}/content"
    return VideoObject(
        id=spec.job_id,
        created_at=int(record.created_at),
        completed_at=int(record.completed_at) if record.completed_at else None,
        expires_at=int(record.expires_at) if record.expires_at else None,
        status=public_status(record.status),
        progress=record.progress,
        model=spec.model,
        prompt=spec.prompt,
        seconds=seconds_of(spec.num_frames, spec.fps),
        size=f"{spec.width}x{spec.height}",
        error=err_obj,
        seed=spec.seed,
        num_frames=spec.num_frames,
        fps=spec.fps,
        num_steps=spec.num_steps,
        queue_position=queue_position if record.status is JobStatus.queued else None,
        timings=record.timings,
        url=url,
        metadata=record.metadata,
    )
