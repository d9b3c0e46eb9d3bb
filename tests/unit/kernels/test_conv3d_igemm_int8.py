"""kernels.conv3d_igemm's int8 form: `quantize_input` (one scale per buffer after a per-channel smoothing),
`weight_matrix_int8` (per-output-channel codes, K contiguous) and the conv on int8 codes with int32 sums.

CPU: the Triton interpreter (TRITON_INTERPRET=1, tests/conftest.py), tiny shapes; GPU: the VAE's widths.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kernels.conv3d_igemm import (
    TAPS,
    available,
    causal_conv3x3x3,
    quantize_input,
    smoothing,
    weight_matrix,
    weight_matrix_int8,
)
from kernels.rmsnorm_silu import reference as norm_reference

CL3D = torch.channels_last_3d


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _round_away(v: torch.Tensor) -> torch.Tensor:
    return torch.where(v >= 0, v + 0.5, v - 0.5).trunc()


def _inputs(b, c_in, c_out, t, h, w, device, seed):  # noqa: ANN001, ANN202
    g = torch.Generator().manual_seed(seed)
    gamma = torch.exp(0.7 * torch.randn(c_in, generator=g))  # the norm's gain before the conv
    # channels of different sizes, as silu(norm(·) · gamma) makes them
    x = torch.randn(b, c_in, t + 2, h, w, generator=g) * gamma.view(1, -1, 1, 1, 1)
    x = x.to(device, torch.bfloat16).contiguous(memory_format=CL3D)
    gamma = gamma.to(device, torch.bfloat16)
    weight = (torch.randn(c_out, c_in, 3, 3, 3, generator=g) / (27 * c_in) ** 0.5).to(device, torch.bfloat16)
    bias = (0.1 * torch.randn(c_out, generator=g)).to(device, torch.bfloat16)
    res = torch.randn(b, c_out, t, h, w, generator=g).to(device, torch.bfloat16).contiguous(memory_format=CL3D)
    return x, weight, bias, gamma, res


def test_quantize_input_matches_the_definition():
    """codes = round_half_away(x / s · 127 / absmax(x / s)), clamped to ±127, in x's layout; scale = absmax / 127."""
    dev = _device()
    x, _, _, gamma, _ = _inputs(1, 96, 96, 3, 4, 5, dev, seed=1)
    s = smoothing(gamma)
    codes, scale = quantize_input(x, 1 / s)
    assert codes.dtype == torch.int8 and codes.shape == x.shape and codes.is_contiguous(memory_format=CL3D)
    z = x.float() / s.view(1, -1, 1, 1, 1)
    amax = z.abs().amax()
    torch.testing.assert_close(scale, (amax / 127).view(1))
    want = _round_away(z * (127 / amax)).clamp(-127, 127)
    # fp32 products may land a code on the other side of a .5 tie: at most one step, rarely
    diff = (codes.float() - want).abs()
    assert diff.max() <= 1 and (diff > 0).float().mean() < 1e-3
    assert codes.abs().max() == 127  # the largest value maps to the top code
    # dequantized, every value is within half a step of x
    back = codes.float() * scale * s.view(1, -1, 1, 1, 1)
    assert ((back - x.float()).abs() <= 0.5 * scale * s.view(1, -1, 1, 1, 1) + 1e-6).all()


def test_quantize_input_of_zeros_and_bad_input():
    dev = _device()
    zeros = torch.zeros(1, 32, 3, 2, 4, device=dev, dtype=torch.bfloat16).contiguous(memory_format=CL3D)
    codes, scale = quantize_input(zeros, torch.ones(32))
    assert (codes == 0).all() and torch.isfinite(scale).all() and scale.item() > 0
    with pytest.raises(ValueError, match="channels-last"):
        quantize_input(zeros.contiguous(), torch.ones(32))
    with pytest.raises(ValueError, match="inv_smooth"):
        quantize_input(zeros, torch.ones(31))


def test_smoothing_follows_gamma_and_stays_positive():
    gamma = torch.tensor([2.0, -0.5, 0.0, 1.0])
    s = smoothing(gamma)
    assert torch.equal(s[[0, 1, 3]], torch.tensor([2.0, 0.5, 1.0])) and s[2] == pytest.approx(2e-3)


def test_weight_matrix_int8_layout_and_scales():
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(96, 32, 3, 3, 3, generator=g)
    s = torch.rand(32, generator=g) + 0.5
    codes, scale = weight_matrix_int8(weight, s)
    assert codes.shape == (128, TAPS * 32) and codes.dtype == torch.int8 and codes.stride(1) == 1
    assert (codes[96:] == 0).all() and (scale[96:] == 1).all()  # padded rows
    dt, dh, dw, c, n = 2, 0, 1, 7, 50
    k = ((dt * 3 + dh) * 3 + dw) * 32 + c
    ws = weight * s.view(1, -1, 1, 1, 1)
    assert scale[n] == pytest.approx(ws[n].abs().max().item() / 127, rel=1e-6)
    assert codes[n, k] == _round_away(ws[n, c, dt, dh, dw] / scale[n]).item()
    # the same columns as the bf16 matrix, up to the codes' rounding
    deq = (codes[:96].float() * scale[:96, None]).T
    want = weight_matrix(ws)[:, :96]
    assert (deq - want).abs().max() <= 0.5 * scale[:96].max() + 1e-6


CASES = [(2, 32, 96, 2, 5, 7), (1, 64, 32, 1, 3, 4), (1, 96, 96, 2, 4, 5)]


def _conv_of_codes(codes, xs, wcodes, ws, c_out, bias):  # noqa: ANN001, ANN202
    """The int8 conv exactly: float64 conv of the integer codes, then the scales, + bias."""
    c_in = codes.shape[1]
    w5 = wcodes[:c_out].double().view(c_out, 3, 3, 3, c_in).permute(0, 4, 1, 2, 3)
    y = F.conv3d(codes.double(), w5, None, padding=(0, 1, 1)) * (xs.double() * ws[:c_out].double()).view(1, -1, 1, 1, 1)
    return y if bias is None else y + bias.double().view(1, -1, 1, 1, 1)


@pytest.mark.parametrize(("b", "c_in", "c_out", "t", "h", "w"), CASES)
def test_int8_conv_is_the_conv_of_its_codes(b, c_in, c_out, t, h, w):
    """The kernel on codes equals the exact conv of those codes times the scales (int32 sums are exact; the
    only rounding is the bf16 output), and stays close to the bf16 conv it stands for."""
    dev = _device()
    x, weight, bias, gamma, res = _inputs(b, c_in, c_out, t, h, w, dev, seed=c_in + t)
    s = smoothing(gamma)
    codes, xs = quantize_input(x, 1 / s)
    wcodes, ws = weight_matrix_int8(weight, s)
    wcodes, ws = wcodes.to(dev), ws.to(dev)
    got = causal_conv3x3x3(codes, wcodes, c_out, bias=bias, x_scale=xs, w_scale=ws)
    assert got.dtype == torch.bfloat16 and got.shape == (b, c_out, t, h, w) and got.is_contiguous(memory_format=CL3D)
    want = _conv_of_codes(codes, xs, wcodes, ws, c_out, bias)
    torch.testing.assert_close(got.double(), want, atol=1e-2 * want.abs().max().item(), rtol=1e-2)
    exact = F.conv3d(x.double(), weight.double(), bias.double(), padding=(0, 1, 1))
    assert ((got.double() - exact).norm() / exact.norm()).item() < 0.03  # int8's rounding, not a wrong sum
    # the two epilogues
    got_r = causal_conv3x3x3(codes, wcodes, c_out, bias=bias, residual=res, x_scale=xs, w_scale=ws)
    torch.testing.assert_close(got_r.double(), want + res.double(), atol=1e-2 * want.abs().max().item(), rtol=1e-2)
    g_out = (1 + 0.1 * torch.randn(c_out, generator=torch.Generator().manual_seed(2))).to(dev, torch.bfloat16)
    nxt = torch.full((b, c_out, t + 2, h, w), 7.0, device=dev, dtype=torch.bfloat16).contiguous(memory_format=CL3D)
    causal_conv3x3x3(codes, wcodes, c_out, bias=bias, norm_gamma=g_out, out=nxt[:, :, 2:], x_scale=xs, w_scale=ws)
    assert (nxt[:, :, :2] == 7).all()
    rows = want.permute(0, 2, 3, 4, 1).reshape(-1, c_out)
    normed, _ = norm_reference(rows, g_out, compute_dtype=torch.float64)
    normed = normed.reshape(b, t, h, w, c_out).permute(0, 4, 1, 2, 3)
    torch.testing.assert_close(nxt[:, :, 2:].double(), normed, atol=2e-2, rtol=2e-2)


def test_int8_conv_refuses_mismatched_operands():
    dev = _device()
    x, weight, bias, gamma, _ = _inputs(1, 32, 32, 1, 3, 4, dev, seed=0)
    s = smoothing(gamma)
    codes, xs = quantize_input(x, 1 / s)
    wcodes, ws = (t.to(dev) for t in weight_matrix_int8(weight, s))
    with pytest.raises(ValueError, match="weight_matrix_int8"):
        causal_conv3x3x3(codes, weight_matrix(weight), 32, x_scale=xs, w_scale=ws)
    with pytest.raises(ValueError, match="x_scale"):
        causal_conv3x3x3(codes, wcodes, 32, w_scale=ws)
    with pytest.raises(ValueError, match="w_scale"):
        causal_conv3x3x3(codes, wcodes, 32, x_scale=xs, w_scale=ws[:5])
    with pytest.raises(ValueError, match="residual must be"):
        out = torch.empty(1, 32, 1, 3, 4, device=dev, dtype=torch.float16).contiguous(memory_format=CL3D)
        causal_conv3x3x3(codes, wcodes, 32, x_scale=xs, w_scale=ws, residual=out, out_dtype=torch.bfloat16)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize(("c", "h", "w"), [(96, 120, 208), (192, 60, 104)])
def test_int8_conv_at_vae_widths_on_the_gpu(c, h, w):
    """The autotuned int8 kernel (every config the tuner times runs) at the VAE's widths: the exact conv of its
    codes, and within int8's rounding of the fp32 conv."""
    if not available(torch.device("cuda")):
        pytest.skip("needs sm90+")
    x, weight, bias, gamma, res = _inputs(1, c, c, 4, h, w, torch.device("cuda"), seed=c)
    s = smoothing(gamma)
    codes, xs = quantize_input(x, 1 / s)
    wcodes, ws = weight_matrix_int8(weight, s)
    got = causal_conv3x3x3(codes, wcodes, c, bias=bias, x_scale=xs, w_scale=ws)
    want = _conv_of_codes(codes, xs, wcodes, ws, c, bias).float()
    assert ((got.float() - want).norm() / want.norm()).item() < 5e-3
    exact = F.conv3d(x.float(), weight.float(), bias.float(), padding=(0, 1, 1))
    assert ((got.float() - exact).norm() / exact.norm()).item() < 0.02
    got_r = causal_conv3x3x3(codes, wcodes, c, bias=bias, residual=res, x_scale=xs, w_scale=ws)
    assert ((got_r.float() - want - res.float()).norm() / (want + res.float()).norm()).item() < 5e-3
