"""Per-token int8 activation quantization (optionally of GELU(x)) in Gluon: whole rows in registers, each
piece of a row in a layout of its own, no float-to-int conversion instruction.

Why not the Triton kernel (`int8_quant._quantize_rows_kernel`): it holds a row as up to three power-of-two
pieces (8960 = 8192 + 512 + 256), and Triton gives the row-max reduction one register layout and the
vectorized loads and stores another. Its layout pass then computes the GELU twice per element, once in
each layout (sm_90 SASS of the 1.3B FFN-down pass: 69 `MUFU.TANH` and 385 `FMUL` for 35 elements per
thread), and converts the loaded row through shared memory too. It also rounds with `F2I`, which shares the
MUFU's quarter-rate pipe. With the GELU that pass was the forward's largest non-GEMM kernel
(0.38 ms of 32760 x 8960 at 1.3B, 10 % of the forward, `kernels/NOTES_w8a8.md`).

Here each piece is loaded, activated, reduced and stored in one blocked layout chosen for its width, so
each element is loaded once, activated once and stored once from the same registers. The only layout change is the row's
[BLOCK_M] absmax, shared between pieces. A code is the low byte of `x·(127/absmax) + 1.5·2^23` read as
an int32 (the FFMA's rounding to nearest, ties to even), where the Triton kernel rounds ties away from
zero. The two kernels' codes differ only where the product is within one fp32 rounding of a tie, and
then by one. Pieces: the binary digits of K from 256 up, at most four (13824 = 8192 + 4096 + 1024 + 512),
so the 14B's rows need no padded lanes either; a rest below 256 is padded into a last 256-wide piece.

CUDA only (Gluon has no interpreter): `int8_quant._quantize` runs it on Hopper where `supported`, and
`kernels.compile_check int8_quant_gluon` compiles it for sm_90 in CI.
"""

from __future__ import annotations

import torch

try:  # Gluon (Triton >= 3.5)
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl

    _HAVE_GLUON = True
except ImportError:  # pragma: no cover - older Triton
    _HAVE_GLUON = False

__all__ = ["available", "pieces", "quantize_rows", "supported"]

NUM_WARPS = 8  # rows longer than WIDE_K (H200, scripts/quant_probe.py, session 32: 75600 x 13824 with the GELU
# 1051 µs at 8 warps, 1086 at 4, 1402 at 16)
NARROW_WARPS = 4  # rows up to WIDE_K: 32760 x 8960 with the GELU 269 µs at 4 warps, 276 at 8; 75600 x 5120 270 / 279
WIDE_K = 10240
LANES = 256  # the narrowest piece: one element per thread of 8 warps, two of 4
MAX_PIECES = 4
MAX_K = 32768  # a row held in registers: at most 128 fp32 values per thread with 8 warps
MIN_PLAIN_K = 4096  # shorter plain rows: the Triton kernel (see `supported`)


def available() -> bool:
    return _HAVE_GLUON


def pieces(k: int) -> tuple[int, ...]:
    """K as power-of-two pieces of at least LANES, largest first (its binary digits from LANES up, a rest
    below LANES padded into one LANES-wide piece): 8960 -> (8192, 512, 256), 13824 -> (8192, 4096, 1024,
    512), 1536 -> (1024, 512), 100 -> (256,)."""
    out = [1 << b for b in range(k.bit_length() - 1, -1, -1) if k & (1 << b) and (1 << b) >= LANES]
    if k % LANES:
        out.append(LANES)
    return tuple(out)


def supported(k: int, gelu: bool = True) -> bool:
    """Rows this kernel holds, K ≤ MAX_K in at most MAX_PIECES pieces, where it is the faster kernel: with the
    GELU, or plain rows of at least MIN_PLAIN_K (H200, scripts/quant_probe.py, session 32: plain 32760 x 1536
    took 60 µs against the Triton kernel's 51, 75600 x 5120 279 against 346; with the GELU 32760 x 8960 273
    against 377)."""
    return 0 < k <= MAX_K and len(pieces(k)) <= MAX_PIECES and (gelu or k >= MIN_PLAIN_K)


def rows_per_program(k: int) -> int:
    """Rows per program: about 32 elements per thread (one row at the FFN widths, 8 at K = 1536)."""
    return 1 << max(0, min(3, (8192 // sum(pieces(k))).bit_length() - 1))


if _HAVE_GLUON:

    @gluon.jit
    def _gelu_tanh(x):
        # 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))): 3 FMUL, 2 FFMA and one MUFU.TANH per element
        u = x * (0.7978845608028654 + 0.035677408136300125 * (x * x))
        t = gl.inline_asm_elementwise("tanh.approx.f32 $0, $1;", "=f,f", [u], dtype=gl.float32, is_pure=True,
                                      pack=1)
        h = 0.5 * x
        return h + h * t

    @gluon.jit
    def _piece_load(x_ptr, rows, row_ok, stride_xm, K, START: gl.constexpr, WIDTH: gl.constexpr,
                    GELU: gl.constexpr, NW: gl.constexpr):
        """(activated fp32 values [BLOCK_M, WIDTH] of columns START.., their row absmax [BLOCK_M] in the
        row layout of `rows`) in the piece's own layout: ≤ 8 contiguous columns per thread (16-byte loads)."""
        layout: gl.constexpr = gl.BlockedLayout([1, max(1, min(8, WIDTH // (32 * NW)))], [1, 32], [1, NW], [1, 0])
        r = gl.convert_layout(rows, gl.SliceLayout(1, layout))
        ok = gl.convert_layout(row_ok, gl.SliceLayout(1, layout))
        cols = START + gl.arange(0, WIDTH, layout=gl.SliceLayout(0, layout))
        mask = ok[:, None] & (cols < K)[None, :]
        x = gl.load(x_ptr + r.to(gl.int64)[:, None] * stride_xm + cols[None, :], mask=mask, other=0.0)
        x = x.to(gl.float32)
        if GELU:
            x = _gelu_tanh(x)
        return x, gl.convert_layout(gl.max(gl.abs(x), axis=1), rows.type.layout)

    @gluon.jit
    def _piece_store(q_ptr, x, rows, row_ok, inv, stride_qm, K, START: gl.constexpr, WIDTH: gl.constexpr):
        """Codes of one piece: the low byte of x·inv + 1.5·2^23 (round to nearest even; |x·inv| ≤ 127)."""
        layout: gl.constexpr = x.type.layout
        r = gl.convert_layout(rows, gl.SliceLayout(1, layout))
        ok = gl.convert_layout(row_ok, gl.SliceLayout(1, layout))
        s = gl.convert_layout(inv, gl.SliceLayout(1, layout))
        cols = START + gl.arange(0, WIDTH, layout=gl.SliceLayout(0, layout))
        mask = ok[:, None] & (cols < K)[None, :]
        codes = (x * s[:, None] + 12582912.0).to(gl.int32, bitcast=True).to(gl.int8)
        gl.store(q_ptr + r.to(gl.int64)[:, None] * stride_qm + cols[None, :], codes, mask=mask)

    @gluon.jit
    def _quant_rows_kernel(x_ptr, q_ptr, s_ptr, M, K, stride_xm, stride_qm,
                           P0: gl.constexpr, P1: gl.constexpr, P2: gl.constexpr, P3: gl.constexpr,
                           BLOCK_M: gl.constexpr, GELU: gl.constexpr, NW: gl.constexpr):
        """BLOCK_M rows per program, held as pieces P0.. (0: none) in registers: absmax of each row (of its
        GELU with GELU), scale absmax / 127 -> s, codes -> q."""
        row_layout: gl.constexpr = gl.BlockedLayout([1], [32], [NW], [0])
        rows = gl.program_id(0) * BLOCK_M + gl.arange(0, BLOCK_M, layout=row_layout)
        row_ok = rows < M
        x0, amax = _piece_load(x_ptr, rows, row_ok, stride_xm, K, 0, P0, GELU, NW)
        if P1 > 0:
            x1, a1 = _piece_load(x_ptr, rows, row_ok, stride_xm, K, P0, P1, GELU, NW)
            amax = gl.maximum(amax, a1)
        if P2 > 0:
            x2, a2 = _piece_load(x_ptr, rows, row_ok, stride_xm, K, P0 + P1, P2, GELU, NW)
            amax = gl.maximum(amax, a2)
        if P3 > 0:
            x3, a3 = _piece_load(x_ptr, rows, row_ok, stride_xm, K, P0 + P1 + P2, P3, GELU, NW)
            amax = gl.maximum(amax, a3)
        inv = gl.where(amax > 0, 127.0 / gl.maximum(amax, 1e-30), 0.0)
        gl.store(s_ptr + rows, amax / 127.0, mask=row_ok)
        _piece_store(q_ptr, x0, rows, row_ok, inv, stride_qm, K, 0, P0)
        if P1 > 0:
            _piece_store(q_ptr, x1, rows, row_ok, inv, stride_qm, K, P0, P1)
        if P2 > 0:
            _piece_store(q_ptr, x2, rows, row_ok, inv, stride_qm, K, P0 + P1, P2)
        if P3 > 0:
            _piece_store(q_ptr, x3, rows, row_ok, inv, stride_qm, K, P0 + P1 + P2, P3)


def launch_meta(k: int, num_warps: int | None = None) -> dict[str, int]:
    """The kernel's constexprs for rows of K (also `kernels.compile_check`'s): NARROW_WARPS up to WIDE_K, else
    NUM_WARPS; another `num_warps` for measuring (a piece narrower than 32 lanes per warp is then held twice)."""
    num_warps = num_warps or (NARROW_WARPS if k <= WIDE_K else NUM_WARPS)
    p = pieces(k) + (0,) * (MAX_PIECES - len(pieces(k)))
    return {"P0": p[0], "P1": p[1], "P2": p[2], "P3": p[3], "BLOCK_M": rows_per_program(k), "NW": num_warps,
            "num_warps": num_warps}


def quantize_rows(x: torch.Tensor, q: torch.Tensor, s: torch.Tensor, gelu: bool, num_warps: int | None = None) -> None:
    """q [M, K] int8 and s [M] fp32 of x [M, K] (CUDA, last dim contiguous, `supported(K)`), in place."""
    m, k = x.shape
    meta = launch_meta(k, num_warps)
    _quant_rows_kernel[((m + meta["BLOCK_M"] - 1) // meta["BLOCK_M"],)](
        x, q, s, m, k, x.stride(0), q.stride(0), GELU=gelu, **meta)
