"""conv3d_few_out (the VAE's RGB head conv) vs PyTorch's conv3d (CPU: Triton interpreter at tiny sizes)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kernels.conv_rgb import conv3d_few_out, pack_weight, reference


def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize(("c_in", "c_out", "t", "h", "w"), [(40, 3, 1, 3, 17), (16, 1, 1, 3, 4), (96, 16, 1, 2, 33)])
def test_matches_conv3d_with_spatial_padding(c_in, c_out, t, h, w):
    # C_in not a multiple of the channel block (40), one output channel, a full 16, W past a block of 16
    dev = _device()
    torch.manual_seed(0)
    x = torch.randn(2, c_in, t + 2, h, w, device=dev).contiguous(memory_format=torch.channels_last_3d)
    weight = torch.randn(c_out, c_in, 3, 3, 3, device=dev) / (27 * c_in) ** 0.5
    bias = torch.randn(c_out, device=dev)
    out = conv3d_few_out(x, weight, bias)
    expected = reference(x.double(), weight.double(), bias.double())
    assert out.shape == expected.shape == (2, c_out, t, h, w) and out.dtype == x.dtype
    assert out.is_contiguous(memory_format=torch.channels_last_3d)
    torch.testing.assert_close(out.double(), expected, atol=1e-4, rtol=1e-4)
    # no bias, a time-sliced view as input (the causal buffer's frames), the packed weight passed in
    view = torch.randn(1, c_in, t + 4, h, w, device=dev).contiguous(memory_format=torch.channels_last_3d)[:, :, 1:-1]
    got = conv3d_few_out(view, weight, None, pack_weight(weight, 32 if c_in >= 32 else 16))
    torch.testing.assert_close(got.double(), reference(view.double(), weight.double(), None), atol=1e-4, rtol=1e-4)


def test_rejects_what_it_cannot_run():
    x = torch.randn(1, 8, 3, 4, 4).contiguous(memory_format=torch.channels_last_3d)
    with pytest.raises(ValueError, match="does not fit"):
        conv3d_few_out(x, torch.randn(17, 8, 3, 3, 3), None)  # 17 output channels
    with pytest.raises(ValueError, match="3×3×3"):
        conv3d_few_out(x, torch.randn(3, 8, 1, 3, 3), None)
    with pytest.raises(ValueError, match="channel stride 1"):
        conv3d_few_out(torch.randn(1, 8, 3, 4, 4), torch.randn(3, 8, 3, 3, 3), None)


@pytest.mark.gpu
def test_vae_head_shape_bf16_gpu():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    x = torch.randn(1, 96, 6, 480, 832, device="cuda", dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last_3d)
    weight = (torch.randn(3, 96, 3, 3, 3, device="cuda") / (27 * 96) ** 0.5).to(torch.bfloat16)
    bias = torch.randn(3, device="cuda", dtype=torch.bfloat16)
    out = conv3d_few_out(x, weight, bias)
    expected = reference(x.double(), weight.double(), bias.double())
    cos = F.cosine_similarity(out.double().flatten(), expected.flatten(), dim=0).item()
    assert cos >= 0.9999, cos
