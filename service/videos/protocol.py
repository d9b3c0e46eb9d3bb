"""HTTP shapes of the videos API: the create body, the OpenAI video object (plus our fields), the list
and the deletion answer.

`POST /v1/videos` accepts the OpenAI fields (prompt, model, seconds, size, input_reference) and our
extensions either as JSON or as multipart/form-data. The generation knobs (`GenerationParams.CLIENT_KNOBS`:
prompt, negative_prompt, seed, num_steps, sampler, sigma_max, sla_topk, guidance_scale) are the field
definitions of `contract.jobs.GenerationParams` itself: their types and ranges are written once, there.
Whether a model (as its live workers run it) honours a knob is decided by `GenerationParams.check`.
"""

from __future__ import annotations

import copy
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator

from contract.catalog import seconds_of
from contract.jobs import ErrorCode, GenerationParams, JobError, JobStatus
from contract.jobstore import JobRecord


class ImageReference(BaseModel):
    """OpenAI's reference object: {"image_url": "https://..." | "data:image/png;base64,..."}."""

    model_config = ConfigDict(extra="forbid")

    image_url: str | None = None
    file_id: str | None = None


class CreateVideoRequest(BaseModel):
    """The request fields that are not generation knobs: what to run and how big (serving resolves them
    into the params' size, frame count and kind) and how to deliver it. `CreateVideoBody` adds the knobs."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    seconds: str | float | None = None
    size: str | None = None
    input_reference: ImageReference | None = None  # multipart uploads are handled separately
    num_frames: int | None = None
    image: str | None = None  # data URL or bare base64
    image_url: str | None = None
    webhook_url: str | None = None
    metadata: dict[str, str] | None = None
    priority: Literal["normal", "high"] = "normal"

    @field_validator("*", mode="before")
    @classmethod
    def _no_booleans(cls, v: Any) -> Any:
        # no field takes a boolean; lax validation would read `true` as 1 (`"seconds": true` as 1 s)
        if isinstance(v, bool):
            raise ValueError("a boolean is not accepted here")
        return v

    def knobs(self) -> dict[str, Any]:
        """The generation knobs as the client sent them (None: the model's default)."""
        return {name: getattr(self, name) for name in GenerationParams.CLIENT_KNOBS}


def _knob_fields() -> dict[str, Any]:
    fields = GenerationParams.model_fields
    return {name: (fields[name].annotation, copy.copy(fields[name])) for name in GenerationParams.CLIENT_KNOBS}


# The body of POST /v1/videos: the request fields plus the knobs, with GenerationParams' own field
# definitions (types, ranges, defaults). Validate with it; annotate with CreateVideoRequest.
CreateVideoBody = create_model("CreateVideoBody", __base__=CreateVideoRequest, **_knob_fields())


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
    # ours: the resolved generation (what the worker runs; the same values give the same video)
    seed: int
    num_frames: int
    fps: int
    num_steps: int
    solver: str | None = None
    sampler: str | None = None
    sigma_max: float | None = None
    guidance_scale: float | None = None
    negative_prompt: str | None = None
    sla_topk: float | None = None
    queue_position: int | None = None
    timings: dict[str, float] = Field(default_factory=dict)
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


# Failures on the server's side: the worker's message (exception text: paths, object keys, hosts) stays in
# its log; the client gets what happened.
_PUBLIC_MESSAGES = {ErrorCode.storage_error: "the video could not be stored or read; retry later"}
_PATHS_AND_KEYS = re.compile(r"(?:[A-Za-z]:)?(?:/[\w.\-]+){2,}|\b(?:inputs|outputs)/\S+")


def public_error(err: JobError) -> VideoError:
    """A job's error as a client sees it: no server paths or object keys."""
    message = _PUBLIC_MESSAGES.get(err.code) or _PATHS_AND_KEYS.sub("<redacted>", err.message)
    return VideoError(code=err.code, message=message)


def video_object(
    record: JobRecord, *, queue_position: int | None = None, base_url: str | None = None
) -> VideoObject:
    """The video object of a job record: GET /v1/videos/{id}, the list, and webhook payloads."""
    spec, p = record.spec, record.spec.params
    err = record.error
    if record.status is JobStatus.cancelled and err is None:
        err_obj: VideoError | None = VideoError(code="cancelled", message="the job was cancelled")
    else:
        err_obj = public_error(err) if err is not None else None
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
        prompt=p.prompt,
        seconds=seconds_of(p.num_frames, p.fps),
        size=f"{p.width}x{p.height}",
        error=err_obj,
        seed=p.seed if p.seed is not None else 0,  # resolved specs always carry one
        num_frames=p.num_frames,
        fps=p.fps,
        num_steps=p.num_steps if p.num_steps is not None else 0,
        solver=p.solver,
        sampler=p.sampler,
        sigma_max=p.sigma_max,
        guidance_scale=p.guidance_scale,
        negative_prompt=p.negative_prompt,
        sla_topk=p.sla_topk,
        queue_position=queue_position if record.status is JobStatus.queued else None,
        timings=record.timings,
        url=url,
        metadata=record.metadata,
    )
