"""Int8 quantization for W8A8 linears: checkpoint weight blocks, per-channel requant, per-token activations.

Weights (checkpoint semantics, TurboDiffusion `-quant.pth`): a Linear weight `w` [N, K] is stored as
`int8_weight` [N, K] int8 plus `scale` [ceil(N/128), ceil(K/128)] float32 with

    w[n, k] ≈ int8_weight[n, k] * scale[n // 128, k // 128]

symmetric, scale = absmax(block) / 127, values clamped to [-127, 127] (never -128, so negation is
exact). `quantize_weight_blockwise` writes that format; `dequantize_weight_blockwise` reads it.

The fast GEMM (kernels/w8a8.py) applies scales only in its epilogue, so the 128×128 block scales are
converted once at load time by `requantize_per_channel` into one scale per output channel
(`int8 [N, K]`, `scale [N]`). Per row it keeps the better (lower squared error against the checkpoint's
dequantized row) of two candidate scales: the row's absmax / 127, and the largest block scale in the row
(the latter is exact when all of a row's block scales are equal). The extra rounding error this adds is
measured in kernels/NOTES_w8a8.md.

Activations: `quantize_activation(x [M, K] bf16/fp16/fp32) -> (q int8 [M, K], scale fp32 [M])`, one
scale per token (row), q = round_half_away(x * 127 / absmax(row)). A Triton kernel on CUDA tensors and
under TRITON_INTERPRET=1; `reference_quantize_activation` is the fp32 definition. With `gelu=True` the
kernel quantizes GELU(x) (tanh approximation, in fp32) instead: Wan's FFN activation applied in the same
pass that quantizes the FFN-down input, so the GELU's own read and write of [M, ffn_dim] go away.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK = 128
QMAX = 127.0


def _round_half_away(v: torch.Tensor) -> torch.Tensor:
    """Round to nearest, ties away from zero (what `(v ± 0.5).to(int)` does in the kernel)."""
    return torch.trunc(v + 0.5 * torch.sign(v))


# ----------------------------------------------------------------------------------------------
# Weights (load-time, plain PyTorch)
# ----------------------------------------------------------------------------------------------


def _blocked_absmax(w: torch.Tensor, block: int) -> torch.Tensor:
    """absmax over each block×block tile of w [N, K] -> [ceil(N/block), ceil(K/block)] fp32."""
    n, k = w.shape
    nb, kb = triton.cdiv(n, block), triton.cdiv(k, block)
    padded = torch.zeros(nb * block, kb * block, dtype=torch.float32, device=w.device)
    padded[:n, :k] = w.float().abs()
    return padded.view(nb, block, kb, block).amax(dim=(1, 3))


def _expand_blocks(scale: torch.Tensor, n: int, k: int, block: int) -> torch.Tensor:
    """[nb, kb] block scales -> [n, k] per-element scales."""
    return scale.repeat_interleave(block, 0)[:n].repeat_interleave(block, 1)[:, :k]


def quantize_weight_blockwise(w: torch.Tensor, block: int = BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 quantization of w [N, K] with one fp32 scale per block×block tile.

    Returns (int8_weight [N, K] int8, scale [ceil(N/block), ceil(K/block)] fp32); an all-zero block gets
    scale 0 and zeros.
    """
    if w.dim() != 2:
        raise ValueError(f"weight must be 2-D [N, K], got {tuple(w.shape)}")
    n, k = w.shape
    scale = _blocked_absmax(w, block) / QMAX
    full = _expand_blocks(scale, n, k, block)
    inv = torch.where(full > 0, 1.0 / full, torch.zeros_like(full))
    q = _round_half_away(w.float() * inv).clamp_(-QMAX, QMAX).to(torch.int8)
    return q, scale


def dequantize_weight_blockwise(
    int8_weight: torch.Tensor, scale: torch.Tensor, block: int = BLOCK, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """int8_weight [N, K] * scale [ceil(N/block), ceil(K/block)] -> w [N, K] in `dtype`."""
    n, k = int8_weight.shape
    if scale.shape != (triton.cdiv(n, block), triton.cdiv(k, block)):
        raise ValueError(f"scale shape {tuple(scale.shape)} does not fit weight {(n, k)} with block {block}")
    return (int8_weight.float() * _expand_blocks(scale.float(), n, k, block)).to(dtype)


def requantize_per_channel(
    int8_weight: torch.Tensor, scale: torch.Tensor, block: int = BLOCK
) -> tuple[torch.Tensor, torch.Tensor]:
    """Block-scaled checkpoint weight -> (int8 [N, K], scale [N] fp32), w ≈ q * scale[:, None].

    Per row picks the lower-error of two scales: absmax(row)/127, or the row's largest block scale.
    """
    n, k = int8_weight.shape
    w = dequantize_weight_blockwise(int8_weight, scale, block)  # [N, K] fp32
    candidates = (
        w.abs().amax(dim=1) / QMAX,  # [N] finest grid that fits the row
        scale.float().amax(dim=1).repeat_interleave(block)[:n],  # [N] exact when a row's blocks agree
    )
    best_q = best_s = best_err = None
    for s in candidates:
        inv = torch.where(s > 0, 1.0 / s, torch.zeros_like(s))
        q = _round_half_away(w * inv[:, None]).clamp_(-QMAX, QMAX)
        err = (q * s[:, None] - w).square().sum(dim=1)  # [N]
        if best_err is None:
            best_q, best_s, best_err = q, s, err
        else:
            pick = err < best_err
            best_q = torch.where(pick[:, None], q, best_q)
            best_s = torch.where(pick, s, best_s)
            best_err = torch.where(pick, err, best_err)
    assert best_q is not None and best_s is not None
    return best_q.to(torch.int8).contiguous(), best_s.contiguous()


# ----------------------------------------------------------------------------------------------
# Activations: reference, kernel, wrapper
# ----------------------------------------------------------------------------------------------


def reference_quantize_activation(x: torch.Tensor, gelu: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token int8: x [M, K] -> (q [M, K] int8, scale [M] fp32), fp32 math, x ≈ q * scale[:, None]
    (gelu: GELU(x) with the tanh approximation, computed in fp32, is quantized instead)."""
    xf = x.float()
    if gelu:
        xf = torch.nn.functional.gelu(xf, approximate="tanh")
    amax = xf.abs().amax(dim=1)  # [M]
    inv = torch.where(amax > 0, QMAX / amax, torch.zeros_like(amax))
    q = _round_half_away(xf * inv[:, None]).clamp_(-QMAX, QMAX).to(torch.int8)
    return q, amax / QMAX


@triton.jit
def _gelu_tanh(x, FAST_TANH: tl.constexpr):
    """GELU, tanh approximation: 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))).

    FAST_TANH (CUDA): the tanh is the GPU's one-instruction `tanh.approx.f32` (relative error ~2^-11, far
    below the int8 step that follows); the pass was compute-bound on the sigmoid's exp and divide (653 µs
    against 300 µs without GELU at 1.3B, scripts/quant_warps.py). Otherwise (the interpreter) the same
    function as x·sigmoid(2u), the sigmoid's argument clamped to ±60 (no exp overflow)."""
    u = 0.7978845608028654 * (x + 0.044715 * x * x * x)
    if FAST_TANH:
        t = tl.inline_asm_elementwise("tanh.approx.f32 $0, $1;", "=f,f", [u], dtype=tl.float32, is_pure=True,
                                      pack=1)
        return 0.5 * x * (1.0 + t)
    return x * tl.sigmoid(tl.minimum(tl.maximum(2.0 * u, -60.0), 60.0))


@triton.jit
def _col_offsets(cols, chunk_w, chunk_g, chunk_n, chunk_s, CHUNKED: tl.constexpr):
    """Element offsets of columns `cols` within a row: `cols` itself, or CHUNKED (x stored as column chunks
    buf[g, j, m, :chunk_w], column chunk q = j·chunk_g + g of the logical row): chunk base + column in chunk."""
    if CHUNKED:
        q = cols // chunk_w
        offs = ((q % chunk_g) * chunk_n + q // chunk_g).to(tl.int64) * chunk_s + cols % chunk_w
    else:
        offs = cols.to(tl.int64)
    return offs  # one return of one type: Triton 3.6 rejects a constexpr branch returning another


@triton.jit
def _load_act(x_ptr, rows, cols, stride_xm, mask, chunk_w, chunk_g, chunk_n, chunk_s, GELU: tl.constexpr,
              FAST_TANH: tl.constexpr, CHUNKED: tl.constexpr):
    """x[rows, cols] as fp32 (masked entries 0; CHUNKED: x as column chunks, `_col_offsets`), or GELU of it
    (GELU(0) = 0: masked entries stay 0)."""
    col_offs = _col_offsets(cols, chunk_w, chunk_g, chunk_n, chunk_s, CHUNKED)
    xf = tl.load(x_ptr + rows.to(tl.int64)[:, None] * stride_xm + col_offs[None, :], mask=mask,
                 other=0.0).to(tl.float32)
    if GELU:
        xf = _gelu_tanh(xf, FAST_TANH)
    return xf


@triton.jit
def _store_codes(q_ptr, rows, cols, stride_qm, mask, xf, inv):
    """round(xf · inv) (ties away from zero), clamped to ±127, as int8 at q[rows, cols]."""
    v = xf * inv[:, None]
    v = tl.where(v >= 0, v + 0.5, v - 0.5)  # the int cast truncates: ties away from zero
    v = tl.minimum(tl.maximum(v, -127.0), 127.0)
    tl.store(q_ptr + rows[:, None] * stride_qm + cols[None, :], v.to(tl.int8), mask=mask)


@triton.jit
def _quantize_rows_kernel(
    # pointers
    x_ptr,
    q_ptr,
    s_ptr,
    inv_ptr,
    # sizes
    M,
    K,
    stride_xm,
    stride_qm,
    chunk_w,  # CHUNKED: x as column chunks (`quantize_activation_chunked`)
    chunk_g,
    chunk_n,
    chunk_s,
    # meta
    BLOCK_M: tl.constexpr,
    BLOCK_K: tl.constexpr,
    WRITE_Q: tl.constexpr,
    ONE_PASS: tl.constexpr,
    GELU: tl.constexpr,  # quantize GELU(x) (fp32, tanh approximation)
    FAST_TANH: tl.constexpr = False,  # the GELU's tanh as one `tanh.approx.f32` (CUDA only)
    CHUNKED: tl.constexpr = False,  # x stored as column chunks (chunk_*); stride_xm is the chunk's row stride
    BLOCK_K1: tl.constexpr = 0,  # ONE_PASS: a second piece of the row, columns BLOCK_K .. BLOCK_K + BLOCK_K1
    BLOCK_K2: tl.constexpr = 0,  # and a third after it (0: none; see `row_pieces`)
):
    """Each program owns BLOCK_M rows: find each row's absmax, then scale, round and store.

    ONE_PASS (BLOCK_K + BLOCK_K1 + BLOCK_K2 >= K): the rows stay in registers, x is read once, as up to
    three power-of-two pieces (8960 = 8192 + 512 + 256 lanes instead of 16384, nearly half of them
    masked: the GELU pass is compute-bound, so masked lanes cost time). Otherwise pass 1 loops over K
    for the absmax and pass 2 reads x again. With WRITE_Q False only the absmax is computed and
    127/absmax goes to inv_ptr (for GEMMs that quantize in-tile).
    """
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)  # [BLOCK_M]
    row_ok = rows < M
    if ONE_PASS:
        cols = tl.arange(0, BLOCK_K)
        mask = row_ok[:, None] & (cols[None, :] < K)
        xf = _load_act(x_ptr, rows, cols, stride_xm, mask, chunk_w, chunk_g, chunk_n, chunk_s, GELU, FAST_TANH,
                       CHUNKED)
        amax = tl.max(tl.abs(xf), axis=1)  # [BLOCK_M]
        if BLOCK_K1 > 0:
            cols1 = BLOCK_K + tl.arange(0, BLOCK_K1)
            mask1 = row_ok[:, None] & (cols1[None, :] < K)
            xf1 = _load_act(x_ptr, rows, cols1, stride_xm, mask1, chunk_w, chunk_g, chunk_n, chunk_s, GELU,
                            FAST_TANH, CHUNKED)
            amax = tl.maximum(amax, tl.max(tl.abs(xf1), axis=1))
        if BLOCK_K2 > 0:
            cols2 = BLOCK_K + BLOCK_K1 + tl.arange(0, BLOCK_K2)
            mask2 = row_ok[:, None] & (cols2[None, :] < K)
            xf2 = _load_act(x_ptr, rows, cols2, stride_xm, mask2, chunk_w, chunk_g, chunk_n, chunk_s, GELU,
                            FAST_TANH, CHUNKED)
            amax = tl.maximum(amax, tl.max(tl.abs(xf2), axis=1))
    else:
        amax = tl.zeros([BLOCK_M], dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            cols = k0 + tl.arange(0, BLOCK_K)
            mask = row_ok[:, None] & (cols[None, :] < K)
            xf = _load_act(x_ptr, rows, cols, stride_xm, mask, chunk_w, chunk_g, chunk_n, chunk_s, GELU, FAST_TANH,
                       CHUNKED)
            amax = tl.maximum(amax, tl.max(tl.abs(xf), axis=1))
    inv = tl.where(amax > 0, 127.0 / tl.maximum(amax, 1e-30), 0.0)  # [BLOCK_M]
    tl.store(s_ptr + rows, amax / 127.0, mask=row_ok)
    if not WRITE_Q:
        tl.store(inv_ptr + rows, inv, mask=row_ok)
    elif ONE_PASS:
        _store_codes(q_ptr, rows, cols, stride_qm, mask, xf, inv)
        if BLOCK_K1 > 0:
            _store_codes(q_ptr, rows, cols1, stride_qm, mask1, xf1, inv)
        if BLOCK_K2 > 0:
            _store_codes(q_ptr, rows, cols2, stride_qm, mask2, xf2, inv)
    else:
        for k0 in range(0, K, BLOCK_K):
            cols = k0 + tl.arange(0, BLOCK_K)
            mask = row_ok[:, None] & (cols[None, :] < K)
            xf = _load_act(x_ptr, rows, cols, stride_xm, mask, chunk_w, chunk_g, chunk_n, chunk_s, GELU, FAST_TANH,
                       CHUNKED)
            _store_codes(q_ptr, rows, cols, stride_qm, mask, xf, inv)


def row_pieces(k: int) -> tuple[int, int, int]:
    """K as up to three power-of-two lane blocks (the last one padded), fewest padded lanes first:
    8960 -> (8192, 512, 256), 13824 -> (8192, 4096, 2048), 1536 -> (1024, 512, 0), 4096 -> (4096, 0, 0)."""
    p0 = 1 << (k.bit_length() - 1)  # the largest power of two <= k
    rest = k - p0
    p1 = 1 << (rest.bit_length() - 1) if rest else 0
    rest -= p1
    p2 = triton.next_power_of_2(rest) if rest else 0
    return p0, p1, p2


def _quant_blocks(k: int, on_cpu: bool) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_K, num_warps): on GPU whole rows up to K=16384 in registers (one read of x)."""
    if on_cpu:  # the Triton interpreter: small blocks keep it quick
        return 4, 32, 4
    bk = triton.next_power_of_2(k)
    if bk <= 16384:
        return max(1, 8192 // bk), bk, 8 if bk >= 4096 else 4
    return 8, 2048, 8


def quantize_activation(
    x: torch.Tensor, block_m: int | None = None, block_k: int | None = None, *, gelu: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token int8 quantization of x [M, K] (last dim contiguous) -> (q [M, K] int8, scale [M] fp32);
    gelu: of GELU(x) (tanh approximation), in the same pass."""
    if x.dim() != 2 or x.stride(1) != 1:
        raise ValueError(f"x must be 2-D with a contiguous last dim, got shape {tuple(x.shape)}")
    m, k = x.shape
    return _quantize(x, m, k, x.stride(0), None, block_m, block_k, gelu)


def quantize_activation_chunked(buf: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`quantize_activation` of x [M, K] stored as column chunks: buf [G, N, M, W] (contiguous), K = N·G·W,
    x[m, (j·G + g)·W + w] = buf[g, j, m, w]. The Ulysses way back leaves the attention output this way
    (buf[g, j]: rank j's heads of head group g, models/parallel.py): the gather happens in the
    quantization pass's loads, and no copy of x is made."""
    if buf.dim() != 4 or not buf.is_contiguous():
        raise ValueError(f"buf must be a contiguous [G, N, M, W], got {tuple(buf.shape)}")
    g, n, m, w = buf.shape
    return _quantize(buf, m, n * g * w, w, (w, g, n, m * w), None, None, False)


def _quantize(x: torch.Tensor, m: int, k: int, stride_xm: int, chunks: tuple[int, int, int, int] | None,
              block_m: int | None, block_k: int | None, gelu: bool,
              pieces: bool | None = None, gluon: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the quant kernel over x's M rows of K; chunks (chunk_w, chunk_g, chunk_n, chunk_s): x held as
    column chunks (`quantize_activation_chunked`), None: plain rows stride_xm apart. pieces: a whole row
    in registers as `row_pieces` (None: where the row is held whole and no block_k is given) instead of
    one next-power-of-two block. gluon: plain rows with default blocks go to the Gluon kernel where
    `_gluon_runs` says so (False: this module's kernel)."""
    q = torch.empty((m, k), dtype=torch.int8, device=x.device)
    s = torch.empty((m,), dtype=torch.float32, device=x.device)
    if m == 0:
        return q, s
    on_cpu = x.device.type == "cpu"
    if gluon and chunks is None and block_m is None and block_k is None and pieces is None and _gluon_runs(x, gelu):
        from kernels import int8_quant_gluon

        int8_quant_gluon.quantize_rows(x.as_strided((m, k), (stride_xm, 1)), q, s, gelu)
        return q, s
    meta = launch_meta(k, on_cpu, block_m, block_k, pieces)
    _quantize_rows_kernel[(triton.cdiv(m, meta["BLOCK_M"]),)](
        x,
        q,
        s,
        s,
        m,
        k,
        stride_xm,
        q.stride(0),
        *(chunks or (1, 1, 1, 0)),  # unread unless CHUNKED
        WRITE_Q=True,
        GELU=gelu,
        FAST_TANH=not on_cpu,
        CHUNKED=chunks is not None,
        **meta,
    )
    return q, s


# Which kernel quantizes activation rows on Hopper (sm90): "auto" (default) / "gluon" the Gluon kernel
# (kernels/int8_quant_gluon.py: the GELU once per element, no F2I) where it holds the row and its first-call check
# passed (`_check_gluon`); "triton" this module's kernel always. The worker setting `quant_kernel` sets it.
KERNEL_ENV = "TURBOVID_WORKER__QUANT_KERNEL"
KERNEL_CHOICES = ("auto", "gluon", "triton")
# (device index, GELU, row length) -> `_check_gluon`'s answer for that specialization, once per process
_GLUON_CHECKED: dict[tuple[int, bool, int], bool] = {}


def _gluon_runs(x: torch.Tensor, gelu: bool) -> bool:
    """Whether these rows go to the Gluon kernel: sm90, asked for (not "triton"), a row length it holds, and
    (once per device, GELU and row length, outside a CUDA graph capture) `_check_gluon` on this call's rows."""
    import os

    if x.device.type != "cuda" or os.environ.get("TRITON_INTERPRET", "0") == "1":
        return False
    from kernels import checked_once, env_choice, int8_quant_gluon

    k = x.shape[-1]
    if env_choice(KERNEL_ENV, KERNEL_CHOICES, "auto") == "triton" or not int8_quant_gluon.supported(k, gelu):
        return False
    from kernels.w8a8 import _device_index

    return checked_once(_GLUON_CHECKED, (_device_index(x.device), gelu, k), lambda: _check_gluon(x, gelu))


def kernel_in_use(device_index: int) -> str:
    """Which kernel this process's activation quantization on the device took once it ran: "gluon" (every row length
    checked passed), "mixed" (some fell back to the Triton kernel: the log says why), or "triton"."""
    from kernels import checked_kernel

    return checked_kernel(_GLUON_CHECKED, device_index)


CHECK_ROWS = 4096  # at most this many of the first call's rows are checked (the 14B's are 2 GB)


def _check_gluon(x: torch.Tensor, gelu: bool) -> bool:
    """A Hopper GPU, Triton's Gluon API, and on the first call's own rows (its first CHECK_ROWS or CHECK_ROWS - 1,
    so the row count keeps its divisibility by 16 and both kernels run the specializations the call will): the
    Gluon kernel's scales within 1e-5 of the Triton kernel's and its codes within one of them, at most 1 %
    differing (the two round ties differently and compute the GELU in another order); otherwise the Triton
    kernel, with the reason logged."""
    import logging

    from kernels import int8_quant_gluon

    log = logging.getLogger(__name__)
    if torch.cuda.get_device_capability(x.device) != (9, 0) or not int8_quant_gluon.available():
        return False
    m, k = x.shape
    if m > CHECK_ROWS:
        m = CHECK_ROWS if m % 16 == 0 else CHECK_ROWS - 1
        x = x[:m]
    try:
        q, s = torch.empty((m, k), dtype=torch.int8, device=x.device), torch.empty(m, device=x.device)
        int8_quant_gluon.quantize_rows(x, q, s, gelu)
        q_t, s_t = _quantize(x, m, k, x.stride(0), None, None, None, gelu, gluon=False)
        diff = (q.to(torch.int16) - q_t.to(torch.int16)).abs()
        scales_ok = bool(torch.allclose(s, s_t, rtol=1e-5, atol=0))
        if scales_ok and int(diff.max()) <= 1 and float((diff > 0).float().mean()) <= 0.01:
            return True
        log.warning("the Gluon int8 quantization (GELU %s, rows of %d) differs from the Triton kernel's on this Triton "
                    "%s (scales %s, codes up to %d apart): using the Triton kernel", gelu, k, triton.__version__,
                    "equal" if scales_ok else "differ", int(diff.max()))
    except Exception as exc:  # noqa: BLE001 - any failure means: the Triton kernel
        log.warning("the Gluon int8 quantization does not run on this Triton %s (%s): using the Triton kernel",
                    triton.__version__, f"{type(exc).__name__}: {str(exc)[:200]}")
    return False


def launch_meta(k: int, on_cpu: bool, block_m: int | None = None, block_k: int | None = None,
                pieces: bool | None = None) -> dict[str, int | bool]:
    """The quant kernel's blocks for rows of K (also `kernels.compile_check`'s): BLOCK_M, BLOCK_K (+
    BLOCK_K1/2 when the whole row is held as `row_pieces`), ONE_PASS, and num_warps on the GPU. pieces
    None: where the row is held whole, no block_k is forced and the pieces save at least a quarter of the
    lanes. Measured on the H200 (scripts/quant_warps.py --pieces, session 22), one block -> pieces:
    GELU pass 443 -> 378 us at 32760 x 8960 (1.3B FFN-down), 522 -> 471 at 75600 x 5120, 65 -> 60 at
    32760 x 1536; plain 368 -> 347 at 75600 x 5120, 50 -> 51 at 32760 x 1536. At 75600 x 13824 (14B
    FFN-down, 8192 + 4096 + 2048 lanes: 12.5 % fewer) it lost, 1055 -> 1156 us with the GELU."""
    bm, bk, warps = _quant_blocks(k, on_cpu)
    if pieces is None:
        pieces = block_k is None and bk >= k and 4 * sum(row_pieces(k)) <= 3 * bk
    bm, bk = block_m or bm, block_k or bk
    bk1 = bk2 = 0
    if pieces:
        bk, bk1, bk2 = row_pieces(k)
    meta: dict[str, int | bool] = {"BLOCK_M": bm, "BLOCK_K": bk, "BLOCK_K1": bk1, "BLOCK_K2": bk2,
                                   "ONE_PASS": bk + bk1 + bk2 >= k}
    if not on_cpu:
        meta["num_warps"] = warps
    return meta


def activation_scales(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token scale and its inverse for x [M, K]: (absmax/127 [M] fp32, 127/absmax [M] fp32), one read of x.

    For the fused-quantization GEMM variant, which rounds x * inv tile by tile itself.
    """
    if x.dim() != 2 or x.stride(1) != 1:
        raise ValueError(f"x must be 2-D with a contiguous last dim, got shape {tuple(x.shape)}")
    m, k = x.shape
    s = torch.empty((m,), dtype=torch.float32, device=x.device)
    inv = torch.empty((m,), dtype=torch.float32, device=x.device)
    meta = launch_meta(k, x.device.type == "cpu", pieces=False)
    _quantize_rows_kernel[(triton.cdiv(m, meta["BLOCK_M"]),)](
        x,
        x,
        s,
        inv,
        m,
        k,
        x.stride(0),
        0,
        1,
        1,
        1,
        0,
        WRITE_Q=False,
        GELU=False,
        **meta,
    )
    return s, inv
