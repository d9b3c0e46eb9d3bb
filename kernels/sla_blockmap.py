"""SLA block map: which key blocks each query block attends (TurboDiffusion / SLA semantics).

Q is cut into blocks of ``block_q`` rows and K into blocks of ``block_k`` rows (last blocks may be
partial). Scores are ``mean_pool(Q) @ mean_pool(K - mean_L(K))^T`` ([B*H, NQ, NK], pooling over real rows
only); each query block keeps its ``topk_count(ratio, NK)`` best key blocks. The result is a compacted
list of selected key-block ids per query block, sorted ascending ([B*H, NQ, topk] int32), so the
attention kernel walks exactly those blocks and only the last entry can be a partial block.

`select_blocks` does the selection on GPU/interpreter with one Triton program per query block: each fp32
score gets an order-preserving int32 key, and the ``topk``-th largest key T is found exactly by building it
bit by bit from the top (sign first, then 31 count-and-compare steps; no sort). The entries above T and the
first ``topk - #(key > T)`` entries equal to T (in index order) are kept, so ties go to the lower index,
and they are compacted in ascending order by a prefix sum. The earlier bitonic-sort kernel
(`_topk_lut_sort_kernel`, same output bit for bit) is kept for the benchmark (`python -m kernels.sla_blockmap`).
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
def _score_key(s):
    """Order-preserving int32 key of fp32 scores: int order == float order (-0.0 just below +0.0; NaNs
    by their sign bit: +NaN above +inf, -NaN below -inf)."""
    bits = s.to(tl.int32, bitcast=True)
    return tl.where(bits >= 0, bits, bits ^ 0x7FFFFFFF)


@triton.jit
def _topk_lut_kernel(
    # pointers
    SCORE,
    LUT,
    # sizes
    NK,
    TOPK,
    # meta
    NK_POW2: tl.constexpr,
):
    """One row of SCORE [R, NK] fp32 -> LUT [R, TOPK] int32: indices of the TOPK largest, ascending; ties
    go to the lower index. Needs 1 <= TOPK <= NK."""
    row = tl.program_id(0)
    offs = tl.arange(0, NK_POW2)
    valid = offs < NK
    key = _score_key(tl.load(SCORE + row * NK + offs, mask=valid, other=0.0))
    # T = the TOPK-th largest key = the largest t with #(key >= t) >= TOPK, built from the top bit down.
    # Sign first (int32 two's complement: setting any lower bit raises the value, for either sign) ...
    n_nonneg = tl.sum(((key >= 0) & valid).to(tl.int32), axis=0)
    thr = tl.where(n_nonneg >= TOPK, 0, -2147483647 - 1)
    # ... then bits 30..0 (all int32: the largest bit, 1 << 30, fits)
    for i in tl.static_range(31):
        cand = thr | (1 << (30 - i))
        n_ge = tl.sum(((key >= cand) & valid).to(tl.int32), axis=0)
        thr = tl.where(n_ge >= TOPK, cand, thr)
    # keep key > T, then the lowest-index entries with key == T until TOPK are taken
    gt = (key > thr) & valid
    eq = (key == thr) & valid
    need = TOPK - tl.sum(gt.to(tl.int32), axis=0)  # >= 1
    chosen = gt | (eq & (tl.cumsum(eq.to(tl.int32), axis=0) <= need))  # exactly TOPK entries
    pos = tl.cumsum(chosen.to(tl.int32), axis=0) - 1  # compaction slot of each chosen index
    tl.store(LUT + row * TOPK + pos, offs, mask=chosen)


@triton.jit
def _topk_lut_sort_kernel(
    # pointers
    SCORE,
    LUT,
    # sizes
    NK,
    TOPK,
    # meta
    NK_POW2: tl.constexpr,
):
    """The earlier `_topk_lut_kernel` (same contract and output), kept only for the benchmark: keys packed
    with their reversed index into int64 and bitonic sorted (slow for long rows: NK_POW2=2048)."""
    row = tl.program_id(0)
    offs = tl.arange(0, NK_POW2)
    s = tl.load(SCORE + row * NK + offs, mask=offs < NK, other=float("-inf"))
    key = _score_key(s)
    packed = (key.to(tl.int64) << 32) | (NK_POW2 - 1 - offs).to(tl.int64)
    ranked = tl.sort(packed, descending=True)
    # the TOPK-th largest (packed keys are unique)
    thr = tl.sum(tl.where(offs == TOPK - 1, ranked, 0), axis=0)
    chosen = (packed >= thr) & (offs < NK)  # exactly TOPK entries, in index order
    pos = tl.cumsum(chosen.to(tl.int32), axis=0) - 1  # compaction slot of each chosen index
    tl.store(LUT + row * TOPK + pos, offs, mask=chosen)


def _launch(kernel, score: torch.Tensor, topk: int, num_warps: int | None) -> torch.Tensor:  # noqa: ANN001
    score = score.float().contiguous()
    nk = score.shape[-1]
    if not 1 <= topk <= nk:
        raise ValueError(f"topk must be in [1, {nk}], got {topk}")
    nk_pow2 = triton.next_power_of_2(nk)
    lut = torch.empty(*score.shape[:-1], topk, device=score.device, dtype=torch.int32)
    rows = score.numel() // nk
    kernel[(rows,)](
        score, lut, nk, topk, NK_POW2=nk_pow2, num_warps=num_warps or (4 if nk_pow2 <= 1024 else 8)
    )
    return lut


def select_blocks(score: torch.Tensor, topk: int, num_warps: int | None = None) -> torch.Tensor:
    """score [R1, R2, NK] fp32 (contiguous) -> [R1, R2, topk] int32 ascending ids of the topk largest
    (ties: lower index). num_warps: per program (None: 4 up to 1024 key blocks, else 8)."""
    return _launch(_topk_lut_kernel, score, topk, num_warps)


def _select_blocks_sort(score: torch.Tensor, topk: int, num_warps: int | None = None) -> torch.Tensor:
    """`select_blocks` with the earlier sort kernel (benchmark baseline)."""
    return _launch(_topk_lut_sort_kernel, score, topk, num_warps)


def bench(
    shapes: tuple[tuple[int, int, int], ...] = (
        (12 * 256, 512, 52),
        (20 * 591, 1182, 119),
        (40 * 591, 1182, 119),
    ),
) -> None:
    """CUDA: sort kernel vs threshold-search kernel (median ms, triton.testing.do_bench) per (rows, NK, topk),
    with the new kernel also at num_warps 2/4/8 (to retune the default), and whether the LUTs are identical."""
    from functools import partial

    g = torch.Generator(device="cuda").manual_seed(0)
    for rows, nk, topk in shapes:
        score = torch.randn(rows, 1, nk, device="cuda", generator=g)
        score[: rows // 4] = score[: rows // 4].round()  # some rows full of exact ties
        same = torch.equal(_select_blocks_sort(score, topk), select_blocks(score, topk))
        old = triton.testing.do_bench(partial(_select_blocks_sort, score, topk), return_mode="median")
        new = triton.testing.do_bench(partial(select_blocks, score, topk), return_mode="median")
        warps = " ".join(
            f"w{w} {triton.testing.do_bench(partial(select_blocks, score, topk, w), return_mode='median'):.4f}"
            for w in (2, 4, 8)
        )
        print(
            f"rows={rows} NK={nk} topk={topk}: old {old:.4f} ms, new {new:.4f} ms, "
            f"old/new {old / new:.1f}x, identical {same} (new by num_warps: {warps})"
        )


if __name__ == "__main__":
    bench()
