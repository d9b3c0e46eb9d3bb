"""Row softmax of fp32 attention scores, written in a 16-bit dtype, for the Wan VAE's mid-block attention.

The VAE's attention is one head of width 384 over the pixels of each frame (14,400 tokens at 720p). No
fused SDPA kernel takes a head that wide, and PyTorch's fallback (the math path) upcasts to fp32 and
multiplies on CUDA cores: 8.5 ms per 720p frame on an H200 (kernels/NOTES_vae.md, session 21).
`models.vae._frame_attention` instead computes the scores with a tensor-core bf16 GEMM that writes fp32,
then this kernel, then a second bf16 GEMM:

    p[r, j] = exp(scale · s[r, j] − m_r) / Σ_j exp(scale · s[r, j] − m_r),    m_r = max_j scale · s[r, j]

One program per row, the whole row in registers: s is read once and p written once (the unfused
`torch.softmax(s).to(bf16)` reads s twice and writes it in fp32 once more). Rows up to MAX_COLS long.

Layouts: s [R, L] with unit column stride (any row stride), fp32 or 16-bit; p [R, L] likewise, any float
dtype. Reference: `reference` below.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["MAX_COLS", "reference", "softmax_rows"]

MAX_COLS = 65536  # longest row one program holds (64 fp32 values per thread at 32 warps)


# 1. reference ----------------------------------------------------------------------------------------
def reference(s: torch.Tensor, scale: float, out_dtype: torch.dtype) -> torch.Tensor:
    """softmax(scale · s) over the last dim, computed in fp32, returned in out_dtype."""
    return torch.softmax(s.float() * scale, dim=-1).to(out_dtype)


# 2. kernel --------------------------------------------------------------------------------------------
@triton.jit
def _softmax_rows_kernel(s_ptr, p_ptr, n_cols, stride_s, stride_p, scale_log2e, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    x = tl.load(s_ptr + row * stride_s + cols, mask=mask, other=-float("inf")).to(tl.float32) * scale_log2e
    e = tl.exp2(x - tl.max(x, axis=0))  # masked lanes: exp2(-inf) = 0
    p = e / tl.sum(e, axis=0)
    tl.store(p_ptr + row * stride_p + cols, p.to(p_ptr.dtype.element_ty), mask=mask)


# 3. wrapper -------------------------------------------------------------------------------------------
def softmax_rows(s: torch.Tensor, scale: float, out_dtype: torch.dtype = torch.bfloat16,
                 out: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(scale · s) over the last dim of s [..., L] (L <= MAX_COLS, unit last-dim stride) -> [..., L]
    in out_dtype (or into `out`, same shape, unit last-dim stride)."""
    if s.shape[-1] > MAX_COLS or s.shape[-1] < 1:
        raise ValueError(f"softmax_rows takes rows of 1..{MAX_COLS} values, got {s.shape[-1]}")
    if s.stride(-1) != 1:
        raise ValueError("softmax_rows needs a unit stride along the last dim")
    n_cols = s.shape[-1]
    rows = s.reshape(-1, n_cols)  # a view for the layouts the VAE passes (contiguous rows)
    if out is None:
        out = torch.empty(s.shape, device=s.device, dtype=out_dtype)
    if out.shape != s.shape or out.stride(-1) != 1:
        raise ValueError(f"out must be {tuple(s.shape)} with a unit last-dim stride, got {tuple(out.shape)}")
    out_rows = out.view(-1, n_cols)
    if rows.shape[0]:
        block = triton.next_power_of_2(n_cols)
        warps = min(32, max(1, block // 2048))  # ~64 values per thread at most
        _softmax_rows_kernel[(rows.shape[0],)](rows, out_rows, n_cols, rows.stride(0), out_rows.stride(0),
                                               scale * 1.4426950408889634, BLOCK=block, num_warps=warps)  # fmt: skip
    return out
