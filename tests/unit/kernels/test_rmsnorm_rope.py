"""rmsnorm_rope / rmsnorm vs their fp32 references (CPU interpreter) and at Wan shapes (GPU)."""

from __future__ import annotations

import pytest
import torch
from _kernel_helpers import assert_fa_rule

from kernels.rmsnorm_rope import reference, reference_rmsnorm, rmsnorm, rmsnorm_rope

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# atol relative to the output's magnitude: Triton's CPU interpreter rounds fp32 -> bf16 toward zero
# (one bf16 ulp, 2^-7 relative, instead of half an ulp on the GPU), so bf16 needs a full ulp of slack.
ATOL = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 1e-2}


def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _tables(L: int, D: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    ang = torch.rand(L, D // 2, device=device) * 6.2832
    return ang.cos(), ang.sin()


def _assert_fa_rule(out: torch.Tensor, truth: torch.Tensor, torch_lowp: torch.Tensor) -> None:
    assert_fa_rule(out, truth, torch_lowp, ATOL)

def _wan_rope_complex(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Wan's rope_apply written with complex numbers (float64), for one grid shared by the batch."""
    B, L, H, D = x.shape
    xc = torch.view_as_complex(x.double().reshape(B, L, H, D // 2, 2))
    freqs = torch.polar(torch.ones_like(cos, dtype=torch.float64), torch.atan2(sin.double(), cos.double()))
    return torch.view_as_real(xc * freqs[None, :, None, :]).reshape(B, L, H, D)


def test_reference_matches_wan_norm_then_complex_rope():
    B, L, H, D = 2, 5, 3, 8
    x = torch.randn(B, L, H, D, dtype=torch.float64)
    w = torch.rand(H * D, dtype=torch.float64) + 0.5
    cos, sin = _tables(L, D, "cpu")
    # Wan: RMSNorm(dim) on [B, L, H*D] before the head split, then complex RoPE on pairs.
    flat = x.reshape(B, L, H * D)
    normed = flat * torch.rsqrt(flat.pow(2).mean(-1, keepdim=True) + 1e-6) * w
    expected = _wan_rope_complex(normed.reshape(B, L, H, D), cos, sin)
    got = reference(x, w, cos, sin, compute_dtype=torch.float64)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "B,L,H,D",
    [(1, 7, 3, 64), (2, 5, 2, 128), (1, 3, 1, 6), (3, 1, 5, 10)],  # odd L, C not a power of two
)
def test_rmsnorm_rope_matches_reference(dtype, B, L, H, D):
    dev = _device()
    x = (torch.randn(B, L, H, D, device=dev) * 3 + 0.5).to(dtype)
    w = (torch.rand(H * D, device=dev) + 0.5).to(dtype)
    cos, sin = _tables(L, D, dev)
    out = rmsnorm_rope(x, w, cos, sin)
    assert out.shape == x.shape
    truth = reference(x, w, cos, sin, compute_dtype=torch.float64)
    _assert_fa_rule(out, truth, reference(x, w, cos, sin).to(dtype))


def test_rmsnorm_rope_positions_shared_across_batch_and_heads():
    # Identical tokens at the same position must give identical outputs in every batch element,
    # and a different position must rotate differently.
    L, H, D = 4, 2, 8
    dev = _device()
    row = torch.randn(1, 1, H, D, device=dev)
    x = row.expand(2, L, H, D).contiguous()
    cos, sin = _tables(L, D, dev)
    out = rmsnorm_rope(x, torch.ones(H * D, device=dev), cos, sin)
    torch.testing.assert_close(out[0], out[1], rtol=0, atol=0)
    assert not torch.allclose(out[0, 0], out[0, 1])


def test_rmsnorm_rope_rejects_bad_shapes():
    x = torch.randn(1, 4, 2, 8)
    cos, sin = _tables(4, 8, "cpu")
    with pytest.raises(ValueError):
        rmsnorm_rope(x, torch.ones(8), cos, sin)  # weight must cover all heads
    with pytest.raises(ValueError):
        rmsnorm_rope(x, torch.ones(16), cos[:3], sin[:3])
    with pytest.raises(TypeError):
        rmsnorm_rope(x, torch.ones(16), cos.double(), sin.double())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_weight", [True, False])
def test_rmsnorm_matches_reference(dtype, with_weight):
    dev = _device()
    x = torch.randn(2, 3, 5, 37, device=dev).to(dtype)  # C = 37: masked tail
    w = (torch.rand(37, device=dev) + 0.5).to(dtype) if with_weight else None
    out = rmsnorm(x, w)
    truth = reference_rmsnorm(x, w, compute_dtype=torch.float64)
    _assert_fa_rule(out, truth, reference_rmsnorm(x, w).to(dtype))


def test_rmsnorm_rope_fake_impl_traces_shapes():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        x = torch.empty(2, 9, 3, 64, dtype=torch.bfloat16)
        out = torch.ops.turbovid.rmsnorm_rope(x, torch.empty(192), torch.empty(9, 32), torch.empty(9, 32))
    assert out.shape == (2, 9, 3, 64) and out.dtype == torch.bfloat16
    with FakeTensorMode():
        x = torch.empty(2, 9, 4, 64, dtype=torch.bfloat16)
        out = torch.ops.turbovid.rmsnorm_rope(x, torch.empty(256), torch.empty(9, 32), torch.empty(9, 32), 1e-6, 2)
    assert out.shape == (2, 2, 9, 2, 64)


@pytest.mark.gpu
@pytest.mark.parametrize("C", [1536, 5120])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_rmsnorm_rope_wan_shapes_gpu(C, dtype):
    L, D = 32760, 128
    x = torch.randn(1, L, C // D, D, device="cuda").to(dtype)
    w = (torch.rand(C, device="cuda") + 0.5).to(dtype)
    cos, sin = _tables(L, D, "cuda")
    out = rmsnorm_rope(x, w, cos, sin)
    truth = reference(x, w, cos, sin, compute_dtype=torch.float64)
    _assert_fa_rule(out, truth, reference(x, w, cos, sin).to(dtype))


@pytest.mark.parametrize(
    "config",
    [
        {"BLOCK_L": 2, "SPLIT": 0, "PROGS_PER_SM": 3, "num_warps": 4},  # persistent: 3 programs, 10 tiles
        {"BLOCK_L": 4, "SPLIT": 0, "PROGS_PER_SM": 0, "num_warps": 4},  # 2-D tile, last tile half masked
        {"BLOCK_L": 1, "SPLIT": 1, "PROGS_PER_SM": 1, "num_warps": 4},  # row as 64 + 64 (56 live) columns
        {"BLOCK_L": 1, "SPLIT": 1, "PROGS_PER_SM": 3, "num_warps": 4},  # split and persistent
    ],
)
def test_rmsnorm_rope_explicit_configs_cover_every_row(config):
    # The autotuner only runs one config on CPU; launch the others directly. Odd row count (B*L = 19)
    # and C = 5*24 (not a power of two) so the last tile and the row tail are both masked; split, the
    # second part starts mid-head (column 64 of 24-wide heads), so RoPE must index pairs globally.
    from kernels.rmsnorm_rope import _launch

    dev = _device()
    B, L, H, D = 1, 19, 5, 24
    x = torch.randn(B, L, H, D, device=dev)
    w = torch.rand(H * D, device=dev) + 0.5
    cos, sin = _tables(L, D, dev)
    out = _launch(x.view(B * L, H * D), w, cos, sin, L, D // 2, 1e-6, config=config).view(B, L, H, D)
    truth = reference(x, w, cos, sin, compute_dtype=torch.float64)
    torch.testing.assert_close(out.double(), truth, rtol=1e-5, atol=1e-5)
    plain = _launch(x.view(B * L, H * D), w, None, None, 1, 1, 1e-6, config=config)
    torch.testing.assert_close(plain.double(), reference_rmsnorm(x.view(B * L, H * D), w, compute_dtype=torch.float64),
                               rtol=1e-5, atol=1e-5)
    # the head-split output (Ulysses' send layout) of every variant: chunk j = heads j·H/n ... of each row
    B, L, H, D = 1, 19, 6, 20  # C = 120: split rows are 64 + 56 columns, chunks of 40 / 60 straddle them
    x = torch.randn(B, L, H, D, device=dev)
    w = torch.rand(H * D, device=dev) + 0.5
    cos, sin = _tables(L, D, dev)
    truth = reference(x, w, cos, sin, compute_dtype=torch.float64)
    for n in (2, 3):
        split = _launch(x.view(B * L, H * D), w, cos, sin, L, D // 2, 1e-6, config=config, out_chunks=n)
        assert split.shape == (n, B * L, H * D // n)
        want = truth.view(B * L, n, H * D // n).transpose(0, 1)
        torch.testing.assert_close(split.double(), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n", [2, 4])
def test_rmsnorm_rope_chunks_write_the_heads_of_each_rank_apart(n):
    # chunks=n: [n, B, L, H/n, D], out[j] = heads j·H/n ... of the plain output: exactly what Ulysses sends
    # to rank j, written by the kernel itself (B = 2: chunk j holds both batch elements' rows)
    dev = _device()
    B, L, H, D = 2, 7, 8, 16
    x = torch.randn(B, L, H, D, device=dev).to(torch.bfloat16)
    w = (torch.rand(H * D, device=dev) + 0.5).to(torch.bfloat16)
    cos, sin = _tables(L, D, dev)
    plain = rmsnorm_rope(x, w, cos, sin)
    split = rmsnorm_rope(x, w, cos, sin, chunks=n)
    assert split.shape == (n, B, L, H // n, D) and split.is_contiguous()
    want = plain.view(B, L, n, H // n, D).permute(2, 0, 1, 3, 4)
    torch.testing.assert_close(split, want, rtol=0, atol=0)
    with pytest.raises(ValueError, match="divide the heads"):
        rmsnorm_rope(x, w, cos, sin, chunks=3)
