"""The int8 packing of Ulysses' q/k/v exchange (kernels/exchange_int8.py) against its PyTorch definition
(TRITON_INTERPRET=1 on CPU)."""

from __future__ import annotations

import pytest
import torch

from kernels.exchange_int8 import pack_int8, reference_pack, reference_unpack, unpack_int8


def _x(shape=(2, 5, 4, 16), dtype=torch.bfloat16, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g) * torch.rand(*shape[:3], 1, generator=g) * 5
    x[0, 1, 2] = 0  # an all-zero row (a padding token): scale 0, codes 0
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


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="multiple of 4"):
        pack_int8(torch.zeros(1, 2, 2, 6), 2)
    with pytest.raises(ValueError, match="divide"):
        pack_int8(torch.zeros(1, 2, 3, 8), 2)
    with pytest.raises(ValueError, match="uint8"):
        unpack_int8(torch.zeros(2, 1, 2, 1, 12), torch.float32)
