"""col2im_causal + tap_matrix (the VAE's RGB head as a GEMM and a gather pass) vs conv3d (CPU: interpreter)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kernels.conv_head import col2im_causal, reference, tap_matrix


def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _causal_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, past: torch.Tensor | None) -> torch.Tensor:
    """The head as defined: zeros (or the past input frames) before the chunk, conv3d with spatial pad 1."""
    lead = x.new_zeros(x.shape[0], x.shape[1], 2, *x.shape[3:]) if past is None else past
    if lead.shape[2] < 2:
        lead = torch.cat([x.new_zeros(x.shape[0], x.shape[1], 2 - lead.shape[2], *x.shape[3:]), lead], dim=2)
    return F.conv3d(torch.cat([lead, x], dim=2), weight, bias, padding=(0, 1, 1))


@pytest.mark.parametrize(("t", "n_past"), [(3, 0), (1, 0), (1, 1), (4, 2), (2, 2)])
def test_gemm_and_gather_equal_the_causal_conv(t, n_past):
    torch.manual_seed(t * 10 + n_past)
    b, c_in, c_out, h, w = 2, 5, 3, 4, 6
    weight, bias = torch.randn(c_out, c_in, 3, 3, 3), torch.randn(c_out)
    x = torch.randn(b, c_in, t, h, w)
    past = torch.randn(b, c_in, n_past, h, w) if n_past else None
    want = _causal_conv(x, weight, bias, past)

    m = tap_matrix(weight, columns=88)  # 81 columns padded to 88
    assert m.shape == (c_in, 88) and m[:, 81:].abs().sum() == 0
    rows = lambda v: v.permute(0, 2, 3, 4, 1).reshape(-1, c_in) @ m  # noqa: E731
    y = rows(x).view(b, t, h, w, 88)
    prev = rows(past).view(b, n_past, h, w, 88) if past is not None else None
    torch.testing.assert_close(reference(y, prev, bias, c_out), want, atol=1e-4, rtol=1e-4)
    got = col2im_causal(y.to(_device()), None if prev is None else prev.to(_device()), bias.to(_device()), c_out)
    assert got.shape == (b, c_out, t, h, w) and got.is_contiguous(memory_format=torch.channels_last_3d)
    torch.testing.assert_close(got.cpu(), want, atol=1e-4, rtol=1e-4)


def test_rejects_bad_shapes():
    y = torch.randn(1, 2, 3, 4, 88)
    with pytest.raises(ValueError, match="y must be"):
        col2im_causal(y[..., :80], None, None, 3)
    with pytest.raises(ValueError, match="prev must be"):
        col2im_causal(y, torch.randn(1, 3, 3, 4, 88), None, 3)  # 3 past frames: the conv sees 2
    with pytest.raises(ValueError, match="bias"):
        col2im_causal(y, None, torch.randn(4), 3)
