"""Prompt (+ image) → frames: the Wan generation pipeline the worker and `turbovid generate` run.

    pipe = load_pipeline("wan2.1-t2v-1.3b", ["/ckpt/TurboWan2.1-T2V-1.3B-480P-quant.pth", "/ckpt/wan"],
                         device="cuda", dtype=torch.bfloat16)  # attention/linear "auto": sagesla + w8a8
    params = GenerationParams(prompt="a cat surfing", width=832, height=480, num_frames=81, seed=1)
    result = pipe.generate(params, on_step=print)  # I2V: kind="i2v" and image=np.ndarray [H, W, 3] uint8
    result.frames  # [F, H, W, 3] uint8

Progress of every stage, previews and streamed frames: pass a `models.pipeline_types.Progress` as
`on_step` (the worker's feeds decoded chunks to the MP4 encoder while the VAE goes on).

`generate` takes `contract.jobs.GenerationParams` (what the API body and the job spec carry) and honours
every knob: num_steps and seed; sampler (sde/ode) and sigma_max for the rCM solver; negative_prompt and
guidance_scale for the flow solver; sla_topk (passed to each DiT call, never stored) for SLA attention.
What this pipeline cannot honour is refused with `contract.jobs.ParamError` (a ValueError naming the
knob), judged from its own `capabilities()`. The old `models.pipeline_types.GenerationRequest` is still
accepted (converted to GenerationParams + image).

Stages: text encode (umT5, cached per prompt) → [I2V] VAE encode of the first frame → denoise (rCM,
1–4 steps; or flow matching with CFG for original checkpoints) → VAE decode (chunked, each chunk's
frames handed to the caller as soon as it is decoded; split across the ranks of `sp` or `cfg_parallel`,
`models.vae_parallel`). `StageTimings` records each stage; on CUDA with
events at the stage boundaries and after each step (waited for once after the last step, then per
decoded chunk as it is copied to the host).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from contract.catalog import FLOW_SHIFT, ModelCard, Solver, get_card, latent_frames
from contract.jobs import Capabilities, GenerationParams
from models.checkpoint_components import Components, resolve_components
from models.cuda_graphs import ForwardGraphs
from models.latent_preview import LatentPreview
from models.offload import ExpertOffloader
from models.ops import overridden
from models.parallel import CfgParallel, SequenceParallel
from models.pipeline_types import (
    GenerationRequest,
    GenerationResult,
    Progress,
    StageEvent,
    StageTimings,
    StepCallback,
    as_progress,
)
from models.samplers import A14B_SWITCH_T, VelocityFn, draw_initial_noise, sample_flow_cfg, sample_rcm
from models.vae_parallel import split_decode_iter, split_encode

log = logging.getLogger(__name__)

VAE_STRIDE = (4, 8, 8)
TEXT_CACHE_SIZE = 64
SOLVERS = ("rcm", "flow")


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
    card: ModelCard
    transformers: dict[str, torch.nn.Module]  # "t2v" | "i2v" | "high" + "low"
    text_encoder: object  # .encode(list[str]) -> [B, 512, text_dim]
    vae: object  # .encode(video) / .decode(latents)
    device: torch.device
    dtype: torch.dtype
    solver: Solver = "rcm"  # rCM (distilled checkpoints) or flow matching + CFG (original ones)
    attention: str = "dense"  # the DiTs' effective backends (after "auto"; models.ops)
    linear: str = "native"
    flow_shift: float = FLOW_SHIFT
    latent_preview: LatentPreview | None = None  # latent → RGB factors for previews (fitted on first use)
    # sequence parallel: every DiT call split over this group's ranks (models.parallel), and the VAE decode
    # split into bands of rows (models.vae_parallel); every rank runs generate() with the same params and
    # gets the same frames. None: this process alone.
    sp: SequenceParallel | None = None
    # flow solver: cond on rank 0, uncond on rank 1 (models.parallel); the VAE decode split over both.
    # With `sp` set too (a worker's ranks), a guided flow job takes CFG parallel (one velocity exchange a
    # step instead of the all-to-alls of every block) and every other job takes `sp`. With 2·k ranks the
    # CFG parallel's own `sp` splits each call over k of them (`models.parallel.cfg_sequence_parallel`).
    cfg_parallel: CfgParallel | None = None
    # memory budget (models.offload): the A14B experts share one device slot (the inactive one in pinned
    # host memory, swapped in at the switch); the text encoder on the device only while it encodes
    # (its embeddings are cached). None: everything resident.
    expert_offload: ExpertOffloader | None = None
    text_encoder_offload: ExpertOffloader | None = None
    # Replay each DiT forward as a CUDA graph, one per input size (models.cuda_graphs), on CUDA when this
    # process runs the whole forward (no `sp`) and the experts are resident (no `expert_offload`).
    cuda_graphs: bool = False

    def __post_init__(self) -> None:
        if self.solver not in SOLVERS:
            raise ValueError(f"unknown solver {self.solver!r}; known: {SOLVERS}")
        self._text_cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._graphs: dict[torch.nn.Module, ForwardGraphs] = {}

    @property
    def model_id(self) -> str:
        return self.card.model_id

    def capabilities(self) -> Capabilities:
        """What this pipeline does with the knobs (what a worker running it advertises)."""
        return Capabilities(solver=self.solver, sla=self.attention in ("sla", "sagesla"))

    # 1. inputs ----------------------------------------------------------------------------------
    def resolve(
        self, params: GenerationParams | GenerationRequest, image: np.ndarray | None = None
    ) -> tuple[GenerationParams, np.ndarray | None]:
        """Concrete params (the model's defaults filled in by `GenerationParams.resolve`) and the I2V image;
        ParamError (a ValueError naming the knob) for anything this pipeline cannot honour."""
        if isinstance(params, GenerationRequest):
            params, image = _from_request(params, self.solver), params.image if image is None else image
        params = params.resolve(self.card, self.capabilities())
        if params.kind == "i2v" and image is None:
            raise ValueError("i2v needs an image")
        if params.kind == "t2v" and image is not None:
            raise ValueError("an image was given for t2v; ask for kind i2v to condition on it")
        return params, image

    @torch.inference_mode()
    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        """[B, 512, text_dim] in the pipeline dtype; an LRU cache keeps recent prompts on device."""
        missing = [p for p in prompts if p not in self._text_cache]
        if missing:
            if self.text_encoder_offload is not None:
                self.text_encoder_offload.activate("text_encoder")
            embs = self.text_encoder.encode(missing)  # type: ignore[attr-defined]
            if self.text_encoder_offload is not None:
                self.text_encoder_offload.release()
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
        ranks = self._vae_ranks()
        if ranks is not None:  # every rank: its band of rows, then the whole latents
            latent = split_encode(self.vae, video, ranks)  # type: ignore[arg-type]
        else:
            latent = self.vae.encode(video)  # type: ignore[attr-defined]  # [1, 16, T, h, w]
        t_lat, h, w = latent.shape[2:]
        mask = torch.zeros(1, 4 * t_lat, h, w, device=self.device, dtype=latent.dtype)
        mask[:, :4] = 1.0  # the first latent frame stands for 4 "frames", all known
        mask = mask.view(1, t_lat, 4, h, w).transpose(1, 2)  # [1, 4, T, h, w]
        return torch.cat([mask, latent], dim=1)

    # 2. denoise ---------------------------------------------------------------------------------
    def _expert(self, kind: str, t: float) -> torch.nn.Module:
        if self.card.experts:
            name = "high" if t >= A14B_SWITCH_T else "low"
            if self.expert_offload is not None:
                return self.expert_offload.activate(name)  # queues the swap; the forward waits block by block
            return self.transformers[name]
        return self.transformers[kind]

    def _velocity(
        self, kind: str, context: torch.Tensor, cond: torch.Tensor | None, sla_topk: float | None,
        sp: SequenceParallel | None = None,
    ) -> Callable[[torch.Tensor, float], torch.Tensor]:
        def velocity(x: torch.Tensor, t: float) -> torch.Tensor:
            timestep = torch.full((x.shape[0],), t * 1000.0, device=self.device, dtype=torch.float32)
            model = self._expert(kind, t)
            if self._graphed(sp):
                return self._graphs_of(model)(x.to(self.dtype), timestep, context, cond, sla_topk=sla_topk)
            return model(x.to(self.dtype), timestep, context, cond, sla_topk=sla_topk, sp=sp)

        return velocity

    def _graphed(self, sp: SequenceParallel | None) -> bool:
        # not under `models.ops.override`: a captured graph would replay the backends of its capture
        return (self.cuda_graphs and sp is None and self.expert_offload is None and self.device.type == "cuda"
                and not overridden())

    def _graphs_of(self, model: torch.nn.Module) -> ForwardGraphs:
        """The CUDA graphs of one DiT (made on first use, kept with the pipeline)."""
        if model not in self._graphs:
            self._graphs[model] = ForwardGraphs(model)
        return self._graphs[model]

    # 3. the whole thing -------------------------------------------------------------------------
    @torch.inference_mode()
    def generate(
        self, params: GenerationParams | GenerationRequest, *, image: np.ndarray | None = None,
        on_step: StepCallback | Progress | None = None,
    ) -> GenerationResult:
        """Frames for `params`; I2V conditions on `image` ([H, W, 3] uint8 RGB, any size: resized to cover
        the frame and centre-cropped). Unset knobs take the model's defaults; `result.params` holds the
        values used.

        on_step: `on_step(done, total)` after each denoise step, or a `models.pipeline_types.Progress`,
        which also hears every stage (`on_stage`: text encode, image encode, denoise step k/n, VAE decode
        chunk by chunk), previews of the x0 estimate (`on_preview`, when `wants_preview`) and the decoded
        frames as each chunk is ready (`on_frames`, for a streaming encoder). Steps are reported when
        the device has completed them (a CUDA event per step, queried at the next step and waited for
        once after the last). Raising from any callback aborts the generation."""
        params, image = self.resolve(params, image)
        assert params.seed is not None and params.num_steps is not None  # resolved
        progress = as_progress(on_step)
        clock = _StageClock(self.device)
        generator = torch.Generator().manual_seed(params.seed)
        shape = (1, 16, latent_frames(params.num_frames), params.height // VAE_STRIDE[1],
                 params.width // VAE_STRIDE[2])
        # drawn on the host (the same noise for a seed on every device) on a thread while the encoders run
        take_noise = draw_initial_noise(shape, generator, self.device)

        progress.on_stage(StageEvent("text_encode", 0, 1))
        with clock.span("text_encode"):
            context = self.encode_text([params.prompt])
            negative = self.encode_text([params.negative_prompt or ""]) if self.solver == "flow" else None
        progress.on_stage(StageEvent("text_encode", 1, 1))
        cond = None
        if params.kind == "i2v":
            assert image is not None
            progress.on_stage(StageEvent("image_encode", 0, 1))
            with clock.span("image_encode"):
                cond = self.image_condition(image, params.num_frames, params.width, params.height)
            progress.on_stage(StageEvent("image_encode", 1, 1))

        noise = take_noise()
        steps = _StepReporter(clock, progress, self.preview_map() if progress.wants_preview else None)
        progress.on_stage(StageEvent("denoise", 0, params.num_steps))
        steps.start()
        # CFG parallel for a guided flow job (each call split over its half of the ranks when the CFG
        # parallel carries an `sp`: SP × CFG), else sequence parallel over all ranks (when set)
        cfg_split = self.solver == "flow" and self.cfg_parallel is not None and params.guidance_scale != 1.0
        split = self.cfg_parallel.sp if cfg_split and self.cfg_parallel is not None else self.sp
        velocity = self._velocity(params.kind, context, cond, params.sla_topk, split)
        if self.solver == "rcm":
            assert params.sigma_max is not None and params.sampler is not None  # resolved
            latents = sample_rcm(velocity, noise, num_steps=params.num_steps, sigma_max=params.sigma_max,
                                 generator=generator, mode=params.sampler, on_step=steps.step,
                                 on_x0=steps.x0 if progress.wants_preview else None)
        else:
            assert negative is not None and params.guidance_scale is not None  # resolved
            uncond: VelocityFn | None = self._velocity(params.kind, negative, cond, params.sla_topk, split)
            if cfg_split:
                assert self.cfg_parallel is not None
                velocity, uncond = self.cfg_parallel.guided(velocity, uncond, params.guidance_scale), None
            latents = sample_flow_cfg(velocity, uncond, noise, num_steps=params.num_steps, shift=self.flow_shift,
                                      guidance_scale=params.guidance_scale, on_step=steps.step,
                                      on_x0=steps.x0 if progress.wants_preview else None)
        with clock.span("vae_decode"):
            # the one wait, for the last step's event, comes once the first decode chunk is queued behind it
            frames = self._decode_frames(latents, params.num_frames, progress, before_first=steps.finish)

        timings = StageTimings()
        for name, seconds in clock.resolve():
            if name.startswith("denoise_"):
                timings.denoise_steps.append(seconds)
            else:
                setattr(timings, name, getattr(timings, name) + seconds)
        return GenerationResult(frames=frames, timings=timings, seed=params.seed, params=params)

    def preview_map(self) -> LatentPreview:
        """The latent → RGB factors of this pipeline's VAE (fitted once, on first use)."""
        if self.latent_preview is None:  # kept on the device: no host copy (and stream sync) per preview
            self.latent_preview = LatentPreview.fit(self.vae).to(self.device)  # type: ignore[arg-type]
        return self.latent_preview

    def _decode_frames(self, latents: torch.Tensor, num_frames: int, progress: Progress,
                       before_first: Callable[[], None] | None = None) -> np.ndarray:
        """VAE-decode chunk by chunk into [F, H, W, 3] uint8 on the host (pinned on CUDA). Each chunk's
        copy to the host is queued before the next chunk is decoded and handed to `progress` once the
        next chunk has been queued, so the device never waits for the host's callbacks. before_first: called
        once the first chunk is queued, before any decode event (the denoise's last report, which waits
        for the device: the decode is queued behind it by then, so the device does not wait for the host)."""
        _, _, t_lat, h, w = latents.shape
        tf = self.vae.config.temporal_factor  # type: ignore[attr-defined]
        cuda = self.device.type == "cuda"
        out = torch.empty((num_frames, h * VAE_STRIDE[1], w * VAE_STRIDE[2], 3), dtype=torch.uint8, pin_memory=cuda)
        host = out.numpy()

        def started() -> None:
            if before_first is not None:
                before_first()
            progress.on_stage(StageEvent("vae_decode", 0, t_lat))

        pending: tuple[int, int, object] | None = None
        decoded = 0  # latent frames handed over

        def deliver(start: int, n: int, ready: object) -> None:
            nonlocal decoded
            if cuda:
                ready.synchronize()  # type: ignore[attr-defined]
            decoded += 1 if start == 0 else n // tf
            progress.on_frames(start, host[start : start + n])
            progress.on_stage(StageEvent("vae_decode", decoded, t_lat))

        start = 0
        for chunk in self._decode_chunks(latents.to(self.dtype)):
            n = chunk.shape[2]  # [1, 3, n, H, W]
            rgb = ((chunk[0].float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
            out[start : start + n].copy_(rgb.permute(1, 2, 3, 0), non_blocking=cuda)  # [n, H, W, 3]
            ready: object = None
            if cuda:
                ready = torch.cuda.Event()
                ready.record()  # type: ignore[attr-defined]
            if pending is not None:
                deliver(*pending)
            else:
                started()
            pending = (start, n, ready)
            start += n
        if pending is not None:
            deliver(*pending)
        else:
            started()
        if start != num_frames:
            raise RuntimeError(f"the VAE decoded {start} frames, expected {num_frames}")
        return host


    def _decode_chunks(self, latents: torch.Tensor) -> Iterator[torch.Tensor]:
        """The VAE's decoded chunks [1, 3, n, H, W]: split across the ranks of `sp` (or of `cfg_parallel`)
        when there are several (every rank calls this and gets every chunk), else this process alone."""
        ranks = self._vae_ranks()
        if ranks is not None:
            return split_decode_iter(self.vae, latents, ranks)  # type: ignore[arg-type]
        return self.vae.decode_iter(latents)  # type: ignore[attr-defined,no-any-return]

    def _vae_ranks(self) -> SequenceParallel | CfgParallel | None:
        """The ranks the VAE encode and decode split across: those of `sp` (or of `cfg_parallel`) when there
        are several, else None (this process alone)."""
        ranks = self.sp if self.sp is not None else self.cfg_parallel
        return ranks if ranks is not None and ranks.world_size > 1 else None


class _StepReporter:
    """Denoise steps reported as the device completes them. After each step a (timing) event is
    recorded; a step is reported once its event has completed: queried (no wait) at every later
    step, and waited for after the last one. With previews, the step's x0 estimate of the middle latent
    frame is projected to RGB on the device and copied to pinned host memory before the event, so a
    completed event means the preview is on the host too. On CPU everything is reported at once."""

    def __init__(self, clock: _StageClock, progress: Progress, preview: LatentPreview | None) -> None:
        self.clock, self.progress, self.preview = clock, progress, preview
        self.marks: list[object] = []
        self.pending: list[tuple[int, int, object, torch.Tensor | None]] = []
        self.images: dict[int, torch.Tensor] = {}

    def start(self) -> None:
        self.marks.append(self.clock.mark())

    def x0(self, step: int, total: int, x0: torch.Tensor) -> None:
        if self.preview is None:
            return
        rgb = self.preview.to_rgb(x0[0, :, x0.shape[2] // 2])  # [h, w, 3] uint8 on the device
        if self.clock.cuda:
            host = torch.empty(rgb.shape, dtype=torch.uint8, pin_memory=True)
            host.copy_(rgb, non_blocking=True)
            rgb = host
        self.images[step] = rgb

    def step(self, done: int, total: int) -> None:
        mark = self.clock.mark()
        self.clock.add(f"denoise_{len(self.marks)}", self.marks[-1], mark)
        self.marks.append(mark)
        self.pending.append((done, total, mark, self.images.pop(done, None)))
        self._report(wait=False)

    def finish(self) -> None:
        self._report(wait=True)

    def _report(self, *, wait: bool) -> None:
        while self.pending:
            done, total, mark, image = self.pending[0]
            if self.clock.cuda:
                if wait:
                    mark.synchronize()  # type: ignore[attr-defined]
                elif not mark.query():  # type: ignore[attr-defined]
                    return
            self.pending.pop(0)
            self.progress.on_stage(StageEvent("denoise", done, total))
            if image is not None:
                self.progress.on_preview(done, total, image.numpy())


def _from_request(req: GenerationRequest, solver: str) -> GenerationParams:
    """The old request type as GenerationParams. Its `sampler` had a default ("sde") that the flow solver
    never read; it is dropped there. Every other knob is passed as given, so unhonoured ones are refused."""
    return GenerationParams(
        kind=req.kind, width=req.width, height=req.height, num_frames=req.num_frames, prompt=req.prompt,
        negative_prompt=req.negative_prompt, seed=req.seed, num_steps=req.num_steps,
        sampler=req.sampler if solver == "rcm" else None, sigma_max=req.sigma_max, sla_topk=req.sla_topk,
        guidance_scale=req.guidance_scale,
    )


def load_pipeline(
    model_id: str,
    checkpoints: list[str | Path],
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    attention: str = "auto",
    linear: str = "auto",
    cache_dir: str | Path | None = None,
    solver: str | None = None,
    sampler: str | None = None,
    offload_experts: bool = False,
    offload_text_encoder: bool = False,
) -> WanPipeline:
    """Load every component of `model_id` once. For the tiny models without checkpoints, random tiny
    weights are built (deterministically) under `cache_dir` and loaded like real ones.

    attention / linear: "auto" (from the checkpoint's manifest or keys and the device; see
    `models.ops.select_ops`) or a backend to force. solver: "rcm" | "flow" | "auto" or None (the catalog's
    solver for the model); ``sampler`` is its old name. The effective choices are `pipe.solver`,
    `pipe.attention`, `pipe.linear`. offload_experts (two-expert models): each expert's weights go to
    pinned host memory as it is loaded and share one device slot (`models.offload`); offload_text_encoder:
    the text encoder is on the device only while it encodes a prompt not yet cached.
    """
    from models import load_text_encoder, load_transformer, load_vae

    if sampler is not None and solver is not None and sampler != solver:
        raise ValueError(f"solver={solver!r} and its old name sampler={sampler!r} disagree")
    card = get_card(model_id)
    chosen = solver or sampler
    resolved = card.solver if chosen in (None, "auto") else chosen
    if resolved not in SOLVERS:
        raise ValueError(f"unknown solver {resolved!r}; known: {SOLVERS} or 'auto'")
    device = torch.device(device)
    if not checkpoints:
        if not card.tiny:
            raise ValueError(f"{model_id} needs checkpoints (see `turbovid download {model_id}`)")
        from models.tiny import ensure_tiny_checkpoints

        root = Path(cache_dir) if cache_dir is not None else Path.home() / ".cache" / "turbovid"
        checkpoints = [ensure_tiny_checkpoints(root / "wan-tiny")]
    prefer = "native" if linear == "native" else "w8a8"  # which DiT file to take when both are given
    parts: Components = resolve_components([Path(str(c)) for c in checkpoints], card, linear=prefer,
                                           sampler=resolved)

    def dit(path: Path) -> torch.nn.Module:
        return load_transformer(path, device=device, dtype=dtype, attention=attention, linear=linear).eval()

    expert_offload = ExpertOffloader(device) if offload_experts and card.experts else None
    transformers = {}
    for role, path in parts.transformers.items():  # one at a time: with offload, one expert on the device at most
        transformers[role] = dit(path) if expert_offload is None else expert_offload.add(role, dit(path))
    backends = {(m.ops.attention, m.ops.linear) for m in transformers.values()}
    if len(backends) != 1:
        raise ValueError(f"{model_id}: its DiTs resolved to different backends {sorted(backends)}; "
                         "pass attention= and linear= explicitly")
    ((eff_attention, eff_linear),) = backends
    text_encoder = load_text_encoder(parts.text_encoder, tokenizer=parts.tokenizer, device=device, dtype=dtype)
    text_offload = None
    if offload_text_encoder:
        text_offload = ExpertOffloader(device)
        text_offload.add("text_encoder", text_encoder.model)
    vae = load_vae(parts.vae, device=device, dtype=dtype)
    log.info("%s loaded: solver %s, attention %s, linear %s, %s %s", model_id, resolved, eff_attention,
             eff_linear, device, dtype)
    return WanPipeline(card, transformers, text_encoder, vae, device, dtype, solver=resolved,  # type: ignore[arg-type]
                       attention=eff_attention, linear=eff_linear, expert_offload=expert_offload,
                       text_encoder_offload=text_offload)
