"""pixel_interleave (the VAE upsampler's sub-pixel scatter + bias) vs its definition (CPU: interpreter)."""

from __future__ import annotations

import pytest
import torch

from kernels.pixel_interleave import pixel_interleave, reference


def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("n", "c", "h", "w"), [(2, 6, 3, 5), (1, 96, 2, 3), (3, 5, 1, 1)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_scatters_each_parity_to_its_pixels(dtype, n, c, h, w, with_bias):
    # distinct values everywhere, so any wrong source index shows
    y = torch.arange(n * 4 * c * (h + 1) * (w + 1), dtype=torch.float32).reshape(n, 4 * c, h + 1, w + 1)
    y = (y % 251 / 8).to(dtype).to(_device()).contiguous(memory_format=torch.channels_last)
    bias = torch.randn(c, device=_device()) if with_bias else None
    out = pixel_interleave(y, bias)
    assert out.shape == (n, c, 2 * h, 2 * w) and out.is_contiguous(memory_format=torch.channels_last)
    want = reference(y.float(), bias).to(dtype)  # the sum in fp32, one rounding: as the kernel
    if bias is None or dtype == torch.float32:
        assert torch.equal(out, want)  # a copy, or fp32 math: exact
    else:  # Triton's CPU interpreter rounds fp32 -> bf16 toward zero: one ulp of slack
        torch.testing.assert_close(out, want, rtol=2**-7, atol=0)
    # spot check the definition itself: output pixel (2i+1, 2j) is parity (1, 0) from input (i+1, j)
    i, j = h - 1, w - 1
    spot = y[0, 2 * c : 3 * c, i + 1, j].float() + (0 if bias is None else bias)
    torch.testing.assert_close(out[0, :, 2 * i + 1, 2 * j], spot.to(dtype), rtol=2**-7, atol=0)


def test_writes_into_a_strided_out_and_checks_shapes():
    y = torch.randn(2, 8, 4, 4).contiguous(memory_format=torch.channels_last)
    big = torch.zeros(2, 2, 6, 10, 10).contiguous(memory_format=torch.channels_last_3d)  # [N, C, T, H, W]
    with pytest.raises(ValueError, match="out must be"):
        pixel_interleave(y, None, big[:, :, 3])  # [2, 2, 10, 10]: not the upsampled size
    view = big[:, :, 3, :6, :6]  # [2, 2, 6, 6] channels-last view with row stride 10
    pixel_interleave(y, None, view)
    assert torch.equal(big[:, :, 3, :6, :6], reference(y, None))
    assert big[:, :, 3, 6:].abs().sum() == 0 and big[:, :, :3].abs().sum() == 0  # nothing else written
    with pytest.raises(ValueError, match="channels-last"):
        pixel_interleave(torch.randn(1, 8, 3, 3), None)
    with pytest.raises(ValueError, match="4C"):
        pixel_interleave(torch.randn(1, 6, 3, 3).contiguous(memory_format=torch.channels_last), None)
    with pytest.raises(ValueError, match="bias"):
        pixel_interleave(y, torch.randn(3))
