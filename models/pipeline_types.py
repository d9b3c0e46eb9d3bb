"""Plain data passed into and out of the generation pipeline (no torch, no prometheus).

The worker calls `pipeline.generate(spec.params, image=..., on_step=...)` with the job's
`contract.jobs.GenerationParams` and turns the returned `StageTimings` into Prometheus histograms.
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
