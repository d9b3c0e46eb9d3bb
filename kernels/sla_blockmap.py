"""SLA block map: which key blocks each query block attends (TurboDiffusion / SLA semantics).

Q is cut into blocks of ``block_q`` rows and K into blocks of ``block_k`` rows (last blocks may be
partial). Scores are ``mean_pool(Q) @ mean_pool(K - mean_L(K))^T`` ([B*H, NQ, NK], pooling over real rows
only); each query block keeps its ``topk_count(ratio, NK)`` best key blocks. The result is a compacted
list of selected key-block ids per query block, sorted ascending ([B*H, NQ, topk] int32), so the
attention kernel walks exactly those blocks and only the last entry can be a partial block.

`select_blocks` does the selection on GPU/interpreter with one Triton program per query block: an
order-preserving int32 key of each fp32 score is packed with its (reversed) index into int64 and bitonic
sorted descending; the ``topk``-th packed key is the threshold, and the indices at or above it are
compacted in ascending order by a prefix sum (no second sort). Ties go to the lower index.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

BLOCK_Q = 128
BLOCK_K = 64


def topk_count(topk_ratio: float, n_kblocks: int) -> int:
    """Number of key blocks kept per query block (SLA's floor rounding, at least 1)."""
    if not 0.0 < topk_ratio <= 1.0:
        raise ValueError(f"topk_ratio must be in (0, 1], got {topk_ratio}")
    return max(1, min(n_kblocks, int(topk_ratio * n_kblocks)))


def _mean_pool(x: torch.Tensor, block: int) -> torch.Tensor:
    """Mean over each block of `block` rows of x [B, H, L, D] (real rows only) -> [B, H, NB, D] fp32."""
    B, H, L, D = x.shape
    nb = triton.cdiv(L, block)
    pad = nb * block - L
    xp = F.pad(x.float(), (0, 0, 0, pad))  # [B, H, NB*block, D]
    sums = xp.view(B, H, nb, block, D).sum(dim=3)  # [B, H, NB, D]
    counts = torch.full((nb,), float(block), device=x.device)
    counts[-1] = float(L - (nb - 1) * block)
    return sums / counts[:, None]


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


@triton.jit
def _topk_lut_kernel(
    # pointers
    SCORE, LUT,
    # sizes
    NK, TOPK,
    # meta
    NK_POW2: tl.constexpr,
):
    """One row of SCORE [R, NK] fp32 -> LUT [R, TOPK] int32: indices of the TOPK largest, ascending."""
    row = tl.program_id(0)
    offs = tl.arange(0, NK_POW2)
    s = tl.load(SCORE + row * NK + offs, mask=offs < NK, other=float("-inf"))
    bits = s.to(tl.int32, bitcast=True)
    key = tl.where(bits >= 0, bits, bits ^ 0x7FFFFFFF)  # int order == float order
    packed = (key.to(tl.int64) << 32) | (NK_POW2 - 1 - offs).to(tl.int64)
    ranked = tl.sort(packed, descending=True)
    thr = tl.sum(tl.where(offs == TOPK - 1, ranked, 0), axis=0)  # the TOPK-th largest (packed keys are unique)
    chosen = (packed >= thr) & (offs < NK)  # exactly TOPK entries, in index order
    pos = tl.cumsum(chosen.to(tl.int32), axis=0) - 1  # compaction slot of each chosen index
    tl.store(LUT + row * TOPK + pos, offs, mask=chosen)


def select_blocks(score: torch.Tensor, topk: int, num_warps: int | None = None) -> torch.Tensor:
    """score [R1, R2, NK] fp32 (contiguous) -> [R1, R2, topk] int32 ascending ids of the topk largest.
    num_warps: per sorting program (None: 4 up to 1024 key blocks, else 8)."""
    score = score.float().contiguous()
    nk = score.shape[-1]
    lut = torch.empty(*score.shape[:-1], topk, device=score.device, dtype=torch.int32)
    rows = score.numel() // nk
    _topk_lut_kernel[(rows,)](score, lut, nk, topk, NK_POW2=triton.next_power_of_2(nk),
                              num_warps=num_warps or (4 if nk <= 1024 else 8))
    return lut
