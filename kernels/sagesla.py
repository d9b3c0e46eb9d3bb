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

import torch
import torch.nn.functional as F

BLOCK_Q = 128
BLOCK_K = 64
LINEAR_EPS = 1e-5


def topk_count(topk_ratio: float, n_kblocks: int) -> int:
    """Number of key blocks kept per query block (SLA's floor rounding, at least 1)."""
    if not 0.0 < topk_ratio <= 1.0:
        raise ValueError(f"topk_ratio must be in (0, 1], got {topk_ratio}")
    return max(1, min(n_kblocks, int(topk_ratio * n_kblocks)))


def _mean_pool(x: torch.Tensor, block: int) -> torch.Tensor:
    """Mean over each block of `block` rows of x [B, H, L, D] (real rows only) -> [B, H, NB, D] fp32."""
    B, H, L, D = x.shape
    nb = triton_cdiv(L, block)
    pad = nb * block - L
    xp = F.pad(x.float(), (0, 0, 0, pad))  # [B, H, NB*block, D]
    sums = xp.view(B, H, nb, block, D).sum(dim=3)  # [B, H, NB, D]
    counts = torch.full((nb,), float(block), device=x.device)
    counts[-1] = float(L - (nb - 1) * block)
    return sums / counts[:, None]


def triton_cdiv(a: int, b: int) -> int:
    return (a + b - 1) // b


def block_map_reference(
    q: torch.Tensor, k: torch.Tensor, topk_ratio: float, block_q: int = BLOCK_Q, block_k: int = BLOCK_K
) -> torch.Tensor:
    """Selected key-block indices per query block: [B, H, NQ, topk] int64, sorted ascending."""
    k_smooth = k.float() - k.float().mean(dim=-2, keepdim=True)  # [B, H, L, D]
    pq = _mean_pool(q, block_q)  # [B, H, NQ, D]
    pk = _mean_pool(k_smooth, block_k)  # [B, H, NK, D]
    score = pq @ pk.transpose(-1, -2)  # [B, H, NQ, NK]
    n = topk_count(topk_ratio, score.shape[-1])
    return torch.topk(score, n, dim=-1, sorted=False).indices.sort(dim=-1).values


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
    nq, nk = triton_cdiv(L, block_q), triton_cdiv(L, block_k)

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
