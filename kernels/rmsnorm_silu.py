"""Fused RMS-norm + SiLU (+ residual add) over channels, for the Wan VAE's residual blocks.

Wan's VAE normalises every voxel's channel vector to unit L2 norm, rescales by sqrt(C) and a per-channel
gain, then applies SiLU; in eager PyTorch that is ~6 passes over the activation in fp32. One pass here:

    s[n, :]   = x[n, :] (+ x1[n, :] + x2[n, :]) (+ bias[:]) (+ residual[n, :])   # fp32
    y[n, :]   = s[n, :] / max(||s[n, :]||_2, eps) · sqrt(C) · gamma
    out[n, :] = y · sigmoid(y)                     # stored in out's dtype (optional)
    sum_out   = s, stored in sum_out's dtype       # optional: the block's new residual stream

x1, x2: the VAE runs a 3×3×3 conv as three 3×3 conv2d, one per time tap; their partial outputs are
summed here rather than by two extra passes over the activation (`tap_sum_rmsnorm_silu_out`, and
`tap_sum_out` for the sum alone, residual included, where no norm follows).

bias: the producing convolution's bias, added here instead of by the convolution: cuDNN convolutions
add their bias as a separate pass over the output (PyTorch's `add_` after the kernel), which at the
VAE's full resolution cost ~110 ms of a 0.76 s 480p decode on an H200 (kernels/NOTES_vae.md).

Layouts: rows of channels. x, residual, out, sum_out are [N, C] views with the channel dim contiguous
(stride 1) and any row stride, e.g. a channels-last-3d video [B, C, T, H, W] seen as [B·T·H·W, C], or
the frames of a larger time-padded buffer (the causal conv's input, written in place). gamma [C] (any
float dtype). Any N and C (C = 96, 192, 384 in the VAE; C padded to a power of two in registers).
dtypes: bf16 / fp16 / fp32 in and out (may differ). Reference: Wan2.1 ``wan/modules/vae.py``
(RMS_norm, ResidualBlock).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

__all__ = ["reference", "rmsnorm_silu", "rmsnorm_silu_out", "tap_sum_rmsnorm_silu_out", "tap_sum_out",
           "residual_sum_out", "bench"]

EPS = 1e-12  # F.normalize's default, as Wan's RMS_norm uses it


# 1. reference ----------------------------------------------------------------------------------------
def reference(
    x: torch.Tensor,
    gamma: torch.Tensor,
    residual: torch.Tensor | None = None,
    eps: float = EPS,
    compute_dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain-PyTorch definition: (silu(norm(s)), s) in ``compute_dtype`` for x, residual [N, C]."""
    s = x.to(compute_dtype)
    if residual is not None:
        s = s + residual.to(compute_dtype)
    y = s / s.norm(dim=-1, keepdim=True).clamp_min(eps) * s.shape[-1] ** 0.5 * gamma.to(compute_dtype)
    return F.silu(y), s


# 2. kernel --------------------------------------------------------------------------------------------
@triton.jit
def _rmsnorm_silu_kernel(
    # pointers
    x_ptr,
    x1_ptr,
    x2_ptr,
    res_ptr,
    bias_ptr,
    gamma_ptr,
    out_ptr,
    sum_ptr,
    # sizes
    N,
    C,
    stride_x,
    stride_x1,
    stride_x2,
    stride_res,
    stride_out,
    stride_sum,
    scale,  # sqrt(C)
    eps,
    # meta
    HAS_TAPS: tl.constexpr,
    HAS_RES: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    WRITE_SUM: tl.constexpr,
    WRITE_NORM: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    # 1. a [BLOCK_R, BLOCK_C] tile: BLOCK_R whole rows
    rows = (tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)).to(tl.int64)  # [BLOCK_R]
    cols = tl.arange(0, BLOCK_C)  # [BLOCK_C]
    mask = (rows < N)[:, None] & (cols < C)[None, :]
    s = tl.load(x_ptr + rows[:, None] * stride_x + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    if HAS_TAPS:
        s += tl.load(x1_ptr + rows[:, None] * stride_x1 + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        s += tl.load(x2_ptr + rows[:, None] * stride_x2 + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        s += tl.load(bias_ptr + cols, mask=cols < C, other=0.0).to(tl.float32)[None, :]
    if HAS_RES:
        r = tl.load(res_ptr + rows[:, None] * stride_res + cols[None, :], mask=mask, other=0.0)
        s += r.to(tl.float32)
    if WRITE_SUM:
        tl.store(sum_ptr + rows[:, None] * stride_sum + cols[None, :], s.to(sum_ptr.dtype.element_ty), mask=mask)

    # 2. unit L2 norm per row, times sqrt(C) and gamma, then SiLU, all in fp32
    if WRITE_NORM:
        inv = scale / tl.maximum(tl.sqrt(tl.sum(s * s, axis=1)), eps)  # [BLOCK_R]
        g = tl.load(gamma_ptr + cols, mask=cols < C, other=0.0).to(tl.float32)  # [BLOCK_C]
        y = s * inv[:, None] * g[None, :]
        y = y * tl.sigmoid(y)
        tl.store(out_ptr + rows[:, None] * stride_out + cols[None, :], y.to(out_ptr.dtype.element_ty), mask=mask)


# 3. autotune configs ----------------------------------------------------------------------------------
_CONFIGS = [
    triton.Config({"BLOCK_R": br}, num_warps=nw, num_stages=1)
    for br in (4, 8, 16, 32, 64, 128, 256)
    for nw in (4, 8)
]


def _prune(configs: list[triton.Config], named_args: dict, **kwargs) -> list[triton.Config]:
    """Tiles of 4K-32K elements with >= 8 per thread. On CPU (interpreter) keep the tallest tile: the
    interpreter's cost is per program."""
    if not named_args["x_ptr"].is_cuda:
        return [max(configs, key=lambda cfg: cfg.kwargs["BLOCK_R"])]
    block_c = {**named_args, **kwargs}["BLOCK_C"]
    tile = lambda cfg: cfg.kwargs["BLOCK_R"] * block_c
    kept = [cfg for cfg in configs if 4096 <= tile(cfg) <= 32768 and tile(cfg) >= 8 * 32 * cfg.num_warps]
    return kept or configs[:1]


# sum_out may alias x (tap_sum_out in place): each tuning trial starts from the saved value.
_rmsnorm_silu = triton.autotune(
    configs=_CONFIGS, key=["C"], prune_configs_by={"early_config_prune": _prune}, restore_value=["sum_ptr"]
)(_rmsnorm_silu_kernel)


def _check_rows(name: str, t: torch.Tensor, n: int, c: int) -> None:
    if t.shape != (n, c):
        raise ValueError(f"{name} must be [{n}, {c}], got {tuple(t.shape)}")
    if c > 1 and t.stride(1) != 1:
        raise ValueError(f"{name} needs a contiguous channel dim (stride 1), got strides {t.stride()}")
    if t.dtype not in (torch.bfloat16, torch.float16, torch.float32):
        raise TypeError(f"unsupported {name} dtype {t.dtype}")


def _launch(
    x: torch.Tensor,
    gamma: torch.Tensor | None,
    out: torch.Tensor | None,
    residual: torch.Tensor | None,
    sum_out: torch.Tensor | None,
    eps: float,
    taps: tuple[torch.Tensor, torch.Tensor] | None = None,
    bias: torch.Tensor | None = None,
) -> None:
    if x.dim() != 2:
        raise ValueError(f"x must be [N, C] rows, got {tuple(x.shape)}")
    N, C = x.shape
    x1, x2 = taps if taps is not None else (None, None)
    named = (("x", x), ("x1", x1), ("x2", x2), ("out", out), ("residual", residual), ("sum_out", sum_out))
    for name, t in named:
        if t is not None:
            _check_rows(name, t, N, C)
    if out is not None and (gamma is None or gamma.numel() != C or not gamma.is_floating_point()):
        got = None if gamma is None else (gamma.dtype, tuple(gamma.shape))
        raise ValueError(f"gamma must hold {C} floats, got {got}")
    if bias is not None and (bias.numel() != C or not bias.is_floating_point()):
        raise ValueError(f"bias must hold {C} floats, got {(bias.dtype, tuple(bias.shape))}")
    if N == 0:
        return
    gamma = gamma.reshape(C).contiguous() if gamma is not None else x
    bias_t = bias.reshape(C).contiguous() if bias is not None else x
    x1 = x1 if x1 is not None else x
    x2 = x2 if x2 is not None else x
    res = residual if residual is not None else x
    outp = out if out is not None else x  # never written without WRITE_NORM
    summ = sum_out if sum_out is not None else x  # never written without WRITE_SUM
    grid = lambda meta: (triton.cdiv(N, meta["BLOCK_R"]),)
    _rmsnorm_silu[grid](
        x, x1, x2, res, bias_t, gamma, outp, summ,
        N, C, x.stride(0), x1.stride(0), x2.stride(0), res.stride(0), outp.stride(0), summ.stride(0),
        float(C) ** 0.5, eps,
        HAS_TAPS=taps is not None, HAS_RES=residual is not None, HAS_BIAS=bias is not None, WRITE_SUM=sum_out is not None,
        WRITE_NORM=out is not None, BLOCK_C=triton.next_power_of_2(C),
    )  # fmt: skip


# 4. public wrappers (torch.library ops with fake impls) ----------------------------------------------
@torch.library.custom_op("turbovid::rmsnorm_silu", mutates_args=())
def rmsnorm_silu(x: torch.Tensor, gamma: torch.Tensor, residual: torch.Tensor | None = None, eps: float = EPS) -> torch.Tensor:
    """silu(rms_norm(x (+ residual)) · gamma) -> [N, C] in x.dtype. x, residual [N, C]; gamma [C]."""
    out = torch.empty(x.shape, device=x.device, dtype=x.dtype)
    _launch(x, gamma, out, residual, None, eps)
    return out


@rmsnorm_silu.register_fake
def _(x, gamma, residual=None, eps=EPS):
    return torch.empty(x.shape, device=x.device, dtype=x.dtype)


# Two out-variants with every argument required: optional mutated arguments trip torch 2.11's
# ADInplaceOrView step when left out.
@torch.library.custom_op("turbovid::rmsnorm_silu_out", mutates_args=("out",))
def _rmsnorm_silu_out(x: torch.Tensor, gamma: torch.Tensor, out: torch.Tensor, eps: float,
                      bias: torch.Tensor | None = None) -> None:
    _launch(x, gamma, out, None, None, eps, bias=bias)


@_rmsnorm_silu_out.register_fake
def _(x, gamma, out, eps, bias=None):
    return None


@torch.library.custom_op("turbovid::rmsnorm_silu_residual_out", mutates_args=("out", "sum_out"))
def _rmsnorm_silu_residual_out(
    x: torch.Tensor, residual: torch.Tensor, gamma: torch.Tensor, out: torch.Tensor, sum_out: torch.Tensor, eps: float
) -> None:
    _launch(x, gamma, out, residual, sum_out, eps)


@_rmsnorm_silu_residual_out.register_fake
def _(x, residual, gamma, out, sum_out, eps):
    return None


@torch.library.custom_op("turbovid::tap_sum_rmsnorm_silu_out", mutates_args=("out",))
def tap_sum_rmsnorm_silu_out(
    x0: torch.Tensor, x1: torch.Tensor, x2: torch.Tensor, gamma: torch.Tensor, out: torch.Tensor, eps: float = EPS,
    bias: torch.Tensor | None = None,
) -> None:
    """out <- silu(rms_norm(x0 + x1 + x2 (+ bias)) · gamma): a conv's three time-tap partial outputs (and
    its bias [C]) summed and normalised in one pass. All [N, C] rows with stride 1 over C; out must not
    overlap the inputs."""
    _launch(x0, gamma, out, None, None, eps, taps=(x1, x2), bias=bias)


@tap_sum_rmsnorm_silu_out.register_fake
def _(x0, x1, x2, gamma, out, eps=EPS, bias=None):
    return None


@torch.library.custom_op("turbovid::tap_sum_out", mutates_args=("sum_out",))
def tap_sum_out(x0: torch.Tensor, x1: torch.Tensor, x2: torch.Tensor, residual: torch.Tensor, sum_out: torch.Tensor,
                bias: torch.Tensor | None = None) -> None:
    """sum_out <- x0 + x1 + x2 (+ bias) + residual (fp32 math): three tap partials (and the conv's bias [C])
    plus the residual stream. sum_out may be x0 (each element is read before it is written)."""
    _launch(x0, None, None, residual, sum_out, EPS, taps=(x1, x2), bias=bias)


@tap_sum_out.register_fake
def _(x0, x1, x2, residual, sum_out, bias=None):
    return None


@torch.library.custom_op("turbovid::residual_sum_out", mutates_args=("out",))
def residual_sum_out(x: torch.Tensor, residual: torch.Tensor, out: torch.Tensor, bias: torch.Tensor | None = None) -> None:
    """out <- x (+ bias) + residual (fp32 math): a conv's output, its deferred bias [C] and the residual
    stream in one pass. out may be x."""
    _launch(x, None, None, residual, out, EPS, bias=bias)


@residual_sum_out.register_fake
def _(x, residual, out, bias=None):
    return None


def rmsnorm_silu_out(
    x: torch.Tensor,
    gamma: torch.Tensor,
    out: torch.Tensor,
    residual: torch.Tensor | None = None,
    sum_out: torch.Tensor | None = None,
    eps: float = EPS,
    bias: torch.Tensor | None = None,
) -> None:
    """Write silu(rms_norm(x (+ bias) (+ residual)) · gamma) into ``out`` and, with a residual, x + residual
    into ``sum_out``. All [N, C] with stride 1 over C, any row stride (e.g. frames of a padded buffer);
    bias [C] (a conv's, deferred to this pass; not with a residual). ``out`` and ``sum_out`` must not
    overlap x or residual (autotuning trials rerun the kernel)."""
    if residual is None:
        if sum_out is not None:
            raise ValueError("sum_out needs a residual (without one it would equal x)")
        torch.ops.turbovid.rmsnorm_silu_out(x, gamma, out, eps, bias)
    else:
        if sum_out is None:
            raise ValueError("rmsnorm_silu_out with a residual needs sum_out (or use rmsnorm_silu)")
        if bias is not None:
            raise ValueError("rmsnorm_silu_out takes a bias only without a residual")
        torch.ops.turbovid.rmsnorm_silu_residual_out(x, residual, gamma, out, sum_out, eps)


# 5. bench ---------------------------------------------------------------------------------------------
def bench(copy_gbps: float | None = None) -> list[dict]:
    """Time the kernel vs Wan's eager RMS_norm + SiLU at the VAE decoder's real shapes (480p, bf16,
    4 frames at a time). GB/s counts x (and residual) read and out (and sum) written once."""
    from triton.testing import do_bench

    shapes = [(96, 4 * 480 * 832), (192, 4 * 240 * 416), (384, 2 * 120 * 208)]
    rows = []
    for C, N in shapes:
        x = torch.randn(N, C, device="cuda", dtype=torch.bfloat16)
        r = torch.randn(N, C, device="cuda", dtype=torch.bfloat16)
        gamma = 1 + 0.1 * torch.randn(C, device="cuda", dtype=torch.bfloat16)
        out, summ = torch.empty_like(x), torch.empty_like(x)

        def eager(x=x, gamma=gamma, C=C):
            return F.silu((F.normalize(x.float(), dim=1) * C**0.5).to(x.dtype) * gamma)

        ref, _ = reference(x, gamma)
        rel = ((rmsnorm_silu(x, gamma).float() - ref).norm() / ref.norm()).item()
        t_e = do_bench(eager, warmup=25, rep=200, return_mode="median")
        t_k = do_bench(lambda: rmsnorm_silu_out(x, gamma, out), warmup=25, rep=200, return_mode="median")  # noqa: B023
        t_r = do_bench(
            lambda: rmsnorm_silu_out(x, gamma, out, residual=r, sum_out=summ),  # noqa: B023
            warmup=25, rep=200, return_mode="median",
        )  # fmt: skip
        for name, t, nbytes in (("norm+silu", t_k, 2 * x.numel() * 2), ("+residual", t_r, 4 * x.numel() * 2)):
            gbps = nbytes / t / 1e6
            row = {"kernel": name, "C": C, "N": N, "ms": t, "eager_ms": t_e, "GB/s": gbps, "rel_err": rel,
                   "pct_copy": 100 * gbps / copy_gbps if copy_gbps else float("nan")}  # fmt: skip
            rows.append(row)
            print(
                f"rmsnorm_silu {name:10s} C={C:4d} N={N:8d}: {t * 1e3:8.1f} us {gbps:7.0f} GB/s "
                f"{row['pct_copy']:5.1f}% of copy | eager norm+silu {t_e * 1e3:8.1f} us x{t_e / t:.2f} | rel err {rel:.1e}"
            )
    return rows


if __name__ == "__main__":
    bench()
