"""Fused LayerNorm (no affine) + AdaLN modulation, optionally emitting int8 for a W8A8 linear.

Wan's blocks feed attention and FFN with ``norm(x) * (1 + scale) + shift`` where ``norm`` is a
LayerNorm without learned affine (``elementwise_affine=False``) and ``shift``/``scale`` come from the
timestep modulation (one vector per batch element). One pass over each token row:

    mean = mean_c(x),  var = mean_c((x - mean)^2)                  # fp32 statistics
    y    = (x - mean) * rsqrt(var + eps) * (1 + scale[b]) + shift[b]

With ``out_int8=True`` the row is quantized in the same pass for a following W8A8 linear, with the
per-token layout of kernels/int8_quant.py (``quantize_activation``):

    s[b, l] = absmax_c(y) / 127,   q = round_half_away(y * 127 / absmax_c(y)), clamped to [-127, 127]

(q = 0 and s = 0 for an all-zero row), so ``y ≈ q * s[..., None]``.

Layouts:
    x            [B, L, C]  bf16 / fp16 / fp32, contiguous
    shift, scale [B, C]     any float dtype (Wan keeps them fp32); last dim contiguous, any batch stride
                            (so chunks of Wan's [B, 6, C] modulation are used without a copy)
    out          [B, L, C]  dtype of x (or ``out_dtype``: Wan's fp32 residual stream in, bf16 for the
                            next Linear out), or (q int8 [B, L, C], s float32 [B, L])
Any L and C. Real Wan shapes: C = 1536 and 5120, L = 32760 (480p 81 frames).
Reference: Wan2.1 ``wan/modules/model.py`` (WanAttentionBlock.forward).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import triton
import triton.language as tl

from kernels.row_configs import ROW_CONFIGS, num_sms, prune_row_configs, split_tail

__all__ = ["reference", "reference_int8", "layernorm_modulate", "residual_layernorm_modulate", "bench"]


# 1. reference ----------------------------------------------------------------------------------------
def reference(
    x: torch.Tensor,
    shift: torch.Tensor,
    scale: torch.Tensor,
    eps: float = 1e-6,
    compute_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Plain-PyTorch definition of :func:`layernorm_modulate`; returns ``compute_dtype``."""
    xf = x.to(compute_dtype)
    mean = xf.mean(-1, keepdim=True)
    var = (xf - mean).pow(2).mean(-1, keepdim=True)
    n = (xf - mean) * torch.rsqrt(var + eps)
    return n * (1 + scale.to(compute_dtype)[:, None, :]) + shift.to(compute_dtype)[:, None, :]


def reference_int8(
    x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float = 1e-6
) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 definition of the int8 output: (q int8 [B, L, C], s fp32 [B, L]) with y ≈ q * s[..., None]."""
    from kernels.int8_quant import reference_quantize_activation

    B, L, C = x.shape
    q, s = reference_quantize_activation(reference(x, shift, scale, eps).reshape(B * L, C))
    return q.view(B, L, C), s.view(B, L)


# 2. kernel --------------------------------------------------------------------------------------------
@triton.jit
def _to_int8_codes(v):
    """Round half away from zero to int8 codes: |v| <= 127 * (1 + 2 ulp) here (v = y * 127 / absmax),
    so no clamp is needed (and PTX's float-to-int cvt saturates anyway). ``v + copysign(0.5, v)``: fewer
    instructions than compare + select + add in an issue-bound path (kernels/NOTES_norms.md)."""
    half = ((v.to(tl.int32, bitcast=True) & -2147483648) | 0x3F000000).to(tl.float32, bitcast=True)  # ±0.5
    return (v + half).to(tl.int8)  # the cast truncates toward zero


@triton.jit
def _modulate_store(
    xc,  # [BLOCK_L, WIDTH] fp32 centred part of the rows (masked lanes 0)
    rstd,  # [BLOCK_L, 1] or scalar
    sc1,  # fp32 1 + scale[b], broadcastable to xc ([1, WIDTH], or [BLOCK_L, WIDTH] per row)
    sh,  # fp32 shift[b], as sc1
    inv,  # 127 / absmax (int8 only)
    offs,
    mask,
    out_ptr,
    OUT_INT8: tl.constexpr,
):
    """Store one part of y = n * (1 + scale) + shift: in out's dtype, or as int8 codes of y * inv."""
    y = xc * rstd * sc1 + sh
    if OUT_INT8:
        tl.store(out_ptr + offs, _to_int8_codes(y * inv), mask=mask)
    else:
        tl.store(out_ptr + offs, y.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _norm_modulate_store(
    x_a,  # [BLOCK_L, WIDTH_A] fp32 rows (masked lanes 0): the whole row, or its first part when SPLIT
    x_b,  # [1, BLOCK_TAIL] the second part when SPLIT (otherwise unused: pass x_a again)
    mask_a,
    mask_b,
    offs_a,
    offs_b,
    sc1_a,  # fp32 1 + scale[b] broadcastable to x_a: [1, WIDTH_A], or [BLOCK_L, WIDTH_A] per row
    sh_a,  # fp32 shift[b], as sc1_a
    sc1_b,  # the same for part b (unused unless SPLIT)
    sh_b,
    rows,  # [BLOCK_L] flattened row indices
    row_ok,  # [BLOCK_L]
    C,
    eps,
    out_ptr,
    qscale_ptr,
    SPLIT: tl.constexpr,  # a split row is reduced as a scalar: BLOCK_L = 1
    OUT_INT8: tl.constexpr,
):
    """What both kernels do once a tile's rows are in registers: the fp32 LayerNorm statistics (masked
    lanes excluded), the per-token int8 scale when OUT_INT8, and the modulated store of each part."""
    # 1. fp32 mean / variance over the row; a split row (one per tile) is reduced to scalars so its two
    #    differently laid-out parts never meet in one tensor
    if SPLIT:
        mean = (tl.sum(x_a) + tl.sum(x_b)) / C  # scalar
        xc_a = tl.where(mask_a, x_a - mean, 0.0)
        xc_b = tl.where(mask_b, x_b - mean, 0.0)
        rstd = tl.rsqrt((tl.sum(xc_a * xc_a) + tl.sum(xc_b * xc_b)) / C + eps)
    else:
        mean = tl.sum(x_a, axis=1)[:, None] / C  # [BLOCK_L, 1]
        xc_a = tl.where(mask_a, x_a - mean, 0.0)
        xc_b = xc_a  # unused
        rstd = tl.rsqrt(tl.sum(xc_a * xc_a, axis=1) / C + eps)[:, None]  # [BLOCK_L, 1]

    # 2. per-token int8 scale: absmax of y = n * (1 + scale[b]) + shift[b] (masked lanes are 0)
    inv = 0.0
    if OUT_INT8:
        if SPLIT:
            amax = tl.maximum(
                tl.max(tl.abs(xc_a * rstd * sc1_a + sh_a)), tl.max(tl.abs(xc_b * rstd * sc1_b + sh_b))
            )  # scalar
            tl.store(qscale_ptr + rows, tl.zeros_like(rows).to(tl.float32) + amax / 127.0, mask=row_ok)
        else:
            amax = tl.max(tl.abs(xc_a * rstd * sc1_a + sh_a), axis=1)[:, None]  # [BLOCK_L, 1]
            tl.store(qscale_ptr + rows[:, None], amax / 127.0, mask=row_ok[:, None])
        inv = tl.where(amax > 0, 127.0 / tl.where(amax > 0, amax, 1.0), 0.0)

    # 3. modulate and store each part
    _modulate_store(xc_a, rstd, sc1_a, sh_a, inv, offs_a, mask_a, out_ptr, OUT_INT8)
    if SPLIT:
        _modulate_store(xc_b, rstd, sc1_b, sh_b, inv, offs_b, mask_b, out_ptr, OUT_INT8)


# 2b. the residual add in front: x' = x + gate * y, then the above on x', in one pass ----------------------
# Wan's blocks add each branch back into the fp32 residual stream and normalize the sum right away (norm3
# after the self-attention, norm2 after the cross-attention). Fused, the pass reads x and y and writes x' and
# the norm's output; gated_residual then layernorm_modulate would also read x' back:
#
#     x'  = x + gate[b] * y                 fp32 math as kernels/gated_residual.py, stored in x's dtype
#                                           (gate None: x + y, the cross-attention's ungated residual)
#     out = layernorm_modulate(x')          from the stored values, bf16/fp out or int8 + per-token scales
#
# Bit for bit the two passes' results with the same row config: the rest after the add is the same helper.
def reference_residual(
    x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor | None, shift: torch.Tensor, scale: torch.Tensor,
    eps: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain-PyTorch definition of :func:`residual_layernorm_modulate` (bf16/fp out): (x' in x.dtype, fp32
    modulated norm of x')."""
    yf = y.float() if gate is None else gate.float()[:, None, :] * y.float()
    x_new = (x.float() + yf).to(x.dtype)
    return x_new, reference(x_new, shift, scale, eps)


@triton.jit
def _residual_part(x_ptr, y_ptr, g, x_out_ptr, offs, mask, HAS_GATE: tl.constexpr):
    """One part of the residual add, ``x + g * y`` with fp32 math (kernels/gated_residual.py's), stored in
    x_out's dtype; returns the stored values in fp32 (what a separate norm pass would load back)."""
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    y = tl.load(y_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_GATE:
        x = x + g * y
    else:
        x = x + y
    x = x.to(x_out_ptr.dtype.element_ty)
    tl.store(x_out_ptr + offs, x, mask=mask)
    return x.to(tl.float32)


@triton.jit
def _row_part(x_ptr, y_ptr, g, x_out_ptr, offs, mask, RESIDUAL: tl.constexpr, HAS_GATE: tl.constexpr):
    """One part of a tile's rows in fp32: loaded, or (RESIDUAL) x + g * y computed and stored by `_residual_part`."""
    if RESIDUAL:
        return _residual_part(x_ptr, y_ptr, g, x_out_ptr, offs, mask, HAS_GATE)
    return tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _ln_modulate_tiles(
    x_ptr, y_ptr, gate_ptr, x_out_ptr,  # y, gate, x_out: RESIDUAL only (gate: HAS_GATE only)
    shift_ptr, scale_ptr, out_ptr, qscale_ptr,
    N, L, C, stride_gate_b, stride_shift_b, stride_scale_b, eps,
    BLOCK_C: tl.constexpr, BLOCK_TAIL: tl.constexpr, SPLIT: tl.constexpr, BLOCK_L: tl.constexpr,
    PROGS_PER_SM: tl.constexpr, RESIDUAL: tl.constexpr, HAS_GATE: tl.constexpr, OUT_INT8: tl.constexpr,
):
    """The tiles of both kernels (their arguments are documented there). Each part of a row comes from
    `_row_part` (a load, or the residual add), then `_norm_modulate_store` does the rest, so the fused
    residual pass gives the bits of the two passes it replaces."""
    tl.static_assert(PROGS_PER_SM > 0 or not SPLIT, "only the persistent form splits rows")
    GATED: tl.constexpr = RESIDUAL and HAS_GATE
    if PROGS_PER_SM == 0:
        # A. one tile of BLOCK_L whole rows per program, straight-line: every load of the tile (x, y and
        #    its rows' gate/shift/scale) is issued up front (fastest for bf16 out on the H200)
        rows = tl.program_id(0) * BLOCK_L + tl.arange(0, BLOCK_L)  # [BLOCK_L]
        cols = tl.arange(0, BLOCK_C)  # [BLOCK_C]
        row_ok = rows < N
        mask = row_ok[:, None] & (cols < C)[None, :]
        offs = rows.to(tl.int64)[:, None] * C + cols[None, :]  # [BLOCK_L, BLOCK_C]
        b = (rows // L).to(tl.int64)  # [BLOCK_L] each row's batch element (a tile may straddle two)
        g = 0.0
        if GATED:
            g = tl.load(gate_ptr + b[:, None] * stride_gate_b + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        x = _row_part(x_ptr, y_ptr, g, x_out_ptr, offs, mask, RESIDUAL, HAS_GATE)
        sh = tl.load(shift_ptr + b[:, None] * stride_shift_b + cols[None, :], mask=mask, other=0.0)
        sc = tl.load(scale_ptr + b[:, None] * stride_scale_b + cols[None, :], mask=mask, other=0.0)
        sc1, sh = 1.0 + sc.to(tl.float32), sh.to(tl.float32)  # masked lanes: y stays 0
        _norm_modulate_store(x, x, mask, mask, offs, offs, sc1, sh, sc1, sh, rows, row_ok, C, eps, out_ptr,
                             qscale_ptr, False, OUT_INT8)
    else:
        # B. persistent: PROGS_PER_SM programs per SM (shared by the batch) stride over one batch
        #    element's tiles
        # 1. loop-invariant: this batch element's gate and modulation vectors, loaded once per program.
        #    Unsplit, part a is the whole padded row; split (e.g. 5120 = 4096 + 1024), a is always full and
        #    b the tail.
        tl.static_assert(BLOCK_L == 1 or not SPLIT, "a split row is reduced as a scalar: one row per tile")
        HEAD: tl.constexpr = BLOCK_C // 2 if SPLIT else BLOCK_C
        b = tl.program_id(1).to(tl.int64)
        cols_a = tl.arange(0, HEAD)  # [HEAD]
        sh_ptr, sc_ptr = shift_ptr + b * stride_shift_b, scale_ptr + b * stride_scale_b
        sh_a = tl.load(sh_ptr + cols_a, mask=cols_a < C, other=0.0).to(tl.float32)[None, :]
        sc1_a = 1.0 + tl.load(sc_ptr + cols_a, mask=cols_a < C, other=0.0).to(tl.float32)[None, :]
        g_a = 0.0
        if GATED:
            g_a = tl.load(gate_ptr + b * stride_gate_b + cols_a, mask=cols_a < C, other=0.0).to(tl.float32)[None, :]
        if SPLIT:
            cols_b = HEAD + tl.arange(0, BLOCK_TAIL)  # [BLOCK_TAIL]
            sh_b = tl.load(sh_ptr + cols_b, mask=cols_b < C, other=0.0).to(tl.float32)[None, :]
            sc1_b = 1.0 + tl.load(sc_ptr + cols_b, mask=cols_b < C, other=0.0).to(tl.float32)[None, :]
            g_b = 0.0
            if GATED:
                g_b = tl.load(gate_ptr + b * stride_gate_b + cols_b, mask=cols_b < C, other=0.0).to(tl.float32)[None, :]
        else:
            cols_b, sh_b, sc1_b, g_b = cols_a, sh_a, sc1_a, g_a  # unused

        # 2. tiles of BLOCK_L whole rows of batch element b; a persistent program strides over them
        num_tiles = tl.cdiv(L, BLOCK_L)
        for tile in range(tl.program_id(0), num_tiles, tl.num_programs(0)):
            pos = tile * BLOCK_L + tl.arange(0, BLOCK_L)  # [BLOCK_L] positions within the batch element
            row_ok = pos < L
            rows = b * L + pos.to(tl.int64)  # [BLOCK_L] flattened row index
            mask_a = row_ok[:, None] & (cols_a < C)[None, :]
            offs_a = rows[:, None] * C + cols_a[None, :]  # [BLOCK_L, HEAD]
            x_a = _row_part(x_ptr, y_ptr, g_a, x_out_ptr, offs_a, mask_a, RESIDUAL, HAS_GATE)
            if SPLIT:
                mask_b = row_ok[:, None] & (cols_b < C)[None, :]
                offs_b = rows[:, None] * C + cols_b[None, :]  # [1, BLOCK_TAIL]
                x_b = _row_part(x_ptr, y_ptr, g_b, x_out_ptr, offs_b, mask_b, RESIDUAL, HAS_GATE)
            else:
                mask_b, offs_b, x_b = mask_a, offs_a, x_a  # unused
            _norm_modulate_store(x_a, x_b, mask_a, mask_b, offs_a, offs_b, sc1_a, sh_a, sc1_b, sh_b, rows,
                                 row_ok, C, eps, out_ptr, qscale_ptr, SPLIT, OUT_INT8)


@triton.jit
def _ln_modulate_kernel(
    # pointers
    x_ptr,
    shift_ptr,
    scale_ptr,
    out_ptr,  # x.dtype, or int8 when OUT_INT8
    qscale_ptr,  # [B * L] fp32 per-token scales (OUT_INT8 only)
    # sizes
    N,  # rows = B * L
    L,  # rows per batch element (persistent form: grid axis 1 is the batch element)
    C,
    stride_shift_b,
    stride_scale_b,
    eps,
    # meta
    BLOCK_C: tl.constexpr,  # next power of two >= C (the whole row lives in registers)
    BLOCK_TAIL: tl.constexpr,  # next power of two >= C - BLOCK_C/2 (the second part when SPLIT)
    SPLIT: tl.constexpr,  # row as two power-of-two parts [0, BLOCK_C/2) + [BLOCK_C/2, +BLOCK_TAIL); BLOCK_L = 1
    BLOCK_L: tl.constexpr,  # rows per tile
    PROGS_PER_SM: tl.constexpr,  # 0: one program per tile; k > 0: persistent grid of k programs per SM
    OUT_INT8: tl.constexpr,
):
    _ln_modulate_tiles(x_ptr, x_ptr, x_ptr, x_ptr, shift_ptr, scale_ptr, out_ptr, qscale_ptr, N, L, C, 0,
                       stride_shift_b, stride_scale_b, eps, BLOCK_C, BLOCK_TAIL, SPLIT, BLOCK_L, PROGS_PER_SM,
                       False, False, OUT_INT8)


@triton.jit
def _residual_ln_modulate_kernel(
    x_ptr, y_ptr, gate_ptr, x_out_ptr,  # x' = x + gate * y (gate [B, C], HAS_GATE only) stored to x_out
    shift_ptr, scale_ptr, out_ptr, qscale_ptr,  # as `_ln_modulate_kernel`'s
    N, L, C, stride_gate_b, stride_shift_b, stride_scale_b, eps,
    BLOCK_C: tl.constexpr, BLOCK_TAIL: tl.constexpr, SPLIT: tl.constexpr, BLOCK_L: tl.constexpr,
    PROGS_PER_SM: tl.constexpr, HAS_GATE: tl.constexpr, OUT_INT8: tl.constexpr,  # HAS_GATE False: x + y
):
    """`_ln_modulate_kernel` (same forms, same meta) on x' = x + gate * y, computed and stored by the pass
    itself (`_ln_modulate_tiles` with RESIDUAL)."""
    _ln_modulate_tiles(x_ptr, y_ptr, gate_ptr, x_out_ptr, shift_ptr, scale_ptr, out_ptr, qscale_ptr, N, L, C,
                       stride_gate_b, stride_shift_b, stride_scale_b, eps, BLOCK_C, BLOCK_TAIL, SPLIT, BLOCK_L,
                       PROGS_PER_SM, True, HAS_GATE, OUT_INT8)


# 3. autotune configs ----------------------------------------------------------------------------------
# Candidates: the straight-line form (fastest for bf16 out on the H200) plus persistent / split forms
# (they won ln_modulate_int8 at C=1536); the measurements: kernels/NOTES_norms.md. num_stages stays 1
# (Triton does not make these loads asynchronous copies).
_ln_modulate = triton.autotune(
    configs=ROW_CONFIGS,
    key=["C", "OUT_INT8"],
    prune_configs_by={"early_config_prune": prune_row_configs},
)(_ln_modulate_kernel)
# The fused residual form: the same candidates, tuned on its own (it moves more bytes per row).
_residual_ln_modulate = triton.autotune(
    configs=ROW_CONFIGS,
    key=["C", "OUT_INT8", "HAS_GATE"],
    prune_configs_by={"early_config_prune": prune_row_configs},
)(_residual_ln_modulate_kernel)


def _check(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> None:
    if x.dim() != 3:
        raise ValueError(f"x must be [B, L, C], got {tuple(x.shape)}")
    if x.dtype not in (torch.bfloat16, torch.float16, torch.float32):
        raise TypeError(f"unsupported dtype {x.dtype}")
    B, _, C = x.shape
    for name, t in (("shift", shift), ("scale", scale)):
        if t.shape != (B, C):
            raise ValueError(f"{name} must be [{B}, {C}], got {tuple(t.shape)}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be floating point, got {t.dtype}")


def _grid(B: int, L: int, device: torch.device) -> Callable[[dict], tuple[int, int]]:
    """Both kernels' launch grid for a config: one program per tile of the flattened rows (straight-line),
    or PROGS_PER_SM programs per SM shared by the batch elements (persistent; axis 1 = batch element)."""
    sms = num_sms(device)

    def grid(meta: dict) -> tuple[int, int]:
        if not meta["PROGS_PER_SM"]:
            return (triton.cdiv(B * L, meta["BLOCK_L"]), 1)
        tiles = triton.cdiv(L, meta["BLOCK_L"])
        return (max(1, min(tiles, sms * meta["PROGS_PER_SM"] // B)), B)

    return grid


def _launch(
    x: torch.Tensor,
    shift: torch.Tensor,
    scale: torch.Tensor,
    eps: float,
    out: torch.Tensor,
    qscale: torch.Tensor,
    config: dict | None = None,
) -> None:
    """Launch on x [B, L, C]; ``config`` (BLOCK_L, SPLIT, PROGS_PER_SM, num_warps, num_stages) bypasses the
    autotuner (tests and the bench use it to run one specific variant)."""
    B, L, C = x.shape
    if B * L == 0:
        return
    shift = shift if shift.stride(1) == 1 else shift.contiguous()
    scale = scale if scale.stride(1) == 1 else scale.contiguous()
    grid = _grid(B, L, x.device)
    kernel = _ln_modulate if config is None else _ln_modulate_kernel
    kernel[grid](
        x,
        shift,
        scale,
        out,
        qscale,
        B * L,
        L,
        C,
        shift.stride(0),
        scale.stride(0),
        eps,
        BLOCK_C=triton.next_power_of_2(C),
        BLOCK_TAIL=split_tail(C),
        OUT_INT8=out.dtype == torch.int8,
        **(config or {}),
    )


def _check_residual(x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor | None) -> None:
    if y.shape != x.shape:
        raise ValueError(f"y must be the same [B, L, C] as x {tuple(x.shape)}, got {tuple(y.shape)}")
    if y.dtype not in (torch.bfloat16, torch.float16, torch.float32):
        raise TypeError(f"unsupported y dtype {y.dtype}")
    B, _, C = x.shape
    if gate is not None and (gate.shape != (B, C) or not gate.is_floating_point()):
        raise ValueError(f"gate must be a float [{B}, {C}] or None, got {gate.dtype} {tuple(gate.shape)}")


def _launch_residual(
    x: torch.Tensor,
    y: torch.Tensor,
    gate: torch.Tensor | None,
    shift: torch.Tensor,
    scale: torch.Tensor,
    eps: float,
    x_out: torch.Tensor,
    out: torch.Tensor,
    qscale: torch.Tensor,
    config: dict | None = None,
) -> None:
    """Launch the fused residual form on contiguous x, y [B, L, C]; ``config`` as for `_launch`."""
    B, L, C = x.shape
    if B * L == 0:
        return
    shift = shift if shift.stride(1) == 1 else shift.contiguous()
    scale = scale if scale.stride(1) == 1 else scale.contiguous()
    if gate is not None and gate.stride(1) != 1:
        gate = gate.contiguous()
    if config is None and _gluon_runs(x, y, gate, shift, scale, eps, out):
        from kernels import adaln_gluon

        adaln_gluon.residual_ln_modulate(x, y, gate, shift, scale, eps, x_out, out, qscale)
        return
    _launch_residual_triton(x, y, gate, shift, scale, eps, x_out, out, qscale, config)


def _launch_residual_triton(
    x: torch.Tensor,
    y: torch.Tensor,
    gate: torch.Tensor | None,
    shift: torch.Tensor,
    scale: torch.Tensor,
    eps: float,
    x_out: torch.Tensor,
    out: torch.Tensor,
    qscale: torch.Tensor,
    config: dict | None = None,
) -> None:
    B, L, C = x.shape
    grid = _grid(B, L, x.device)
    kernel = _residual_ln_modulate if config is None else _residual_ln_modulate_kernel
    kernel[grid](
        x,
        y,
        shift if gate is None else gate,  # not read without a gate
        x_out,
        shift,
        scale,
        out,
        qscale,
        B * L,
        L,
        C,
        0 if gate is None else gate.stride(0),
        shift.stride(0),
        scale.stride(0),
        eps,
        BLOCK_C=triton.next_power_of_2(C),
        BLOCK_TAIL=split_tail(C),
        HAS_GATE=gate is not None,
        OUT_INT8=out.dtype == torch.int8,
        **(config or {}),
    )


# Which kernel runs the fused residual pass on Hopper (sm90): "auto" (default) / "gluon" the Gluon kernel
# (kernels/adaln_gluon.py: each piece of a row in a layout of its own, ~20 instead of ~45 SASS instructions per
# element) where it holds the row and passed its first-call check (`_check_gluon`); "triton" this module's kernel
# always. The worker setting `norm_kernel` sets it.
KERNEL_ENV = "TURBOVID_WORKER__NORM_KERNEL"
KERNEL_CHOICES = ("auto", "gluon", "triton")
CHECK_ROWS = 1024  # at most this many of the first call's rows are checked
# (device index, C, gated, out dtype) -> `_check_gluon`'s answer for that specialization, once per process
_GLUON_CHECKED: dict[tuple[int, int, bool, torch.dtype], bool] = {}


def _gluon_runs(x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor | None, shift: torch.Tensor,
                scale: torch.Tensor, eps: float, out: torch.Tensor) -> bool:
    """Whether this call runs on the Gluon kernel: CUDA, not the interpreter, asked for (not "triton"), a row it holds,
    and (once per device and specialization, outside a CUDA graph capture) `_check_gluon` on this call's rows."""
    import os  # here, not at the top: a line there would move every kernel of this file and change its Triton hash

    if not x.is_cuda or os.environ.get("TRITON_INTERPRET", "0") == "1":
        return False
    from kernels import adaln_gluon, checked_once, env_choice
    from kernels.w8a8 import _device_index

    C = x.shape[-1]
    if env_choice(KERNEL_ENV, KERNEL_CHOICES, "auto") == "triton" or not adaln_gluon.supported(C):
        return False
    key = (_device_index(x.device), C, gate is not None, out.dtype)
    return checked_once(_GLUON_CHECKED, key, lambda: _check_gluon(x, y, gate, shift, scale, eps, out.dtype))


def kernel_in_use(device_index: int) -> str:
    """Which kernel this process's fused residual norms on the device took once they ran: "gluon" (every
    specialization passed its check), "mixed" or "triton" (see `kernels.checked_kernel`)."""
    from kernels import checked_kernel

    return checked_kernel(_GLUON_CHECKED, device_index)


def _check_gluon(x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor | None, shift: torch.Tensor,
                 scale: torch.Tensor, eps: float, out_dtype: torch.dtype) -> bool:
    """A Hopper GPU, Triton's Gluon API, and on the first call's own rows (the first CHECK_ROWS of its first batch
    element): the Gluon kernel's x' equal to the Triton kernel's, and its output close to it: int8 scales within
    1e-5 and codes within one, at most 1 % differing (the two round ties differently and reduce in another order);
    bf16/fp within 1e-2. Otherwise the Triton kernel, with the reason logged."""
    import logging

    from kernels import adaln_gluon, env_choice

    log = logging.getLogger(__name__)
    if torch.cuda.get_device_capability(x.device) != (9, 0) or not adaln_gluon.available():
        return False
    m = min(CHECK_ROWS, x.shape[1])
    xs, ys = x[:1, :m].contiguous(), y[:1, :m].contiguous()
    g, sh, sc = (None if gate is None else gate[:1]), shift[:1], scale[:1]
    try:
        got = [torch.empty_like(xs), torch.empty(xs.shape, dtype=out_dtype, device=x.device),
               torch.empty(m, device=x.device)]
        want = [torch.empty_like(t) for t in got]
        adaln_gluon.residual_ln_modulate(xs, ys, g, sh, sc, eps, *got)
        _launch_residual_triton(xs, ys, g, sh, sc, eps, *want)
        same_x = bool(torch.equal(got[0], want[0]))
        if out_dtype == torch.int8:
            diff = (got[1].to(torch.int16) - want[1].to(torch.int16)).abs()
            close = (bool(torch.allclose(got[2], want[2], rtol=1e-5, atol=0)) and int(diff.max()) <= 1
                     and float((diff > 0).float().mean()) <= 0.01)
        else:
            close = bool(torch.allclose(got[1].float(), want[1].float(), rtol=1e-2, atol=1e-2))
        if same_x and close:
            log.info("residual norms on cuda:%d, C=%d: the Gluon kernel (%s=%s)", x.device.index or 0,
                     x.shape[-1], KERNEL_ENV, env_choice(KERNEL_ENV, KERNEL_CHOICES, "auto"))
            return True
        log.warning("the Gluon residual norm (C=%d, %s out) differs from the Triton kernel's on this Triton %s "
                    "(x' %s, output %s): using the Triton kernel", x.shape[-1], out_dtype, triton.__version__,
                    "equal" if same_x else "differs", "close" if close else "differs")
    except Exception as exc:  # noqa: BLE001 - any failure means: the Triton kernel
        log.warning("the Gluon residual norm does not run on this Triton %s (%s): using the Triton kernel",
                    triton.__version__, f"{type(exc).__name__}: {str(exc)[:200]}")
    return False


# 4. public wrappers (torch.library ops with fake impls) ----------------------------------------------
@torch.library.custom_op("turbovid::layernorm_modulate", mutates_args=())
def _layernorm_modulate(
    x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float, out_dtype: torch.dtype | None
) -> torch.Tensor:
    _check(x, shift, scale)
    if out_dtype is not None and out_dtype not in (torch.bfloat16, torch.float16, torch.float32):
        raise TypeError(f"unsupported out_dtype {out_dtype}")
    x = x.contiguous()
    out = torch.empty(x.shape, dtype=out_dtype or x.dtype, device=x.device)
    _launch(x, shift, scale, eps, out, out)
    return out


@_layernorm_modulate.register_fake
def _(x, shift, scale, eps, out_dtype):
    return x.new_empty(x.shape, dtype=out_dtype or x.dtype)


@torch.library.custom_op("turbovid::layernorm_modulate_int8", mutates_args=())
def _layernorm_modulate_int8(
    x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    _check(x, shift, scale)
    x = x.contiguous()
    B, L, C = x.shape
    q = torch.empty((B, L, C), dtype=torch.int8, device=x.device)
    s = torch.empty((B, L), dtype=torch.float32, device=x.device)
    _launch(x, shift, scale, eps, q, s)
    return q, s


@_layernorm_modulate_int8.register_fake
def _(x, shift, scale, eps):
    B, L, C = x.shape
    return x.new_empty((B, L, C), dtype=torch.int8), x.new_empty((B, L), dtype=torch.float32)


def layernorm_modulate(
    x: torch.Tensor,
    shift: torch.Tensor,
    scale: torch.Tensor,
    eps: float = 1e-6,
    out_int8: bool = False,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """LayerNorm (no affine, fp32 stats) then ``x·(1+scale)+shift``.

    x [B, L, C] bf16/fp16/fp32; shift, scale [B, C] (last dim contiguous, any batch stride).
    Returns [B, L, C] in ``out_dtype`` (default x.dtype), or with ``out_int8=True`` (q int8 [B, L, C],
    s fp32 [B, L]) with per-token scales as kernels/int8_quant.quantize_activation produces (flatten to
    [B*L, C] / [B*L]; kernels/w8a8.w8a8_linear_int8 takes them as they are).
    """
    if out_int8:
        return torch.ops.turbovid.layernorm_modulate_int8(x, shift, scale, eps)
    return torch.ops.turbovid.layernorm_modulate(x, shift, scale, eps, out_dtype)


@torch.library.custom_op("turbovid::residual_layernorm_modulate", mutates_args=())
def _residual_layernorm_modulate(
    x: torch.Tensor,
    y: torch.Tensor,
    gate: torch.Tensor | None,
    shift: torch.Tensor,
    scale: torch.Tensor,
    eps: float,
    out_dtype: torch.dtype | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    _check(x, shift, scale)
    _check_residual(x, y, gate)
    if out_dtype is not None and out_dtype not in (torch.bfloat16, torch.float16, torch.float32):
        raise TypeError(f"unsupported out_dtype {out_dtype}")
    x, y = x.contiguous(), y.contiguous()
    x_out = torch.empty_like(x)
    out = torch.empty(x.shape, dtype=out_dtype or x.dtype, device=x.device)
    _launch_residual(x, y, gate, shift, scale, eps, x_out, out, out)
    return x_out, out


@_residual_layernorm_modulate.register_fake
def _(x, y, gate, shift, scale, eps, out_dtype):
    return x.new_empty(x.shape), x.new_empty(x.shape, dtype=out_dtype or x.dtype)


@torch.library.custom_op("turbovid::residual_layernorm_modulate_int8", mutates_args=())
def _residual_layernorm_modulate_int8(
    x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor | None, shift: torch.Tensor, scale: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    _check(x, shift, scale)
    _check_residual(x, y, gate)
    x, y = x.contiguous(), y.contiguous()
    B, L, C = x.shape
    x_out = torch.empty_like(x)
    q = torch.empty((B, L, C), dtype=torch.int8, device=x.device)
    s = torch.empty((B, L), dtype=torch.float32, device=x.device)
    _launch_residual(x, y, gate, shift, scale, eps, x_out, q, s)
    return x_out, q, s


@_residual_layernorm_modulate_int8.register_fake
def _(x, y, gate, shift, scale, eps):
    B, L, C = x.shape
    return x.new_empty(x.shape), x.new_empty((B, L, C), dtype=torch.int8), x.new_empty((B, L), dtype=torch.float32)


def residual_layernorm_modulate(
    x: torch.Tensor,
    y: torch.Tensor,
    gate: torch.Tensor | None,
    shift: torch.Tensor,
    scale: torch.Tensor,
    eps: float = 1e-6,
    out_int8: bool = False,
    out_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor | tuple[torch.Tensor, torch.Tensor]]:
    """The residual add ``x' = x + gate·y`` (fp32 math, x's dtype) and `layernorm_modulate` of x', one pass.

    x [B, L, C] bf16/fp16/fp32 (Wan: the fp32 residual stream); y [B, L, C] any of those (the branch
    output); gate [B, C] (last dim contiguous, any batch stride) or None for ``x + y``; shift, scale, eps,
    out_int8, out_dtype as for `layernorm_modulate`. Returns (x' [B, L, C] in x.dtype, a new tensor; out),
    out as `layernorm_modulate` returns it: [B, L, C] or (q int8 [B, L, C], s fp32 [B, L]). Bit for bit
    ``gated_residual(x, y, gate)`` then `layernorm_modulate` of its output, when both run the same row config.
    """
    if out_int8:
        x_new, q, s = torch.ops.turbovid.residual_layernorm_modulate_int8(x, y, gate, shift, scale, eps)
        return x_new, (q, s)
    return torch.ops.turbovid.residual_layernorm_modulate(x, y, gate, shift, scale, eps, out_dtype)


# 5. bench ---------------------------------------------------------------------------------------------
def bench(copy_gbps: float | None = None, L: int = 32760, dims: tuple[int, ...] = (1536, 5120)) -> list[dict]:
    """Time the fused kernel (bf16 out and int8 out) vs eager PyTorch at Wan shapes (B=1, bf16 x).

    GB/s counts each tensor once. Baselines: eager = F.layer_norm in fp32 + modulation + cast (what
    Wan runs); for int8 also "unfused" = this file's bf16 kernel + kernels.int8_quant.quantize_activation.
    ``copy_gbps`` is a device-to-device copy's bandwidth measured in the same process (read + write).
    """
    import torch.nn.functional as F
    from triton.testing import do_bench

    from kernels.int8_quant import quantize_activation

    rows = []
    for C in dims:
        x = torch.randn(1, L, C, device="cuda", dtype=torch.bfloat16)
        mod = torch.randn(1, 6, C, device="cuda") * 0.1  # Wan's [B, 6, C] fp32 modulation
        shift, scale = mod[:, 0], mod[:, 1]  # [B, C] views, batch stride 6C

        def eager(x=x, shift=shift, scale=scale, C=C):
            y = F.layer_norm(x.float(), (C,), eps=1e-6) * (1 + scale[:, None]) + shift[:, None]
            return y.to(x.dtype)

        ref = reference(x, shift, scale)
        out = layernorm_modulate(x, shift, scale)
        rel = ((out.float() - ref).norm() / ref.norm()).item()
        q, s = layernorm_modulate(x, shift, scale, out_int8=True)
        rel_q = ((q.float() * s[..., None] - ref).norm() / ref.norm()).item()

        t_e = do_bench(eager, warmup=25, rep=200, return_mode="median")
        t_k = do_bench(lambda: layernorm_modulate(x, shift, scale), warmup=25, rep=200, return_mode="median")  # noqa: B023
        t_q = do_bench(
            lambda: layernorm_modulate(x, shift, scale, out_int8=True),  # noqa: B023
            warmup=25,
            rep=200,
            return_mode="median",
        )
        t_u = do_bench(
            lambda: quantize_activation(layernorm_modulate(x, shift, scale).view(L, C)),  # noqa: B023
            warmup=25,
            rep=200,
            return_mode="median",
        )
        mod_bytes = 2 * C * 4
        for name, t, out_bytes, err, base in (
            ("ln_modulate", t_k, x.numel() * 2, rel, t_e),
            ("ln_modulate_int8", t_q, x.numel() + L * 4, rel_q, t_e),
        ):
            nbytes = x.numel() * 2 + out_bytes + mod_bytes
            gbps = nbytes / t / 1e6
            row = {
                "kernel": name,
                "C": C,
                "L": L,
                "ms": t,
                "eager_ms": base,
                "GB/s": gbps,
                "pct_copy": 100 * gbps / copy_gbps if copy_gbps else float("nan"),
                "speedup": base / t,
                "rel_err": err,
                "config": str(_ln_modulate.best_config),
            }
            if name.endswith("int8"):
                row["unfused_ms"] = t_u
            rows.append(row)
            extra = f" | unfused bf16+quant {t_u * 1e3:7.1f} us x{t_u / t:.2f}" if name.endswith("int8") else ""
            print(
                f"{name:16s} C={C:5d} L={L}: {t * 1e3:8.1f} us {gbps:7.0f} GB/s "
                f"{row['pct_copy']:5.1f}% of copy | eager {base * 1e3:8.1f} us x{row['speedup']:.2f}"
                f"{extra} | rel err {err:.1e}"
            )
    return rows


if __name__ == "__main__":
    bench()
