"""Block-map selection kernel (kernels/sla_blockmap.py) against torch.topk and a
stable-sort reference with the same tie rule (TRITON_INTERPRET=1 on CPU)."""

from __future__ import annotations

import pytest
import torch

from kernels.sla_blockmap import _select_blocks_sort, select_blocks


@pytest.mark.parametrize(("nk", "topk"), [(5, 1), (37, 7), (64, 64), (300, 30)])
def test_select_blocks_matches_torch_topk(nk: int, topk: int) -> None:
    g = torch.Generator().manual_seed(nk)
    score = torch.randn(2, 3, nk, generator=g) * 10  # negative and positive scores
    lut = select_blocks(score, topk)
    assert lut.dtype == torch.int32 and lut.shape == (2, 3, topk)
    expect = torch.topk(score, topk, dim=-1).indices.sort(dim=-1).values
    assert torch.equal(lut.long(), expect)


def test_select_blocks_ties_go_to_the_lower_index() -> None:
    score = torch.tensor([[0.5, 2.0, 2.0, -1.0, 2.0, 2.0, 0.5]])  # four-way tie for the top
    assert select_blocks(score, 3).tolist() == [[1, 2, 4]]
    assert select_blocks(score, 6).tolist() == [[0, 1, 2, 4, 5, 6]]  # tie at the threshold: index 0 wins


# --- the threshold-search kernel, bit for bit against a PyTorch reference with the same tie rule ---------
# (The interpreter costs ~25 ms per row and call: few rows, few topk values.)


def _key(score: torch.Tensor) -> torch.Tensor:
    """The kernel's order-preserving key of fp32 scores (int64 here): float order, -0.0 < +0.0, NaNs by sign."""
    bits = score.float().contiguous().view(torch.int32).long()
    return torch.where(bits >= 0, bits, bits ^ 0x7FFFFFFF)


def _reference(score: torch.Tensor, topk: int) -> torch.Tensor:
    """Indices of the topk largest keys, ties to the lower index (stable sort on (-key, index)), ascending."""
    order = torch.sort(-_key(score), dim=-1, stable=True).indices[..., :topk]
    return order.sort(dim=-1).values


def _reference_float(score: torch.Tensor, topk: int) -> torch.Tensor:
    """The same on the floats themselves (no NaN and no -0.0 in score): stable descending sort."""
    order = torch.sort(score, dim=-1, descending=True, stable=True).indices[..., :topk]
    return order.sort(dim=-1).values


def _check(score: torch.Tensor, topk: int, floats: bool = True) -> None:
    lut = select_blocks(score, topk)
    assert lut.dtype == torch.int32 and lut.shape == (*score.shape[:-1], topk)
    expect = _reference(score, topk)
    if floats:  # the key reference agrees with plain float order on this data
        assert torch.equal(expect, _reference_float(score, topk))
    assert torch.equal(lut.long(), expect), (score, lut, expect)


def _topks(nk: int, *candidates: int) -> list[int]:
    """topk = 1 and topk = nk, plus the candidates that are in range."""
    return sorted({t for t in (1, nk, *candidates) if 1 <= t <= nk})


@pytest.mark.parametrize("nk", [1, 37, 100, 1182])
def test_threshold_search_random_rows(nk: int) -> None:
    g = torch.Generator().manual_seed(nk)
    rows = 2 if nk > 500 else 3
    score = torch.randn(rows, 1, nk, generator=g) * torch.logspace(-30, 30, rows)[:, None, None]
    for topk in _topks(nk, nk // 10 + 1):
        _check(score, topk)


@pytest.mark.parametrize("nk", [37, 100])
def test_threshold_search_many_exact_ties(nk: int) -> None:
    """Scores from a handful of values: the threshold value is shared by entries on both sides of the cut,
    so the kept ones must be exactly the lowest-index ones."""
    g = torch.Generator().manual_seed(nk)
    values = torch.tensor([-3.5, -1.0, 0.0, 0.25, 2.0, 7.0])
    score = values[torch.randint(0, len(values), (3, 1, nk), generator=g)]
    score[0, 0] = 2.0  # one row all equal
    for topk in _topks(nk, 2, nk // 3, nk // 2 + 1, nk - 1):
        _check(score, topk)
    score = torch.tensor([[1.0, 5.0, 1.0, 3.0, 1.0, 5.0, 1.0, 1.0, 3.0, 1.0]])
    assert select_blocks(score, 5).tolist() == [[0, 1, 3, 5, 8]]  # 5,5,3,3 then the first 1.0 (index 0)
    assert select_blocks(score, 7).tolist() == [[0, 1, 2, 3, 4, 5, 8]]


def test_threshold_search_infinities() -> None:
    nk, inf = 37, float("inf")
    score = torch.randn(5, 1, nk, generator=torch.Generator().manual_seed(0)) * 100
    score[0, 0, ::3] = -inf  # the cut falls inside the -inf entries for large topk
    score[1, 0, ::4] = inf  # ... inside the +inf entries for small topk
    score[1, 0, 1::5] = -inf
    score[2, 0] = -inf  # all -inf
    score[3, 0] = inf  # all +inf
    score[4, 0, :5] = torch.tensor([inf, -inf, -inf, inf, 0.0])
    for topk in _topks(nk, nk // 2 + 1, nk - 1):
        _check(score, topk)


@pytest.mark.parametrize("nk", [37, 256])
def test_threshold_search_arbitrary_bit_patterns(nk: int) -> None:
    """Uniform random fp32 bit patterns (both signs, all exponents, subnormals, +-0, NaNs, infs) exercise
    every bit of the search; the kernel keeps the earlier sort kernel's NaN and -0.0 order."""
    g = torch.Generator().manual_seed(nk)
    bits = torch.randint(-(2**31), 2**31, (4, 1, nk), generator=g, dtype=torch.int64).to(torch.int32)
    n = nk // 2
    bits[1, 0, 1 : 2 * n : 2] = bits[1, 0, 0 : 2 * n : 2]  # pairs of equal keys
    bits[2, 0, :4] = torch.tensor([0, -(2**31), 0x7F800000, 0x7FC00000], dtype=torch.int32)  # +0 -0 +inf +NaN
    bits[3] = bits[3].abs() >> 20  # one sign, small magnitudes (subnormals): the low bits decide
    score = bits.view(torch.float32)
    for topk in _topks(nk, 2, nk // 3, n + 1):
        _check(score, topk, floats=False)
    if nk <= 64:  # the earlier sort-based kernel gives the same LUT (slow in the interpreter: 2 rows)
        assert torch.equal(_select_blocks_sort(score[1:3], n), select_blocks(score[1:3], n))


def test_select_blocks_rejects_topk_out_of_range() -> None:
    score = torch.zeros(1, 1, 8)
    for topk in (0, 9):
        with pytest.raises(ValueError, match="topk"):
            select_blocks(score, topk)
