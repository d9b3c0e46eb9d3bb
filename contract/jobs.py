"""What a generation accepts and what a job is: pure pydantic, serialised as JSON between processes.

`GenerationParams` is the one definition of what a generation accepts. It travels unchanged from the
HTTP body (the gateway adds the size, frame count and kind it resolved from `size`/`seconds`/the
image) through the `JobSpec` on the RQ queue to `pipeline.generate(params)`. The rule: every knob
either changes the output or is refused at the edge with a 400 whose `param` names it.
`GenerationParams.check(card, caps)` is that rule, and `resolve(card, caps)` fills the model's
defaults so the worker receives concrete values (same spec, same video).

Job state (status, progress, timings, error, output) lives in Redis (`contract/jobstore.py`).
"""

from __future__ import annotations

import enum
import secrets
from dataclasses import dataclass
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from contract.catalog import (
    FLOW_GUIDANCE_DEFAULT,
    FPS,
    SIZE_MULTIPLE,
    SOLVER_STEPS,
    ModelCard,
    Solver,
)

SEED_LIMIT = 2**63


class ParamError(ValueError):
    """A generation knob that is out of range or that the serving workers cannot honour."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(f"{param}: {message}")
        self.param = param
        self.message = message


@dataclass(frozen=True)
class Capabilities:
    """What the workers serving a model do with the knobs (they advertise it: contract/workers.py)."""

    solver: Solver = "rcm"
    sla: bool = False  # a per-request `sla_topk` is honoured (attention "sla" or "sagesla")


class GenerationParams(BaseModel):
    """One generation. Size/frames/kind are set by the caller (the gateway resolves them from the API's
    `size`, `seconds` and image); every other field is a client knob whose None means the model's
    default (see `resolve`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # what and how big
    kind: Literal["t2v", "i2v"] = "t2v"
    width: int = Field(gt=0, multiple_of=SIZE_MULTIPLE)
    height: int = Field(gt=0, multiple_of=SIZE_MULTIPLE)
    num_frames: int = Field(ge=1)  # 4k + 1
    fps: int = Field(default=FPS, gt=0)
    # client knobs
    prompt: str = Field(min_length=1)
    negative_prompt: str | None = None  # flow solver only (classifier-free guidance)
    seed: int | None = Field(default=None, ge=0, lt=SEED_LIMIT)
    num_steps: int | None = Field(default=None, ge=1, le=max(r.max for r in SOLVER_STEPS.values()))
    sampler: Literal["sde", "ode"] | None = None  # rCM only: fresh noise each step (sde) or none (ode)
    sigma_max: float | None = Field(default=None, gt=0.0, le=1000.0)  # rCM only
    sla_topk: float | None = Field(default=None, gt=0.0, le=1.0)  # SLA attention only
    guidance_scale: float | None = Field(default=None, gt=0.0, le=30.0)  # flow solver only
    # set by `resolve` from the serving workers' capabilities, never by a client
    solver: Solver | None = None

    @field_validator("prompt")
    @classmethod
    def _prompt_not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("the prompt is empty (only whitespace)")
        return v

    # knobs a client may send (the HTTP body reuses these field definitions)
    CLIENT_KNOBS: ClassVar[tuple[str, ...]] = (
        "prompt", "negative_prompt", "seed", "num_steps", "sampler", "sigma_max", "sla_topk", "guidance_scale",
    )

    def check(self, card: ModelCard, caps: Capabilities) -> None:
        """ParamError naming the first knob this model (as its workers run it) cannot honour."""
        if self.kind not in card.kinds:
            raise ParamError("kind", f"{card.id} does not do {self.kind}; it does {', '.join(card.kinds)}")
        if (self.num_frames - 1) % 4 or self.num_frames > card.max_frames:
            raise ParamError("num_frames", f"must be 4k+1 between 1 and {card.max_frames} for {card.id}")
        solver = self.solver or caps.solver
        if self.solver is not None and self.solver != caps.solver:
            raise ParamError("solver", f"this worker runs the {caps.solver} solver, the job asks for {self.solver}")
        steps = SOLVER_STEPS[solver]
        if self.num_steps is not None and not steps.min <= self.num_steps <= steps.max:
            raise ParamError("num_steps", f"{card.id} runs the {solver} solver, which takes "
                                          f"{steps.min}-{steps.max} steps")
        if solver == "rcm":
            for name in ("negative_prompt", "guidance_scale"):
                if getattr(self, name) is not None:
                    raise ParamError(name, f"{card.id} runs distilled rCM sampling, which has no classifier-free "
                                           f"guidance; {name} is honoured only by workers running the flow solver")
        else:
            for name in ("sigma_max", "sampler"):
                if getattr(self, name) is not None:
                    raise ParamError(name, f"{name} applies to rCM sampling; {card.id} runs the flow solver here")
        if self.sla_topk is not None and not caps.sla:
            raise ParamError("sla_topk", f"no worker serving {card.id} runs SLA attention, so sla_topk would be "
                                         "ignored; leave it out")

    def resolve(self, card: ModelCard, caps: Capabilities) -> GenerationParams:
        """`check`, then a copy with every default made concrete (solver, steps, seed, sampler, sigma_max,
        guidance) so that the same spec always gives the same video."""
        self.check(card, caps)
        solver = caps.solver
        update: dict[str, object] = {"solver": solver}
        if self.num_steps is None:
            update["num_steps"] = SOLVER_STEPS[solver].default
        if self.seed is None:
            update["seed"] = secrets.randbelow(2**32)
        if solver == "rcm":
            if self.sampler is None:
                update["sampler"] = "sde"
            if self.sigma_max is None:
                update["sigma_max"] = card.sigma_max(self.kind)
        elif self.guidance_scale is None:
            update["guidance_scale"] = FLOW_GUIDANCE_DEFAULT
        return self.model_copy(update=update)


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


class ErrorCode(enum.StrEnum):
    """`JobError.code` values a client can see."""

    cancelled = "cancelled"
    invalid_input = "invalid_input"  # the client's input (e.g. an unreadable image) cannot be used
    unsupported_param = "unsupported_param"  # a knob the worker that took the job cannot honour
    generation_failed = "generation_failed"  # an internal error while generating
    out_of_memory = "out_of_memory"
    timeout = "timeout"
    storage_error = "storage_error"
    worker_crashed = "worker_crashed"
    queue_timeout = "queue_timeout"


class JobSpec(BaseModel):
    """Everything a worker needs to produce one video; written by the gateway, read by the worker."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    job_id: str
    owner: str  # API key id (or "dev"); tenancy is checked by the gateway
    model: str
    params: GenerationParams  # resolved: concrete solver, steps, seed, ...
    # I2V: object-store key of the uploaded conditioning image (PNG/JPEG/WebP bytes).
    image_key: str | None = None
    output_key: str  # object-store key for the MP4; the thumbnail goes to `<output_key>.jpg`
    created_at: float  # unix seconds, set by the gateway at enqueue

    @property
    def kind(self) -> str:
        return self.params.kind


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

    code: ErrorCode
    message: str
