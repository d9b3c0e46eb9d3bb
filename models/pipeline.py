"""Prompt (+ image) → frames: the Wan generation pipeline the worker and `turbovid generate` run.

    pipe = load_pipeline("wan2.1-t2v-1.3b", ["/ckpt/TurboWan2.1-T2V-1.3B-480P-quant.pth", "/ckpt/wan"],
                         device="cuda", dtype=torch.bfloat16, attention="sagesla", linear="w8a8")
    result = pipe.generate(GenerationRequest(prompt="a cat surfing", width=832, height=480,
                                             num_frames=81, seed=1), on_step=print)
    result.frames  # [F, H, W, 3] uint8

Stages: text encode (umT5, cached per prompt) → [I2V] VAE encode of the first frame → denoise (rCM,
1–4 steps; or 50-step flow matching with CFG for original checkpoints) → VAE decode (chunked).
`StageTimings` records each stage; on CUDA with events at the stage boundaries (one sync at the end).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image

from models.checkpoint_components import Components, resolve_components
from models.pipeline_types import GenerationRequest, GenerationResult, StageTimings, StepCallback
from models.presets import ModelSpec, check_frames, get_model, tiny_model
from models.samplers import A14B_SWITCH_T, initial_noise, sample_flow_cfg, sample_rcm

VAE_STRIDE = (4, 8, 8)
PATCH = (1, 2, 2)
TEXT_CACHE_SIZE = 64


class _StageClock:
    """Stage wall times: CUDA events on GPU (resolved once at the end), perf_counter on CPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self._spans: list[tuple[str, object, object]] = []

    def mark(self) -> object:
        """A point in time (a recorded CUDA event on GPU) for `add`."""
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            return ev
        return time.perf_counter()

    @contextmanager
    def span(self, name: str) -> Iterator[None]:
        start = self.mark()
        yield
        self.add(name, start, self.mark())

    def add(self, name: str, start: object, end: object) -> None:
        self._spans.append((name, start, end))

    def resolve(self) -> list[tuple[str, float]]:
        if self.cuda:
            torch.cuda.synchronize()
            return [(n, s.elapsed_time(e) / 1000.0) for n, s, e in self._spans]  # type: ignore[attr-defined]
        return [(n, float(e) - float(s)) for n, s, e in self._spans]  # type: ignore[arg-type]


@dataclass
class WanPipeline:
    spec: ModelSpec
    transformers: dict[str, torch.nn.Module]  # "t2v" | "i2v" | "high" + "low"
    text_encoder: object  # .encode(list[str]) -> [B, 512, text_dim]
    vae: object  # .encode(video) / .decode(latents)
    device: torch.device
    dtype: torch.dtype
    sampler: Literal["rcm", "flow"] = "rcm"
    flow_shift: float = 5.0

    def __post_init__(self) -> None:
        self._text_cache: OrderedDict[str, torch.Tensor] = OrderedDict()

    @property
    def model_id(self) -> str:
        return self.spec.model_id

    # 1. inputs ----------------------------------------------------------------------------------
    def validate(self, req: GenerationRequest) -> None:
        if req.kind not in self.spec.kinds:
            raise ValueError(f"{self.model_id} does not do {req.kind}; it does {list(self.spec.kinds)}")
        check_frames(req.num_frames)
        if req.num_frames > self.spec.max_frames:
            raise ValueError(f"num_frames {req.num_frames} > {self.spec.max_frames} for {self.model_id}")
        if req.width % 16 or req.height % 16 or req.width <= 0 or req.height <= 0:
            raise ValueError(f"width and height must be positive multiples of 16, got {req.width}x{req.height}")
        if req.kind == "i2v" and req.image is None:
            raise ValueError("i2v needs an image")
        if self.sampler == "rcm" and not 1 <= req.num_steps <= 4:
            raise ValueError(f"rCM takes 1 to 4 steps, got {req.num_steps}")

    @torch.inference_mode()
    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        """[B, 512, text_dim] in the pipeline dtype; an LRU cache keeps recent prompts on device."""
        missing = [p for p in prompts if p not in self._text_cache]
        if missing:
            embs = self.text_encoder.encode(missing)  # type: ignore[attr-defined]
            for p, e in zip(missing, embs, strict=True):
                self._text_cache[p] = e.to(self.device, self.dtype)
        for p in prompts:
            self._text_cache.move_to_end(p)
        while len(self._text_cache) > TEXT_CACHE_SIZE:
            self._text_cache.popitem(last=False)
        return torch.stack([self._text_cache[p] for p in prompts])

    def _image_tensor(self, image: np.ndarray, width: int, height: int) -> torch.Tensor:
        """Resize to cover (width, height), centre-crop, scale to [-1, 1]: [3, H, W]."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"image must be [H, W, 3] uint8, got {image.shape} {image.dtype}")
        img = Image.fromarray(image)
        scale = max(width / img.width, height / img.height)
        rw, rh = max(width, round(img.width * scale)), max(height, round(img.height * scale))
        img = img.resize((rw, rh), Image.Resampling.LANCZOS)
        left, top = (rw - width) // 2, (rh - height) // 2
        img = img.crop((left, top, left + width, top + height))
        t = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float()
        return t / 127.5 - 1.0

    @torch.inference_mode()
    def image_condition(self, image: np.ndarray, num_frames: int, width: int, height: int) -> torch.Tensor:
        """Wan2.2 I2V condition [1, 20, T, h, w]: 4 mask channels + 16 latent channels of the video
        whose first frame is the image and whose other frames are zeros."""
        first = self._image_tensor(image, width, height).to(self.device, self.dtype)
        video = torch.zeros(1, 3, num_frames, height, width, device=self.device, dtype=self.dtype)
        video[0, :, 0] = first
        latent = self.vae.encode(video)  # type: ignore[attr-defined]  # [1, 16, T, h, w]
        t_lat, h, w = latent.shape[2:]
        mask = torch.zeros(1, 4 * t_lat, h, w, device=self.device, dtype=latent.dtype)
        mask[:, :4] = 1.0  # the first latent frame stands for 4 "frames", all known
        mask = mask.view(1, t_lat, 4, h, w).transpose(1, 2)  # [1, 4, T, h, w]
        return torch.cat([mask, latent], dim=1)

    # 2. denoise ---------------------------------------------------------------------------------
    def _expert(self, kind: str, t: float) -> torch.nn.Module:
        if self.spec.experts:
            return self.transformers["high" if t >= A14B_SWITCH_T else "low"]
        return self.transformers[kind]

    def _velocity(
        self, kind: str, context: torch.Tensor, cond: torch.Tensor | None
    ) -> Callable[[torch.Tensor, float], torch.Tensor]:
        def velocity(x: torch.Tensor, t: float) -> torch.Tensor:
            timestep = torch.full((x.shape[0],), t * 1000.0, device=self.device, dtype=torch.float32)
            model = self._expert(kind, t)
            return model(x.to(self.dtype), timestep, context, cond)

        return velocity

    def _set_sla_topk(self, topk: float | None) -> None:
        if topk is None:
            return
        for model in self.transformers.values():
            setter = getattr(model, "set_sla_topk", None)
            if setter is not None:
                setter(topk)

    # 3. the whole thing -------------------------------------------------------------------------
    @torch.inference_mode()
    def generate(self, req: GenerationRequest, *, on_step: StepCallback | None = None) -> GenerationResult:
        self.validate(req)
        clock = _StageClock(self.device)
        generator = torch.Generator().manual_seed(req.seed)
        t_lat = (req.num_frames - 1) // VAE_STRIDE[0] + 1
        shape = (1, 16, t_lat, req.height // VAE_STRIDE[1], req.width // VAE_STRIDE[2])
        noise = initial_noise(shape, generator, self.device)

        with clock.span("text_encode"):
            context = self.encode_text([req.prompt])
            negative = None
            if self.sampler == "flow":
                negative = self.encode_text([req.negative_prompt or ""])
        cond = None
        if req.kind == "i2v":
            assert req.image is not None
            with clock.span("image_encode"):
                cond = self.image_condition(req.image, req.num_frames, req.width, req.height)

        self._set_sla_topk(req.sla_topk)
        step_clock: list[object] = []

        def step_hook(done: int, total: int) -> None:
            step_clock.append(clock.mark())
            if on_step is not None:
                on_step(done, total)

        step_clock.append(clock.mark())
        if self.sampler == "rcm":
            sigma_max = req.sigma_max if req.sigma_max is not None else self.spec.sigma_max(req.kind)
            latents = sample_rcm(
                self._velocity(req.kind, context, cond), noise, num_steps=req.num_steps,
                sigma_max=sigma_max, generator=generator, mode=req.sampler, on_step=step_hook,
            )
        else:
            uncond = self._velocity(req.kind, negative, cond) if negative is not None else None
            latents = sample_flow_cfg(
                self._velocity(req.kind, context, cond), uncond, noise, num_steps=req.num_steps,
                shift=self.flow_shift, guidance_scale=req.guidance_scale or 5.0, on_step=step_hook,
            )
        for i in range(1, len(step_clock)):
            clock.add(f"denoise_{i}", step_clock[i - 1], step_clock[i])

        with clock.span("vae_decode"):
            video = self.vae.decode(latents.to(self.dtype))  # type: ignore[attr-defined]  # [1,3,F,H,W]
            frames = ((video[0].float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
            frames = frames.permute(1, 2, 3, 0).contiguous().cpu()  # [F, H, W, 3]

        timings = StageTimings()
        for name, seconds in clock.resolve():
            if name.startswith("denoise_"):
                timings.denoise_steps.append(seconds)
            else:
                setattr(timings, name, getattr(timings, name) + seconds)
        return GenerationResult(frames=frames.numpy(), timings=timings, seed=req.seed)


def load_pipeline(
    model_id: str,
    checkpoints: list[str | Path],
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    attention: str = "dense",
    linear: str = "native",
    cache_dir: str | Path | None = None,
    sampler: Literal["rcm", "flow"] = "rcm",
) -> WanPipeline:
    """Load every component of `model_id` once. For the tiny models without checkpoints, random tiny
    weights are built (deterministically) under `cache_dir` and loaded like real ones."""
    from models import load_text_encoder, load_transformer, load_vae

    spec = get_model(model_id)
    device = torch.device(device)
    if not checkpoints:
        if not tiny_model(model_id):
            raise ValueError(f"{model_id} needs checkpoints (see `turbovid download {model_id}`)")
        from models.tiny import ensure_tiny_checkpoints

        root = Path(cache_dir) if cache_dir is not None else Path.home() / ".cache" / "turbovid"
        checkpoints = [ensure_tiny_checkpoints(root / "wan-tiny")]
    parts: Components = resolve_components([Path(str(c)) for c in checkpoints], spec, linear=linear, sampler=sampler)

    def dit(path: Path) -> torch.nn.Module:
        return load_transformer(path, device=device, dtype=dtype, attention=attention, linear=linear).eval()

    transformers = {role: dit(path) for role, path in parts.transformers.items()}
    text_encoder = load_text_encoder(parts.text_encoder, tokenizer=parts.tokenizer, device=device, dtype=dtype)
    vae = load_vae(parts.vae, device=device, dtype=dtype)
    return WanPipeline(spec, transformers, text_encoder, vae, device, dtype, sampler=sampler)
