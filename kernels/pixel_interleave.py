"""Sub-pixel interleave (+ bias) for the Wan VAE's 2× upsamplers.

The VAE's upsampler is conv3x3(nearest2x(x)). `models.vae._upsample2x_conv3x3` runs it without forming
the upsampled frames: output pixel (2i+a, 2j+b) depends only on input rows {i-1+a, i+a} and columns
{j-1+b, j+b}, so each parity (a, b) is a 2×2 conv of the zero-padded input. The four parities' weights
are stacked on the output channels, one conv2d computes all of them:

    y[n, p, q, (2a+b)·C + c]   for p in [0, H], q in [0, W]       (y: [N, 4C, H+1, W+1], channels-last)

and this kernel scatters them to the upsampled frame in one pass, adding the conv's bias on the way
(cuDNN would add it in a pass of its own):

    out[n, 2i+a, 2j+b, c] = y[n, i+a, j+b, (2a+b)·C + c] + bias[c]     (out: [N, C, 2H, 2W], channels-last)

Layouts: y and out channels-last (channel stride 1), any batch/row/pixel strides. bias [C] or None.
dtypes: any float; out's dtype is written. Reference: `reference` below.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["reference", "pixel_interleave"]


# 1. reference ----------------------------------------------------------------------------------------
def reference(y: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """y [N, 4C, H+1, W+1] -> [N, C, 2H, 2W] (plain PyTorch, the definition above)."""
    n, c4, hp, wp = y.shape
    c, h, w = c4 // 4, hp - 1, wp - 1
    out = torch.empty(n, c, 2 * h, 2 * w, dtype=y.dtype, device=y.device)
    for a in (0, 1):
        for b in (0, 1):
            k = 2 * a + b
            part = y[:, k * c : (k + 1) * c, a : a + h, b : b + w]
            out[:, :, a::2, b::2] = part if bias is None else part + bias.view(1, -1, 1, 1).to(part.dtype)
    return out


# 2. kernel --------------------------------------------------------------------------------------------
@triton.jit
def _interleave_kernel(
    y_ptr,
    bias_ptr,
    out_ptr,
    H,  # input rows (out has 2H)
    W2,  # output columns (2W)
    C,
    sy_n,
    sy_h,
    sy_w,
    so_n,
    so_h,
    so_w,
    HAS_BIAS: tl.constexpr,
    BLOCK_X: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    # one output row segment: [BLOCK_X pixels, BLOCK_C channels]
    row = tl.program_id(0)  # n · 2H + output row
    n = row // (2 * H)
    oy = row % (2 * H)
    a = oy % 2
    ox = tl.program_id(1) * BLOCK_X + tl.arange(0, BLOCK_X)  # [BLOCK_X]
    b = ox % 2
    cols = tl.arange(0, BLOCK_C)
    mask = (ox < W2)[:, None] & (cols < C)[None, :]
    src_row = n.to(tl.int64) * sy_n + (oy // 2 + a).to(tl.int64) * sy_h
    src = src_row + ((ox // 2 + b).to(tl.int64) * sy_w)[:, None] + ((2 * a + b) * C)[:, None] + cols[None, :]
    v = tl.load(y_ptr + src, mask=mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        v += tl.load(bias_ptr + cols, mask=cols < C, other=0.0).to(tl.float32)[None, :]
    dst = n.to(tl.int64) * so_n + oy.to(tl.int64) * so_h + (ox.to(tl.int64) * so_w)[:, None] + cols[None, :]
    tl.store(out_ptr + dst, v.to(out_ptr.dtype.element_ty), mask=mask)


# 3. wrapper -------------------------------------------------------------------------------------------
def pixel_interleave(y: torch.Tensor, bias: torch.Tensor | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """y [N, 4C, H+1, W+1] (channels-last: channel stride 1) -> out [N, C, 2H, 2W] channels-last, as
    `reference`. out: where to write (default: a new channels-last tensor of y's dtype)."""
    if y.dim() != 4 or y.shape[1] % 4 or min(y.shape[2:]) < 2:
        raise ValueError(f"y must be [N, 4C, H+1, W+1] with H, W >= 1, got {tuple(y.shape)}")
    n, c4, hp, wp = y.shape
    c, h, w = c4 // 4, hp - 1, wp - 1
    if y.stride(1) != 1:
        raise ValueError(f"y needs channels-last memory (channel stride 1), got strides {y.stride()}")
    if bias is not None and (bias.numel() != c or not bias.is_floating_point()):
        raise ValueError(f"bias must hold {c} floats, got {(bias.dtype, tuple(bias.shape))}")
    if out is None:
        out = torch.empty((n, c, 2 * h, 2 * w), device=y.device, dtype=y.dtype, memory_format=torch.channels_last)
    elif out.shape != (n, c, 2 * h, 2 * w) or out.stride(1) != 1:
        raise ValueError(f"out must be [{n}, {c}, {2 * h}, {2 * w}] channels-last, got {tuple(out.shape)} {out.stride()}")
    if n == 0:
        return out
    block_c = triton.next_power_of_2(c)
    # ~4K elements per program on the GPU; the interpreter's cost is per program, so whole rows there
    block_x = max(1, 4096 // block_c) if y.is_cuda else triton.next_power_of_2(2 * w)
    bias_t = bias.reshape(c).contiguous() if bias is not None else y
    grid = (n * 2 * h, triton.cdiv(2 * w, block_x))
    _interleave_kernel[grid](
        y, bias_t, out, h, 2 * w, c,
        y.stride(0), y.stride(2), y.stride(3), out.stride(0), out.stride(2), out.stride(3),
        HAS_BIAS=bias is not None, BLOCK_X=block_x, BLOCK_C=block_c, num_warps=4,
    )  # fmt: skip
    return out
