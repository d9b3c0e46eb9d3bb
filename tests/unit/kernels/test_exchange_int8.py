"""The int8 packing of Ulysses' q/k/v exchange (kernels/exchange_int8.py) against its PyTorch definition
(TRITON_INTERPRET=1 on CPU)."""

from __future__ import annotations

import pytest
import torch

from kernels.exchange_int8 import (
    pack_int8,
    pack_tokens_int8,
    reference_pack,
    reference_pack_tokens,
    reference_unpack,
    reference_unpack_tokens,
    unpack_int8,
    unpack_tokens_int8,
)


def _x(shape=(2, 5, 4, 16), dtype=torch.bfloat16, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g) * torch.rand(*shape[:3], 1, generator=g) * 5
    x[0, 1, -1] = 0  # an all-zero row (a padding token): scale 0, codes 0
    return x.to(dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("n", [1, 2, 4])
def test_pack_equals_the_reference_bytes(dtype, n):
    x = _x(dtype=dtype)
    buf = pack_int8(x, n)
    ref = reference_pack(x, n)
    assert buf.dtype == torch.uint8 and buf.shape == (n, 2, 5, 4 // n, 16 + 4)
    codes = (buf[..., :16].view(torch.int8).int() - ref[..., :16].view(torch.int8).int()).abs()
    assert codes.max() <= 1 and (codes > 0).float().mean() < 0.01  # ties may round apart by one code
    torch.testing.assert_close(buf[..., 16:].contiguous().view(torch.float32),
                               ref[..., 16:].contiguous().view(torch.float32), rtol=1e-6, atol=0)


def test_what_rank_j_receives_unpacks_to_its_heads_of_every_ranks_tokens():
    # Two "ranks" in one process: rank r's send buffer part j is what rank j receives from rank r.
    n, (B, Ls, H, D) = 2, (1, 3, 4, 8)
    xs = [_x((B, Ls, H, D), seed=r) for r in range(n)]  # each rank's tokens, all heads
    sends = [pack_int8(x, n) for x in xs]
    for j in range(n):
        recv = torch.stack([sends[r][j] for r in range(n)])  # the all-to-all
        got = unpack_int8(recv, torch.float32)  # [B, N·Ls, H/N, D]: all tokens of rank j's heads
        want = torch.cat([x[:, :, j * (H // n) : (j + 1) * (H // n)] for x in xs], dim=1).float()
        step = want.abs().amax(-1, keepdim=True) / 127
        assert got.shape == (B, n * Ls, H // n, D)
        assert ((got - want).abs() <= step / 2 + 1e-6).all()  # within half a step of each row
        torch.testing.assert_close(got, reference_unpack(recv, torch.float32), rtol=0, atol=0)
        low = unpack_int8(recv, torch.bfloat16)  # the model's dtype: one bf16 rounding more
        torch.testing.assert_close(low.float(), got, rtol=2**-7, atol=0)


def test_the_way_back_packs_each_ranks_tokens_and_unpacks_into_its_head_group():
    # The attention output of head group i (h of this rank's heads, all L tokens; L not a multiple of N)
    # goes back token-split: part j to rank j. On rank j it lands in out[:, :, r, i] for each sender r.
    n, B, h, L, D, G = 2, 1, 2, 7, 8, 2
    ls = -(-L // n)
    outs = [torch.full((B, ls, n, G, h, D), float("nan")) for _ in range(n)]
    for i in range(G):
        os_ = [_x((B, L, h, D), seed=10 * i + r).transpose(1, 2) for r in range(n)]  # [B, h, L, D], strided
        sends = [pack_tokens_int8(o, n) for o in os_]
        for r in range(n):
            ref = reference_pack_tokens(os_[r], n)
            codes = sends[r][..., :D].view(torch.int8).int() - ref[..., :D].view(torch.int8).int()
            assert codes.abs().max() <= 1  # ties may round apart by one code
            assert torch.equal(sends[r][..., D:], ref[..., D:])  # the scales, bit for bit
            assert (sends[r][-1, :, L - (n - 1) * ls :] == 0).all()  # the padding tokens: zero rows
        for j in range(n):
            recv = torch.stack([sends[r][j] for r in range(n)])
            unpack_tokens_int8(recv, outs[j], i)
            ref = torch.zeros_like(outs[j])
            reference_unpack_tokens(recv, ref, i)
            torch.testing.assert_close(outs[j][:, :, :, i], ref[:, :, :, i], rtol=0, atol=0)
    for j in range(n):
        assert not outs[j].isnan().any()  # every (sender, group) slot written
        for i in range(G):
            for r in range(n):
                o = _x((B, L, h, D), seed=10 * i + r)  # [B, L, h, D]
                mine = o[:, j * ls : min(L, (j + 1) * ls)].float()
                got = outs[j][:, : mine.shape[1], r, i]
                step = mine.abs().amax(-1, keepdim=True) / 127
                assert ((got - mine).abs() <= step / 2 + 1e-6).all()


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="multiple of 4"):
        pack_int8(torch.zeros(1, 2, 2, 6), 2)
    with pytest.raises(ValueError, match="divide"):
        pack_int8(torch.zeros(1, 2, 3, 8), 2)
    with pytest.raises(ValueError, match="uint8"):
        unpack_int8(torch.zeros(2, 1, 2, 1, 12), torch.float32)
    with pytest.raises(ValueError, match="head groups"):
        unpack_tokens_int8(torch.zeros(2, 1, 3, 2, 12, dtype=torch.uint8), torch.zeros(1, 3, 2, 1, 2, 8), 1)
