"""Samplers: rCM (TurboDiffusion's distilled checkpoints, 1–4 steps) and 50-step flow matching + CFG.

Both work in rectified-flow time t ∈ [0, 1], with x_t = (1 − t)·x_0 + t·ε and the network predicting the
velocity v = ε − x_0 at model time t·1000.

rCM (arXiv 2510.08431, as TurboDiffusion samples it). TrigFlow angles
    θ = [atan(σ_max), 1.5, 1.4, 1.0][:steps] + [0]
map to rectified-flow times t = sin θ / (sin θ + cos θ). Sampling starts from x = t₀·ε and each step
either re-noises the predicted clean sample (SDE, fresh seeded noise)
    x ← (1 − t_next)·(x − t·v) + t_next·ε'
or follows the flow (ODE)
    x ← x − (t − t_next)·v.

Flow matching (original Wan checkpoints): Euler steps over shifted sigmas
σ' = s·σ / (1 + (s − 1)·σ), σ = linspace(1, 0, steps + 1), with classifier-free guidance
v = v_uncond + g·(v_cond − v_uncond). (Wan's own scripts use a UniPC solver over the same sigmas;
Euler is the plain reference solver.)

Determinism: all noise comes from one `torch.Generator` seeded by the caller, drawn on the CPU in a fixed
order (initial noise, then one draw per SDE step), so the same seed gives the same video on any device.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from typing import Any, Literal

import torch

# velocity(x, t) -> v, with t a python float in [0, 1]; the caller scales to model time and picks
# the expert (A14B) and the guidance.
VelocityFn = Callable[[torch.Tensor, float], torch.Tensor]
StepHook = Callable[[int, int], None]
# on_x0(step, total, x0): the step's estimate of the clean sample, x0 = x_t − t·v (float32, on the
# device; read it, don't keep it). For previews.
X0Hook = Callable[[int, int, torch.Tensor], None]

RCM_MID_ANGLES = (1.5, 1.4, 1.0)
A14B_SWITCH_T = 0.9  # Wan2.2 A14B: high-noise expert while t >= 0.9, low-noise expert below


def rcm_timesteps(num_steps: int, sigma_max: float) -> list[float]:
    """Rectified-flow times of the rCM sampler, including the final 0 (length num_steps + 1).

    >>> [round(t, 6) for t in rcm_timesteps(4, 80.0)]
    [0.987654, 0.933781, 0.852895, 0.608979, 0.0]
    """
    if not 1 <= num_steps <= 1 + len(RCM_MID_ANGLES):
        raise ValueError(f"rCM supports 1 to {1 + len(RCM_MID_ANGLES)} steps, got {num_steps}")
    if sigma_max <= 0:
        raise ValueError(f"sigma_max must be positive, got {sigma_max}")
    angles = [math.atan(sigma_max), *RCM_MID_ANGLES][:num_steps] + [0.0]
    return [math.sin(a) / (math.sin(a) + math.cos(a)) for a in angles]


def _to_device(host: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """A CPU tensor on `device`, without a host sync on CUDA: a copy from pageable memory first waits for
    the GPU's stream to drain (inside the denoise loop: for the step in flight, leaving the GPU idle until
    the next one is launched); from pinned memory it is queued behind that step like a kernel."""
    device = torch.device(device)
    if device.type != "cuda":
        return host.to(device)
    return host.pin_memory().to(device, non_blocking=True)


def _noise_like(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    # Drawn on the CPU so that a seed means the same noise on every device.
    return _to_device(torch.randn(x.shape, generator=generator, dtype=torch.float32), x.device)


def initial_noise(
    shape: tuple[int, ...], generator: torch.Generator, device: torch.device | str
) -> torch.Tensor:
    return _to_device(torch.randn(shape, generator=generator, dtype=torch.float32), device)


def draw_initial_noise(
    shape: tuple[int, ...], generator: torch.Generator, device: torch.device | str
) -> Callable[[], torch.Tensor]:
    """`initial_noise`, drawn on a host thread: the draw of a 480p video's ~2M values takes 8-16 ms of CPU,
    which the device would otherwise sit idle for (scripts/generate_gaps.py). Returns `take()`, which waits
    for the draw, re-raises its error if it failed, and queues the copy to `device` on the caller's stream.
    Nothing else may use `generator` until `take()` has returned."""
    device = torch.device(device)
    box: dict[str, Any] = {}

    def draw() -> None:
        try:
            host = torch.randn(shape, generator=generator, dtype=torch.float32)
            box["noise"] = host.pin_memory() if device.type == "cuda" else host
        except BaseException as exc:  # noqa: BLE001 - handed to take()
            box["error"] = exc

    thread = threading.Thread(target=draw, name="initial-noise", daemon=True)
    thread.start()

    def take() -> torch.Tensor:
        thread.join()
        if "error" in box:
            raise box["error"]
        return _to_device(box["noise"], device)  # pinned already on CUDA: pin_memory() returns it as it is

    return take


def sample_rcm(
    velocity: VelocityFn,
    noise: torch.Tensor,
    *,
    num_steps: int,
    sigma_max: float,
    generator: torch.Generator,
    mode: Literal["sde", "ode"] = "sde",
    on_step: StepHook | None = None,
    on_x0: X0Hook | None = None,
) -> torch.Tensor:
    """Run the rCM sampler from pure noise `noise` [B, C, T, H, W]; returns x_0 in float32."""
    if mode not in ("sde", "ode"):
        raise ValueError(f"mode must be 'sde' or 'ode', got {mode!r}")
    times = rcm_timesteps(num_steps, sigma_max)
    x = noise.float() * times[0]
    for i, (t, t_next) in enumerate(zip(times[:-1], times[1:], strict=True)):
        v = velocity(x, t).float()
        x0 = x - t * v
        if on_x0 is not None:
            on_x0(i + 1, num_steps, x0)
        if mode == "sde":
            x = (1.0 - t_next) * x0 + t_next * _noise_like(x, generator) if t_next > 0 else x0
        else:
            x = x - (t - t_next) * v
        if on_step is not None:
            on_step(i + 1, num_steps)
    return x


def flow_sigmas(num_steps: int, shift: float) -> list[float]:
    """Shifted flow-matching sigmas from 1 to 0 (length num_steps + 1)."""
    if num_steps < 1:
        raise ValueError("num_steps must be >= 1")
    out = []
    for i in range(num_steps + 1):
        s = 1.0 - i / num_steps
        out.append(shift * s / (1.0 + (shift - 1.0) * s))
    return out


def cfg_combine(v_cond: torch.Tensor, v_uncond: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    """Classifier-free guidance: v_uncond + g·(v_cond − v_uncond) (fp32 velocities)."""
    return v_uncond + guidance_scale * (v_cond - v_uncond)


def sample_flow_cfg(
    velocity_cond: VelocityFn,
    velocity_uncond: VelocityFn | None,
    noise: torch.Tensor,
    *,
    num_steps: int = 50,
    shift: float = 5.0,
    guidance_scale: float = 5.0,
    on_step: StepHook | None = None,
    on_x0: X0Hook | None = None,
) -> torch.Tensor:
    """Euler flow-matching solver with classifier-free guidance (guidance off when uncond is None)."""
    sigmas = flow_sigmas(num_steps, shift)
    x = noise.float()
    for i, (s, s_next) in enumerate(zip(sigmas[:-1], sigmas[1:], strict=True)):
        v = velocity_cond(x, s).float()
        if velocity_uncond is not None and guidance_scale != 1.0:
            v = cfg_combine(v, velocity_uncond(x, s).float(), guidance_scale)
        if on_x0 is not None:
            on_x0(i + 1, num_steps, x - s * v)
        x = x + (s_next - s) * v
        if on_step is not None:
            on_step(i + 1, num_steps)
    return x
