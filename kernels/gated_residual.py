"""Gated residual add for Wan blocks: ``out = x + gate[b] * y`` in fp32, stored in x's dtype.

Wan adds each branch back with a per-batch gate from the timestep modulation, under fp32 autocast:
``x = x + y * e[2]`` (attention) and ``x = x + y * e[5]`` (FFN). One elementwise pass:

    out[b, l, c] = x[b, l, c] + gate[b, c] * y[b, l, c]        # fp32 math, cast to x.dtype

Layouts:
    x, y   [B, L, C]  bf16 / fp16 / fp32 (may differ), contiguous
    gate   [B, C]     any float dtype (Wan's is fp32); last dim contiguous, any batch stride
    out    [B, L, C]  dtype of x; ``gated_residual_`` writes it into x in place
Any L and C. Real Wan shapes: C = 1536 and 5120, L = 32760.
Reference: Wan2.1 ``wan/modules/model.py`` (WanAttentionBlock.forward).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["reference", "gated_residual", "gated_residual_", "bench"]


# 1. reference ----------------------------------------------------------------------------------------
def reference(
    x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor, compute_dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Plain-PyTorch definition of :func:`gated_residual`; returns ``compute_dtype``."""
    return x.to(compute_dtype) + gate.to(compute_dtype)[:, None, :] * y.to(compute_dtype)


# 2. kernel --------------------------------------------------------------------------------------------
@triton.jit
def _gated_residual_kernel(
    # pointers
    x_ptr,
    y_ptr,
    gate_ptr,
    out_ptr,  # may alias x_ptr (in place)
    # sizes
    N,  # rows = B * L
    L,
    C,
    stride_gate_b,
    # meta
    BLOCK_L: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    # 1. a [BLOCK_L, BLOCK_C] tile of the flattened [N, C] tensors
    rows = tl.program_id(0) * BLOCK_L + tl.arange(0, BLOCK_L)  # [BLOCK_L]
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)  # [BLOCK_C]
    mask = (rows < N)[:, None] & (cols < C)[None, :]
    offs = rows.to(tl.int64)[:, None] * C + cols[None, :]  # [BLOCK_L, BLOCK_C]
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    y = tl.load(y_ptr + offs, mask=mask, other=0.0).to(tl.float32)

    # 2. each row's batch gate (a tile may straddle two batch elements)
    b = (rows // L).to(tl.int64)  # [BLOCK_L]
    g = tl.load(gate_ptr + b[:, None] * stride_gate_b + cols[None, :], mask=mask, other=0.0)

    # 3. fp32 fused multiply-add, stored in the output dtype
    tl.store(out_ptr + offs, (x + g.to(tl.float32) * y).to(out_ptr.dtype.element_ty), mask=mask)


# 3. autotune configs ----------------------------------------------------------------------------------
_CONFIGS = [
    triton.Config({"BLOCK_L": bl, "BLOCK_C": bc}, num_warps=nw, num_stages=1)
    for bl, bc in ((1, 1024), (1, 2048), (2, 1024), (4, 512), (4, 1024), (8, 256), (8, 512), (16, 256))
    for nw in (4, 8)
]


def _prune(configs: list[triton.Config], named_args: dict, **kwargs) -> list[triton.Config]:
    """Drop column blocks wider than the row; on CPU (interpreter) keep one."""
    c_pow2 = triton.next_power_of_2({**named_args, **kwargs}["C"])
    kept = [cfg for cfg in configs if cfg.kwargs["BLOCK_C"] <= max(c_pow2, 256)] or configs[:1]
    if not named_args["x_ptr"].is_cuda:
        return kept[:1]
    return kept


_gated_residual = triton.autotune(
    configs=_CONFIGS, key=["C"], prune_configs_by={"early_config_prune": _prune}
)(_gated_residual_kernel)
# In place, tuning runs must not compound on x: the autotuner restores it after each trial.
_gated_residual_inplace = triton.autotune(
    configs=_CONFIGS,
    key=["C"],
    prune_configs_by={"early_config_prune": _prune},
    restore_value=["out_ptr"],
)(_gated_residual_kernel)


def _check(x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor) -> None:
    if x.dim() != 3 or y.shape != x.shape:
        raise ValueError(f"x and y must be the same [B, L, C], got {tuple(x.shape)} and {tuple(y.shape)}")
    for name, t in (("x", x), ("y", y)):
        if t.dtype not in (torch.bfloat16, torch.float16, torch.float32):
            raise TypeError(f"unsupported {name} dtype {t.dtype}")
    B, _, C = x.shape
    if gate.shape != (B, C) or not gate.is_floating_point():
        raise ValueError(f"gate must be a float [{B}, {C}], got {gate.dtype} {tuple(gate.shape)}")


def _launch(kernel, x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor, out: torch.Tensor) -> None:
    B, L, C = x.shape
    N = B * L
    if N == 0 or C == 0:
        return
    gate = gate if gate.stride(1) == 1 else gate.contiguous()
    grid = lambda meta: (triton.cdiv(N, meta["BLOCK_L"]), triton.cdiv(C, meta["BLOCK_C"]))
    kernel[grid](x, y, gate, out, N, L, C, gate.stride(0))


# 4. public wrappers (torch.library ops with fake impls) ----------------------------------------------
@torch.library.custom_op("turbovid::gated_residual", mutates_args=())
def gated_residual(x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """``x + gate[:, None, :] * y`` in fp32 -> [B, L, C] in x.dtype. x, y [B, L, C]; gate [B, C]."""
    _check(x, y, gate)
    x, y = x.contiguous(), y.contiguous()
    out = torch.empty_like(x)
    _launch(_gated_residual, x, y, gate, out)
    return out


@gated_residual.register_fake
def _(x, y, gate):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.custom_op("turbovid::gated_residual_", mutates_args=("x",))
def gated_residual_(x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor) -> None:
    """In place: ``x += gate[:, None, :] * y`` (fp32 math). x must be contiguous."""
    _check(x, y, gate)
    if not x.is_contiguous():
        raise ValueError("in-place gated_residual_ needs a contiguous x")
    _launch(_gated_residual_inplace, x, y.contiguous(), gate, x)


@gated_residual_.register_fake
def _(x, y, gate):
    return None


# 5. bench ---------------------------------------------------------------------------------------------
def bench(copy_gbps: float | None = None, L: int = 32760, dims: tuple[int, ...] = (1536, 5120)) -> list[dict]:
    """Time the kernel (out of place and in place) vs eager PyTorch at Wan shapes (B=1, bf16 x and y).

    GB/s counts x and y read and out written once (the gate is negligible). Eager is Wan's
    ``x + y * gate`` in fp32 then cast back. ``copy_gbps``: a device-to-device copy's bandwidth
    measured in the same process (read + write).
    """
    from triton.testing import do_bench

    rows = []
    for C in dims:
        x = torch.randn(1, L, C, device="cuda", dtype=torch.bfloat16)
        y = torch.randn(1, L, C, device="cuda", dtype=torch.bfloat16)
        gate = (torch.randn(1, 6, C, device="cuda") * 0.1)[:, 2]  # a chunk of Wan's fp32 modulation

        def eager(x=x, y=y, gate=gate):
            return (x.float() + y.float() * gate[:, None]).to(x.dtype)

        ref = reference(x, y, gate)
        out = gated_residual(x, y, gate)
        rel = ((out.float() - ref).norm() / ref.norm()).item()
        x2 = x.clone()
        gated_residual_(x2, y, gate)
        rel_ip = ((x2.float() - ref).norm() / ref.norm()).item()

        t_e = do_bench(eager, warmup=25, rep=200, return_mode="median")
        t_k = do_bench(lambda: gated_residual(x, y, gate), warmup=25, rep=200, return_mode="median")  # noqa: B023
        # in place on x2: its values drift over the repeats, which does not change the traffic
        t_i = do_bench(lambda: gated_residual_(x2, y, gate), warmup=25, rep=200, return_mode="median")  # noqa: B023
        nbytes = 3 * x.numel() * 2 + C * 4
        for name, t, err in (("gated_residual", t_k, rel), ("gated_residual_", t_i, rel_ip)):
            gbps = nbytes / t / 1e6
            row = {
                "kernel": name,
                "C": C,
                "L": L,
                "ms": t,
                "eager_ms": t_e,
                "GB/s": gbps,
                "pct_copy": 100 * gbps / copy_gbps if copy_gbps else float("nan"),
                "speedup": t_e / t,
                "rel_err": err,
            }
            rows.append(row)
            print(
                f"{name:16s} C={C:5d} L={L}: {t * 1e3:8.1f} us {gbps:7.0f} GB/s "
                f"{row['pct_copy']:5.1f}% of copy | eager {t_e * 1e3:8.1f} us x{row['speedup']:.2f} "
                f"| rel err {err:.1e}"
            )
    return rows


if __name__ == "__main__":
    bench()
