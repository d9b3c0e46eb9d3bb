"""SageSLA: sparse + linear attention with low-bit block-sparse softmax attention (Triton).

Algorithm (SLA, arXiv 2509.24006; TurboDiffusion's SageSLA, arXiv 2512.16093):

1. Block map. Q is cut into blocks of ``block_q`` rows, K into blocks of ``block_k`` rows (the last
   block of each may be partial). Each Q block is mean-pooled over its real rows; K is first smoothed
   (``K - mean_L(K)``, SageAttention's smooth-K) and then mean-pooled the same way. The pooled score
   ``pool(Q) @ pool(K_smooth)^T`` ([B, H, NQ, NK]) selects, per query block, the ``topk`` key blocks
   with the largest scores, where ``topk = max(1, min(NK, int(topk_ratio * NK)))`` (SLA rounds down;
   we keep at least one block so every row has a softmax support).
2. Sparse branch: softmax attention of each query row over the keys of its selected blocks only,
   scale ``1/sqrt(D)``; padded keys past L are never attended.
3. Linear branch over *all* keys (selected blocks are not excluded), softmax feature map on the head
   dim: ``phi(x) = softmax(x, dim=-1)``, ``o_l = phi(Q) (phi(K)^T V) / (1e-5 + phi(Q) . sum_L phi(K))``,
   then ``proj_l`` (one ``Linear(D, D)`` shared by all heads, applied on the last dim) and added:
   ``o = o_s + proj_l(o_l)``. ``proj_l_weight=None`` means no linear branch.

The Triton path quantizes Q and smoothed K to int8 with one scale per block (the softmax scale and
log2(e) folded into Q's scale), runs the online softmax in fp32 with exp2, and does P @ V in fp16
(or FP8 e4m3 with per-channel V scales on sm89+). Key blocks are visited through a compacted
per-query-block list of selected block indices ([B, H, NQ, topk] int32), not a mask scan.

Layouts: q, k, v are [B, H, L, D] (any float dtype; D in {64, 128} for the kernels); outputs
``o`` [B, H, L, D] in q's dtype and ``density`` (0-d float32 = topk / NK, the fraction of
(query-block, key-block) pairs attended).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from kernels.sla_blockmap import BLOCK_K, BLOCK_Q, block_map_reference, select_blocks, topk_count

__all__ = ["BLOCK_K", "BLOCK_Q", "block_map_reference", "reference", "sage_attention", "sagesla_attention",
           "topk_count"]

LINEAR_EPS = 1e-5


def linear_branch_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, proj_l_weight: torch.Tensor, proj_l_bias: torch.Tensor | None
) -> torch.Tensor:
    """proj_l(phi(Q) (phi(K)^T V) / (eps + phi(Q) . sum phi(K))) in fp32, [B, H, L, D]."""
    fq = torch.softmax(q.float(), dim=-1)  # [B, H, L, D]
    fk = torch.softmax(k.float(), dim=-1)  # [B, H, L, D]
    kv = fk.transpose(-1, -2) @ v.float()  # [B, H, D, D]
    ksum = fk.sum(dim=-2, keepdim=True)  # [B, H, 1, D]
    o_l = (fq @ kv) / (LINEAR_EPS + (fq * ksum).sum(dim=-1, keepdim=True))  # [B, H, L, D]
    return F.linear(o_l, proj_l_weight.float(), None if proj_l_bias is None else proj_l_bias.float())


def reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    topk_ratio: float,
    proj_l_weight: torch.Tensor | None,
    proj_l_bias: torch.Tensor | None,
    block_q: int = BLOCK_Q,
    block_k: int = BLOCK_K,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SLA in plain fp32 PyTorch: the definition of correct.

    q, k, v: [B, H, L, D] (same L for q and k). Returns (o [B, H, L, D] in q.dtype, density 0-d fp32).
    The sparse branch runs a group of query blocks at a time, so peak memory stays near
    ``B*H*NQ*L`` booleans plus about 2^24 fp32 scores.
    """
    B, H, L, D = q.shape
    if k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"q, k, v must share a shape, got {q.shape}, {k.shape}, {v.shape}")
    nq, nk = triton.cdiv(L, block_q), triton.cdiv(L, block_k)

    # 1. block map -> per-query-block key mask over real keys
    lut = block_map_reference(q, k, topk_ratio, block_q, block_k)  # [B, H, NQ, topk]
    block_sel = torch.zeros(B, H, nq, nk, dtype=torch.bool, device=q.device)
    block_sel.scatter_(-1, lut, True)  # [B, H, NQ, NK]
    key_sel = block_sel.repeat_interleave(block_k, dim=-1)[..., :L]  # [B, H, NQ, L]

    # 2. sparse softmax branch, a group of query blocks at a time to bound memory
    qf, kf, vf = q.float(), k.float(), v.float()
    o = torch.empty(B, H, L, D, dtype=torch.float32, device=q.device)
    group = max(1, (1 << 24) // max(1, B * H * block_q * L))  # query blocks per step
    for g0 in range(0, nq, group):
        r0, r1 = g0 * block_q, min(L, (g0 + group) * block_q)
        sel = key_sel[:, :, g0 : g0 + group].repeat_interleave(block_q, dim=-2)[:, :, : r1 - r0]  # [B,H,R,L]
        s = (qf[:, :, r0:r1] @ kf.transpose(-1, -2)) / math.sqrt(D)  # [B, H, R, L]
        s = s.masked_fill(~sel, float("-inf"))
        o[:, :, r0:r1] = torch.softmax(s, dim=-1) @ vf  # [B, H, R, D]

    # 3. linear branch through proj_l
    if proj_l_weight is not None:
        o = o + linear_branch_reference(q, k, v, proj_l_weight, proj_l_bias)
    density = torch.tensor(lut.shape[-1] / nk, dtype=torch.float32)
    return o.to(q.dtype), density


# ----------------------------------------------------------------------------------------------------
# Triton kernels
# ----------------------------------------------------------------------------------------------------

_LOG2E = 1.4426950408889634


@triton.jit
def _kv_stats_kernel(
    # pointers
    K, V, KSUM, VMAX,
    # sizes
    L, H, ROWS_PER_SPLIT,
    stride_kb, stride_kh, stride_kl,
    stride_vb, stride_vh, stride_vl,
    # meta
    D: tl.constexpr, BLOCK: tl.constexpr,
):
    """One pass over a chunk of K and V rows of one head: sum K / L (for smoothing) and max |V| / 448 per
    channel (FP8 e4m3 scales). Writes per-split partials KSUM, VMAX [B*H, n_split, D]."""
    bh = tl.program_id(0)
    split = tl.program_id(1)
    n_split = tl.num_programs(1)
    b = bh // H
    h = bh % H
    offs_d = tl.arange(0, D)
    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh
    ksum = tl.zeros([D], dtype=tl.float32)
    vmax = tl.zeros([D], dtype=tl.float32)
    row0 = split * ROWS_PER_SPLIT
    row1 = tl.minimum(row0 + ROWS_PER_SPLIT, L)
    for start in range(row0, row1, BLOCK):
        offs_l = start + tl.arange(0, BLOCK)
        valid = offs_l < row1
        k = tl.load(k_base + offs_l[:, None] * stride_kl + offs_d[None, :], mask=valid[:, None], other=0.0)
        v = tl.load(v_base + offs_l[:, None] * stride_vl + offs_d[None, :], mask=valid[:, None], other=0.0)
        ksum += tl.sum(k.to(tl.float32), axis=0)
        vmax = tl.maximum(vmax, tl.max(tl.abs(v.to(tl.float32)), axis=0))
    part = bh * n_split + split
    tl.store(KSUM + part * D + offs_d, ksum / L)
    tl.store(VMAX + part * D + offs_d, vmax / 448.0)  # e4m3 max


@triton.jit
def _pool_quant_kernel(
    # pointers
    X, MEAN, XQ, SCALE, POOL, V, VSCALE, VT, LIN_M, FKSUM, LIN_B, OLIN, PHI, PHI_POOL,
    # sizes
    L, L_PAD, H, n_blocks, scale_mult, lin_eps,
    stride_xb, stride_xh, stride_xl,
    stride_vb, stride_vh, stride_vl,
    # meta
    D: tl.constexpr, BLK: tl.constexpr, SMOOTH: tl.constexpr, DO_POOL: tl.constexpr, V_FP8: tl.constexpr,
    HAS_LINEAR: tl.constexpr, HAS_BIAS: tl.constexpr, PHI_OUT: tl.constexpr,
):
    """Per block of BLK rows of one head: optional smoothing (x - mean_L), mean pool over real rows,
    symmetric int8 quantization with one scale (times scale_mult) per block. XQ is [B*H, L, D] int8.
    V_FP8: also V / per-channel scale -> e4m3, stored transposed as VT [B*H, D, L_PAD] (zeros past L).
    HAS_LINEAR (the Q pass): the whole linear branch of these rows, OLIN [B*H, L, D] fp16 =
    (phi(x) @ LIN_M) / (lin_eps + phi(x) . FKSUM) (+ LIN_B), with LIN_M [B*H, D, D] fp16 = (phi(K)^T V) W^T / L.
    PHI_OUT (the K pass): phi(x) of the raw rows -> PHI [B*H, L, D] (PHI's dtype) and its per-block sums
    / L -> PHI_POOL [B*H, n_blocks, D] fp32, for the linear branch's phi(K)^T V and sum phi(K) / L."""
    blk = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    offs_l = blk * BLK + tl.arange(0, BLK)
    offs_d = tl.arange(0, D)
    valid = offs_l < L
    x = tl.load(X + b * stride_xb + h * stride_xh + offs_l[:, None] * stride_xl + offs_d[None, :],
                mask=valid[:, None], other=0.0).to(tl.float32)  # [BLK, D]
    if PHI_OUT:  # softmax over the head dim of the raw (unsmoothed) rows
        e = tl.exp2((x - tl.max(x, axis=1)[:, None]) * 1.4426950408889634)
        fx = tl.where(valid[:, None], e / tl.sum(e, axis=1)[:, None], 0.0)  # [BLK, D]
        tl.store(PHI + bh * L * D + offs_l[:, None] * D + offs_d[None, :], fx.to(PHI.dtype.element_ty),
                 mask=valid[:, None])
        tl.store(PHI_POOL + (bh * n_blocks + blk) * D + offs_d, tl.sum(fx, axis=0) / L)
    if SMOOTH:
        mean = tl.load(MEAN + bh * D + offs_d)  # [D]
        x = tl.where(valid[:, None], x - mean[None, :], 0.0)
    if DO_POOL:
        n_real = tl.minimum(L - blk * BLK, BLK)
        tl.store(POOL + (bh * n_blocks + blk) * D + offs_d, tl.sum(x, axis=0) / n_real)
    amax = tl.maximum(tl.max(tl.abs(x)), 1e-8)
    xq = x * (127.0 / amax)
    xq = tl.where(xq >= 0, xq + 0.5, xq - 0.5).to(tl.int8)  # round half away from zero
    tl.store(XQ + bh * L * D + offs_l[:, None] * D + offs_d[None, :], xq, mask=valid[:, None])
    tl.store(SCALE + bh * n_blocks + blk, amax / 127.0 * scale_mult)
    if HAS_LINEAR:
        e = tl.exp2((x - tl.max(x, axis=1)[:, None]) * 1.4426950408889634)
        fx = e / tl.sum(e, axis=1)[:, None]  # [BLK, D] softmax over the head dim
        den = tl.sum(fx * tl.load(FKSUM + bh * D + offs_d)[None, :], axis=1) + lin_eps  # [BLK]
        lin_m = tl.load(LIN_M + bh * D * D + offs_d[:, None] * D + offs_d[None, :])  # [D, D] fp16
        o_l = tl.dot(fx.to(tl.float16), lin_m) / den[:, None]  # [BLK, D]
        if HAS_BIAS:
            o_l += tl.load(LIN_B + offs_d)[None, :]
        tl.store(OLIN + bh * L * D + offs_l[:, None] * D + offs_d[None, :], o_l.to(tl.float16), mask=valid[:, None])
    if V_FP8:
        v = tl.load(V + b * stride_vb + h * stride_vh + offs_l[:, None] * stride_vl + offs_d[None, :],
                    mask=valid[:, None], other=0.0).to(tl.float32)  # [BLK, D]
        inv = 1.0 / tl.load(VSCALE + bh * D + offs_d)  # [D]
        v8 = (v * inv[None, :]).to(tl.float8e4nv)
        tl.store(VT + bh * D * L_PAD + offs_d[:, None] * L_PAD + offs_l[None, :], tl.trans(v8))


@triton.jit
def _attn_step(
    acc, m_i, l_i, q, q_scale, kb0, kb1,
    # pointers
    KQ, KSCALE, V, VT,
    # sizes
    L, L_PAD,
    stride_vl,
    # meta
    D: tl.constexpr, BLK: tl.constexpr, PAIR: tl.constexpr, MASKED: tl.constexpr, PV_FP8: tl.constexpr,
    P_LOG2_OFFSET: tl.constexpr,
):
    """One key tile: key block kb0 (PAIR: blocks kb0 and kb1 gathered into one 2*BLK tile).
    int8 S = Q K^T scaled into the log2 domain, online softmax in fp32, P @ V in fp16 or fp8.
    P is kept multiplied by 2^P_LOG2_OFFSET (fills FP8's range; it cancels in acc / l)."""
    if PAIR:
        r = tl.arange(0, 2 * BLK)
        hi = r >= BLK
        offs_n = tl.where(hi, kb1 * BLK + r - BLK, kb0 * BLK + r)  # [2*BLK] key rows
        k_scale = tl.where(hi, tl.load(KSCALE + kb1), tl.load(KSCALE + kb0))  # [2*BLK]
    else:
        offs_n = kb0 * BLK + tl.arange(0, BLK)
        k_scale = tl.load(KSCALE + kb0)
    offs_d = tl.arange(0, D)
    if MASKED:
        k = tl.load(KQ + offs_n[:, None] * D + offs_d[None, :], mask=(offs_n < L)[:, None], other=0)
    else:
        k = tl.load(KQ + offs_n[:, None] * D + offs_d[None, :])
    s = tl.dot(q, tl.trans(k), out_dtype=tl.int32).to(tl.float32)  # [BLOCK_M, N]
    if MASKED:
        s = tl.where((offs_n < L)[None, :], s, float("-inf"))
    if PAIR:  # two block scales in one tile: scale first
        s = s * (q_scale * k_scale)[None, :]
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        p = tl.exp2(s - m_new[:, None] + P_LOG2_OFFSET)
    else:  # one positive scale: max on raw scores, then one FMA per element
        sc = q_scale * k_scale
        m_new = tl.maximum(m_i, tl.max(s, axis=1) * sc)
        p = tl.exp2(s * sc - (m_new - P_LOG2_OFFSET)[:, None])
    alpha = tl.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, axis=1)
    acc = acc * alpha[:, None]
    if PV_FP8:
        vt = tl.load(VT + offs_d[:, None] * L_PAD + offs_n[None, :])  # [D, N] fp8, zero past L
        acc = tl.dot(p.to(tl.float8e4nv), tl.trans(vt), acc)  # p carries the 2^P_LOG2_OFFSET factor
    else:
        if MASKED:
            v = tl.load(V + offs_n[:, None] * stride_vl + offs_d[None, :], mask=(offs_n < L)[:, None], other=0.0)
        else:
            v = tl.load(V + offs_n[:, None] * stride_vl + offs_d[None, :])
        acc = tl.dot(p.to(tl.float16), v.to(tl.float16), acc)
    return acc, m_new, l_i


@triton.jit
def _sagesla_fwd_kernel(
    # pointers
    QQ, QSCALE, KQ, KSCALE, V, VT, VSCALE, LUT, OLIN, O,
    # sizes
    L, L_PAD, H, n_qblocks, n_kblocks, TOPK,
    stride_vb, stride_vh, stride_vl,
    stride_ob, stride_oh, stride_ol,
    # meta
    D: tl.constexpr, BLOCK_M: tl.constexpr, BLK_Q: tl.constexpr, BLOCK_N: tl.constexpr, PAIR: tl.constexpr,
    DENSE: tl.constexpr, PV_FP8: tl.constexpr, HAS_LINEAR: tl.constexpr, P_OFF: tl.constexpr,
):
    """Block-sparse int8/fp8 attention for BLOCK_M query rows (part of query block BLK_Q) of one head,
    over the key blocks listed in LUT [B*H, NQ, TOPK] (sorted; DENSE: all key blocks), plus the
    linear branch precomputed by the Q pass: o += OLIN [B*H, L, D] fp16."""
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    qb = (pid_m * BLOCK_M) // BLK_Q
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D)
    row_ok = offs_m < L

    # 1. int8 Q tile and its block scale (softmax scale * log2(e) folded in)
    q = tl.load(QQ + bh * L * D + offs_m[:, None] * D + offs_d[None, :], mask=row_ok[:, None], other=0)
    q_scale = tl.load(QSCALE + bh * n_qblocks + qb)
    kq_base = KQ + bh * L * D
    ks_base = KSCALE + bh * n_kblocks
    v_base = V + b * stride_vb + h * stride_vh
    vt_base = VT + bh * D * L_PAD
    lut = LUT + (bh * n_qblocks + qb) * TOPK

    # 2. online softmax over the selected key blocks (PAIR: two per tile); only the last one (the LUT
    #    is sorted) can hold keys past L, so only the last tile is masked
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, D], dtype=tl.float32)
    if PAIR:
        n_full = (TOPK - 1) // 2
        for i in range(0, n_full):
            if DENSE:
                kb0 = 2 * i
                kb1 = 2 * i + 1
            else:
                kb0 = tl.load(lut + 2 * i)
                kb1 = tl.load(lut + 2 * i + 1)
            acc, m_i, l_i = _attn_step(acc, m_i, l_i, q, q_scale, kb0, kb1, kq_base, ks_base, v_base, vt_base,
                                       L, L_PAD, stride_vl, D, BLOCK_N, True, False, PV_FP8, P_OFF)
        if DENSE:
            kb0 = 2 * n_full
            kb1 = TOPK - 1
        else:
            kb0 = tl.load(lut + 2 * n_full)
            kb1 = tl.load(lut + TOPK - 1)
        if TOPK - 2 * n_full == 2:
            acc, m_i, l_i = _attn_step(acc, m_i, l_i, q, q_scale, kb0, kb1, kq_base, ks_base, v_base, vt_base,
                                       L, L_PAD, stride_vl, D, BLOCK_N, True, True, PV_FP8, P_OFF)
        else:
            acc, m_i, l_i = _attn_step(acc, m_i, l_i, q, q_scale, kb1, kb1, kq_base, ks_base, v_base, vt_base,
                                       L, L_PAD, stride_vl, D, BLOCK_N, False, True, PV_FP8, P_OFF)
    else:
        for i in range(0, TOPK - 1):
            if DENSE:
                kb0 = i
            else:
                kb0 = tl.load(lut + i)
            acc, m_i, l_i = _attn_step(acc, m_i, l_i, q, q_scale, kb0, kb0, kq_base, ks_base, v_base, vt_base,
                                       L, L_PAD, stride_vl, D, BLOCK_N, False, False, PV_FP8, P_OFF)
        if DENSE:
            kb0 = TOPK - 1
        else:
            kb0 = tl.load(lut + TOPK - 1)
        acc, m_i, l_i = _attn_step(acc, m_i, l_i, q, q_scale, kb0, kb0, kq_base, ks_base, v_base, vt_base,
                                   L, L_PAD, stride_vl, D, BLOCK_N, False, True, PV_FP8, P_OFF)
    if PV_FP8:
        vscale = tl.load(VSCALE + bh * D + offs_d)  # [D]
        o = acc * vscale[None, :] / l_i[:, None]
    else:
        o = acc / l_i[:, None]  # [BLOCK_M, D]

    # 3. linear branch (proj_l included), computed in the Q pass. The sparse part is rounded to the
    #    output dtype first, so the fp32 accumulator is dead before the OLIN tile arrives (one
    #    [BLOCK_M, D] fp32 tile fewer live: 4-warp 128-row tiles otherwise spill)
    if HAS_LINEAR:
        o = o.to(O.dtype.element_ty).to(tl.float32)
        o += tl.load(OLIN + bh * L * D + offs_m[:, None] * D + offs_d[None, :], mask=row_ok[:, None],
                     other=0.0).to(tl.float32)
    tl.store(O + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_ol + offs_d[None, :],
             o.to(O.dtype.element_ty), mask=row_ok[:, None])


# ----------------------------------------------------------------------------------------------------
# autotune configs
# ----------------------------------------------------------------------------------------------------


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


_ATTN_CONFIGS = [
    triton.Config({"BLOCK_M": bm, "PAIR": pair}, num_warps=w, num_stages=st)
    for pair in (True, False)
    for bm, w, st in [(128, 8, 3), (128, 8, 4), (128, 4, 3), (128, 4, 2), (128, 4, 4), (64, 4, 4), (64, 4, 3)]
]


def _prune_attn_configs(configs: list[triton.Config], named_args: dict, **kwargs: object) -> list[triton.Config]:
    blk_q = kwargs.get("BLK_Q", named_args.get("BLK_Q"))
    blk_k = kwargs.get("BLOCK_N", named_args.get("BLOCK_N"))
    ok = [c for c in configs if blk_q % c.kwargs["BLOCK_M"] == 0 and (blk_k <= 64 or not c.kwargs["PAIR"])]
    if not ok:  # tiny test blocks: one query block per program
        ok = [triton.Config({"BLOCK_M": blk_q, "PAIR": False}, num_warps=4, num_stages=1)]
    if _interpreting():  # one config there, alternating PAIR by block size so tests cover both
        ok = [triton.Config({"BLOCK_M": blk_q, "PAIR": blk_k == 16}, num_warps=4, num_stages=1)]
    return ok


# K/V statistics: a streaming reduction
_STATS_CONFIGS = [
    triton.Config({"BLOCK": blk}, num_warps=w, num_stages=st) for blk, w, st in [(128, 8, 2), (64, 4, 3), (128, 4, 3)]
]
_STATS_ROWS_ALIGN = 128  # ROWS_PER_SPLIT is a multiple of every config's BLOCK


def _prune_stats_configs(configs: list[triton.Config], named_args: dict, **kwargs: object) -> list[triton.Config]:
    return [triton.Config({"BLOCK": 32}, num_warps=4, num_stages=1)] if _interpreting() else configs


_kv_stats = triton.autotune(
    configs=_STATS_CONFIGS,
    key=["D"],
    prune_configs_by={"early_config_prune": _prune_stats_configs},
)(_kv_stats_kernel)


def _prune_pool_configs(configs: list[triton.Config], named_args: dict, **kwargs: object) -> list[triton.Config]:
    return configs[:1] if _interpreting() else configs


_pool_quant = triton.autotune(
    configs=[triton.Config({}, num_warps=w) for w in (4, 8, 2)],
    key=["D", "BLK", "SMOOTH", "DO_POOL", "V_FP8", "HAS_LINEAR", "PHI_OUT"],
    prune_configs_by={"early_config_prune": _prune_pool_configs},
)(_pool_quant_kernel)

_sagesla_fwd = triton.autotune(
    configs=_ATTN_CONFIGS,
    key=["D", "BLK_Q", "BLOCK_N", "DENSE", "PV_FP8", "HAS_LINEAR"],
    prune_configs_by={"early_config_prune": _prune_attn_configs},
)(_sagesla_fwd_kernel)


# ----------------------------------------------------------------------------------------------------
# public wrappers
# ----------------------------------------------------------------------------------------------------


def _fp8_supported(device: torch.device) -> bool:
    if device.type != "cuda" or _interpreting():
        return False  # the interpreter's fp32 -> e4m3 cast does not round to nearest; fp16 there
    return torch.cuda.get_device_capability(device) >= (8, 9)


@dataclass(frozen=True)
class _Prepared:
    """Everything the fused attention launch needs (built by `_prepare`)."""

    q: torch.Tensor
    v: torch.Tensor
    q8: torch.Tensor  # [BH, L, D] int8
    q_scale: torch.Tensor  # [BH, NQ] fp32, includes log2(e)/sqrt(D)
    k8: torch.Tensor  # [BH, L, D] int8 of K - mean_L(K)
    k_scale: torch.Tensor  # [BH, NK] fp32
    vt: torch.Tensor  # [BH, D, NK*block_k] fp8 (or a dummy)
    v_scale: torch.Tensor  # [BH, D] fp32 (or a dummy)
    lut: torch.Tensor  # [BH, NQ, topk] int32 sorted key-block ids (or a dummy when dense)
    olin: torch.Tensor  # [BH, L, D] fp16 linear branch incl. proj_l (or a dummy)
    topk: int
    block_q: int
    block_k: int
    dense: bool
    pv_fp8: bool
    has_linear: bool


def _prepare(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    topk_ratio: float,
    proj_l_weight: torch.Tensor | None,
    proj_l_bias: torch.Tensor | None,
    block_q: int,
    block_k: int,
    dense: bool,
    pv_fp8: bool,
) -> _Prepared:
    """K/V stats -> K int8 (+ pooling, V fp8, phi(K)) -> linear constants -> Q int8 + linear branch -> block map."""
    # 1. shapes
    if q.dim() != 4 or k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"q, k, v must all be [B, H, L, D] of one shape, got {q.shape}, {k.shape}, {v.shape}")
    B, H, L, D = q.shape
    if D not in (16, 32, 64, 128):
        raise ValueError(f"head dim {D} not supported (16, 32, 64, 128)")
    if block_q % 16 or block_k % 16:
        raise ValueError("block_q and block_k must be multiples of 16")
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    BH, dev = B * H, q.device
    nq, nk = triton.cdiv(L, block_q), triton.cdiv(L, block_k)
    has_linear = proj_l_weight is not None and not dense

    # 2. one pass over K, V: sum K and max |V| (per-split partials)
    n_split = max(1, min(triton.cdiv(L, 4 * _STATS_ROWS_ALIGN), triton.cdiv(528, BH)))  # ~4 programs per SM
    rows = triton.cdiv(triton.cdiv(L, n_split), _STATS_ROWS_ALIGN) * _STATS_ROWS_ALIGN
    n_split = triton.cdiv(L, rows)
    ksum = torch.empty(BH, n_split, D, device=dev, dtype=torch.float32)
    vmax = torch.empty_like(ksum)
    _kv_stats[(BH, n_split)](k, v, ksum, vmax, L, H, rows, *k.stride()[:3], *v.stride()[:3], D=D)
    k_mean = ksum.sum(1)  # [BH, D]

    # 3. smoothed int8 K, pooled when sparse (+ fp8 V, + phi(K) and its block sums for the linear branch)
    q8 = torch.empty(BH, L, D, device=dev, dtype=torch.int8)
    k8 = torch.empty_like(q8)
    q_scale = torch.empty(BH, nq, device=dev, dtype=torch.float32)
    k_scale = torch.empty(BH, nk, device=dev, dtype=torch.float32)
    q_pool = torch.empty(BH, nq, D, device=dev, dtype=torch.float32) if not dense else q_scale
    k_pool = torch.empty(BH, nk, D, device=dev, dtype=torch.float32) if not dense else k_scale
    l_pad = nk * block_k
    if pv_fp8:
        v_scale = vmax.amax(1).clamp_min(1e-8)  # [BH, D] = max |V| / 448
        vt = torch.empty(BH, D, l_pad, device=dev, dtype=torch.float8_e4m3fn)
    else:
        v_scale, vt = k_scale, k8
    phi_dtype = v.dtype if v.dtype in (torch.bfloat16, torch.float16) else torch.float32
    phi_k = torch.empty(BH, L, D, device=dev, dtype=phi_dtype) if has_linear else k_scale
    phi_pool = torch.empty(BH, nk, D, device=dev, dtype=torch.float32) if has_linear else k_scale
    _pool_quant[(nk, BH)](
        k, k_mean, k8, k_scale, k_pool, v, v_scale, vt, k_scale, k_scale, k_scale, k_scale, phi_k, phi_pool,
        L, l_pad, H, nk, 1.0, 0.0, *k.stride()[:3], *v.stride()[:3],
        D=D, BLK=block_k, SMOOTH=True, DO_POOL=not dense, V_FP8=pv_fp8, HAS_LINEAR=False, HAS_BIAS=False,
        PHI_OUT=has_linear,
    )

    # 4. linear branch constants: phi(K)^T V by one batched GEMM, proj_l folded in per head; numerator
    #    and denominator both divided by L so LIN_M fits fp16 (eps scaled alike)
    lin_m = fk = lin_b = olin = k_scale
    if has_linear:
        assert proj_l_weight is not None
        # v as the model hands it over is a transposed view of [B, L, H, D]: for B = 1 its heads are a batch
        # of [L, D] matrices with row stride H·D, which the batched GEMM reads in place (reshape would copy)
        v_heads = v[0] if B == 1 else v.reshape(BH, L, D)
        kv = torch.bmm(phi_k.transpose(1, 2), v_heads.to(phi_dtype)).float()  # [BH, D, D]
        lin_m = (torch.matmul(kv, proj_l_weight.float().t()) / L).half()  # [BH, D, D]
        fk = phi_pool.sum(1)  # [BH, D] = sum phi(K) / L
        if proj_l_bias is not None:
            lin_b = proj_l_bias.float().contiguous()
        olin = torch.empty(BH, L, D, device=dev, dtype=torch.float16)

    # 5. int8 Q (log2e / sqrt(D) folded into its scale), pooled when sparse, + the whole linear branch
    _pool_quant[(nq, BH)](
        q, k_mean, q8, q_scale, q_pool, v, v_scale, vt, lin_m, fk, lin_b, olin, k_scale, k_scale,
        L, l_pad, H, nq, _LOG2E / math.sqrt(D), LINEAR_EPS / L, *q.stride()[:3], *v.stride()[:3],
        D=D, BLK=block_q, SMOOTH=False, DO_POOL=not dense, V_FP8=False,
        HAS_LINEAR=has_linear, HAS_BIAS=has_linear and proj_l_bias is not None, PHI_OUT=False,
    )

    # 6. block map: pooled scores -> top-k key blocks per query block, sorted, compacted int32
    if dense:
        topk, lut = nk, q_scale
    else:
        topk = topk_count(topk_ratio, nk)
        lut = select_blocks(torch.bmm(q_pool, k_pool.transpose(1, 2)), topk)  # [BH, NQ, topk] int32
    return _Prepared(q, v, q8, q_scale, k8, k_scale, vt, v_scale, lut, olin, topk, block_q, block_k, dense,
                     pv_fp8, has_linear)


# Which kernel runs the fused attention on Hopper (sm90): "auto" (default) / "gluon" the Gluon kernel whose score
# MMAs overlap the softmax (kernels/sagesla_gluon.py), where it covers the call and passed its first-call check
# (`_check_gluon`: on the first covered call's own operands, its output within GLUON_MAX_DISTANCE of the Triton
# kernel's); "triton" the Triton kernel always. The worker setting `sagesla_kernel` sets this variable.
KERNEL_ENV = "TURBOVID_WORKER__SAGESLA_KERNEL"
KERNEL_CHOICES = ("auto", "gluon", "triton")
P_OFF_FP8 = 8.8  # FP8 P is kept scaled by 2^8.8 ~ 446 < 448 (e4m3's largest); it cancels in acc / l
# The two kernels read the same quantized operands and differ in their own rounding: FP8 P, rounded against
# another running max (the Triton kernel's covers two key blocks at a time), and the order of the fp32 sums.
# That noise averages out over the keys a row sees: 1.7e-3 apart at the 1.3B shape (3264 keys per row) and 1.9e-3
# at the 14B one, but 1.2e-2 with 384 keys (L 4100, 6 blocks; H200, session 32), while each kernel is 3.6e-2 from
# the fp32 reference there. A miscompiled kernel (wrong blocks, races) is off by far more than this.
GLUON_MAX_DISTANCE = 5e-2
_GLUON_CHECKED: dict[int, bool] = {}  # device index -> `_check_gluon`'s answer, once per process


def _gluon_runs(p: _Prepared) -> bool:
    """Whether this prepared call runs on the Gluon kernel: sm90, asked for (not "triton"), a call it covers, and
    (once per device and process) `_check_gluon` on this call's operands. Inside a CUDA graph capture the check
    cannot launch, so a first call there answers False (the Triton kernel is captured) without remembering it."""
    from kernels import sagesla_gluon

    dev = p.q.device
    if dev.type != "cuda" or _interpreting() or _kernel_choice() == "triton":
        return False
    if not sagesla_gluon.supported(p.q.shape[-1], p.block_q, p.block_k, p.topk, p.dense, p.pv_fp8):
        return False
    from kernels import checked_once
    from kernels.w8a8 import _device_index

    index = _device_index(dev)
    return checked_once(_GLUON_CHECKED, index, lambda: _check_gluon(index, p))


def _kernel_choice() -> str:
    from kernels import env_choice

    return env_choice(KERNEL_ENV, KERNEL_CHOICES, "auto")


def kernel_in_use(device_index: int) -> str:
    """Which kernel this process's SageSLA calls on the device took once they ran: "gluon" where the Gluon kernel
    passed its first-call check, else "triton" (not checked: not Hopper, turned off, or no call it covers)."""
    from kernels import checked_kernel

    return checked_kernel(_GLUON_CHECKED, device_index)


def _relative_distance(got: torch.Tensor, want: torch.Tensor) -> float:
    """||got - want|| / ||want|| over [B, H, L, D] outputs, a few heads at a time (a 14B call's output is 0.8 GB:
    no full-size fp32 copies); inf when `got` holds a NaN or an inf."""
    num = den = 0.0
    g2, w2 = got.flatten(0, 1), want.flatten(0, 1)
    for i in range(0, g2.shape[0], 8):
        a, b = g2[i:i + 8].float(), w2[i:i + 8].float()
        if not bool(torch.isfinite(a).all()):
            return math.inf
        num += (a - b).square().sum().item()
        den += b.square().sum().item()
    return math.sqrt(num / den) if den > 0 else (0.0 if num == 0 else math.inf)


def _check_gluon(device_index: int, p: _Prepared) -> bool:
    """A Hopper GPU, a Triton with the Gluon Hopper API, and the Gluon kernel's output on this first call's own
    operands within GLUON_MAX_DISTANCE (relative) of the Triton kernel's; otherwise the Triton kernel, with the
    reason logged. The check costs one more launch of each kernel at a shape the worker's warm-up compiles anyway
    (checking on shapes of its own would compile both kernels twice more before the worker is ready)."""
    import logging

    from kernels import sagesla_gluon

    log = logging.getLogger(__name__)
    if torch.cuda.get_device_capability(device_index) != (9, 0) or not sagesla_gluon.available():
        return False
    try:
        distance = _relative_distance(_launch_gluon(p), _launch_triton(p))
        if distance <= GLUON_MAX_DISTANCE:
            log.info("SageSLA attention on cuda:%d: the Gluon kernel (%s=%s)", device_index, KERNEL_ENV,
                     _kernel_choice())
            return True
        log.warning("the Gluon SageSLA kernel is %.3g (relative) from the Triton kernel's output on this Triton %s "
                    "(at most %g allowed): using the Triton kernel", distance, triton.__version__, GLUON_MAX_DISTANCE)
    except Exception as exc:  # noqa: BLE001 - any failure means: the Triton kernel
        log.warning("the Gluon SageSLA kernel does not run on this Triton %s (%s): using the Triton kernel",
                    triton.__version__, f"{type(exc).__name__}: {str(exc)[:200]}")
    return False


def _launch(p: _Prepared) -> torch.Tensor:
    """The fused sparse attention (+ linear epilogue) over prepared operands -> o [B, H, L, D], stored
    token-major ([B, L, H, D] storage, as the DiT's projections lay out q/k/v): the output projection reads
    o.transpose(1, 2) as a plain [B, L, H·D] view, and a Ulysses way back sends it without a packing copy."""
    return _launch_gluon(p) if _gluon_runs(p) else _launch_triton(p)


def _launch_gluon(p: _Prepared) -> torch.Tensor:
    from kernels import sagesla_gluon

    B, H, L, D = p.q.shape
    o = p.q.new_empty(B, L, H, D).transpose(1, 2)
    return sagesla_gluon.attention(p.q8, p.q_scale, p.k8, p.k_scale, p.vt, p.v_scale, p.lut,
                                   p.olin if p.has_linear else None, o, H, p.block_k, P_OFF_FP8)


def _launch_triton(p: _Prepared) -> torch.Tensor:
    B, H, L, D = p.q.shape
    nq, nk = p.q_scale.shape[1], p.k_scale.shape[1]
    o = p.q.new_empty(B, L, H, D).transpose(1, 2)
    grid = lambda meta: (triton.cdiv(L, meta["BLOCK_M"]), B * H)
    _sagesla_fwd[grid](
        p.q8, p.q_scale, p.k8, p.k_scale, p.v, p.vt, p.v_scale, p.lut, p.olin, o,
        L, nk * p.block_k, H, nq, nk, p.topk, *p.v.stride()[:3], *o.stride()[:3],
        D=D, BLK_Q=p.block_q, BLOCK_N=p.block_k, DENSE=p.dense, PV_FP8=p.pv_fp8, HAS_LINEAR=p.has_linear,
        P_OFF=P_OFF_FP8 if p.pv_fp8 else 0.0,
    )
    return o


@torch.library.custom_op("turbovid::sagesla", mutates_args=())
def _sagesla_op(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    topk_ratio: float,
    proj_l_weight: torch.Tensor | None,
    proj_l_bias: torch.Tensor | None,
    block_q: int,
    block_k: int,
    dense: bool,
    pv_fp8: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    p = _prepare(q, k, v, topk_ratio, proj_l_weight, proj_l_bias, block_q, block_k, dense, pv_fp8)
    return _launch(p), torch.tensor(p.topk / p.k_scale.shape[1], dtype=torch.float32)


@_sagesla_op.register_fake
def _(q, k, v, topk_ratio, proj_l_weight, proj_l_bias, block_q, block_k, dense, pv_fp8):  # noqa: ANN001
    B, H, L, D = q.shape
    return q.new_empty(B, L, H, D).transpose(1, 2), q.new_empty((), dtype=torch.float32)


def sagesla_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    topk_ratio: float,
    proj_l_weight: torch.Tensor | None = None,
    proj_l_bias: torch.Tensor | None = None,
    block_q: int = BLOCK_Q,
    block_k: int = BLOCK_K,
    pv_fp8: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SageSLA forward (same semantics as `reference`). q, k, v: [B, H, L, D], last dim contiguous,
    D in {64, 128} at full speed. Returns (o [B, H, L, D] in q.dtype, density 0-d fp32).
    pv_fp8=None picks FP8 P@V on sm89+ GPUs, fp16 otherwise (and under the interpreter)."""
    fp8 = _fp8_supported(q.device) if pv_fp8 is None else pv_fp8
    return _sagesla_op(q, k, v, topk_ratio, proj_l_weight, proj_l_bias, block_q, block_k, False, fp8)


def sage_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, block_q: int = 128, block_k: int = 128,
    pv_fp8: bool | None = None,
) -> torch.Tensor:
    """Dense low-bit attention (SageAttention-style drop-in): softmax(Q K^T / sqrt(D)) V with int8
    Q K^T (per-block scales, smoothed K) and FP8/fp16 P V. q, k, v: [B, H, L, D] -> o [B, H, L, D].
    Default 128x128 tiles (faster than 128x64 on the H200: kernels/NOTES_sagesla.md)."""
    fp8 = _fp8_supported(q.device) if pv_fp8 is None else pv_fp8
    o, _ = _sagesla_op(q, k, v, 1.0, None, None, block_q, block_k, True, fp8)
    return o


# ----------------------------------------------------------------------------------------------------
# bench
# ----------------------------------------------------------------------------------------------------


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return F.cosine_similarity(a.double().flatten(), b.double().flatten(), dim=0).item()


def _bench_variants(q, k, v, w, bias, topk_ratio, fp8, ref_s, ref_d, t_sdpa, rows, dense_bks):  # noqa: ANN001
    """Time one P@V precision: full SageSLA, its parts, and the dense low-bit mode."""
    from functools import partial

    do_bench = triton.testing.do_bench
    H, tag = q.shape[1], "fp8" if fp8 else "fp16"
    try:
        fn = partial(sagesla_attention, q, k, v, topk_ratio=topk_ratio, proj_l_weight=w, proj_l_bias=bias, pv_fp8=fp8)
        o, dens = fn()
        t = do_bench(fn)
        prep = partial(_prepare, q, k, v, topk_ratio, w, bias, BLOCK_Q, BLOCK_K, False, fp8)
        prep_nolin = partial(_prepare, q, k, v, topk_ratio, None, None, BLOCK_Q, BLOCK_K, False, fp8)
        t_prep, t_prep_nolin = do_bench(prep), do_bench(prep_nolin)
        t_attn = do_bench(partial(_launch, prep()))
        t_attn_nolin = do_bench(partial(_launch, prep_nolin()))
        rows.append((f"sagesla H={H} {tag}", t, t_sdpa, _cos(o, ref_s),
                     f"density {dens.item():.3f} prep {t_prep:.3f} (no-linear {t_prep_nolin:.3f}) "
                     f"attn {t_attn:.3f} (no-linear {t_attn_nolin:.3f})"))
    except Exception as e:  # keep the table going when one variant fails to build
        rows.append((f"sagesla H={H} {tag}", float("nan"), t_sdpa, float("nan"), repr(e)[:300]))
    for bk in dense_bks if fp8 else dense_bks[:1]:
        name = f"sage-dense H={H} {tag} bk{bk}"
        try:
            fn = partial(sage_attention, q, k, v, block_k=bk, pv_fp8=fp8)
            o = fn()
            t = do_bench(fn)
            t_attn = do_bench(partial(_launch, _prepare(q, k, v, 1.0, None, None, 128, bk, True, fp8)))
            rows.append((name, t, t_sdpa, _cos(o, ref_d), f"attn-only {t_attn:.3f}"))
        except Exception as e:
            rows.append((name, float("nan"), t_sdpa, float("nan"), repr(e)[:300]))


def _bench_block_map(q: torch.Tensor, topk_ratio: float) -> str:
    """Block-map selection alone: pooled scores (bmm) + top-k + sort, at the bench shape."""
    from functools import partial

    B, H, L, D = q.shape
    nq, nk = triton.cdiv(L, BLOCK_Q), triton.cdiv(L, BLOCK_K)
    pq = torch.randn(B * H, nq, D, device=q.device)
    pk = torch.randn(B * H, nk, D, device=q.device)
    topk = topk_count(topk_ratio, nk)

    def select_torch() -> torch.Tensor:
        score = torch.bmm(pq, pk.transpose(1, 2))
        return torch.topk(score, topk, dim=-1, sorted=False).indices.sort(dim=-1).values.to(torch.int32)

    def select_triton() -> torch.Tensor:
        return select_blocks(torch.bmm(pq, pk.transpose(1, 2)), topk)

    same = torch.equal(select_torch(), select_triton())
    score = torch.bmm(pq, pk.transpose(1, 2))
    warps = " ".join(f"w{w} {triton.testing.do_bench(partial(select_blocks, score, topk, w)):.3f}" for w in (2, 4, 8))
    return (f"block-map select H={H}: bmm+torch.topk+sort {triton.testing.do_bench(partial(select_torch)):.3f} ms, "
            f"bmm+triton threshold-select {triton.testing.do_bench(partial(select_triton)):.3f} ms (same={same}); "
            f"select alone by num_warps: {warps}")


def _profile_call(fn, n: int = 5) -> str:  # noqa: ANN001
    """Per-kernel device time of fn() (mean over n calls, torch.profiler), largest first."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(n):
            fn()
        torch.cuda.synchronize()
    rows = [(e.device_time_total / n / 1e3, e.count // n, e.key) for e in prof.key_averages()
            if e.device_time_total > 0]
    rows.sort(reverse=True)
    total = sum(r[0] for r in rows)
    return f"  device total {total:.3f} ms\n" + "\n".join(f"  {t:7.3f} ms x{c:<2d} {key[:90]}" for t, c, key in rows)


def bench(
    heads: tuple[int, ...] = (12, 40), L: int = 32760, D: int = 128, topk_ratio: float = 0.1,
    precisions: tuple[bool, ...] = (True, False), dense_bks: tuple[int, ...] = (128, 64), profile: bool = False,
) -> None:
    """H200 table: SageSLA (block map + sparse + linear) and dense low-bit mode vs cuDNN SDPA (bf16).
    precisions: FP8 P@V (True) and/or fp16 (False); dense_bks: key tiles for the dense rows (fp16: first)."""
    from functools import partial

    from torch.nn.attention import SDPBackend, sdpa_kernel

    dev = torch.device("cuda")
    print(f"device {torch.cuda.get_device_name()}  torch {torch.__version__}  triton {triton.__version__}")
    rows: list = []
    extra: list[str] = []
    for H in heads:
        g = torch.Generator(device=dev).manual_seed(0)
        q, k, v = (torch.randn(1, H, L, D, device=dev, dtype=torch.bfloat16, generator=g) for _ in range(3))
        w = torch.randn(D, D, device=dev, generator=g) / math.sqrt(D)
        bias = torch.randn(D, device=dev, generator=g) * 0.01
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            t_sdpa = triton.testing.do_bench(partial(F.scaled_dot_product_attention, q, k, v))
        ref_s, _ = reference(q, k, v, topk_ratio=topk_ratio, proj_l_weight=w, proj_l_bias=bias)
        ref_d = F.scaled_dot_product_attention(q.float(), k.float(), v.float())
        for fp8 in precisions:
            _bench_variants(q, k, v, w, bias, topk_ratio, fp8, ref_s, ref_d, t_sdpa, rows, dense_bks)
        extra.append(_bench_block_map(q, topk_ratio))
        if profile:
            fn = partial(sagesla_attention, q, k, v, topk_ratio=topk_ratio, proj_l_weight=w, proj_l_bias=bias)
            extra.append(f"kernels of one sagesla call H={H} (torch.profiler):\n{_profile_call(fn)}")
        del ref_s, ref_d
    print(f"L={L} D={D} B=1 topk={topk_ratio}; times in ms (triton.testing.do_bench)")
    print(f"{'variant':<22} {'ours':>8} {'cudnn':>8} {'speedup':>8} {'cos':>8}  notes")
    for name, t, ts, c, note in rows:
        print(f"{name:<22} {t:8.3f} {ts:8.3f} {ts / t:8.2f} {c:8.5f}  {note}")
    print("\n".join(extra))
    for name, tuner in (("attention", _sagesla_fwd), ("kv stats", _kv_stats), ("pool/quant", _pool_quant)):
        print(f"best {name} configs:", {str(key): str(cfg) for key, cfg in tuner.cache.items()})


if __name__ == "__main__":
    bench()
