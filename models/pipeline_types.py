"""Plain data passed into and out of the generation pipeline (no torch, no prometheus).

The worker calls `pipeline.generate(spec.params, image=..., on_step=progress)` with the job's
`contract.jobs.GenerationParams` and a `Progress` (which hears every stage, the previews and the decoded
frames as they come), and turns the returned `StageTimings` into Prometheus histograms.
`GenerationRequest` is the pipeline's older input type (prompt, size and knobs plus the image in one
object); `generate` still accepts it and converts it to GenerationParams.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from contract.jobs import GenerationParams

# Called after each denoise step with (steps_done, total_steps). Raising from it aborts the
# generation; the worker raises its cancellation exception this way.
StepCallback = Callable[[int, int], None]

# Stages a generation reports (contract.jobs.Stage values).
PIPELINE_STAGES = ("text_encode", "image_encode", "denoise", "vae_decode")


@dataclass(frozen=True)
class StageEvent:
    """Where a generation is: `done` of `total` units of `stage` finished (done == 0: the stage starts).

    Units: text_encode and image_encode 1; denoise: steps, reported when the device has completed
    the step (not when the host queued it); vae_decode: latent frames decoded, reported per chunk (a
    chunk holds one or more latent frames: 1 output frame for the first, 4 for each later one).
    """

    stage: str
    done: int
    total: int


class Progress:
    """What a generation tells its caller while it runs. Pass one as `generate(..., on_step=progress)`;
    override what you need. Raising from any method aborts the generation (the worker cancels this way).

    A Progress is also a plain step callback: `progress(done, total)` is a denoise step, so code that
    wraps `on_step` in a function of its own still reports steps (it then hears nothing else, and the
    caller takes `result.frames` at the end).
    """

    # Ask for previews: the pipeline then maps each step's x0 estimate to RGB (a 16→3 projection on
    # the device, one small copy to the host) and calls `on_preview`.
    wants_preview: bool = False

    def __call__(self, done: int, total: int) -> None:
        self.on_stage(StageEvent("denoise", done, total))

    def on_stage(self, event: StageEvent) -> None:
        """A stage starts (done == 0) or a unit of it has finished."""

    def on_preview(self, step: int, total: int, image: np.ndarray) -> None:
        """After denoise step `step` (device completed): the middle frame of the current x0 estimate,
        [h, w, 3] uint8 RGB at latent resolution (1/8 of the video's sides)."""

    def on_frames(self, start: int, frames: np.ndarray) -> None:
        """Decoded frames `start .. start + n - 1` as [n, H, W, 3] uint8 RGB, in order, as each VAE
        chunk finishes. The array is a view of `result.frames` and stays valid (not written again)."""


class StepProgress(Progress):
    """A plain `on_step(done, total)` callback as a Progress: hears the completed denoise steps only."""

    def __init__(self, on_step: StepCallback | None) -> None:
        self.on_step = on_step

    def on_stage(self, event: StageEvent) -> None:
        if self.on_step is not None and event.stage == "denoise" and event.done > 0:
            self.on_step(event.done, event.total)


def as_progress(on_step: StepCallback | Progress | None) -> Progress:
    """The Progress behind `generate`'s `on_step` argument (a Progress, a plain callback or None)."""
    return on_step if isinstance(on_step, Progress) else StepProgress(on_step)


@dataclass(frozen=True)
class GenerationRequest:
    """The older input of `WanPipeline.generate` (kept for the README's API): GenerationParams + image."""

    prompt: str
    width: int
    height: int
    num_frames: int  # 4k + 1
    seed: int
    num_steps: int = 4
    kind: Literal["t2v", "i2v"] = "t2v"
    image: np.ndarray | None = None  # I2V conditioning image, [H, W, 3] uint8 RGB, any size
    negative_prompt: str | None = None
    sigma_max: float | None = None  # None: the model's default
    sla_topk: float | None = None  # None: the checkpoint's / model's default
    guidance_scale: float | None = None  # original (non-distilled) checkpoints only
    sampler: Literal["sde", "ode"] = "sde"


@dataclass
class StageTimings:
    """Wall seconds per stage (GPU stages measured at stage boundaries, not inside the loop)."""

    text_encode: float = 0.0
    image_encode: float = 0.0
    denoise_steps: list[float] = field(default_factory=list)
    vae_decode: float = 0.0

    @property
    def denoise(self) -> float:
        return float(sum(self.denoise_steps))

    def as_dict(self) -> dict[str, float]:
        return {
            "text_encode": self.text_encode,
            "image_encode": self.image_encode,
            "denoise": self.denoise,
            "vae_decode": self.vae_decode,
        }


@dataclass
class GenerationResult:
    frames: np.ndarray  # [F, H, W, 3] uint8 RGB
    timings: StageTimings
    seed: int
    params: GenerationParams | None = None  # the resolved params the video was made with
