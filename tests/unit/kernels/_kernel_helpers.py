"""Test-only helpers for the kernel tests (moved out of kernels/: nothing in the package uses them)."""

from __future__ import annotations

import torch

from kernels.int8_quant import reference_quantize_activation
from kernels.w8a8 import W8A8Weight


def emulate_w8a8(x: torch.Tensor, weight: W8A8Weight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """kernels/w8a8's math in torch (per-token int8 x, per-channel int8 w, exact integer sums) -> x.dtype."""
    x2 = x.reshape(-1, x.shape[-1])
    q, sx = reference_quantize_activation(x2)
    acc = (q.double() @ weight.qweight.double().t()).float()  # exact: |acc| < 2^53
    y = acc * sx[:, None] * weight.scale[None, :]
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype).reshape(*x.shape[:-1], -1)


def assert_fa_rule(out: torch.Tensor, truth: torch.Tensor, torch_lowp: torch.Tensor,
                   atol: dict[torch.dtype, float]) -> None:
    """flash-attention's rule: kernel error <= 2 x (same math in torch at the kernel's precision) + atol,
    atol scaled by the largest |truth| (at least 1)."""
    assert out.dtype == torch_lowp.dtype
    assert torch.isfinite(out).all()
    err = (out.double() - truth).abs().max().item()
    torch_err = (torch_lowp.double() - truth).abs().max().item()
    tol = atol[out.dtype] * max(1.0, truth.abs().max().item())
    assert err <= 2 * torch_err + tol, (err, torch_err, tol)
