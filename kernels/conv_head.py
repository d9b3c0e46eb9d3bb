"""The Wan VAE decoder's RGB head (a causal 3×3×3 conv, 96 -> 3 channels) as one GEMM and one gather pass.

cuDNN runs a conv with 3 output channels at ~24 TFLOP/s on an H200 (21 ms of a 0.65 s 480p decode): its
tiles are 32+ outputs wide. Here every input pixel is multiplied once by all 27 taps' weights, a GEMM
with 27·3 = 81 output columns, rows = pixels:

    y[b, f, p, q, tap·C + c] = sum_ci x[b, ci, f, p, q] · w[c, ci, kt, kh, kw],   tap = 9·kt + 3·kh + kw

and this kernel sums, for each output pixel, the 27 partials that land on it (a "col2im"), adds the bias:

    out[b, c, t, i, j] = bias[c] + sum_{kt,kh,kw} y[b, t-2+kt, i-1+kh, j-1+kw, tap·C + c]

with zeros outside the frame (the conv's spatial padding) and, for frames before the chunk (t-2+kt < 0),
the previous chunk's last y frames (`prev`, what the causal cache keeps instead of input frames) or zeros
before the first chunk (causal padding).

Layouts: y [B, T, H, W, NP] (NP >= 27·C columns, row stride NP; fp32 or bf16), prev [B, n_prev, H, W, NP]
with n_prev in {0, 1, 2} (the frames just before this chunk, oldest first), bias [C], out [B, C, T, H, W]
with any strides (channels-last-3d in the VAE). fp32 sums. Reference: `reference` below.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["reference", "tap_matrix", "col2im_causal"]

TAPS = 27


# 1. reference ----------------------------------------------------------------------------------------
def tap_matrix(weight: torch.Tensor, columns: int | None = None) -> torch.Tensor:
    """A [C, C_in, 3, 3, 3] conv weight -> [C_in, columns] with column tap·C + c = weight[c, :, kt, kh, kw]
    (tap = 9·kt + 3·kh + kw), zero-padded to `columns` (default 27·C)."""
    c_out, c_in = weight.shape[:2]
    m = weight.permute(1, 2, 3, 4, 0).reshape(c_in, TAPS * c_out)
    if columns is not None and columns > m.shape[1]:
        m = torch.cat([m, m.new_zeros(c_in, columns - m.shape[1])], dim=1)
    return m.contiguous()


def reference(y: torch.Tensor, prev: torch.Tensor | None, bias: torch.Tensor | None, c_out: int) -> torch.Tensor:
    """The definition above in plain PyTorch (fp32): -> [B, C, T, H, W]."""
    b, t, h, w, _ = y.shape
    frames = y.float() if prev is None else torch.cat([prev.float(), y.float()], dim=1)
    n_prev = frames.shape[1] - t
    pad = torch.zeros(b, 2 - n_prev, h, w, y.shape[-1]) if n_prev < 2 else None
    if pad is not None:
        frames = torch.cat([pad.to(frames), frames], dim=1)  # [B, T+2, H, W, NP]
    frames = torch.nn.functional.pad(frames, (0, 0, 1, 1, 1, 1))  # spatial zeros: [B, T+2, H+2, W+2, NP]
    out = torch.zeros(b, t, h, w, c_out, dtype=torch.float32, device=y.device)
    for kt in range(3):
        for kh in range(3):
            for kw in range(3):
                tap = 9 * kt + 3 * kh + kw
                out += frames[:, kt : kt + t, kh : kh + h, kw : kw + w, tap * c_out : (tap + 1) * c_out]
    if bias is not None:
        out += bias.float()
    return out.permute(0, 4, 1, 2, 3)


# 2. kernel --------------------------------------------------------------------------------------------
@triton.jit
def _col2im_kernel(
    y_ptr,
    prev_ptr,
    bias_ptr,
    out_ptr,
    T,
    H,
    W,
    NP,
    N_PREV,
    so_b,
    so_c,
    so_t,
    so_h,
    so_w,
    C_OUT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    bt = tl.program_id(0)  # b·T + t: one output frame
    t = bt % T
    b = bt // T
    pix = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)  # [BLOCK_P] output pixels i·W + j
    pix_ok = pix < H * W
    i = pix // W
    j = pix % W
    c = tl.arange(0, BLOCK_C)
    c_ok = c < C_OUT
    acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    zero = pix * 0  # scalar conditions as vectors (Triton's interpreter rejects scalar & tensor masks)
    for kt in tl.static_range(3):
        f = zero + (t - 2 + kt)  # source frame; < 0: the previous chunk's (or zeros before the first chunk)
        cur_ok = pix_ok & (f >= 0)
        old_ok = pix_ok & (f < 0) & (f + N_PREV >= 0)
        cur = (b * T + f).to(tl.int64) * H
        old = (b * N_PREV + N_PREV + f).to(tl.int64) * H
        for kh in tl.static_range(3):
            p = i - 1 + kh
            p_ok = (p >= 0) & (p < H)
            for kw in tl.static_range(3):
                q = j - 1 + kw
                ok = p_ok & (q >= 0) & (q < W)
                cc = ((9 * kt + 3 * kh + kw) * C_OUT + c)[None, :]
                # one of the two loads is fully masked: the frame is this chunk's or the previous one's
                src_cur = ((cur + p) * W + q) * NP
                src_old = ((old + p) * W + q) * NP
                v = tl.load(y_ptr + src_cur[:, None] + cc, mask=(ok & cur_ok)[:, None] & c_ok[None, :], other=0.0)
                w = tl.load(prev_ptr + src_old[:, None] + cc, mask=(ok & old_ok)[:, None] & c_ok[None, :], other=0.0)
                acc += v.to(tl.float32) + w.to(tl.float32)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + c, mask=c_ok, other=0.0).to(tl.float32)[None, :]
    dst = b.to(tl.int64) * so_b + t.to(tl.int64) * so_t + i.to(tl.int64) * so_h + j.to(tl.int64) * so_w
    offs = dst[:, None] + c[None, :].to(tl.int64) * so_c
    tl.store(out_ptr + offs, acc.to(out_ptr.dtype.element_ty), mask=pix_ok[:, None] & c_ok[None, :])


# 3. wrapper -------------------------------------------------------------------------------------------
def col2im_causal(y: torch.Tensor, prev: torch.Tensor | None, bias: torch.Tensor | None, c_out: int,
                  out: torch.Tensor | None = None, out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Sum the 27 tap partials `y` onto the output pixels (see the module docstring) -> [B, C, T, H, W],
    channels-last-3d unless `out` is given (dtype `out_dtype`, default y's)."""
    if y.dim() != 5 or y.shape[-1] < TAPS * c_out or y.stride(-1) != 1:
        raise ValueError(f"y must be [B, T, H, W, >= {TAPS * c_out}] with contiguous columns, got "
                         f"{tuple(y.shape)} {y.stride()}")
    b, t, h, w, n_cols = y.shape
    if not y.is_contiguous():
        raise ValueError("y must be contiguous ([B, T, H, W, NP] rows)")
    n_prev = 0 if prev is None else prev.shape[1]
    if prev is not None and (prev.shape[0] != b or prev.shape[2:] != y.shape[2:] or not 0 < n_prev <= 2
                             or not prev.is_contiguous()):  # fmt: skip
        raise ValueError(f"prev must be [{b}, 1 or 2, {h}, {w}, {n_cols}] contiguous, got {tuple(prev.shape)}")
    if bias is not None and bias.numel() != c_out:
        raise ValueError(f"bias must hold {c_out} values, got {bias.numel()}")
    if out is None:
        out = torch.empty((b, c_out, t, h, w), device=y.device, dtype=out_dtype or y.dtype,
                          memory_format=torch.channels_last_3d)
    elif out.shape != (b, c_out, t, h, w):
        raise ValueError(f"out must be [{b}, {c_out}, {t}, {h}, {w}], got {tuple(out.shape)}")
    if out.numel() == 0:
        return out
    # 128 pixels per program on the GPU; the interpreter's cost is per program, so a whole frame there
    block_p = 128 if y.is_cuda else triton.next_power_of_2(h * w)
    grid = (b * t, triton.cdiv(h * w, block_p))
    _col2im_kernel[grid](
        y, prev if prev is not None else y, bias if bias is not None else y, out, t, h, w, n_cols, n_prev,
        out.stride(0), out.stride(1), out.stride(2), out.stride(3), out.stride(4),
        C_OUT=c_out, HAS_BIAS=bias is not None, BLOCK_P=block_p, BLOCK_C=triton.next_power_of_2(c_out),
        num_warps=4,
    )  # fmt: skip
    return out
