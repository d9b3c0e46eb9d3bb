"""SageSLA's preparation passes with the linear branch on, programs looping over blocks (Triton).

**The K pass with the linear branch's reductions inside it.**
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

**The Q pass with LIN_M loaded once per program.** The split Q pass ran one program per 128-row query block,
each loading its head's [D, D] LIN_M (32 KB in fp16) before one [BLK, D] × [D, D] product: as many bytes
of LIN_M as of Q. Here each program takes a run of a head's query blocks, loads LIN_M, sum phi(K) / L and
proj_l's bias once, and per block does what the split Q pass does (int8 codes with the softmax scale folded
into the block's scale, the pooled row, the linear branch's output row by row).

`k_pass(...)` and `q_pass(...)` launch them; `kernels.sagesla._prepare` uses both where the linear branch is on,
unless the worker setting `sagesla_prep` (`TURBOVID_WORKER__SAGESLA_PREP`) is "split" (the old form, kept for A/B benches;
`kernels/NOTES_sagesla.md`, session 36).
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

__all__ = ["PREP_CHOICES", "PREP_ENV", "k_pass", "programs_per_head", "q_pass", "use_fused"]

PREP_ENV = "TURBOVID_WORKER__SAGESLA_PREP"  # the worker setting `sagesla_prep` sets it; read at every call
PREP_CHOICES = ("fused", "split")
# Programs per SM over the whole launch: each keeps a [D, D] fp32 accumulator (64 registers a thread at
# D = 128 on 8 warps), so only one or two are resident per SM; more programs only add partials to sum.
PROGRAMS_PER_SM = 2
Q_PROGRAMS_PER_SM = 4  # the Q pass holds no accumulator across blocks: more programs, fewer LIN_M loads each
_LOG2E = 1.4426950408889634


def use_fused() -> bool:
    """The fused K pass unless the environment asks for the split one (read at every call: A/B benches)."""
    from kernels import env_choice

    return env_choice(PREP_ENV, PREP_CHOICES, "fused") == "fused"


@functools.lru_cache(maxsize=8)
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def programs_per_head(n_blocks: int, bh: int, device: torch.device, per_sm: int | None = None) -> int:
    """How many programs share one head's blocks: about `per_sm` (default PROGRAMS_PER_SM) per SM over all B·H
    heads, at least one block each. On the CPU (the interpreter) two, so tests cover the partial sums and an uneven
    split."""
    if device.type != "cuda":
        return min(2, n_blocks)
    index = device.index if device.index is not None else torch.cuda.current_device()
    per_sm = PROGRAMS_PER_SM if per_sm is None else per_sm
    return max(1, min(n_blocks, triton.cdiv(per_sm * _sm_count(index), bh)))


@triton.jit
def _k_pass_kernel(
    # pointers
    K, MEAN, KQ, SCALE, POOL, V, VSCALE, VT, KV, FK,
    # sizes
    L, L_PAD, H, n_blocks, blocks_per_prog,
    stride_kb, stride_kh, stride_kl,
    stride_vb, stride_vh, stride_vl,
    # meta
    D: tl.constexpr, BLK: tl.constexpr, V_FP8: tl.constexpr, F32_DOT: tl.constexpr,
):
    """Program (p, bh) takes key blocks [p·blocks_per_prog, (p+1)·blocks_per_prog) of head bh. Per block:
    KQ [BH, L, D] int8 codes of K - MEAN, SCALE [BH, NK] their scale, POOL [BH, NK, D] the mean of the smoothed
    real rows, and with V_FP8 VT [BH, D, L_PAD] = e4m3(V / VSCALE) transposed. Over its blocks:
    KV [BH, P, D, D] fp32 = sum phi(K)ᵀ V and FK [BH, P, D] = sum phi(K) / L, phi = softmax over the head dim
    of the raw rows (padded rows count zero), rounded to V's dtype. F32_DOT: phi(K)ᵀ V multiplied in full fp32 (fp32
    operands; and under the interpreter, whose bf16 `tl.dot` gives wrong sums: Triton 3.6 and 3.9)."""
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
        if F32_DOT:
            fx32 = fx.to(v.dtype).to(tl.float32)
            kv = tl.dot(tl.trans(fx32), v.to(tl.float32), kv, input_precision="ieee")
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


@triton.jit
def _q_pass_kernel(
    # pointers
    Q, QQ, SCALE, POOL, LIN_M, FKSUM, LIN_B, OLIN,
    # sizes
    L, H, n_blocks, blocks_per_prog, scale_mult, lin_eps,
    stride_qb, stride_qh, stride_ql,
    # meta
    D: tl.constexpr, BLK: tl.constexpr, HAS_BIAS: tl.constexpr,
):
    """Program (p, bh) takes query blocks [p·blocks_per_prog, (p+1)·blocks_per_prog) of head bh. Per block:
    QQ [BH, L, D] int8 codes, SCALE [BH, NQ] = absmax / 127 · scale_mult, POOL [BH, NQ, D] the mean of the real
    rows, and OLIN [BH, L, D] fp16 = (phi(q) @ LIN_M) / (lin_eps + phi(q) . FKSUM) (+ LIN_B), phi = softmax over
    the head dim, with LIN_M [BH, D, D] fp16 and FKSUM [BH, D] read once per program."""
    prog = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    offs_d = tl.arange(0, D)
    q_base = Q + b * stride_qb + h * stride_qh
    lin_m = tl.load(LIN_M + bh * D * D + offs_d[:, None] * D + offs_d[None, :])  # [D, D] fp16
    fks = tl.load(FKSUM + bh * D + offs_d)  # [D]
    if HAS_BIAS:
        lin_b = tl.load(LIN_B + offs_d)  # [D]
    blk0 = prog * blocks_per_prog
    blk1 = tl.minimum(blk0 + blocks_per_prog, n_blocks)
    for blk in range(blk0, blk1):
        offs_l = blk * BLK + tl.arange(0, BLK)
        valid = offs_l < L
        x = tl.load(q_base + offs_l[:, None] * stride_ql + offs_d[None, :], mask=valid[:, None],
                    other=0.0).to(tl.float32)  # [BLK, D]
        n_real = tl.minimum(L - blk * BLK, BLK)
        tl.store(POOL + (bh * n_blocks + blk) * D + offs_d, tl.sum(x, axis=0) / n_real)
        amax = tl.maximum(tl.max(tl.abs(x)), 1e-8)
        xq = x * (127.0 / amax)
        xq = tl.where(xq >= 0, xq + 0.5, xq - 0.5).to(tl.int8)  # round half away from zero
        tl.store(QQ + bh * L * D + offs_l[:, None] * D + offs_d[None, :], xq, mask=valid[:, None])
        tl.store(SCALE + bh * n_blocks + blk, amax / 127.0 * scale_mult)
        e = tl.exp2((x - tl.max(x, axis=1)[:, None]) * 1.4426950408889634)
        fx = e / tl.sum(e, axis=1)[:, None]  # [BLK, D] softmax over the head dim
        den = tl.sum(fx * fks[None, :], axis=1) + lin_eps  # [BLK]
        o_l = tl.dot(fx.to(tl.float16), lin_m) / den[:, None]  # [BLK, D]
        if HAS_BIAS:
            o_l += lin_b[None, :]
        tl.store(OLIN + bh * L * D + offs_l[:, None] * D + offs_d[None, :], o_l.to(tl.float16), mask=valid[:, None])


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _prune_configs(configs: list[triton.Config], named_args: dict, **kwargs: object) -> list[triton.Config]:
    return configs[:1] if _interpreting() else configs


_k_pass = triton.autotune(
    configs=[triton.Config({}, num_warps=w, num_stages=s) for w, s in ((8, 2), (8, 3), (8, 4))],  # 4 and 16 warps spill
    key=["D", "BLK", "V_FP8", "F32_DOT"],
    prune_configs_by={"early_config_prune": _prune_configs},
)(_k_pass_kernel)


_q_pass = triton.autotune(
    configs=[triton.Config({}, num_warps=w, num_stages=s) for w, s in ((4, 2), (8, 2), (4, 3), (8, 3))],
    key=["D", "BLK", "HAS_BIAS"],
    prune_configs_by={"early_config_prune": _prune_configs},
)(_q_pass_kernel)


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
        D=D, BLK=block_k, V_FP8=fp8, F32_DOT=v.dtype == torch.float32 or _interpreting(),
    )
    return kv.sum(1), fk.sum(1)


def q_pass(
    q: torch.Tensor, lin_m: torch.Tensor, fk: torch.Tensor, lin_b: torch.Tensor | None, block_q: int,
    scale_mult: float, lin_eps: float, q8: torch.Tensor, q_scale: torch.Tensor, q_pool: torch.Tensor,
    olin: torch.Tensor,
) -> None:
    """Fill q8 [BH, L, D], q_scale [BH, NQ] (times scale_mult), q_pool [BH, NQ, D] and the linear branch's olin
    [BH, L, D] fp16 for q [B, H, L, D] (last dim contiguous), with lin_m [BH, D, D] fp16, fk [BH, D] = sum phi(K) / L
    and proj_l's bias lin_b [D] fp32 (or None)."""
    B, H, L, D = q.shape
    BH, nq = B * H, q_scale.shape[1]
    n_prog = programs_per_head(nq, BH, q.device, Q_PROGRAMS_PER_SM)
    per_prog = triton.cdiv(nq, n_prog)
    n_prog = triton.cdiv(nq, per_prog)
    _q_pass[(n_prog, BH)](
        q, q8, q_scale, q_pool, lin_m, fk, lin_b if lin_b is not None else fk, olin,
        L, H, nq, per_prog, scale_mult, lin_eps, *q.stride()[:3],
        D=D, BLK=block_q, HAS_BIAS=lin_b is not None,
    )
