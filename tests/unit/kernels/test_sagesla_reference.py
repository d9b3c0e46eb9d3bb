"""The SLA reference: dense limit, block selection on partial blocks, linear branch, density."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from kernels.sagesla import block_map_reference, reference, topk_count


def _qkv(B: int, H: int, L: int, D: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(B, H, L, D, generator=g) for _ in range(3))


@pytest.mark.parametrize("L", [64, 100, 257])
def test_dense_limit_equals_sdpa(L: int) -> None:
    q, k, v = _qkv(1, 2, L, 64)
    o, density = reference(q, k, v, topk_ratio=1.0, proj_l_weight=None, proj_l_bias=None, block_q=32, block_k=16)
    torch.testing.assert_close(o, F.scaled_dot_product_attention(q, k, v), atol=2e-6, rtol=1e-5)
    assert density.item() == 1.0


def test_topk_count_rounds_down_and_keeps_one() -> None:
    assert topk_count(0.1, 30) == 3
    assert topk_count(0.25, 10) == 2
    assert topk_count(0.01, 10) == 1
    assert topk_count(1.0, 7) == 7
    with pytest.raises(ValueError):
        topk_count(0.0, 4)


def test_sparse_branch_matches_brute_force_per_row() -> None:
    """Each row attends exactly the keys of its query block's selected key blocks (partial blocks)."""
    B, H, L, D, bq, bk = 1, 2, 90, 16, 32, 16
    q, k, v = _qkv(B, H, L, D, seed=1)
    o, density = reference(q, k, v, topk_ratio=0.5, proj_l_weight=None, proj_l_bias=None, block_q=bq, block_k=bk)
    nk = math.ceil(L / bk)
    assert density.item() == pytest.approx(topk_count(0.5, nk) / nk)

    # independent block map: pool only real rows, smooth K by its sequence mean
    ks = k - k.mean(dim=2, keepdim=True)
    for h in range(H):
        pq = torch.stack([q[0, h, i : i + bq].mean(0) for i in range(0, L, bq)])
        pk = torch.stack([ks[0, h, j : j + bk].mean(0) for j in range(0, L, bk)])
        chosen = (pq @ pk.T).topk(topk_count(0.5, nk), dim=-1).indices
        for qb in range(pq.shape[0]):
            keys = torch.cat([torch.arange(j * bk, min(L, (j + 1) * bk)) for j in chosen[qb].tolist()])
            rows = torch.arange(qb * bq, min(L, (qb + 1) * bq))
            s = q[0, h, rows] @ k[0, h, keys].T / math.sqrt(D)
            expect = torch.softmax(s, -1) @ v[0, h, keys]
            torch.testing.assert_close(o[0, h, rows], expect, atol=2e-6, rtol=1e-5)


def test_block_map_is_sorted_and_unique() -> None:
    q, k, _ = _qkv(2, 3, 200, 32, seed=2)
    lut = block_map_reference(q, k, 0.4, block_q=64, block_k=32)
    assert lut.shape == (2, 3, 4, topk_count(0.4, 7))
    assert bool((lut[..., 1:] > lut[..., :-1]).all())


def test_linear_branch_is_added_through_proj_l() -> None:
    B, H, L, D = 1, 2, 70, 32
    q, k, v = _qkv(B, H, L, D, seed=3)
    w, b = torch.randn(D, D), torch.randn(D)
    o_s, _ = reference(q, k, v, topk_ratio=0.5, proj_l_weight=None, proj_l_bias=None, block_q=32, block_k=16)
    o, _ = reference(q, k, v, topk_ratio=0.5, proj_l_weight=w, proj_l_bias=b, block_q=32, block_k=16)
    fq, fk = torch.softmax(q, -1), torch.softmax(k, -1)
    num = torch.einsum("bhld,bhme,bhmd->bhle", fq, v, fk)  # phi(q) . sum_m phi(k_m) v_m^T
    den = 1e-5 + torch.einsum("bhld,bhmd->bhl", fq, fk)[..., None]
    torch.testing.assert_close(o - o_s, (num / den) @ w.T + b, atol=1e-5, rtol=1e-5)


def test_returns_input_dtype() -> None:
    q, k, v = (t.to(torch.bfloat16) for t in _qkv(1, 1, 40, 64, seed=4))
    o, density = reference(q, k, v, topk_ratio=0.5, proj_l_weight=None, proj_l_bias=None)
    assert o.dtype == torch.bfloat16 and density.dtype == torch.float32
