"""kernels.conv3d_igemm (the VAE's causal 3×3×3 conv as one implicit GEMM, with its epilogues) vs conv3d.

CPU: the Triton interpreter (TRITON_INTERPRET=1, tests/conftest.py), tiny shapes; GPU: the VAE's widths.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from kernels.conv3d_igemm import (
    _configs,
    _prune,
    available,
    causal_conv3x3x3,
    reference,
    select_configs,
    weight_matrix,
)
from kernels.rmsnorm_silu import reference as norm_reference

CL3D = torch.channels_last_3d


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _inputs(b: int, c_in: int, c_out: int, t: int, h: int, w: int, dtype: torch.dtype, device: torch.device, seed: int):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, c_in, t + 2, h, w, generator=g).to(device, dtype).contiguous(memory_format=CL3D)
    weight = (torch.randn(c_out, c_in, 3, 3, 3, generator=g) / (27 * c_in) ** 0.5).to(device, dtype)
    bias = (0.1 * torch.randn(c_out, generator=g)).to(device, dtype)
    gamma = (1 + 0.1 * torch.randn(c_out, generator=g)).to(device, dtype)
    res = torch.randn(b, c_out, t, h, w, generator=g).to(device, dtype).contiguous(memory_format=CL3D)
    return x, weight, bias, gamma, res


def _conv64(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    return F.conv3d(x.double(), weight.double(), None if bias is None else bias.double(), padding=(0, 1, 1))


def _norm64(y: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """silu(rms_norm(y) · gamma) over the channels of [B, C, T, H, W], in float64."""
    rows = y.permute(0, 2, 3, 4, 1).reshape(-1, y.shape[1])
    out, _ = norm_reference(rows, gamma, compute_dtype=torch.float64)
    return out.reshape(*y.shape[:1], *y.shape[2:], y.shape[1]).permute(0, 4, 1, 2, 3)


def test_weight_matrix_layout():
    weight = torch.randn(96, 32, 3, 3, 3)
    m = weight_matrix(weight)
    assert m.shape == (27 * 32, 128) and m[:, 96:].abs().sum() == 0  # columns padded to 128
    dt, dh, dw, c, n = 2, 0, 1, 7, 50
    assert m[((dt * 3 + dh) * 3 + dw) * 32 + c, n] == weight[n, c, dt, dh, dw]


# shapes cover: C_out 96 (a 64 + 32 tile), 32 (one tile), C_in != C_out, a row wider than one tile's
# interpreter block (w = 7 -> 8 pixels), several frames and batch items (frame index math), padding rows/cols
CASES = [(2, 32, 96, 2, 5, 7), (1, 64, 32, 1, 3, 4), (1, 96, 96, 2, 4, 5)]


@pytest.mark.parametrize(("b", "c_in", "c_out", "t", "h", "w"), CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_plain_conv_equals_conv3d(b, c_in, c_out, t, h, w, dtype):
    dev = _device()
    if dev.type == "cuda" and dtype == torch.float32:
        pytest.skip("the GPU path runs 16-bit activations (fp32 would use TF32)")
    x, weight, bias, _, _ = _inputs(b, c_in, c_out, t, h, w, dtype, dev, seed=c_in + t)
    got = causal_conv3x3x3(x, weight_matrix(weight), c_out)
    assert got.shape == (b, c_out, t, h, w) and got.dtype == dtype and got.is_contiguous(memory_format=CL3D)
    want = _conv64(x, weight)
    tol = 1e-5 if dtype == torch.float32 else 1e-2  # bf16: the output's rounding
    torch.testing.assert_close(got.double(), want, atol=tol * want.abs().max().item(), rtol=tol)
    # reference() is the same conv
    torch.testing.assert_close(reference(x.double(), weight.double()), want)
    with_bias = causal_conv3x3x3(x, weight_matrix(weight), c_out, bias=bias)
    want_b = _conv64(x, weight, bias)
    torch.testing.assert_close(with_bias.double(), want_b, atol=tol * want_b.abs().max().item(), rtol=tol)


@pytest.mark.parametrize(("b", "c_in", "c_out", "t", "h", "w"), CASES)
def test_residual_epilogue(b, c_in, c_out, t, h, w):
    dtype = torch.bfloat16
    x, weight, bias, _, res = _inputs(b, c_in, c_out, t, h, w, dtype, _device(), seed=3)
    got = causal_conv3x3x3(x, weight_matrix(weight), c_out, bias=bias, residual=res)
    want = _conv64(x, weight, bias) + res.double()
    torch.testing.assert_close(got.double(), want, atol=1e-2 * want.abs().max().item(), rtol=1e-2)


@pytest.mark.parametrize(("b", "c_in", "c_out", "t", "h", "w"), CASES)
def test_norm_epilogue_writes_into_the_next_buffer(b, c_in, c_out, t, h, w):
    """norm_gamma: silu(rms_norm(conv + bias) · gamma) written into frames 2.. of a padded buffer (the next
    conv's input), leaving its two context frames alone."""
    dtype = torch.bfloat16
    dev = _device()
    x, weight, bias, gamma, _ = _inputs(b, c_in, c_out, t, h, w, dtype, dev, seed=5)
    nxt = torch.full((b, c_out, t + 2, h, w), 7.0, device=dev, dtype=dtype).contiguous(memory_format=CL3D)
    ret = causal_conv3x3x3(x, weight_matrix(weight), c_out, bias=bias, norm_gamma=gamma, out=nxt[:, :, 2:])
    assert ret.data_ptr() == nxt[:, :, 2:].data_ptr()
    assert (nxt[:, :, :2] == 7).all()  # the context frames are untouched
    want = _norm64(_conv64(x, weight, bias), gamma)
    torch.testing.assert_close(nxt[:, :, 2:].double(), want, atol=2e-2, rtol=2e-2)


def test_bad_arguments_are_refused():
    dev = _device()
    x, weight, bias, gamma, res = _inputs(1, 32, 32, 1, 3, 4, torch.bfloat16, dev, seed=0)
    wm = weight_matrix(weight)
    with pytest.raises(ValueError, match="multiples of 32"):
        causal_conv3x3x3(x[:, :16], wm, 32)
    with pytest.raises(ValueError, match="channels-last"):
        causal_conv3x3x3(x.contiguous(), wm, 32)
    with pytest.raises(ValueError, match="wmat"):
        causal_conv3x3x3(x, wm.float(), 32)
    with pytest.raises(ValueError, match="one"):
        causal_conv3x3x3(x, wm, 32, norm_gamma=gamma, residual=res)
    with pytest.raises(ValueError, match="residual"):
        causal_conv3x3x3(x, wm, 32, residual=res[:, :, :0])
    with pytest.raises(ValueError, match="bias"):
        causal_conv3x3x3(x, wm, 32, bias=bias[:5])


def test_availability_follows_the_device():
    assert available(torch.device("cpu")) == (os.environ.get("TRITON_INTERPRET") == "1")  # set without CUDA
    if torch.cuda.is_available():
        assert available(torch.device("cuda")) == (torch.cuda.get_device_capability()[0] >= 9)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize(("c", "h", "w"), [(96, 120, 208), (192, 60, 104), (384, 30, 52)])
def test_vae_widths_on_the_gpu(c, h, w):
    """The autotuned kernel at the VAE's widths (rows not a multiple of the tile) vs cuDNN in fp32."""
    if not available(torch.device("cuda")):
        pytest.skip("needs sm90+")
    x, weight, bias, gamma, res = _inputs(1, c, c, 4, h, w, torch.bfloat16, torch.device("cuda"), seed=c)
    wm = weight_matrix(weight)
    want = F.conv3d(x.float(), weight.float(), bias.float(), padding=(0, 1, 1))
    got = causal_conv3x3x3(x, wm, c, bias=bias)
    assert ((got.float() - want).norm() / want.norm()).item() < 5e-3
    got_r = causal_conv3x3x3(x, wm, c, bias=bias, residual=res)
    assert ((got_r.float() - want - res.float()).norm() / (want + res.float()).norm()).item() < 5e-3
    nxt = torch.empty(1, c, 6, h, w, device="cuda", dtype=torch.bfloat16).contiguous(memory_format=CL3D)
    causal_conv3x3x3(x, wm, c, bias=bias, norm_gamma=gamma, out=nxt[:, :, 2:])
    want_n = _norm64(want.double(), gamma).float()
    assert ((nxt[:, :, 2:].float() - want_n).norm() / want_n.norm()).item() < 5e-3


def test_config_selection_by_width():
    """What the autotuner may time: no tile wastes over a third of the channel columns where one fits
    (96 -> 64 + 32 or 96-covering tiles, never 128 + 64), the norm epilogue only whole-channel tiles, narrow
    outputs (32) the least padded tiles rather than none, and nothing over the shared-memory limit."""
    configs = _configs()
    widths = lambda cs: {c.kwargs["BLOCK_N0"] + c.kwargs["BLOCK_N1"] for c in cs}  # noqa: E731
    assert widths(select_configs(configs, 96, 96, 0, 227 * 1024)) == {96, 128}
    assert widths(select_configs(configs, 384, 384, 1, 227 * 1024)) == {384}  # one tile holds every channel
    narrow = select_configs(configs, 64, 32, 1, 227 * 1024)
    assert narrow and widths(narrow) == {96}
    assert all(c.num_stages * (c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_K"] + c.kwargs["BLOCK_K"] * 384) * 2 <= 100 * 1024
               for c in select_configs(configs, 384, 384, 0, 100 * 1024) if widths([c]) == {384})
    with pytest.raises(ValueError, match="no conv tile"):
        select_configs(configs, 48, 96, 0, 227 * 1024)  # no BK divides 48
    # by row width: 416 = 13·32 drops 128-pixel rows (19 % of a last tile past the frame), keeps 64 (7 %), 32
    cols = lambda cs: {c.kwargs["BLOCK_M"] // c.kwargs["BLOCK_H"] for c in cs}  # noqa: E731
    assert cols(select_configs(configs, 192, 192, 0, 227 * 1024, w=416)) == {32, 64}
    assert 128 in cols(select_configs(configs, 96, 96, 0, 227 * 1024, w=1280))


def test_the_autotuner_prune_reads_keyword_and_positional_arguments():
    # causal_conv3x3x3 launches with keyword arguments only: the autotuner then passes an empty named_args
    kw = {"C_IN": 192, "C_OUT": 192, "EPI": 0, "W": 416, "H": 240, "T": 4}
    by_keyword = _prune(_configs(), {}, **kw)
    assert by_keyword == select_configs(_configs(), 192, 192, 0, 227 * 1024, w=416)
    assert _prune(_configs(), {"W": 416, "H": 240}, C_IN=192, C_OUT=192, EPI=0) == by_keyword


@pytest.mark.parametrize(("block_m", "block_h"), [(8, 2), (16, 4), (4, 1)])
def test_multi_row_tiles(block_m, block_h):
    """Tiles of several rows (the bottom one past the frame) and of part of a row give the same conv, with
    either epilogue."""
    dtype = torch.bfloat16
    dev = _device()
    x, weight, bias, gamma, res = _inputs(1, 32, 96, 2, 5, 7, dtype, dev, seed=11)
    cfg = {"BLOCK_M": block_m, "BLOCK_H": block_h, "BLOCK_N0": 64, "BLOCK_N1": 32, "BLOCK_K": 32, "num_warps": 4,
           "num_stages": 2}
    if dev.type == "cuda":  # tensor cores need 64-pixel tiles
        cfg["BLOCK_M"] *= 16
    conv = _conv64(x, weight, bias)
    got = causal_conv3x3x3(x, weight_matrix(weight), 96, bias=bias, residual=res, config=cfg)
    want = conv + res.double()
    torch.testing.assert_close(got.double(), want, atol=1e-2 * want.abs().max().item(), rtol=1e-2)
    normed = causal_conv3x3x3(x, weight_matrix(weight), 96, bias=bias, norm_gamma=gamma, config=cfg)
    torch.testing.assert_close(normed.double(), _norm64(conv, gamma), atol=2e-2, rtol=2e-2)
