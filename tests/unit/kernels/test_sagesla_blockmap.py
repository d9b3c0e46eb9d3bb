"""Block-map selection kernel (kernels/sla_blockmap.py) against torch.topk."""

from __future__ import annotations

import pytest
import torch

from kernels.sla_blockmap import select_blocks


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
