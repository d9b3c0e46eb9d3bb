"""The whole Wan2.2 A14B I2V job under a GPU memory budget against the same job with everything resident
(issue 12): random weights built in memory on the device, both variants in one run, one JSON line.

    python -m models.bench_a14b                            # H200: 1280x720, 81 frames, 4 steps, 32 GiB budget
    python -m models.bench_a14b --size tiny --device cpu   # CPU smoke run (tests/unit/models/test_bench_a14b.py)
    torchrun --nproc-per-node 2 -m models.bench_a14b --ranks --exchange bf16,int8   # 2 GPUs vs one (bench_ranks)

The pipeline is the one `load_pipeline` assembles for the card (`wan2.2-i2v-a14b`: two I2V experts,
umT5-XXL, the Wan2.1 VAE), built without disk I/O: each expert from `models.bench_dit.random_model` on the
runtime W8A8 path (block Linears quantized on the device, then the Triton GEMM's per-channel layout, as the
loader leaves a `-quant` checkpoint) with SLA attention (sagesla on CUDA, the PyTorch reference on CPU);
umT5 from `UMT5Encoder.random` with a small sentencepiece tokenizer (ids < 1000 of umT5's vocabulary); the
VAE default-initialised. Both variants run the same weights, the card's solver (rCM), the same seed and
input image:

1. resident: everything on the device, no limit (the VAE at its default chunk budget).
2. budget: the same modules under `ExpertOffloader`s, as `load_pipeline(offload_experts=True,
   offload_text_encoder=True)` sets them up (the inactive expert and the text encoder in pinned host
   memory), `torch.cuda.set_per_process_memory_fraction(budget / total)` (an allocation over the budget
   raises), and the VAE's chunk budget taken at each encode/decode from what the budget leaves
   (`BudgetVAE`: the pipeline has no hook for it yet).

Each variant runs `generate` twice (the first warms up: autotune, cuDNN plans, pinned buffers; the second is
timed); every run has its own prompt, so the text encoder runs (its cache would skip it). Peaks are
`max_memory_allocated` / `max_memory_reserved` over both runs of a variant. The timed runs' uint8 frames
are compared (cosine, max |difference|). Done-when: completes, budget_reserved_gib ≤ budget, ratio ≤ 1.3.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from contract.catalog import ModelCard, get_card
from contract.jobs import GenerationParams
from models.bench_dit import random_model
from models.config import WanConfig
from models.offload import ExpertOffloader
from models.pipeline import WanPipeline
from models.pipeline_types import GenerationResult, Progress, StageEvent
from models.t5 import UMT5Config, UMT5Encoder
from models.text_encoder_loading import TextEncoder
from models.tiny_tokenizer import build_tiny_tokenizer
from models.tokenizer import UMT5Tokenizer
from models.vae import VAEConfig, WanVAE

GIB = 2**30
SIZES = {  # card, (width, height), frames
    "a14b": ("wan2.2-i2v-a14b", (1280, 720), 81),
    "tiny": ("wan-tiny-i2v", (48, 48), 5),  # two experts given below; 48x48: a quick CPU test
}
VAE_RESERVE = 2 * GIB  # left free beside the VAE's chunks under a budget: allocator rounding, fragmentation
_T0 = time.perf_counter()


def _log(msg: str) -> None:
    print(f"[bench_a14b {time.strftime('%H:%M:%S')} +{time.perf_counter() - _T0:6.1f}s] {msg}",
          file=sys.stderr, flush=True)


def build_pipeline(card: ModelCard, *, device: str, dtype: torch.dtype, seed: int = 0,
                   log: Callable[[str], None] = _log) -> WanPipeline:
    """`load_pipeline`'s I2V pipeline for `card` (two experts "high"/"low" when it has experts), every
    component random and made directly on `device`."""
    cuda = device.startswith("cuda")
    attention, linear = ("sagesla" if cuda else "sla"), "w8a8"
    cfg = WanConfig.from_name(card.architecture)
    cfg = cfg.with_(in_dim=cfg.out_dim + 20)  # I2V: + 4 mask + 16 image-latent channels (A14B's preset has them)
    transformers = {}
    for i, role in enumerate(("high", "low") if card.experts else ("i2v",)):
        transformers[role] = random_model(cfg, device=device, dtype=dtype, attention=attention, linear=linear,
                                          kernels=cuda, seed=seed + i)
        log(f"DiT {role}: {cfg.num_layers} layers, dim {cfg.dim}, {attention}/{linear}")
    t5_cfg = UMT5Config.from_name(card.text_encoder)
    with tempfile.TemporaryDirectory() as tmp:
        spiece = build_tiny_tokenizer(Path(tmp), vocab_size=min(1000, t5_cfg.vocab_size)).read_bytes()
    umt5 = UMT5Encoder.random(t5_cfg, seed=seed + 2, dtype=dtype, device=device)
    log(f"text encoder {card.text_encoder}: {t5_cfg.num_layers} layers, d_model {t5_cfg.d_model}")
    torch.manual_seed(seed + 3)
    with torch.device(device):
        vae = WanVAE(VAEConfig.from_name(card.vae))
    vae = vae.to(dtype).eval().requires_grad_(False)
    log(f"VAE {card.vae}")
    return WanPipeline(card, transformers, TextEncoder(umt5, UMT5Tokenizer(spiece)), vae, torch.device(device),
                       dtype, solver=card.solver, attention=attention, linear=linear)


class BudgetVAE:
    """The pipeline's VAE with the chunk budget of each encode/decode (bytes the call may allocate on top
    of what is allocated) taken from what the device budget leaves at that moment: budget − allocated −
    `VAE_RESERVE`, at most the VAE's own `memory_budget`. `budgets` records what each call got."""

    def __init__(self, vae: WanVAE, budget_bytes: int) -> None:
        self.vae, self.budget_bytes = vae, budget_bytes
        self.budgets: list[int] = []

    def _budget(self) -> int:
        weight = self.vae.conv2.weight
        allocated = torch.cuda.memory_allocated(weight.device) if weight.is_cuda else 0
        left = self.budget_bytes - allocated - VAE_RESERVE
        self.budgets.append(max(0, min(self.vae.memory_budget, left)))
        return self.budgets[-1]

    def encode(self, video: torch.Tensor, **kw: Any) -> torch.Tensor:
        return self.vae.encode(video, memory_budget=self._budget(), **kw)

    def decode_iter(self, latents: torch.Tensor, **kw: Any) -> Iterator[torch.Tensor]:
        return self.vae.decode_iter(latents, memory_budget=self._budget(), **kw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.vae, name)


def input_image(width: int, height: int) -> np.ndarray:
    """[H, W, 3] uint8: a colour gradient with a disc and some grain (deterministic)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    disc = ((x - width / 2) ** 2 + (y - height / 2) ** 2 < (height / 4) ** 2) * 80.0
    grain = np.random.default_rng(0).normal(0.0, 6.0, (height, width))
    rgb = np.stack([255 * x / width, 255 * y / height, 128 + disc - 40], axis=-1) + grain[..., None]
    return np.clip(rgb, 0, 255).astype(np.uint8)


def _peaks(cuda: bool) -> tuple[float | None, float | None]:
    """Peak GiB allocated and reserved since the last reset (None on CPU)."""
    if not cuda:
        return None, None
    return round(torch.cuda.max_memory_allocated() / GIB, 2), round(torch.cuda.max_memory_reserved() / GIB, 2)


class _StageLog(Progress):
    """Progress lines: each stage's start, each denoise step as the device completes it, the decode's end."""

    def __init__(self, prefix: str, log: Callable[[str], None]) -> None:
        self.prefix, self.log = prefix, log

    def on_stage(self, event: StageEvent) -> None:
        if event.done == 0 or event.stage == "denoise" or (event.stage == "vae_decode" and event.done == event.total):
            self.log(f"{self.prefix}: {event.stage} {event.done}/{event.total}")


def run_variant(name: str, pipe: WanPipeline, params: list[GenerationParams], image: np.ndarray,
                log: Callable[[str], None] = _log) -> tuple[float, GenerationResult, float | None, float | None]:
    """`generate` for each of `params` (the last one timed): (its seconds, its result, peak GiB allocated
    and reserved over all of them; None on CPU)."""
    cuda = pipe.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    seconds, result = 0.0, None
    for i, p in enumerate(params):
        run = f"{name} run {i + 1}/{len(params)}{' (warm-up)' if i < len(params) - 1 else ' (timed)'}"
        t0 = time.perf_counter()
        result = pipe.generate(p, image=image, on_step=_StageLog(run, log))  # returns with the frames on the host
        seconds = time.perf_counter() - t0
        stages = " ".join(f"{k} {v:.2f}" for k, v in result.timings.as_dict().items())
        alloc, reserved = _peaks(cuda)
        log(f"{run}: {seconds:.2f} s ({stages}); peak GiB allocated {alloc}, reserved {reserved}")
    assert result is not None
    return (seconds, result, *_peaks(cuda))


def _compare(a: np.ndarray, b: np.ndarray, device: torch.device) -> dict[str, float]:
    x = torch.from_numpy(a).to(device).double().flatten()
    y = torch.from_numpy(b).to(device).double().flatten()
    return {"frames_cos": round(torch.nn.functional.cosine_similarity(x, y, dim=0).item(), 6),
            "frames_max_abs": (x - y).abs().max().item(), "frames_mean_abs": round((x - y).abs().mean().item(), 4),
            "frames_std": round(x.std().item(), 2)}  # content: equal constant frames would prove nothing


def _card(model_id: str) -> ModelCard:
    """The catalog card, with two experts (the tiny I2V card has one; the bench runs the A14B layout)."""
    card = get_card(model_id)
    return card if card.experts else dataclasses.replace(card, experts=True, also_serves=())


def _runs(width: int, height: int, frames: int, steps: int, seed: int) -> list[GenerationParams]:
    """A variant's two generations (a warm-up, then the timed one), each with a new prompt so the text
    encoder runs each time."""
    return [GenerationParams(kind="i2v", width=width, height=height, num_frames=frames, num_steps=steps,
                             seed=seed, prompt=f"a lighthouse on a cliff at dusk, waves below, take {run}")
            for run in range(2)]


def bench(size: str = "a14b", *, device: str = "cuda", budget_gb: float = 32.0, steps: int = 4, seed: int = 0,
          log: Callable[[str], None] = _log) -> dict[str, Any]:
    """The whole I2V job resident, then under `budget_gb` GiB with expert + text-encoder offload; the
    result row (see the module docstring)."""
    model_id, (width, height), frames = SIZES[size]
    card = _card(model_id)
    cuda = device.startswith("cuda")
    dtype = torch.bfloat16 if cuda else torch.float32
    log(f"{card.id} {width}x{height} {frames} frames {steps} steps on {device}; building random weights")
    pipe = build_pipeline(card, device=device, dtype=dtype, seed=seed, log=log)
    image = input_image(width, height)
    params = _runs(width, height, frames, steps, seed)

    resident_s, resident, resident_peak, resident_reserved = run_variant("resident", pipe, params, image, log)
    want = resident.frames.copy()

    log("offload: experts and text encoder to pinned host memory")
    experts, text = ExpertOffloader(pipe.device), ExpertOffloader(pipe.device)
    for role, module in pipe.transformers.items():
        experts.add(role, module)  # weights to pinned host memory now; one device slot, filled on activate
    text.add("text_encoder", pipe.text_encoder.model)  # type: ignore[attr-defined]
    budget_bytes = int(budget_gb * GIB)  # on CPU only the VAE's chunk budget (its eager path ignores it)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        index = torch.cuda.current_device() if pipe.device.index is None else pipe.device.index  # "cuda": current
        total = torch.cuda.get_device_properties(index).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, budget_bytes / total), index)
    log(f"offload set up; budget {budget_gb} GiB{'' if cuda else ' (not enforced on CPU)'}")
    vae = BudgetVAE(pipe.vae, budget_bytes)  # type: ignore[arg-type]
    budgeted = dataclasses.replace(pipe, vae=vae, expert_offload=experts, text_encoder_offload=text)
    try:
        budget_s, budget, budget_peak, budget_reserved = run_variant("budget", budgeted, params, image, log)
    finally:
        if cuda:
            torch.cuda.set_per_process_memory_fraction(1.0, index)

    ratio = budget_s / resident_s
    fits = None if budget_reserved is None else budget_reserved <= budget_gb
    row: dict[str, Any] = {
        "model": card.id, "size": f"{width}x{height}", "frames": frames, "steps": steps,
        "device": torch.cuda.get_device_name(pipe.device) if cuda else device, "torch": torch.__version__,
        "budget_gb": budget_gb, "resident_s": round(resident_s, 3), "budget_s": round(budget_s, 3),
        "ratio": round(ratio, 3),
        "resident_peak_gib": resident_peak, "resident_reserved_gib": resident_reserved,
        "budget_peak_gib": budget_peak, "budget_reserved_gib": budget_reserved,
        "resident_stages": {k: round(v, 3) for k, v in resident.timings.as_dict().items()},
        "budget_stages": {k: round(v, 3) for k, v in budget.timings.as_dict().items()},
        "expert_slot_gib": round(experts.device_bytes() / GIB, 2),
        "expert_swaps": experts.swaps, "text_encoder_swaps": text.swaps,
        "vae_budget_gib": [round(b / GIB, 2) for b in vae.budgets],
        **_compare(want, budget.frames, pipe.device),
        "pass": None if fits is None else bool(fits and ratio <= 1.3),
    }
    return row


def bench_ranks(size: str = "a14b", *, device: str = "cuda", steps: int = 4, exchanges: tuple[str, ...] = ("bf16",),
                seed: int = 0, log: Callable[[str], None] = _log) -> dict[str, Any] | None:
    """The whole I2V job on one GPU against the same job split over every rank of a torchrun (one process per
    GPU; the multi-GPU worker's setup: `WanPipeline.sp`, the DiT sequence parallel and the VAE decode split
    across the ranks). Every rank builds the same random pipeline resident on its GPU and first runs the job
    alone (all at once, no communication: rank 0's time is the one-GPU time), then split, once per q/k/v
    wire format in `exchanges`. Rank 0's result row (None on the other ranks). device "cpu": gloo, fp32 (the
    CI smoke run)."""
    import os

    import torch.distributed as dist

    from models.parallel import init_sequence_parallel

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.set_device(local)
    sp = init_sequence_parallel(rank, world, host=os.environ.get("MASTER_ADDR", "127.0.0.1"),
                                port=int(os.environ["MASTER_PORT"]), backend="nccl" if cuda else "gloo",
                                timeout_s=900)
    model_id, (width, height), frames = SIZES[size]
    card = _card(model_id)
    quiet = log if rank == 0 else lambda _m: None  # rank 0 speaks for all
    pipe = build_pipeline(card, device=f"cuda:{local}" if cuda else device,
                          dtype=torch.bfloat16 if cuda else torch.float32, seed=seed,
                          log=quiet)
    image = input_image(width, height)
    params = _runs(width, height, frames, steps, seed)
    one_s, one, one_peak, _ = run_variant("one GPU", pipe, params, image, quiet)
    row: dict[str, Any] = {"model": card.id, "size": f"{width}x{height}", "frames": frames, "steps": steps,
                           "ranks": world, "one_s": round(one_s, 3), "one_peak_gib": one_peak,
                           "one_stages": {k: round(v, 3) for k, v in one.timings.as_dict().items()}}
    for exchange in exchanges:
        dist.barrier()
        pipe.sp = dataclasses.replace(sp, exchange=exchange)
        split_s, split, split_peak, _ = run_variant(f"{world} GPUs, {exchange}", pipe, params, image, quiet)
        row[f"split_{exchange}"] = {"s": round(split_s, 3), "ratio": round(split_s / one_s, 3),
                                    "peak_gib": split_peak,
                                    "stages": {k: round(v, 3) for k, v in split.timings.as_dict().items()},
                                    **_compare(one.frames, split.frames, pipe.device)}
    dist.barrier()  # no rank tears the group down while another still uses it
    dist.destroy_process_group()
    return row if rank == 0 else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", default="a14b", choices=sorted(SIZES))
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--budget-gb", type=float, default=32.0, help="GiB (the worker's gpu_memory_gb)")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--ranks", action="store_true",
                    help="under torchrun: one GPU vs split over every rank (bench_ranks) instead of the budget")
    ap.add_argument("--exchange", default="bf16", help="--ranks: q/k/v wire formats, comma-separated (bf16,int8)")
    args = ap.parse_args()
    if args.ranks:
        row = bench_ranks(args.size, device=args.device, steps=args.steps, exchanges=tuple(args.exchange.split(",")))
    else:
        row = bench(args.size, device=args.device, budget_gb=args.budget_gb, steps=args.steps)
    if row is not None:
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
