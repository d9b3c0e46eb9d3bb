"""Int8 packing of Ulysses' q/k/v exchange (models/parallel.py, `SequenceParallel(exchange="int8")`).

Sequence parallel sends each rank's q, k and v ([B, L/N, H, D], this rank's tokens, all heads) to the
ranks that own their heads. On a PCIe-class link the exchange is what the split pays for, so this module
halves its bytes: every (token, head) row of D values travels as D int8 codes plus its fp32 scale.

    pack_int8(x [B, Ls, H, D], N)  -> buf [N, B, Ls, H/N, D + 4] uint8    (buf[j]: what rank j receives)
        s = absmax_d(x[b, l, h]) / 127,  q = round_half_away(x / s) in [-127, 127]  (s = 0: q = 0)
        buf[j, b, l, hh, :D] = q (int8 bytes),  buf[j, b, l, hh, D:] = s (fp32 bytes),  h = j·H/N + hh
    unpack_int8(recv, dtype)       -> [B, N·Ls, H/N, D] in dtype, token-major (recv[j]: rank j's tokens)
        out[b, j·Ls + l, hh] = q · s

The way back (the attention output, token-split):

    pack_tokens_int8(o [B, h, L, D], N)  -> buf [N, B, Ls, h, D + 4] uint8   (buf[j]: rank j's tokens,
        Ls = ceil(L / N); tokens past L are zero rows)                     these h heads)
    unpack_tokens_int8(recv, out, i)     recv[j] (my tokens, rank j's h heads of head group i) -> out[:, :,
        j, i] of out [B, Ls, N, G, h, D] (head index (j, i, hh): what the output projection reads)

One pass each way, in place of the bf16 packing copy (send) and of nothing (receive: the bf16 path's
received buffer is used as it is). The error is at most half a step, absmax/254, per element: SageSLA
then quantizes q and k to int8 per block anyway (v goes to fp8 or fp16). `reference_pack` /
`reference_unpack` are the plain-PyTorch definitions; the kernels run on CUDA and under
TRITON_INTERPRET=1. D must be a multiple of 4 (the scale's 4 bytes stay aligned) and at most 256.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.int8_quant import reference_quantize_activation

__all__ = ["pack_int8", "pack_tokens_int8", "reference_pack", "reference_pack_tokens", "reference_unpack",
           "reference_unpack_tokens", "unpack_int8", "unpack_tokens_int8"]

SCALE_BYTES = 4
ROWS = 32  # (token, head) rows per program


def reference_pack(x: torch.Tensor, n: int) -> torch.Tensor:
    """Plain-PyTorch `pack_int8`."""
    B, Ls, H, D = x.shape
    return _pack_rows(x).view(B, Ls, n, H // n, D + SCALE_BYTES).permute(2, 0, 1, 3, 4).contiguous()


def _pack_rows(x: torch.Tensor) -> torch.Tensor:
    """x [..., D] -> [..., D + 4] uint8: int8 codes of each row and its fp32 scale (absmax / 127), the
    per-token activation quantization of the W8A8 path with a (token, head) row as the token."""
    q, scale = reference_quantize_activation(x.reshape(-1, x.shape[-1]))
    q, scale = q.view(*x.shape), scale.view(*x.shape[:-1], 1)
    return torch.cat([q.view(torch.uint8), scale.view(torch.uint8)], -1)


def _unpack_rows(buf: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    D = buf.shape[-1] - SCALE_BYTES
    q = buf[..., :D].contiguous().view(torch.int8).float()
    return (q * buf[..., D:].contiguous().view(torch.float32)).to(dtype)


def reference_pack_tokens(o: torch.Tensor, n: int) -> torch.Tensor:
    """Plain-PyTorch `pack_tokens_int8`."""
    B, h, L, D = o.shape
    ls = -(-L // n)
    t = torch.nn.functional.pad(o.transpose(1, 2), (0, 0, 0, 0, 0, n * ls - L))  # [B, N·Ls, h, D]
    return _pack_rows(t).view(B, n, ls, h, D + SCALE_BYTES).transpose(0, 1).contiguous()


def reference_unpack_tokens(recv: torch.Tensor, out: torch.Tensor, group: int) -> None:
    """Plain-PyTorch `unpack_tokens_int8`."""
    out[:, :, :, group] = _unpack_rows(recv, out.dtype).permute(1, 2, 0, 3, 4)


def reference_unpack(buf: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Plain-PyTorch `unpack_int8`."""
    N, B, Ls, Hn, W = buf.shape
    return _unpack_rows(buf, dtype).transpose(0, 1).reshape(B, N * Ls, Hn, W - SCALE_BYTES)


@triton.jit
def _int8_rows(x):
    """x [ROWS, BLOCK_D] fp32 -> (int8 codes round_half_away(x · 127 / absmax), absmax / 127) per row."""
    amax = tl.max(tl.abs(x), axis=1)  # [ROWS]
    inv = tl.where(amax > 0, 127.0 / tl.maximum(amax, 1e-30), 0.0)
    v = x * inv[:, None]
    v = tl.where(v >= 0, v + 0.5, v - 0.5)  # the int cast truncates: ties away from zero
    return tl.minimum(tl.maximum(v, -127.0), 127.0).to(tl.int8), amax / 127.0


@triton.jit
def _store_rows(q_ptr, s_ptr, rows, cols, row_ok, q, scale, D: tl.constexpr):
    """Packed rows `rows` of D + 4 bytes: the codes, then the scale's 4 bytes (s_ptr: the same buffer as
    fp32)."""
    tl.store(q_ptr + rows[:, None] * (D + 4) + cols[None, :], q, mask=row_ok[:, None] & (cols[None, :] < D))
    tl.store(s_ptr + rows * (D // 4 + 1) + D // 4, scale, mask=row_ok)


@triton.jit
def _load_rows(q_ptr, s_ptr, rows, cols, row_ok, D: tl.constexpr):
    """Packed rows `rows` -> [ROWS, BLOCK_D] fp32 codes · scale."""
    mask = row_ok[:, None] & (cols[None, :] < D)
    q = tl.load(q_ptr + rows[:, None] * (D + 4) + cols[None, :], mask=mask, other=0).to(tl.float32)
    return q * tl.load(s_ptr + rows * (D // 4 + 1) + D // 4, mask=row_ok, other=0.0)[:, None]


@triton.jit
def _split_rows(rows, Ls, n, B):
    """Rows of [N, B, Ls, n] (n fastest) -> (j, b, lo, i)."""
    i = rows % n
    jbl = rows // n  # (j·B + b)·Ls + lo
    lo = jbl % Ls
    jb = jbl // Ls
    return jb // B, jb % B, lo, i


@triton.jit
def _pack_kernel(x_ptr, q_ptr, s_ptr, R, Ls, H, Hn, B, D: tl.constexpr, BLOCK_D: tl.constexpr,
                 ROWS_: tl.constexpr):
    rows = tl.program_id(0) * ROWS_ + tl.arange(0, ROWS_)  # source rows (b, l, h), h fastest
    cols = tl.arange(0, BLOCK_D)
    row_ok = rows < R
    mask = row_ok[:, None] & (cols[None, :] < D)
    x = tl.load(x_ptr + rows[:, None] * D + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    q, scale = _int8_rows(x)
    h = rows % H
    bl = rows // H  # b·Ls + l
    dst = (((h // Hn) * B + bl // Ls) * Ls + bl % Ls) * Hn + h % Hn  # destination row in [N, B, Ls, Hn]
    _store_rows(q_ptr, s_ptr, dst, cols, row_ok, q, scale, D)


@triton.jit
def _unpack_kernel(q_ptr, s_ptr, out_ptr, R, Ls, Hn, B, N, D: tl.constexpr, BLOCK_D: tl.constexpr,
                   ROWS_: tl.constexpr):
    rows = tl.program_id(0) * ROWS_ + tl.arange(0, ROWS_)  # received rows (j, b, l, hh), hh fastest
    cols = tl.arange(0, BLOCK_D)
    row_ok = rows < R
    y = _load_rows(q_ptr, s_ptr, rows, cols, row_ok, D)
    j, b, lo, hh = _split_rows(rows, Ls, Hn, B)
    dst = (b * (N * Ls) + j * Ls + lo) * Hn + hh  # row of [B, N·Ls, Hn]
    tl.store(out_ptr + dst[:, None] * D + cols[None, :], y.to(out_ptr.dtype.element_ty),
             mask=row_ok[:, None] & (cols[None, :] < D))


@triton.jit
def _pack_tokens_kernel(o_ptr, q_ptr, s_ptr, R, L, Ls, h, B, so_b, so_h, so_l, D: tl.constexpr,
                        BLOCK_D: tl.constexpr, ROWS_: tl.constexpr):
    rows = tl.program_id(0) * ROWS_ + tl.arange(0, ROWS_)  # destination rows (j, b, lo, hh), hh fastest
    cols = tl.arange(0, BLOCK_D)
    row_ok = rows < R
    j, b, lo, hh = _split_rows(rows, Ls, h, B)
    tok = j * Ls + lo  # the token: rank j's lo-th
    src_ok = row_ok & (tok < L)  # tokens past L (padding) are zero rows
    mask = src_ok[:, None] & (cols[None, :] < D)
    src = b.to(tl.int64) * so_b + hh.to(tl.int64) * so_h + tok.to(tl.int64) * so_l
    x = tl.load(o_ptr + src[:, None] + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    q, scale = _int8_rows(x)
    _store_rows(q_ptr, s_ptr, rows, cols, row_ok, q, scale, D)


@triton.jit
def _unpack_tokens_kernel(q_ptr, s_ptr, out_ptr, R, Ls, h, B, N, G, group, D: tl.constexpr,
                          BLOCK_D: tl.constexpr, ROWS_: tl.constexpr):
    rows = tl.program_id(0) * ROWS_ + tl.arange(0, ROWS_)  # received rows (j, b, lo, hh), hh fastest
    cols = tl.arange(0, BLOCK_D)
    row_ok = rows < R
    y = _load_rows(q_ptr, s_ptr, rows, cols, row_ok, D)
    j, b, lo, hh = _split_rows(rows, Ls, h, B)
    dst = (((b * Ls + lo) * N + j) * G + group) * h + hh  # row of out [B, Ls, N, G, h]
    tl.store(out_ptr + dst[:, None] * D + cols[None, :], y.to(out_ptr.dtype.element_ty),
             mask=row_ok[:, None] & (cols[None, :] < D))


def _check(d: int, numel: int) -> None:
    if d % 4 or d > 256:
        raise ValueError(f"head dim {d}: the int8 exchange needs a multiple of 4, at most 256")
    if numel >= 2**31:  # the kernels index with int32
        raise ValueError(f"{numel} elements: too many for the int8 exchange (< 2^31)")


def pack_int8(x: torch.Tensor, n: int) -> torch.Tensor:
    """x [B, Ls, H, D] (bf16/fp16/fp32; this rank's tokens, all heads) -> uint8 [N, B, Ls, H/N, D + 4]."""
    if x.dim() != 4:
        raise ValueError(f"x must be [B, L, H, D], got {tuple(x.shape)}")
    B, Ls, H, D = x.shape
    _check(D, x.numel() + x.numel() // D * SCALE_BYTES)
    if H % n:
        raise ValueError(f"the heads ({H}) must divide by the ranks ({n})")
    x = x.contiguous()
    buf = torch.empty(n, B, Ls, H // n, D + SCALE_BYTES, dtype=torch.uint8, device=x.device)
    R = B * Ls * H
    if R:
        _pack_kernel[(triton.cdiv(R, ROWS),)](x, buf.view(torch.int8), buf.view(torch.float32), R, Ls, H, H // n, B,
                                              D=D, BLOCK_D=triton.next_power_of_2(D), ROWS_=ROWS)
    return buf


def unpack_int8(buf: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Received uint8 [N, B, Ls, Hn, D + 4] (recv[j]: rank j's tokens) -> [B, N·Ls, Hn, D] in dtype."""
    if buf.dim() != 5 or buf.dtype != torch.uint8:
        raise ValueError(f"buf must be uint8 [N, B, Ls, Hn, D + 4], got {buf.dtype} {tuple(buf.shape)}")
    N, B, Ls, Hn, W = buf.shape
    D = W - SCALE_BYTES
    _check(D, buf.numel())
    buf = buf.contiguous()
    out = torch.empty(B, N * Ls, Hn, D, dtype=dtype, device=buf.device)
    R = N * B * Ls * Hn
    if R:
        _unpack_kernel[(triton.cdiv(R, ROWS),)](buf.view(torch.int8), buf.view(torch.float32), out, R, Ls, Hn, B,
                                                N, D=D, BLOCK_D=triton.next_power_of_2(D), ROWS_=ROWS)
    return out


def pack_tokens_int8(o: torch.Tensor, n: int) -> torch.Tensor:
    """o [B, h, L, D] (any strides, last dim contiguous; all tokens of h heads) -> uint8
    [N, B, Ls, h, D + 4] (buf[j]: rank j's tokens, zero rows past L)."""
    if o.dim() != 4:
        raise ValueError(f"o must be [B, h, L, D], got {tuple(o.shape)}")
    if o.stride(-1) != 1:
        o = o.contiguous()
    B, h, L, D = o.shape
    ls = -(-L // n)
    _check(D, n * B * ls * h * (D + SCALE_BYTES))
    buf = torch.empty(n, B, ls, h, D + SCALE_BYTES, dtype=torch.uint8, device=o.device)
    R = n * B * ls * h
    if R:
        _pack_tokens_kernel[(triton.cdiv(R, ROWS),)](
            o, buf.view(torch.int8), buf.view(torch.float32), R, L, ls, h, B, o.stride(0), o.stride(1), o.stride(2),
            D=D, BLOCK_D=triton.next_power_of_2(D), ROWS_=ROWS)
    return buf


def unpack_tokens_int8(recv: torch.Tensor, out: torch.Tensor, group: int) -> None:
    """recv uint8 [N, B, Ls, h, D + 4] (recv[j]: this rank's tokens, rank j's h heads of head group
    `group`) -> out[:, :, :, group] of out [B, Ls, N, G, h, D] (contiguous, the model's dtype)."""
    if recv.dim() != 5 or recv.dtype != torch.uint8:
        raise ValueError(f"recv must be uint8 [N, B, Ls, h, D + 4], got {recv.dtype} {tuple(recv.shape)}")
    N, B, Ls, h, W = recv.shape
    D = W - SCALE_BYTES
    _check(D, recv.numel())
    if out.shape[:3] != (B, Ls, N) or out.shape[4:] != (h, D) or not out.is_contiguous():
        raise ValueError(f"out must be contiguous [{B}, {Ls}, {N}, G, {h}, {D}], got {tuple(out.shape)}")
    G = out.shape[3]
    if not 0 <= group < G:
        raise ValueError(f"group {group} is not one of the {G} head groups")
    recv = recv.contiguous()
    R = N * B * Ls * h
    if R:
        _unpack_tokens_kernel[(triton.cdiv(R, ROWS),)](
            recv.view(torch.int8), recv.view(torch.float32), out, R, Ls, h, B, N, G, group,
            D=D, BLOCK_D=triton.next_power_of_2(D), ROWS_=ROWS)
