"""rmsnorm_silu / rmsnorm_silu_out vs the fp32 reference (CPU: Triton interpreter at tiny sizes)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _kernel_helpers import assert_fa_rule

from kernels.rmsnorm_silu import (
    reference,
    residual_sum_out,
    rmsnorm_silu,
    rmsnorm_silu_out,
    tap_sum_out,
    tap_sum_rmsnorm_silu_out,
)

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# Triton's CPU interpreter rounds fp32 -> bf16 toward zero (a full ulp), hence a full ulp of slack.
ATOL = {torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 1e-2}


def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _assert_fa_rule(out: torch.Tensor, truth: torch.Tensor, torch_lowp: torch.Tensor) -> None:
    assert_fa_rule(out, truth, torch_lowp, ATOL)

def _inputs(n: int, c: int, dtype: torch.dtype, device: str):
    x = (torch.randn(n, c, device=device) * 3 + 0.5).to(dtype)
    gamma = (1 + 0.3 * torch.randn(c, device=device)).to(dtype)
    return x, gamma


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("n", "c"), [(7, 96), (33, 37), (5, 192), (3, 300)])
def test_matches_reference(dtype, n, c):
    x, gamma = _inputs(n, c, dtype, _device())
    out = rmsnorm_silu(x, gamma)
    assert out.shape == x.shape
    truth, _ = reference(x, gamma, compute_dtype=torch.float64)
    _assert_fa_rule(out, truth, reference(x, gamma)[0].to(dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_residual_and_sum_out(dtype):
    dev = _device()
    x, gamma = _inputs(19, 48, dtype, dev)
    res = torch.randn(19, 48, device=dev).to(dtype)
    out = torch.full_like(x, float("nan"))
    summ = torch.full_like(x, float("nan"))
    rmsnorm_silu_out(x, gamma, out, residual=res, sum_out=summ)
    truth, s_truth = reference(x, gamma, res, compute_dtype=torch.float64)
    _assert_fa_rule(out, truth, reference(x, gamma, res)[0].to(dtype))
    torch.testing.assert_close(summ, s_truth.to(dtype), rtol=0, atol=ATOL[dtype] * s_truth.abs().max().item())
    # the functional op with a residual normalises x + residual
    _assert_fa_rule(rmsnorm_silu(x, gamma, res), truth, reference(x, gamma, res)[0].to(dtype))


def _tap_inputs(dtype: torch.dtype) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """Three conv-tap partials, a residual and a gain: [21, 40] each ([40] the gain)."""
    dev = _device()
    parts = [torch.randn(21, 40, device=dev).to(dtype) for _ in range(3)]
    res = torch.randn(21, 40, device=dev).to(dtype)
    gamma = (1 + 0.3 * torch.randn(40, device=dev)).to(dtype)
    return parts, res, gamma


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_tap_sums(dtype):
    # A 3×3×3 conv run as three conv2d leaves three partial outputs: summed (and normalised) in one pass.
    parts, res, gamma = _tap_inputs(dtype)
    total = parts[0].double() + parts[1].double() + parts[2].double()
    out = torch.full_like(res, float("nan"))
    tap_sum_rmsnorm_silu_out(*parts, gamma, out)
    truth, _ = reference(total, gamma, compute_dtype=torch.float64)
    torch_lowp = reference((parts[0].float() + parts[1].float() + parts[2].float()).to(dtype), gamma)[0].to(dtype)
    _assert_fa_rule(out, truth, torch_lowp)
    expected = (total + res.double()).to(dtype)
    in_place = parts[0].clone()
    tap_sum_out(in_place, parts[1], parts[2], res, in_place)  # sum_out over the first partial
    torch.testing.assert_close(in_place, expected, rtol=0, atol=ATOL[dtype] * expected.abs().max().item())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_deferred_conv_bias_is_added_in_the_pass(dtype):
    # The VAE leaves the conv's bias out of cuDNN (which adds it in a pass of its own) and adds it here.
    parts, res, gamma = _tap_inputs(dtype)
    bias = (2 * torch.randn(40, device=res.device)).to(dtype)  # large enough that leaving it out fails every check
    total = parts[0].double() + parts[1].double() + parts[2].double() + bias.double()
    tol = lambda t: ATOL[dtype] * t.abs().max().item()  # noqa: E731

    out = torch.full_like(res, float("nan"))
    tap_sum_rmsnorm_silu_out(*parts, gamma, out, bias=bias)
    truth, _ = reference(total, gamma, compute_dtype=torch.float64)
    _assert_fa_rule(out, truth, reference(total.float().to(dtype), gamma)[0].to(dtype))

    out = torch.full_like(res, float("nan"))
    rmsnorm_silu_out(parts[0], gamma, out, bias=bias)
    one = parts[0].double() + bias.double()
    truth, _ = reference(one, gamma, compute_dtype=torch.float64)
    _assert_fa_rule(out, truth, reference(one.float().to(dtype), gamma)[0].to(dtype))

    in_place = parts[0].clone()
    tap_sum_out(in_place, parts[1], parts[2], res, in_place, bias=bias)
    expected = (total + res.double()).to(dtype)
    torch.testing.assert_close(in_place, expected, rtol=0, atol=tol(expected))

    in_place = parts[0].clone()
    residual_sum_out(in_place, res, in_place, bias=bias)
    expected = (parts[0].double() + bias.double() + res.double()).to(dtype)
    torch.testing.assert_close(in_place, expected, rtol=0, atol=tol(expected))
    residual_sum_out(parts[1], res, out)  # no bias: the plain sum
    expected = (parts[1].double() + res.double()).to(dtype)
    torch.testing.assert_close(out, expected, rtol=0, atol=tol(expected))

    with pytest.raises(ValueError, match="bias must hold 40"):
        tap_sum_out(parts[0], parts[1], parts[2], res, out, bias=bias[:39])
    with pytest.raises(ValueError, match="only without a residual"):
        rmsnorm_silu_out(parts[0], gamma, out, residual=res, sum_out=in_place, bias=bias)


def test_residual_out_needs_sum_out():
    x, gamma = _inputs(4, 16, torch.float32, _device())
    with pytest.raises(ValueError, match="sum_out"):
        rmsnorm_silu_out(x, gamma, torch.empty_like(x), residual=x.clone())
    with pytest.raises(ValueError, match="residual"):
        rmsnorm_silu_out(x, gamma, torch.empty_like(x), sum_out=torch.empty_like(x))


def test_writes_into_strided_rows_of_a_larger_buffer():
    # The VAE writes the new frames of a causal conv's padded input: rows with a stride, the rest untouched.
    dev = _device()
    x, gamma = _inputs(10, 24, torch.float32, dev)
    buf = torch.full((10, 40), -7.0, device=dev)
    rmsnorm_silu_out(x, gamma, buf[:, 8:32])
    torch.testing.assert_close(buf[:, 8:32], reference(x, gamma)[0], rtol=1e-5, atol=1e-5)
    assert (buf[:, :8] == -7).all() and (buf[:, 32:] == -7).all()


def test_matches_wan_rms_norm_then_silu():
    # Wan's RMS_norm: F.normalize over channels · sqrt(C) · gamma; then SiLU.
    x, gamma = _inputs(12, 16, torch.float32, _device())
    wan = F.silu(F.normalize(x, dim=1) * 16**0.5 * gamma)
    torch.testing.assert_close(rmsnorm_silu(x, gamma), wan, rtol=1e-5, atol=1e-5)
    zeros = torch.zeros(3, 16, device=x.device)
    assert (rmsnorm_silu(zeros, gamma) == 0).all()  # eps guards the all-zero row


def test_rejects_bad_inputs():
    x = torch.randn(4, 16)
    with pytest.raises(ValueError, match="gamma"):
        rmsnorm_silu(x, torch.ones(8))
    with pytest.raises(ValueError, match="stride 1"):
        rmsnorm_silu_out(x, torch.ones(16), torch.empty(16, 4).t())
    with pytest.raises(ValueError, match="residual"):
        rmsnorm_silu(x, torch.ones(16), torch.randn(4, 8))


def test_fake_impl_traces_shapes():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        x = torch.empty(9, 96, dtype=torch.bfloat16)
        out = torch.ops.turbovid.rmsnorm_silu(x, torch.empty(96))
    assert out.shape == (9, 96) and out.dtype == torch.bfloat16


@pytest.mark.gpu
@pytest.mark.parametrize(("c", "n"), [(96, 4 * 480 * 832), (192, 4 * 240 * 416), (384, 2 * 120 * 208)])
def test_vae_shapes_gpu(c, n):
    x, gamma = _inputs(n, c, torch.bfloat16, "cuda")
    res = torch.randn_like(x)
    out, summ = torch.empty_like(x), torch.empty_like(x)
    rmsnorm_silu_out(x, gamma, out, residual=res, sum_out=summ)
    truth, _ = reference(x, gamma, res)
    rel = ((out.float() - truth).norm() / truth.norm()).item()
    assert rel < 5e-3
    torch.testing.assert_close(summ, (x.float() + res.float()).to(x.dtype))
    # in place over the first partial: the first call autotunes, each trial must start from x again
    p0, p1, p2 = x.clone(), torch.randn_like(x), torch.randn_like(x)
    expected = (x.float() + p1.float() + p2.float() + res.float()).to(x.dtype)
    tap_sum_out(p0, p1, p2, res, p0)
    torch.testing.assert_close(p0, expected, rtol=0, atol=1e-2 * expected.abs().max().item())
