"""gated_residual / gated_residual_ vs the fp32 reference."""

from __future__ import annotations

import pytest
import torch
from _kernel_helpers import assert_fa_rule

from kernels.gated_residual import gated_residual, gated_residual_, reference

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# atol relative to the output's magnitude: Triton's CPU interpreter rounds fp32 -> bf16 toward zero
# (one bf16 ulp, 2^-7 relative, instead of half an ulp on the GPU), so bf16 needs a full ulp of slack.
ATOL = {torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 1e-2}


def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _inputs(B: int, L: int, C: int, dtype: torch.dtype, y_dtype: torch.dtype, device: str):
    x = (torch.randn(B, L, C, device=device) * 3).to(dtype)
    y = torch.randn(B, L, C, device=device).to(y_dtype)
    gate = (torch.randn(B, 6, C, device=device) * 0.5)[:, 2]  # strided view of Wan's fp32 [B, 6, C]
    return x, y, gate


def _assert_fa_rule(out: torch.Tensor, truth: torch.Tensor, torch_lowp: torch.Tensor) -> None:
    assert_fa_rule(out, truth, torch_lowp, ATOL)

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,L,C", [(1, 7, 64), (2, 5, 96), (3, 3, 37), (2, 9, 300)])
def test_gated_residual_matches_reference(dtype, B, L, C):
    x, y, gate = _inputs(B, L, C, dtype, dtype, _device())
    out = gated_residual(x, y, gate)
    assert out.shape == x.shape
    _assert_fa_rule(out, reference(x, y, gate, torch.float64), reference(x, y, gate).to(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_gated_residual_in_place(dtype):
    x, y, gate = _inputs(2, 6, 70, dtype, dtype, _device())
    expected = reference(x, y, gate).to(dtype)
    ptr = x.data_ptr()
    gated_residual_(x, y, gate)
    assert x.data_ptr() == ptr
    torch.testing.assert_close(x, expected, rtol=0, atol=ATOL[dtype] * expected.abs().max().item())


def test_mixed_dtypes_keep_x_dtype():
    # fp32 residual stream with a bf16 branch output, as when the stream is kept in fp32.
    x, y, gate = _inputs(2, 4, 48, torch.float32, torch.bfloat16, _device())
    out = gated_residual(x, y, gate)
    assert out.dtype == torch.float32
    _assert_fa_rule(out, reference(x, y, gate, torch.float64), reference(x, y, gate))


def test_each_batch_row_uses_its_own_gate():
    dev = _device()
    x = torch.zeros(2, 3, 16, device=dev)
    y = torch.ones(2, 3, 16, device=dev)
    gate = torch.stack((torch.full((16,), 2.0, device=dev), torch.full((16,), -1.0, device=dev)))
    out = gated_residual(x, y, gate)
    assert (out[0] == 2.0).all() and (out[1] == -1.0).all()


def test_rejects_bad_shapes():
    x = torch.randn(2, 3, 16)
    with pytest.raises(ValueError):
        gated_residual(x, torch.randn(2, 3, 8), torch.zeros(2, 16))
    with pytest.raises(ValueError):
        gated_residual(x, x, torch.zeros(1, 16))
    with pytest.raises(ValueError):
        gated_residual_(x.transpose(1, 2).contiguous().transpose(1, 2), x, torch.zeros(2, 16))


def test_fake_impl_traces_shapes():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        x = torch.empty(2, 9, 64, dtype=torch.bfloat16)
        out = torch.ops.turbovid.gated_residual(x, torch.empty_like(x), torch.empty(2, 64))
    assert out.shape == (2, 9, 64) and out.dtype == torch.bfloat16


@pytest.mark.gpu
@pytest.mark.parametrize("C", [1536, 5120])
def test_gated_residual_wan_shapes_gpu(C):
    x, y, gate = _inputs(1, 32760, C, torch.bfloat16, torch.bfloat16, "cuda")
    out = gated_residual(x, y, gate)
    _assert_fa_rule(out, reference(x, y, gate, torch.float64), reference(x, y, gate).to(x.dtype))
    expected = reference(x, y, gate).to(x.dtype)
    gated_residual_(x, y, gate)  # the first call autotunes: x must come back restored, then updated once
    torch.testing.assert_close(x, expected, rtol=0, atol=1e-2 * expected.abs().max().item())
