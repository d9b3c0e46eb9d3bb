"""SageSLA's K pass with the linear branch's reductions inside it (Triton).

The K pass of `kernels.sagesla._prepare` quantizes the smoothed K per block to int8, pools it for the block
map and writes V's transposed FP8 copy. With the linear branch on, the split form also wrote phi(K) =
softmax(K, dim=-1) to memory ([B·H, L, D] in V's dtype) and then ran one batched GEMM, phi(K)ᵀ V, over it:
at the 14B's 720p shape (40 heads, L = 75600, D = 128) that is 0.77 GB written and 1.55 GB read again per
attention call, only to be reduced to a [D, D] matrix per head.

Here each program takes a run of consecutive key blocks of one head. Per block it does what the split K pass
does (smoothed int8 codes, one scale, the pooled row, V's FP8 copy), and it also adds phi(K_blk)ᵀ V_blk
(a [D, BLK] × [BLK, D] tensor-core product, phi rounded to V's dtype as the split form stored it) and
sum phi(K_blk) to accumulators it keeps in registers. At the end it writes one [D, D] and one [D] partial
per program; the caller sums the programs' partials (deterministic, no atomics). phi(K) never reaches
memory, and V is read once instead of twice.

`k_pass(...)` launches it; `kernels.sagesla._prepare` uses it where the linear branch is on, unless the worker
setting `sagesla_kpass` (`TURBOVID_WORKER__SAGESLA_KPASS`) is "split" (the old form, kept for A/B benches;
`kernels/NOTES_sagesla.md`, session 36).
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

__all__ = ["KPASS_CHOICES", "KPASS_ENV", "k_pass", "programs_per_head", "use_fused"]

KPASS_ENV = "TURBOVID_WORKER__SAGESLA_KPASS"  # the worker setting `sagesla_kpass` sets it; read at every call
KPASS_CHOICES = ("fused", "split")
# Programs per SM over the whole launch: each keeps a [D, D] fp32 accumulator (64 registers a thread at
# D = 128 on 8 warps), so only one or two are resident per SM; more programs only add partials to sum.
PROGRAMS_PER_SM = 2
_LOG2E = 1.4426950408889634


def use_fused() -> bool:
    """The fused K pass unless the environment asks for the split one (read at every call: A/B benches)."""
    from kernels import env_choice

    return env_choice(KPASS_ENV, KPASS_CHOICES, "fused") == "fused"


@functools.lru_cache(maxsize=8)
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def programs_per_head(n_blocks: int, bh: int, device: torch.device) -> int:
    """How many programs share one head's key blocks: about PROGRAMS_PER_SM per SM over all B·H heads, at
    least one block each. On the CPU (the interpreter) two, so tests cover the partial sums and an uneven split."""
    if device.type != "cuda":
        return min(2, n_blocks)
    index = device.index if device.index is not None else torch.cuda.current_device()
    return max(1, min(n_blocks, triton.cdiv(PROGRAMS_PER_SM * _sm_count(index), bh)))


@triton.jit
def _k_pass_kernel(
    # pointers
    K, MEAN, KQ, SCALE, POOL, V, VSCALE, VT, KV, FK,
    # sizes
    L, L_PAD, H, n_blocks, blocks_per_prog,
    stride_kb, stride_kh, stride_kl,
    stride_vb, stride_vh, stride_vl,
    # meta
    D: tl.constexpr, BLK: tl.constexpr, V_FP8: tl.constexpr, IEEE: tl.constexpr,
):
    """Program (p, bh) takes key blocks [p·blocks_per_prog, (p+1)·blocks_per_prog) of head bh. Per block:
    KQ [BH, L, D] int8 codes of K - MEAN, SCALE [BH, NK] their scale, POOL [BH, NK, D] the mean of the smoothed
    real rows, and with V_FP8 VT [BH, D, L_PAD] = e4m3(V / VSCALE) transposed. Over its blocks:
    KV [BH, P, D, D] fp32 = sum phi(K)ᵀ V and FK [BH, P, D] = sum phi(K) / L, phi = softmax over the head dim
    of the raw rows (padded rows count zero). IEEE: fp32 operands multiplied in full fp32 (CPU tests)."""
    prog = tl.program_id(0)
    bh = tl.program_id(1)
    n_prog = tl.num_programs(0)
    b = bh // H
    h = bh % H
    offs_d = tl.arange(0, D)
    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh
    mean = tl.load(MEAN + bh * D + offs_d)  # [D]
    if V_FP8:
        inv = 1.0 / tl.load(VSCALE + bh * D + offs_d)  # [D]
    kv = tl.zeros([D, D], dtype=tl.float32)
    fsum = tl.zeros([D], dtype=tl.float32)
    blk0 = prog * blocks_per_prog
    blk1 = tl.minimum(blk0 + blocks_per_prog, n_blocks)
    for blk in range(blk0, blk1):
        offs_l = blk * BLK + tl.arange(0, BLK)
        valid = offs_l < L
        x = tl.load(k_base + offs_l[:, None] * stride_kl + offs_d[None, :], mask=valid[:, None],
                    other=0.0).to(tl.float32)  # [BLK, D]
        v = tl.load(v_base + offs_l[:, None] * stride_vl + offs_d[None, :], mask=valid[:, None], other=0.0)
        # the linear branch: phi of the raw rows, its sum and phi^T V
        e = tl.exp2((x - tl.max(x, axis=1)[:, None]) * 1.4426950408889634)
        fx = tl.where(valid[:, None], e / tl.sum(e, axis=1)[:, None], 0.0)  # [BLK, D]
        fsum += tl.sum(fx, axis=0)
        if IEEE:
            kv = tl.dot(tl.trans(fx), v.to(tl.float32), kv, input_precision="ieee")
        else:
            kv = tl.dot(tl.trans(fx.to(v.dtype)), v, kv)
        # smoothed int8 codes, one scale, the pooled row
        xs = tl.where(valid[:, None], x - mean[None, :], 0.0)
        n_real = tl.minimum(L - blk * BLK, BLK)
        tl.store(POOL + (bh * n_blocks + blk) * D + offs_d, tl.sum(xs, axis=0) / n_real)
        amax = tl.maximum(tl.max(tl.abs(xs)), 1e-8)
        xq = xs * (127.0 / amax)
        xq = tl.where(xq >= 0, xq + 0.5, xq - 0.5).to(tl.int8)  # round half away from zero
        tl.store(KQ + bh * L * D + offs_l[:, None] * D + offs_d[None, :], xq, mask=valid[:, None])
        tl.store(SCALE + bh * n_blocks + blk, amax / 127.0)
        if V_FP8:
            v8 = (v.to(tl.float32) * inv[None, :]).to(tl.float8e4nv)
            tl.store(VT + bh * D * L_PAD + offs_d[:, None] * L_PAD + offs_l[None, :], tl.trans(v8))
    part = bh * n_prog + prog
    tl.store(KV + part * D * D + offs_d[:, None] * D + offs_d[None, :], kv)
    tl.store(FK + part * D + offs_d, fsum / L)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _prune_configs(configs: list[triton.Config], named_args: dict, **kwargs: object) -> list[triton.Config]:
    return configs[:1] if _interpreting() else configs


_k_pass = triton.autotune(
    configs=[triton.Config({}, num_warps=w, num_stages=s) for w, s in ((8, 2), (8, 3), (8, 4))],  # 4 and 16 warps spill
    key=["D", "BLK", "V_FP8", "IEEE"],
    prune_configs_by={"early_config_prune": _prune_configs},
)(_k_pass_kernel)


def k_pass(
    k: torch.Tensor, v: torch.Tensor, k_mean: torch.Tensor, v_scale: torch.Tensor | None, block_k: int,
    k8: torch.Tensor, k_scale: torch.Tensor, k_pool: torch.Tensor, vt: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fill k8 [BH, L, D], k_scale [BH, NK], k_pool [BH, NK, D] (and vt [BH, D, NK·block_k] from V / v_scale
    [BH, D] when given) for k, v [B, H, L, D] (last dim contiguous) smoothed by k_mean [BH, D]; return the linear
    branch's (phi(K)ᵀ V [BH, D, D] fp32, sum phi(K) / L [BH, D] fp32)."""
    B, H, L, D = k.shape
    BH, nk = B * H, k_scale.shape[1]
    n_prog = programs_per_head(nk, BH, k.device)
    per_prog = triton.cdiv(nk, n_prog)
    n_prog = triton.cdiv(nk, per_prog)  # no program without a block
    kv = torch.empty(BH, n_prog, D, D, device=k.device, dtype=torch.float32)
    fk = torch.empty(BH, n_prog, D, device=k.device, dtype=torch.float32)
    fp8 = vt is not None
    _k_pass[(n_prog, BH)](
        k, k_mean, k8, k_scale, k_pool, v, v_scale if fp8 else k_mean, vt if fp8 else k8, kv, fk,
        L, nk * block_k, H, nk, per_prog, *k.stride()[:3], *v.stride()[:3],
        D=D, BLK=block_k, V_FP8=fp8, IEEE=v.dtype == torch.float32,
    )
    return kv.sum(1), fk.sum(1)
