"""The Wan VAE decode split across the ranks of a sequence-parallel group: horizontal bands, exact.

    for chunk in split_decode_iter(vae, latents, sp):   # every rank: the same latents in,
        ...                                              # the same chunks [B, 3, n, H, W] out, in order
    video = split_decode(vae, latents, sp)               # all chunks in one tensor

Every rank of `sp` (a `models.parallel.SequenceParallel`, or anything with `rank`, `world_size` and
`group`) calls it with the same latents, as every rank of a split `WanPipeline.generate` does, and every
rank gets every frame: the pipeline's contract (each rank returns the same frames) holds, and rank 0
streams the chunks to the MP4 encoder as they come, exactly as on one GPU.

How the work is split (`models.vae` describes the decoder):

1. The latent-resolution blocks (input conv, the mid block with its spatial self-attention over all
   h×w pixels of a frame, the first level's residual blocks) run whole on every rank. Every rank holds
   the whole latents anyway, the attention stays exact with no exchange, and it is little work: 4 % of
   the decode's convolution and attention FLOPs at 480p (`work_fractions`).
2. The rest (from the first upsampler on: 96 % of the FLOPs) runs on N horizontal bands of latent rows,
   rank r owning rows [r·h // N, (r+1)·h // N) (h need not divide by N), in stages, one per resolution:
   [upsampler, residual blocks] ×3, the RGB head with the last. A stage computes its band's output rows
   from its input rows plus a halo: the rows its 3×3 convolutions and nearest-2× upsampling reach,
   computed from the modules (`stage_reach`; Wan2.1: 4 latent rows before the first stage, 4 rows at 2×
   before the second, 4 rows at 4× before the third). The zero padding at a band's cut corrupts only
   rows inside the halo, which are cropped after each stage, so every kept row is computed from exactly
   the inputs the whole decode uses. The first stage takes its halo from the whole latent-resolution
   output; before each later stage every rank all-gathers the edge rows of its band (one small
   collective per stage and chunk) and takes its halo from its neighbours'.
3. Time: the same chunk plan as `WanVAE.decode_iter` (the first latent frame alone, then chunks sized to
   the memory budget for the rank's band + halo, ending 4, 2, 1), each rank with its own causal cache
   (its band's frames): the split is only spatial, so the causal chunking is unchanged.
4. The bands' RGB rows are all-gathered per chunk (every rank yields the whole chunk).

Result: equal to `WanVAE.decode_iter` up to the convolutions' rounding on differently sized inputs: on
CPU in fp32 bit-equal with oneDNN off (its algorithm choice depends on the input size: ~1e-6 with it on),
cos 0.99995 in bf16 on the GPU. Per-rank work at 480p on 2 ranks: 0.553 of the whole decode
(`work_fractions`); measured times: kernels/NOTES_vae.md. All communication is
`torch.distributed.all_gather` (NCCL or gloo). When the latent height is below the number of ranks,
every rank decodes the whole video instead.

Every rank must consume the chunks in step: each chunk holds collectives, so a rank that stops early
(a cancelled job) must make the others stop at the same chunk, or they wait for the group's timeout.

The encode side (`split_encode`, the I2V image condition of a split `WanPipeline`) is simpler: every rank
holds the whole video, so each runs the encoder's down path (its input conv and down levels, nearly all
of its work) on its band of latent rows plus the video rows they reach (`encoder_reach`, widened to
whole latent rows so the stride-2 convs keep the frame's row parity) with no exchange; per chunk the
bands' latent-resolution rows are all-gathered and every rank runs the mid block and head on the whole
frame.

`torchrun --nproc-per-node 2 -m models.vae_parallel --size 832x480 --frames 81` is the bench.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch import nn

from models.vae import AttentionBlock, CausalCache, Resample, ResidualBlock, WanVAE, _run_head

__all__ = ["RankGroup", "Stage", "bands", "encoder_reach", "split_decode", "split_decode_iter", "split_encode",
           "stage_reach", "work_fractions"]

_CL3D = torch.channels_last_3d


class RankGroup(Protocol):
    """What the split needs of a group: `models.parallel.SequenceParallel` and `CfgParallel` have it."""

    @property
    def rank(self) -> int: ...
    @property
    def world_size(self) -> int: ...
    @property
    def group(self) -> dist.ProcessGroup | None: ...


@dataclass(frozen=True)
class Stage:
    """Decoder blocks that run between two exchanges: an upsampler and the residual blocks after it (the
    head too, for the last). `scale`: output rows per input row (2 after an upsampler)."""

    blocks: tuple[nn.Module, ...]
    head: bool
    scale: int


def stages(vae: WanVAE) -> list[Stage]:
    """The decoder after its latent-resolution blocks, cut before each upsampler."""
    dec = vae.decoder
    groups: list[list[nn.Module]] = [[]]
    for blk in dec.upsamples[dec.n_low :]:
        if isinstance(blk, Resample) and groups[-1]:
            groups.append([])
        groups[-1].append(blk)
    return [Stage(tuple(g), i == len(groups) - 1, 2 if g and isinstance(g[0], Resample) else 1)
            for i, g in enumerate(groups)]  # fmt: skip


def _pad_rows(conv: nn.Module) -> int:
    """Rows a convolution reaches above and below (its kernel height // 2)."""
    assert isinstance(conv, (nn.Conv2d, nn.Conv3d))
    return conv.kernel_size[-2] // 2


def stage_reach(stage: Stage, head: nn.Sequential, lo: int, hi: int) -> tuple[int, int]:
    """Input rows [lo', hi') that output rows [lo, hi) of `stage` depend on (unclipped: rows outside the
    frame are the convolutions' zero padding). Walks the stage backwards: a 3×3 conv widens by 1 row on
    each side; nearest-2× then a 3×3 conv maps output rows [lo, hi) to input rows
    [(lo - 1) // 2, (hi - 1 + 1) // 2 + 1)."""
    if stage.head:
        lo, hi = lo - _pad_rows(head[2]), hi + _pad_rows(head[2])
    for blk in reversed(stage.blocks):
        if isinstance(blk, ResidualBlock):
            r = _pad_rows(blk.residual[2]) + _pad_rows(blk.residual[6])
            lo, hi = lo - r, hi + r
        elif isinstance(blk, Resample) and blk.mode.startswith("upsample"):
            p = _pad_rows(blk.resample[1])
            lo, hi = (lo - p) // 2, (hi - 1 + p) // 2 + 1
        else:
            raise TypeError(f"no row reach known for {type(blk).__name__}")
    return lo, hi


def bands(h: int, world: int) -> list[tuple[int, int]]:
    """Latent rows [lo, hi) per rank: near-equal bands in rank order (the first ones smaller)."""
    return [(r * h // world, (r + 1) * h // world) for r in range(world)]


@dataclass(frozen=True)
class _Plan:
    """Per stage and rank: the rows owned at the stage's input resolution and the input rows needed."""

    own: list[list[tuple[int, int]]]  # [stage][rank] -> rows [lo, hi) at the stage input's resolution
    need: list[list[tuple[int, int]]]  # [stage][rank] -> input rows the rank's output rows depend on


def _plan(vae: WanVAE, h: int, world: int) -> tuple[list[Stage], _Plan]:
    stg = stages(vae)
    own_all, need_all = [], []
    f = 1  # the stage input's resolution, in rows per latent row
    for s in stg:
        own = [(f * lo, f * hi) for lo, hi in bands(h, world)]
        out = [(s.scale * lo, s.scale * hi) for lo, hi in own]
        need = [stage_reach(s, vae.decoder.head, lo, hi) for lo, hi in out]
        need = [(max(0, lo), min(f * h, hi)) for lo, hi in need]
        own_all.append(own)
        need_all.append(need)
        f *= s.scale
    return stg, _Plan(own_all, need_all)


def _exchange(x: torch.Tensor, own: Sequence[tuple[int, int]], need: Sequence[tuple[int, int]],
              sp: RankGroup, channels_last: bool) -> torch.Tensor:
    """x: this rank's own rows [B, C, T, own_hi - own_lo, W] -> its needed rows [B, C, T, need_hi - need_lo, W].

    Every rank sends its last `kt` rows (for the ranks below, whose top halo they are) and its first `kb`
    rows (for the ranks above), zero-padded to kt + kb rows when its band is shorter; kt, kb: the largest
    halo of any rank. A halo wider than the neighbour's band continues in the next rank's edge rows, so
    the rows sent always cover it."""
    r, world = sp.rank, sp.world_size
    kt = max(o[0] - n[0] for o, n in zip(own, need, strict=True))
    kb = max(n[1] - o[1] for o, n in zip(own, need, strict=True))
    if kt == 0 and kb == 0:
        return x
    b, c, t, rows, w = x.shape
    send = x.new_zeros(b, c, t, kt + kb, w)
    m = min(kt, rows)
    send[:, :, :, kt - m : kt] = x[:, :, :, rows - m :]  # slot s of the first kt: row own_hi - kt + s
    m = min(kb, rows)
    send[:, :, :, kt : kt + m] = x[:, :, :, :m]  # slot kt + s: row own_lo + s
    parts = [torch.empty_like(send) for _ in range(world)]
    dist.all_gather(parts, send, group=sp.group)

    lo, hi = need[r]
    fmt = _CL3D if channels_last else torch.contiguous_format
    out = torch.empty((b, c, t, hi - lo, w), device=x.device, dtype=x.dtype, memory_format=fmt)
    out[:, :, :, own[r][0] - lo : own[r][1] - lo] = x
    for i in range(world):
        a, z = max(lo, own[i][0]), min(hi, own[i][1])
        if i == r or a >= z:
            continue
        base = own[i][1] - kt if i < r else own[i][0] - kt  # global row of slot 0 (first kt slots / last kb)
        out[:, :, :, a - lo : z - lo] = parts[i][:, :, :, a - base : z - base]
    return out


def _gather_rows(x: torch.Tensor, own: Sequence[tuple[int, int]], sp: RankGroup) -> torch.Tensor:
    """Every rank's rows [B, C, T, own_hi - own_lo, W] -> all rows [B, C, T, H, W] in rank order."""
    most = max(hi - lo for lo, hi in own)
    rows = x.shape[3]
    send = x.contiguous() if rows == most else torch.cat([x, x.new_zeros(*x.shape[:3], most - rows, x.shape[4])], 3)
    parts = [torch.empty_like(send) for _ in range(sp.world_size)]
    dist.all_gather(parts, send, group=sp.group)
    return torch.cat([p[:, :, :, : hi - lo] for p, (lo, hi) in zip(parts, own, strict=True)], dim=3)


@torch.no_grad()
def split_decode_iter(
    vae: WanVAE, latents: torch.Tensor, sp: RankGroup, *, fused: bool | None = None, **chunking: Any
) -> Iterator[torch.Tensor]:
    """`vae.decode_iter(latents, ...)` with the work split across the ranks of `sp` (see the module
    docstring); every rank must call it with the same latents and arguments, and gets every chunk:
    [B, 3, n, 8h, 8w] in [-1, 1], n = 1 first, then 4 per latent frame. `chunking`: decode_iter's
    chunk_latents / prefix_latents / memory_budget / taper (the memory budget sizes chunks for the band)."""
    h = latents.shape[3] if latents.dim() == 5 else 0
    if sp.world_size == 1 or h < sp.world_size:
        yield from vae.decode_iter(latents, fused=fused, **chunking)
        return
    stg, plan = _plan(vae, h, sp.world_size)
    r = sp.rank
    widest = max(hi - lo for lo, hi in plan.need[0])  # the largest stage-0 input of any rank: same plan everywhere
    start = vae.begin_decode(latents, fused=fused, high_rows=widest, **chunking)
    low, cache, chunks = start.low, start.cache, start.plan
    del start
    lo, hi = plan.need[0][r]
    i = 0
    for n in chunks:
        x = low[:, :, i : i + n, lo:hi]  # [B, C_top, n, rows, w]: own band + halo, from the whole output
        if cache.fused:
            x = x.contiguous(memory_format=_CL3D)
        for k, s in enumerate(stg):
            if k > 0:
                x = _exchange(x, plan.own[k], plan.need[k], sp, cache.fused)
            x = _run_stage(s, vae, x, cache)  # rows [need_lo·scale, need_hi·scale) of the stage output
            first = plan.own[k][r][0] * s.scale - plan.need[k][r][0] * s.scale
            rows = (plan.own[k][r][1] - plan.own[k][r][0]) * s.scale
            x = x[:, :, :, first : first + rows]  # [B, C, T', own rows, W']
        out_own = [(lo2 * stg[-1].scale, hi2 * stg[-1].scale) for lo2, hi2 in plan.own[-1]]
        yield _gather_rows(x.clamp_(-1.0, 1.0), out_own, sp)  # [B, 3, 1 or 4n, H, W]
        i += n


def _run_stage(stage: Stage, vae: WanVAE, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
    for blk in stage.blocks:
        x = blk(x, cache)
    return _run_head(vae.decoder.head, x, cache) if stage.head else x


@torch.no_grad()
def split_decode(vae: WanVAE, latents: torch.Tensor, sp: RankGroup, **chunking: Any) -> torch.Tensor:
    """The chunks of `split_decode_iter` in one tensor [B, 3, 4(T-1)+1, 8h, 8w] (every rank)."""
    return torch.cat(list(split_decode_iter(vae, latents, sp, **chunking)), dim=2)


def encoder_reach(vae: WanVAE, lo: int, hi: int) -> tuple[int, int]:
    """Video rows [lo', hi') that rows [lo, hi) of the encoder's down path (`Encoder.forward_high`, at latent
    resolution) depend on, unclipped. Walks it backwards: a residual block's two 3×3 convs widen by 2 rows
    on each side; a stride-2 downsampler (bottom zero pad, 3×3 conv) maps output rows [lo, hi) to input rows
    [2·lo, 2·(hi - 1) + 3); the input conv widens by 1."""
    enc = vae.encoder
    for blk in reversed(enc.downsamples):
        if isinstance(blk, ResidualBlock):
            r = _pad_rows(blk.residual[2]) + _pad_rows(blk.residual[6])
            lo, hi = lo - r, hi + r
        elif isinstance(blk, Resample) and blk.mode.startswith("downsample"):
            conv = blk.resample[1]
            k, st = conv.kernel_size[-2], conv.stride[-2]
            lo, hi = st * lo, st * (hi - 1) + k
        else:
            raise TypeError(f"no row reach known for {type(blk).__name__}")
    p = _pad_rows(enc.conv1)
    return lo - p, hi + p


def _row_factor(vae: WanVAE) -> int:
    """Video rows per latent row of the down path (the product of its downsamplers' strides)."""
    f = 1
    for blk in vae.encoder.downsamples:
        if isinstance(blk, Resample):
            f *= blk.resample[1].stride[-2]
    return f


@torch.no_grad()
def split_encode(vae: WanVAE, video: torch.Tensor, sp: RankGroup, **chunking: Any) -> torch.Tensor:
    """`vae.encode(video, ...)` with the work split across the ranks of `sp`: every rank calls it with the
    same video and gets the same latents. Each rank runs the down path (`Encoder.forward_high`: the input
    conv and the down levels, ~all of the encoder's work) on its band of latent rows (`bands`) plus the
    video rows they reach (`encoder_reach`, widened to whole latent rows so the strided convs stay aligned
    to the frame); the zero padding at a band's cut corrupts only rows outside the kept band. Every rank
    needs the whole video anyway, so the halo comes from the input: no exchange inside the down path. Per
    chunk the bands are all-gathered at latent resolution and every rank runs the mid block (its
    attention spans the frame) and the head on the whole frame. `chunking`: encode's chunk_latents /
    memory_budget / fused."""
    h_video = video.shape[3] if video.dim() == 5 else 0
    f = _row_factor(vae)
    h = h_video // f
    if sp.world_size == 1 or h < sp.world_size:
        return vae.encode(video, **chunking)
    own = bands(h, sp.world_size)
    lo, hi = own[sp.rank]
    need_lo, need_hi = encoder_reach(vae, lo, hi)
    a = max(0, need_lo) // f * f  # whole latent rows: every stride-2 conv sees the frame's row parity
    b = min(h_video, -(-need_hi // f) * f)
    enc = vae.encoder

    def run(x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        band = x[:, :, :, a:b]
        if cache.fused:
            band = band.contiguous(memory_format=_CL3D)
        mine = enc.forward_high(band, cache)[:, :, :, lo - a // f : hi - a // f]  # [B, C, n, own rows, w]
        full = _gather_rows(mine, own, sp)  # [B, C, n, h, w]
        if cache.fused:
            full = full.contiguous(memory_format=_CL3D)
        return vae.conv1(enc.forward_low(full, cache), cache)

    return vae.encode(video, run=run, **chunking)


def work_fractions(vae: WanVAE, shape: tuple[int, ...], world: int) -> dict[str, Any]:
    """Convolution (+ attention) FLOPs of a split decode of latents of `shape` [B, z, T, h, w] over `world`
    ranks, counted on the meta device: the whole decode's total, the latent-resolution share (run by
    every rank), each stage's share, and per rank the fraction of the whole decode it computes (1/world
    would be a perfect split)."""
    with torch.device("meta"):
        meta = WanVAE(vae.config).eval()
    stg, plan = _plan(meta, shape[3], world)
    owner: dict[nn.Module, int] = {}  # module -> stage index (absent: the latent-resolution part)
    for k, s in enumerate(stg):
        for blk in (*s.blocks, *(meta.decoder.head if s.head else ())):
            for m in blk.modules():
                owner[m] = k
    flops = [0.0] * (len(stg) + 1)  # [low, stage 0, stage 1, ...]

    def count(m: nn.Module, args: tuple[Any, ...], out: torch.Tensor) -> None:
        assert isinstance(m, (nn.Conv2d, nn.Conv3d))
        per_out = 2 * m.in_channels // m.groups * int(torch.tensor(m.kernel_size).prod())
        flops[owner.get(m, -1) + 1] += per_out * out.numel()

    def attn(m: nn.Module, args: tuple[Any, ...], out: torch.Tensor) -> None:
        b, c, t, hh, ww = out.shape
        flops[0] += 4.0 * b * t * (hh * ww) ** 2 * c

    hooks = [m.register_forward_hook(count) for m in meta.modules() if isinstance(m, (nn.Conv2d, nn.Conv3d))]
    hooks += [blk.register_forward_hook(attn) for blk in meta.decoder.middle if isinstance(blk, AttentionBlock)]
    try:
        for _ in meta.decode_iter(torch.empty(shape, device="meta"), fused=False, chunk_latents=shape[2],
                                  prefix_latents=shape[2]):
            pass
    finally:
        for hk in hooks:
            hk.remove()
    total = sum(flops)
    per_rank = []
    for r in range(world):
        work = flops[0]
        for k in range(len(stg)):
            lo, hi = plan.need[k][r]
            work += flops[k + 1] * (hi - lo) / (plan.own[k][-1][1])
        per_rank.append(round(work / total, 4))
    return {"tflop": round(total / 1e12, 2), "low_share": round(flops[0] / total, 4),
            "stage_shares": [round(f / total, 4) for f in flops[1:]], "per_rank": per_rank,
            "halo_rows": [[(o[0] - n[0], n[1] - o[1]) for o, n in zip(plan.own[k], plan.need[k], strict=True)]
                          for k in range(len(stg))]}  # fmt: skip


# bench: N ranks vs one ------------------------------------------------------------------------------------
def bench() -> None:
    """Split decode vs one GPU, random full-size weights, bf16, the fast path (run under torchrun):

        torchrun --nproc-per-node 2 -m models.vae_parallel --size 832x480 --frames 81          # H200 ×2
        torchrun --nproc-per-node 2 -m models.vae_parallel --preset tiny --size 64x48 --frames 9 --device cpu

    Rank 0 first decodes alone (`WanVAE.decode_iter`, every chunk kept on the device: the 1-GPU time and
    the reference), then every rank decodes split (`split_decode_iter`, every chunk gathered on every
    rank); each after one warm-up (autotuning, cuDNN plans, NCCL), median of --repeats. Rank 0 prints one
    JSON line: both times, their ratio, cosine and max |difference| of the frames, per-rank work fraction
    (`work_fractions`), peak memory of both on rank 0, the chunk plans."""
    import argparse
    import datetime
    import json
    import os
    import statistics
    import time

    from models.vae import VAEConfig

    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="832x480", help="WxH")
    ap.add_argument("--frames", type=int, default=81)
    ap.add_argument("--preset", default="wan2.1", choices=("wan2.1", "tiny"))
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--budget-gib", type=float, default=12.0)
    args = ap.parse_args()
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    cuda = args.device == "cuda"
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank))) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(seconds=900),
                            device_id=device if cuda else None)
    from models.parallel import SequenceParallel

    sp = SequenceParallel(rank=rank, world_size=world)
    width, height = (int(v) for v in args.size.split("x"))
    cfg = VAEConfig.from_name(args.preset)
    torch.manual_seed(0)
    vae = WanVAE(cfg, memory_budget=int(args.budget_gib * 2**30)).eval().requires_grad_(False)
    vae = vae.to(device, torch.bfloat16 if cuda else torch.float32)
    shape = (1, cfg.z_dim, (args.frames - 1) // cfg.temporal_factor + 1, height // 8, width // 8)
    latents = torch.randn(shape, generator=torch.Generator().manual_seed(1)).to(device, vae.conv2.weight.dtype)

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    def run(chunks: Callable[[], Iterator[torch.Tensor]]) -> tuple[float, float, list[torch.Tensor]]:
        """(median seconds, peak GiB on the device, the chunks of the last run)."""
        with torch.inference_mode():
            out = list(chunks())  # warm-up
            times = []
            if cuda:
                torch.cuda.reset_peak_memory_stats(device)
            for _ in range(args.repeats):
                del out
                sync()
                t0 = time.perf_counter()
                out = list(chunks())
                sync()
                times.append(time.perf_counter() - t0)
        peak = torch.cuda.max_memory_allocated(device) / 2**30 if cuda else 0.0
        return statistics.median(times), peak, out

    whole_s, whole_peak, whole = run(lambda: vae.decode_iter(latents)) if rank == 0 else (0.0, 0.0, [])
    dist.barrier()
    split_s, split_peak, split = run(lambda: split_decode_iter(vae, latents, sp))
    if rank == 0:
        a, b = torch.cat(whole, dim=2).double(), torch.cat(split, dim=2).double()
        cos = torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0).item()
        work = work_fractions(vae, shape, world)
        row = {"size": args.size, "frames": args.frames, "ranks": world, "preset": args.preset,
               "whole_s": round(whole_s, 4), "split_s": round(split_s, 4), "ratio": round(split_s / whole_s, 3),
               "cos": round(cos, 6), "max_abs": round((a - b).abs().max().item(), 5),
               "work_per_rank": work["per_rank"], "low_share": work["low_share"],
               "peak_gib_whole": round(whole_peak, 2), "peak_gib_split": round(split_peak, 2),
               "chunks_whole": [c.shape[2] for c in whole], "chunks_split": [c.shape[2] for c in split]}
        print(json.dumps(row), flush=True)  # noqa: T201 - the bench's result line
    dist.barrier()  # no rank tears the group down while another still uses it
    dist.destroy_process_group()


if __name__ == "__main__":
    bench()
