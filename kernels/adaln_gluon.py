"""The residual add + LayerNorm + AdaLN modulation in Gluon: ``x' = x + gate·y``, then ``LN(x')·(1+scale) + shift``,
bf16/fp out or int8 codes with one scale per token (`adaln.residual_layernorm_modulate`'s pass), rows held in
registers as power-of-two pieces, each in a layout of its own.

Why: the Triton kernel (`adaln._residual_ln_modulate_kernel`) is issue-bound, not memory-bound. At the 14B's shape
(75600 tokens × 5120, fp32 stream, int8 out) it moves 4.26 GB in 1.36 ms, 73 % of copy bandwidth, and its sm_90
SASS holds 42-46 instructions per element (`kernels/NOTES_norms.md`, session 36): masked lanes of the 8192-wide padded row, the
per-row shift / scale / gate gathers of the straight-line form, index math, layout conversions between the
reductions and the stores. The DiT runs it three times per block (the self-attention's residual into norm3, the
cross-attention's into norm2, the FFN's into the next block's norm1): ~0.16 s per 14B NFE.

Here a program takes BLOCK_M rows of one batch element. Each piece of a row (5120 = 4096 + 1024, 1536 = 1024 + 512)
is loaded, added, stored, reduced, modulated and quantized in one blocked layout with up to 8 contiguous columns
per thread, and the program's gate / shift / scale are loaded once per piece, not per row. Only the rows' sums and
absmax change layout. Codes are the low byte of ``v·(127/absmax) + 1.5·2^23`` read as an int32 (the FFMA rounds to
nearest even), where the Triton kernel rounds ties away from zero: the two differ only where the product is within
one fp32 rounding of a tie, and then by one. x' is the same fp32 ``x + g·y`` (one FFMA) either way.

CUDA only (Gluon has no interpreter): `adaln._launch_residual` runs it on Hopper where `supported`, after a first-call
check against the Triton kernel (`adaln._check_gluon`); `kernels.compile_check adaln_gluon` compiles it for sm_90 in
CI. The worker setting `norm_kernel` (auto / gluon / triton) chooses.
"""

from __future__ import annotations

import torch

from kernels.int8_quant_gluon import pieces  # the same power-of-two pieces of a row, at least 256 wide

try:  # Gluon (Triton >= 3.5)
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl

    _HAVE_GLUON = True
except ImportError:  # pragma: no cover - older Triton
    _HAVE_GLUON = False

__all__ = ["available", "launch_meta", "pieces", "residual_ln_modulate", "supported"]

MAX_PIECES = 3
MAX_C = 6144  # a row held in registers with its three modulation vectors (checked for spills up to 5120)
NUM_WARPS = 4
ROW_VALUES = 4096  # values of a program's rows: ~32 per thread of 4 warps (at 1536: two rows; see `launch_meta`)


def available() -> bool:
    return _HAVE_GLUON


def supported(c: int) -> bool:
    """Rows this kernel holds: C ≤ MAX_C in at most MAX_PIECES pieces."""
    return 0 < c <= MAX_C and len(pieces(c)) <= MAX_PIECES


def launch_meta(c: int, num_warps: int | None = None, block_m: int | None = None) -> dict[str, int]:
    """The kernel's constexprs for rows of C (also `kernels.compile_check`'s): NUM_WARPS warps, and rows per program
    so that a thread holds ~24-40 values (C = 5120: one row; 1536: two). Measured on the H200 (scripts/norm_probe.py,
    session 36, µs per call against the Triton kernel's):
    - 75600 × 5120, gated / plain, int8 out: 4 warps × 1 row 1074 / 1072 (Triton 1375 / 1376, 1.28×); 8 × 1 1077 /
      1048; 8 × 2 1284 / 1087; 4 × 2 1094 / 1069;
    - 32760 × 1536, gated int8 / plain int8 / gated bf16: 4 × 2 146 / 139 / 150 (Triton 172 / 154 / 150); 4 × 4
      144 / 169 / 160; 4 × 8 153 / 153 / 171; 8 × 4 196 / 181 / 154.
    `num_warps` / `block_m` override them (measuring)."""
    num_warps = num_warps or NUM_WARPS
    if block_m is None:
        block_m = 1
        while block_m < 8 and 2 * block_m * c <= ROW_VALUES:
            block_m *= 2
    p = pieces(c) + (0,) * (MAX_PIECES - len(pieces(c)))
    return {"P0": p[0], "P1": p[1], "P2": p[2], "BLOCK_M": block_m, "NW": num_warps, "num_warps": num_warps}


if _HAVE_GLUON:

    @gluon.jit
    def _add_piece(x_ptr, y_ptr, g_ptr, xo_ptr, rows, row_ok, C, START: gl.constexpr, WIDTH: gl.constexpr,
                   NW: gl.constexpr, HAS_GATE: gl.constexpr):
        """x' = x + g·y of columns START.. of the rows (stored to xo in its dtype) in the piece's layout, and the
        rows' sums of x' [BLOCK_M] in `rows`' layout."""
        layout: gl.constexpr = gl.BlockedLayout([1, max(1, min(8, WIDTH // (32 * NW)))], [1, 32], [1, NW], [1, 0])
        r = gl.convert_layout(rows, gl.SliceLayout(1, layout))
        ok = gl.convert_layout(row_ok, gl.SliceLayout(1, layout))
        cols = START + gl.arange(0, WIDTH, layout=gl.SliceLayout(0, layout))
        cok = cols < C
        mask = ok[:, None] & cok[None, :]
        offs = r.to(gl.int64)[:, None] * C + cols[None, :]
        x = gl.load(x_ptr + offs, mask=mask, other=0.0).to(gl.float32)
        y = gl.load(y_ptr + offs, mask=mask, other=0.0).to(gl.float32)
        if HAS_GATE:
            g = gl.load(g_ptr + cols, mask=cok, other=0.0).to(gl.float32)
            x = x + g[None, :] * y
        else:
            x = x + y
        x = x.to(xo_ptr.dtype.element_ty)
        gl.store(xo_ptr + offs, x, mask=mask)
        x = x.to(gl.float32)
        return x, gl.convert_layout(gl.sum(x, axis=1), rows.type.layout)

    @gluon.jit
    def _centre_piece(x, mean, rows, C, START: gl.constexpr, WIDTH: gl.constexpr):
        """(x - mean with padded columns 0, the rows' sums of its squares in `rows`' layout)."""
        layout: gl.constexpr = x.type.layout
        m = gl.convert_layout(mean, gl.SliceLayout(1, layout))
        cols = START + gl.arange(0, WIDTH, layout=gl.SliceLayout(0, layout))
        xc = gl.where((cols < C)[None, :], x - m[:, None], 0.0)
        return xc, gl.convert_layout(gl.sum(xc * xc, axis=1), rows.type.layout)

    @gluon.jit
    def _modulate_piece(xc, rstd, shift_ptr, scale_ptr, C, START: gl.constexpr, WIDTH: gl.constexpr, rows):
        """v = xc·rstd·(1 + scale) + shift (padded columns 0) and the rows' absmax of v in `rows`' layout."""
        layout: gl.constexpr = xc.type.layout
        s = gl.convert_layout(rstd, gl.SliceLayout(1, layout))
        cols = START + gl.arange(0, WIDTH, layout=gl.SliceLayout(0, layout))
        cok = cols < C
        sc1 = 1.0 + gl.load(scale_ptr + cols, mask=cok, other=0.0).to(gl.float32)
        sh = gl.load(shift_ptr + cols, mask=cok, other=0.0).to(gl.float32)
        v = xc * s[:, None] * sc1[None, :] + sh[None, :]
        return v, gl.convert_layout(gl.max(gl.abs(v), axis=1), rows.type.layout)

    @gluon.jit
    def _store_piece(out_ptr, v, rows, row_ok, inv, C, START: gl.constexpr, WIDTH: gl.constexpr,
                     OUT_INT8: gl.constexpr):
        layout: gl.constexpr = v.type.layout
        r = gl.convert_layout(rows, gl.SliceLayout(1, layout))
        ok = gl.convert_layout(row_ok, gl.SliceLayout(1, layout))
        cols = START + gl.arange(0, WIDTH, layout=gl.SliceLayout(0, layout))
        mask = ok[:, None] & (cols < C)[None, :]
        offs = r.to(gl.int64)[:, None] * C + cols[None, :]
        if OUT_INT8:
            i = gl.convert_layout(inv, gl.SliceLayout(1, layout))
            codes = (v * i[:, None] + 12582912.0).to(gl.int32, bitcast=True).to(gl.int8)
            gl.store(out_ptr + offs, codes, mask=mask)
        else:
            gl.store(out_ptr + offs, v.to(out_ptr.dtype.element_ty), mask=mask)

    @gluon.jit
    def _residual_ln_modulate_kernel(
        x_ptr, y_ptr, gate_ptr, xo_ptr, shift_ptr, scale_ptr, out_ptr, qscale_ptr,
        L, stride_gate_b, stride_shift_b, stride_scale_b, eps, C: gl.constexpr,
        P0: gl.constexpr, P1: gl.constexpr, P2: gl.constexpr, BLOCK_M: gl.constexpr, NW: gl.constexpr,
        HAS_GATE: gl.constexpr, OUT_INT8: gl.constexpr,
    ):
        """Program (t, b): rows t·BLOCK_M.. of batch element b, held as pieces P0.. (0: none) in registers. C is a
        constexpr (a model has two or three widths): the column masks of unpadded pieces fold away."""
        row_layout: gl.constexpr = gl.BlockedLayout([1], [32], [NW], [0])
        b = gl.program_id(1)
        pos = gl.program_id(0) * BLOCK_M + gl.arange(0, BLOCK_M, layout=row_layout)
        row_ok = pos < L
        rows = b * L + pos
        g_ptr = gate_ptr + b.to(gl.int64) * stride_gate_b
        sh_ptr = shift_ptr + b.to(gl.int64) * stride_shift_b
        sc_ptr = scale_ptr + b.to(gl.int64) * stride_scale_b
        # 1. x' = x + g·y, stored; the rows' mean
        x0, total = _add_piece(x_ptr, y_ptr, g_ptr, xo_ptr, rows, row_ok, C, 0, P0, NW, HAS_GATE)
        if P1 > 0:
            x1, s1 = _add_piece(x_ptr, y_ptr, g_ptr, xo_ptr, rows, row_ok, C, P0, P1, NW, HAS_GATE)
            total = total + s1
        if P2 > 0:
            x2, s2 = _add_piece(x_ptr, y_ptr, g_ptr, xo_ptr, rows, row_ok, C, P0 + P1, P2, NW, HAS_GATE)
            total = total + s2
        mean = total / C
        # 2. the variance of the centred rows
        x0, sq = _centre_piece(x0, mean, rows, C, 0, P0)
        if P1 > 0:
            x1, q1 = _centre_piece(x1, mean, rows, C, P0, P1)
            sq = sq + q1
        if P2 > 0:
            x2, q2 = _centre_piece(x2, mean, rows, C, P0 + P1, P2)
            sq = sq + q2
        rstd = gl.rsqrt(sq / C + eps)
        # 3. modulate; with int8 out, the rows' absmax and scale
        x0, amax = _modulate_piece(x0, rstd, sh_ptr, sc_ptr, C, 0, P0, rows)
        if P1 > 0:
            x1, a1 = _modulate_piece(x1, rstd, sh_ptr, sc_ptr, C, P0, P1, rows)
            amax = gl.maximum(amax, a1)
        if P2 > 0:
            x2, a2 = _modulate_piece(x2, rstd, sh_ptr, sc_ptr, C, P0 + P1, P2, rows)
            amax = gl.maximum(amax, a2)
        inv = amax
        if OUT_INT8:
            inv = gl.where(amax > 0, 127.0 / gl.maximum(amax, 1e-30), 0.0)
            gl.store(qscale_ptr + rows, amax / 127.0, mask=row_ok)
        # 4. store
        _store_piece(out_ptr, x0, rows, row_ok, inv, C, 0, P0, OUT_INT8)
        if P1 > 0:
            _store_piece(out_ptr, x1, rows, row_ok, inv, C, P0, P1, OUT_INT8)
        if P2 > 0:
            _store_piece(out_ptr, x2, rows, row_ok, inv, C, P0 + P1, P2, OUT_INT8)


def residual_ln_modulate(
    x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor | None, shift: torch.Tensor, scale: torch.Tensor,
    eps: float, x_out: torch.Tensor, out: torch.Tensor, qscale: torch.Tensor, num_warps: int | None = None,
    block_m: int | None = None,
) -> None:
    """`adaln._launch_residual`'s pass (CUDA, contiguous x, y, x_out, out [B, L, C]; gate, shift, scale [B, C] with
    the last dim contiguous; `supported(C)`): x_out = x + gate·y, out = the modulated LayerNorm of x_out (int8
    codes with qscale [B·L] when out is int8)."""
    B, L, C = x.shape
    meta = launch_meta(C, num_warps, block_m)
    _residual_ln_modulate_kernel[((L + meta["BLOCK_M"] - 1) // meta["BLOCK_M"], B)](
        x, y, shift if gate is None else gate, x_out, shift, scale, out, qscale,
        L, 0 if gate is None else gate.stride(0), shift.stride(0), scale.stride(0), eps, C=C,
        HAS_GATE=gate is not None, OUT_INT8=out.dtype == torch.int8, **meta)
