"""Fused RMSNorm (across all heads) + rotary embedding for Wan's query/key path.

Wan2.1 applies ``norm_q`` / ``norm_k`` = ``RMSNorm(dim)`` to the projected queries and keys *before*
splitting heads, so the root-mean-square is taken over all ``H*D`` channels of a token; the result is
then viewed as ``[B, L, H, D]`` and rotated by Wan's complex RoPE, which treats channel pairs
``(2i, 2i+1)`` of each head as one complex number and multiplies it by ``cos + i·sin`` of that
token's (t, h, w) angle. One kernel does both in one pass over the row:

    rms   = sqrt(mean_c(x[c]^2) + eps)                        # fp32, c over all H*D channels
    n     = x / rms * weight                                  # fp32
    out[2i]   = n[2i] * cos[l, i] - n[2i+1] * sin[l, i]
    out[2i+1] = n[2i] * sin[l, i] + n[2i+1] * cos[l, i]       # i = pair index within the head

Layouts:
    x       [B, L, H, D]  bf16 / fp16 / fp32, contiguous (a [B, L, H*D] projection viewed as heads)
    weight  [H*D]         any float dtype (the norm's gain)
    cos/sin [L, D//2]     float32, position l's angles (the model builds them from its 3-D freqs);
                          the same table serves every batch element and every head
    out     [B, L, H, D]  dtype of x

``rmsnorm(x [..., C], weight [C] | None)`` is the same kernel without the rotation.
Any L and C; D even. Real Wan shapes: C = 1536 (12×128) and 5120 (40×128).
Reference: Wan2.1 ``wan/modules/model.py`` (WanRMSNorm, rope_apply); TurboDiffusion fuses the same.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.row_configs import ROW_CONFIGS, num_sms, prune_row_configs, split_tail

__all__ = ["reference", "reference_rmsnorm", "rmsnorm_rope", "rmsnorm", "bench"]


# 1. reference ----------------------------------------------------------------------------------------
def reference(
    x: torch.Tensor,
    weight: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    eps: float = 1e-6,
    compute_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Plain-PyTorch definition of :func:`rmsnorm_rope`; returns ``compute_dtype`` (fp32 by default)."""
    B, L, H, D = x.shape
    xf = x.to(compute_dtype).reshape(B, L, H * D)
    n = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * weight.to(compute_dtype)
    n = n.reshape(B, L, H, D // 2, 2)  # [B, L, H, D/2, 2]
    c = cos.to(compute_dtype)[None, :, None, :]  # [1, L, 1, D/2]
    s = sin.to(compute_dtype)[None, :, None, :]
    even, odd = n[..., 0], n[..., 1]
    out = torch.stack((even * c - odd * s, even * s + odd * c), dim=-1)  # [B, L, H, D/2, 2]
    return out.reshape(B, L, H, D)


def reference_rmsnorm(
    x: torch.Tensor,
    weight: torch.Tensor | None = None,
    eps: float = 1e-6,
    compute_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Plain-PyTorch RMSNorm over the last dim (optional gain); returns ``compute_dtype``."""
    xf = x.to(compute_dtype)
    n = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return n * weight.to(compute_dtype) if weight is not None else n


# 2. kernel --------------------------------------------------------------------------------------------
@triton.jit
def _out_offsets(rows, cols, C, out_w, out_s, OUT_SPLIT: tl.constexpr):
    """Where element (row, col) of the output goes: row·C + col, or OUT_SPLIT (the output as column chunks
    [C / out_w, rows, out_w], out_s elements apart: Ulysses' send layout) chunk base + row·out_w + col in it."""
    if OUT_SPLIT:
        col_offs = (cols // out_w).to(tl.int64) * out_s + cols % out_w
        offs = rows.to(tl.int64)[:, None] * out_w + col_offs[None, :]
    else:
        offs = rows.to(tl.int64)[:, None] * C + cols[None, :]
    return offs  # one return: Triton 3.6 rejects returns from inside a constexpr branch


@triton.jit
def _rope_store(
    n,  # [BLOCK_L, WIDTH] fp32 normalized part of the rows
    rows,
    row_ok,
    cos_ptr,
    sin_ptr,
    out_ptr,
    L,
    C,
    out_w,
    out_s,
    COL0: tl.constexpr,  # first column of this part (even, so pairs never straddle parts)
    WIDTH: tl.constexpr,
    HALF_D: tl.constexpr,
    BLOCK_L: tl.constexpr,
    HAS_ROPE: tl.constexpr,
    OUT_SPLIT: tl.constexpr,
):
    """Rotate interleaved pairs (e, o) -> (e·cos − o·sin, e·sin + o·cos) of one part and store it."""
    cols = COL0 + tl.arange(0, WIDTH)  # [WIDTH]
    mask = row_ok[:, None] & (cols < C)[None, :]
    if HAS_ROPE:
        even, odd = tl.split(tl.reshape(n, (BLOCK_L, WIDTH // 2, 2)))  # [BLOCK_L, WIDTH/2] each
        pairs = COL0 // 2 + tl.arange(0, WIDTH // 2)  # pair index within the row
        pos = (rows % L).to(tl.int64)
        t_offs = pos[:, None] * HALF_D + (pairs % HALF_D)[None, :]  # [BLOCK_L, WIDTH/2]
        t_mask = row_ok[:, None] & (pairs < C // 2)[None, :]
        c = tl.load(cos_ptr + t_offs, mask=t_mask, other=0.0)
        s = tl.load(sin_ptr + t_offs, mask=t_mask, other=0.0)
        n = tl.reshape(tl.join(even * c - odd * s, even * s + odd * c), (BLOCK_L, WIDTH))
    tl.store(out_ptr + _out_offsets(rows, cols, C, out_w, out_s, OUT_SPLIT), n.to(out_ptr.dtype.element_ty),
             mask=mask)


@triton.jit
def _rmsnorm_rope_kernel(
    # pointers
    x_ptr,
    w_ptr,
    cos_ptr,
    sin_ptr,
    out_ptr,
    # sizes
    N,  # rows = B * L
    L,  # positions (row % L indexes cos/sin)
    C,  # channels per row = H * D
    eps,
    out_w,  # OUT_SPLIT: columns per output chunk
    out_s,  # OUT_SPLIT: elements from one output chunk to the next
    # meta
    HALF_D: tl.constexpr,
    BLOCK_C: tl.constexpr,  # next power of two >= C (the whole row lives in registers)
    BLOCK_TAIL: tl.constexpr,  # next power of two >= C - BLOCK_C/2 (the second part when SPLIT)
    SPLIT: tl.constexpr,  # row as two power-of-two parts [0, BLOCK_C/2) + [BLOCK_C/2, +BLOCK_TAIL); BLOCK_L = 1
    BLOCK_L: tl.constexpr,  # rows per tile
    PROGS_PER_SM: tl.constexpr,  # 0: one program per tile; k > 0: persistent grid of k programs per SM
    HAS_WEIGHT: tl.constexpr,
    HAS_ROPE: tl.constexpr,
    OUT_SPLIT: tl.constexpr = False,  # the output as column chunks (`_out_offsets`)
):
    tl.static_assert(PROGS_PER_SM > 0 or not SPLIT, "only the persistent form splits rows")
    if PROGS_PER_SM == 0:
        # A. one tile of BLOCK_L whole rows per program, straight-line: every load of the tile is
        #    issued up front (the fastest form for bf16 out on the H200, kernels/NOTES_norms.md)
        rows = tl.program_id(0) * BLOCK_L + tl.arange(0, BLOCK_L)  # [BLOCK_L]
        cols = tl.arange(0, BLOCK_C)  # [BLOCK_C]
        row_ok = rows < N
        mask = row_ok[:, None] & (cols[None, :] < C)
        offs = rows.to(tl.int64)[:, None] * C + cols[None, :]  # [BLOCK_L, BLOCK_C]
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        rstd = tl.rsqrt(tl.sum(x * x, axis=1) / C + eps)  # [BLOCK_L]
        n = x * rstd[:, None]
        if HAS_WEIGHT:
            w = tl.load(w_ptr + cols, mask=cols < C, other=0.0).to(tl.float32)
            n = n * w[None, :]
        if HAS_ROPE:
            even, odd = tl.split(tl.reshape(n, (BLOCK_L, BLOCK_C // 2, 2)))  # [BLOCK_L, BLOCK_C/2] each
            pairs = tl.arange(0, BLOCK_C // 2)
            pos = (rows % L).to(tl.int64)
            t_offs = pos[:, None] * HALF_D + (pairs % HALF_D)[None, :]  # [BLOCK_L, BLOCK_C/2]
            t_mask = row_ok[:, None] & (pairs[None, :] < C // 2)
            c = tl.load(cos_ptr + t_offs, mask=t_mask, other=0.0)
            s = tl.load(sin_ptr + t_offs, mask=t_mask, other=0.0)
            n = tl.reshape(tl.join(even * c - odd * s, even * s + odd * c), (BLOCK_L, BLOCK_C))
        tl.store(out_ptr + _out_offsets(rows, cols, C, out_w, out_s, OUT_SPLIT), n.to(out_ptr.dtype.element_ty),
                 mask=mask)
    else:
        # B. persistent: PROGS_PER_SM programs per SM stride over the tiles
        # 1. loop-invariant: column parts and the gain, loaded once per program. Unsplit, part a is the
        #    whole padded row; split (e.g. 5120 = 4096 + 1024), part a is always full and b is the tail.
        tl.static_assert(BLOCK_L == 1 or not SPLIT, "a split row is reduced as a scalar: one row per tile")
        HEAD: tl.constexpr = BLOCK_C // 2 if SPLIT else BLOCK_C
        cols_a = tl.arange(0, HEAD)  # [HEAD]
        cols_b = HEAD + tl.arange(0, BLOCK_TAIL)  # [BLOCK_TAIL] (SPLIT only)
        if HAS_WEIGHT:
            w_a = tl.load(w_ptr + cols_a, mask=cols_a < C, other=0.0).to(tl.float32)
            if SPLIT:
                w_b = tl.load(w_ptr + cols_b, mask=cols_b < C, other=0.0).to(tl.float32)

        # 2. tiles of BLOCK_L whole rows; a persistent program strides over them
        num_tiles = tl.cdiv(N, BLOCK_L)
        for tile in range(tl.program_id(0), num_tiles, tl.num_programs(0)):
            rows = tile * BLOCK_L + tl.arange(0, BLOCK_L)  # [BLOCK_L]
            row_ok = rows < N
            base = rows.to(tl.int64)[:, None] * C  # [BLOCK_L, 1]
            mask_a = row_ok[:, None] & (cols_a < C)[None, :]
            x_a = tl.load(x_ptr + base + cols_a[None, :], mask=mask_a, other=0.0).to(tl.float32)  # [BLOCK_L, HEAD]
            if SPLIT:
                # one row per tile: reduce each part to a scalar, so the two parts (laid out differently)
                # never meet in one tensor and the compiler moves nothing through shared memory
                mask_b = row_ok[:, None] & (cols_b < C)[None, :]
                x_b = tl.load(x_ptr + base + cols_b[None, :], mask=mask_b, other=0.0).to(tl.float32)  # [1, BLOCK_TAIL]
                sumsq = tl.sum(x_a * x_a) + tl.sum(x_b * x_b)  # scalar
                rstd = tl.rsqrt(sumsq / C + eps)
            else:
                rstd = tl.rsqrt(tl.sum(x_a * x_a, axis=1) / C + eps)[:, None]  # [BLOCK_L, 1]

            # 3. RMS over the full row (masked lanes are zero), times the gain; rotate and store each part
            n_a = x_a * rstd
            if HAS_WEIGHT:
                n_a = n_a * w_a[None, :]
            _rope_store(n_a, rows, row_ok, cos_ptr, sin_ptr, out_ptr, L, C, out_w, out_s, 0, HEAD, HALF_D, BLOCK_L,
                        HAS_ROPE, OUT_SPLIT)
            if SPLIT:
                n_b = x_b * rstd
                if HAS_WEIGHT:
                    n_b = n_b * w_b[None, :]
                _rope_store(n_b, rows, row_ok, cos_ptr, sin_ptr, out_ptr, L, C, out_w, out_s, HEAD, BLOCK_TAIL, HALF_D,
                            BLOCK_L, HAS_ROPE, OUT_SPLIT)


# 3. autotune configs ----------------------------------------------------------------------------------
# Candidates: the straight-line form with few warps (fastest for bf16 out on the H200) plus persistent /
# split forms; why, with the measurements: kernels/NOTES_norms.md. num_stages stays 1 (Triton does not
# make these loads asynchronous copies).
_rmsnorm_rope = triton.autotune(
    configs=ROW_CONFIGS,
    key=["C", "HALF_D", "HAS_WEIGHT", "HAS_ROPE"],
    prune_configs_by={"early_config_prune": prune_row_configs},
)(_rmsnorm_rope_kernel)


def _grid(N: int, device: torch.device):
    sms = num_sms(device)

    def grid(meta: dict) -> tuple[int]:
        tiles = triton.cdiv(N, meta["BLOCK_L"])
        return (min(tiles, sms * meta["PROGS_PER_SM"]) if meta["PROGS_PER_SM"] else tiles,)

    return grid


def _launch(
    x2: torch.Tensor,
    weight: torch.Tensor | None,
    cos: torch.Tensor | None,
    sin: torch.Tensor | None,
    L: int,
    half_d: int,
    eps: float,
    config: dict | None = None,
    out_chunks: int = 1,
) -> torch.Tensor:
    """Launch on x2 [N, C] -> [N, C], or out_chunks > 1: [out_chunks, N, C / out_chunks] (column chunk j of
    the output in out[j]); ``config`` (BLOCK_L, SPLIT, PROGS_PER_SM, num_warps, num_stages) bypasses the
    autotuner (tests and the bench use it to run one specific variant)."""
    N, C = x2.shape
    out = x2.new_empty(out_chunks, N, C // out_chunks) if out_chunks > 1 else torch.empty_like(x2)
    if N == 0:
        return out
    dummy = x2  # never read when the matching constexpr flag is off
    kernel = _rmsnorm_rope if config is None else _rmsnorm_rope_kernel
    kernel[_grid(N, x2.device)](
        x2,
        weight if weight is not None else dummy,
        cos if cos is not None else dummy,
        sin if sin is not None else dummy,
        out,
        N,
        L,
        C,
        eps,
        C // out_chunks,
        N * (C // out_chunks),
        HALF_D=half_d,
        BLOCK_C=triton.next_power_of_2(C),
        BLOCK_TAIL=split_tail(C),
        HAS_WEIGHT=weight is not None,
        HAS_ROPE=cos is not None,
        OUT_SPLIT=out_chunks > 1,
        **(config or {}),
    )
    return out


# 4. public wrappers (torch.library ops with fake impls) ----------------------------------------------
_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


@torch.library.custom_op("turbovid::rmsnorm_rope", mutates_args=())
def rmsnorm_rope(
    x: torch.Tensor, weight: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, eps: float = 1e-6,
    chunks: int = 1,
) -> torch.Tensor:
    """RMSNorm over all ``H*D`` channels of each token, then Wan's interleaved-pair RoPE.

    x [B, L, H, D] (bf16/fp16/fp32), weight [H*D], cos/sin [L, D//2] float32 -> [B, L, H, D] x.dtype.
    chunks > 1 (dividing H): the output split by heads instead, [chunks, B, L, H/chunks, D] (out[j]: heads
    j·H/chunks ...), written in place by the kernel: Ulysses' send layout, no packing copy.
    """
    if x.dim() != 4:
        raise ValueError(f"x must be [B, L, H, D], got {tuple(x.shape)}")
    B, L, H, D = x.shape
    if x.dtype not in _DTYPES:
        raise TypeError(f"unsupported dtype {x.dtype}")
    if D % 2:
        raise ValueError(f"head dim must be even, got {D}")
    if weight.shape != (H * D,):
        raise ValueError(f"weight must be [{H * D}], got {tuple(weight.shape)}")
    if cos.shape != (L, D // 2) or sin.shape != (L, D // 2):
        raise ValueError(f"cos/sin must be [{L}, {D // 2}], got {tuple(cos.shape)} / {tuple(sin.shape)}")
    if cos.dtype != torch.float32 or sin.dtype != torch.float32:
        raise TypeError("cos/sin must be float32")
    if chunks < 1 or H % chunks:
        raise ValueError(f"chunks must divide the heads ({H}), got {chunks}")
    out = _launch(
        x.contiguous().view(B * L, H * D),
        weight.contiguous(),
        cos.contiguous(),
        sin.contiguous(),
        L,
        D // 2,
        eps,
        out_chunks=chunks,
    )
    return out.view(B, L, H, D) if chunks == 1 else out.view(chunks, B, L, H // chunks, D)


@rmsnorm_rope.register_fake
def _(x, weight, cos, sin, eps=1e-6, chunks=1):
    if chunks == 1:
        return torch.empty_like(x, memory_format=torch.contiguous_format)
    B, L, H, D = x.shape
    return x.new_empty(chunks, B, L, H // chunks, D)


@torch.library.custom_op("turbovid::rmsnorm", mutates_args=())
def rmsnorm(x: torch.Tensor, weight: torch.Tensor | None = None, eps: float = 1e-6) -> torch.Tensor:
    """RMSNorm over the last dim: x [..., C] (bf16/fp16/fp32), optional weight [C] -> [..., C] x.dtype."""
    if x.dtype not in _DTYPES:
        raise TypeError(f"unsupported dtype {x.dtype}")
    C = x.shape[-1]
    if weight is not None and weight.shape != (C,):
        raise ValueError(f"weight must be [{C}], got {tuple(weight.shape)}")
    x2 = x.contiguous().view(-1, C)
    out = _launch(x2, weight.contiguous() if weight is not None else None, None, None, 1, 1, eps)
    return out.view(x.shape)


@rmsnorm.register_fake
def _(x, weight=None, eps=1e-6):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


# 5. bench ---------------------------------------------------------------------------------------------
def bench(copy_gbps: float | None = None, L: int = 32760, dims: tuple[int, ...] = (1536, 5120)) -> list[dict]:
    """Time the fused kernel vs eager PyTorch at Wan shapes (B=1, D=128, bf16); print and return rows.

    GB/s counts each tensor once (x read, out written, cos/sin tables read, weight read).
    ``copy_gbps`` is a device-to-device copy's bandwidth measured in the same process (read + write).
    """
    from triton.testing import do_bench

    rows = []
    for C in dims:
        D = 128
        H = C // D
        x = torch.randn(1, L, H, D, device="cuda", dtype=torch.bfloat16)
        w = torch.rand(C, device="cuda", dtype=torch.bfloat16) + 0.5
        ang = torch.rand(L, D // 2, device="cuda") * 6.28
        cos, sin = ang.cos(), ang.sin()
        out = rmsnorm_rope(x, w, cos, sin)
        ref = reference(x, w, cos, sin)
        rel = ((out.float() - ref).norm() / ref.norm()).item()
        eager = lambda: reference(x, w, cos, sin).to(x.dtype)  # noqa: B023
        t_k = do_bench(lambda: rmsnorm_rope(x, w, cos, sin), warmup=25, rep=200, return_mode="median")  # noqa: B023
        t_e = do_bench(eager, warmup=25, rep=200, return_mode="median")
        nbytes = 2 * x.numel() * x.element_size() + 2 * cos.numel() * 4 + w.numel() * w.element_size()
        gbps = nbytes / t_k / 1e6
        row = {
            "kernel": "rmsnorm_rope",
            "C": C,
            "L": L,
            "ms": t_k,
            "eager_ms": t_e,
            "GB/s": gbps,
            "pct_copy": 100 * gbps / copy_gbps if copy_gbps else float("nan"),
            "speedup": t_e / t_k,
            "rel_err": rel,
            "config": str(_rmsnorm_rope.best_config),
        }
        rows.append(row)
        print(
            f"rmsnorm_rope C={C:5d} L={L}: {t_k * 1e3:8.1f} us {gbps:7.0f} GB/s "
            f"{row['pct_copy']:5.1f}% of copy | eager {t_e * 1e3:8.1f} us x{row['speedup']:.2f} "
            f"| rel err {rel:.1e} | {row['config']}"
        )
    return rows


if __name__ == "__main__":
    bench()
