"""W8A8 linear: y = x @ wᵀ + b with int8 weights, int8 per-token activations, int32 accumulation.

Algorithm (TurboDiffusion W8A8 semantics, arXiv 2512.16093; scales kept out of the K loop):
  load time   checkpoint `int8_weight` [N, K] + 128×128 block `scale` [ceil(N/128), ceil(K/128)]
              -> `prepare_weight` -> W8A8Weight(qweight [N, K] int8, scale [N] fp32) (per output channel,
              kernels/int8_quant.requantize_per_channel).
  run time    x [M, K] bf16/fp16 -> per-token int8 q [M, K] + sx [M] fp32 (int8_quant kernel), then
              acc[M, N] = Σ_k q[m, k]·qweight[n, k] in int32 (tensor cores, no scaling in the loop),
              epilogue y = acc · sx[m] · sw[n] + bias[n], cast to x's dtype.
Why per-channel: block scales multiplied inside the K loop break the tensor-core pipeline; with scales
only in the epilogue the GEMM beats bf16 (the measurements: kernels/NOTES_w8a8.md).

Two kernels:
  `_w8a8_tma_kernel`  sm90+: persistent grid (one program per SM, grouped tile order), host TMA tensor
                      descriptors for A, B and the output, wgmma (int8 s8.s8.s32), 128×256×128 tiles.
                      Needs K % 16 == 0 and N % 8 == 0 (16-byte TMA strides).
  `_w8a8_kernel`      portable (sm80/sm89/sm120 and any shape): pointer loads with masks.
Both support any M (partial tiles masked/clipped). Inputs: x 2-D or 3-D, bf16 or fp16, last dim contiguous.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from kernels.int8_quant import (
    dequantize_weight_blockwise,
    quantize_activation,
    reference_quantize_activation,
    requantize_per_channel,
)


class W8A8Weight(NamedTuple):
    """Load-time layout for `w8a8_linear`: qweight [N, K] int8 (K contiguous), scale [N] fp32."""

    qweight: torch.Tensor
    scale: torch.Tensor


def prepare_weight(int8_weight: torch.Tensor, scale: torch.Tensor) -> W8A8Weight:
    """Checkpoint int8_weight [N, K] + block scale [ceil(N/128), ceil(K/128)] -> W8A8Weight (per channel)."""
    q, s = requantize_per_channel(int8_weight, scale)
    return W8A8Weight(q, s)


# ----------------------------------------------------------------------------------------------
# 1. reference (fp32); the kernel's exact math in torch is tests/unit/kernels/_w8a8_emulate.py
# ----------------------------------------------------------------------------------------------


def reference(
    x: torch.Tensor, int8_weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """The layer the checkpoint defines: x [..., K] @ (int8_weight·block scale)ᵀ + bias in fp32 -> x.dtype."""
    w = dequantize_weight_blockwise(int8_weight, scale)  # [N, K] fp32
    y = x.float() @ w.t()
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)


# ----------------------------------------------------------------------------------------------
# 2. kernels
# ----------------------------------------------------------------------------------------------


@triton.jit
def _tile_coords(tile_id, num_pid_m, num_pid_n, GROUP_M: tl.constexpr):
    """Grouped ordering: GROUP_M row-tiles share each column sweep, so B tiles stay in L2."""
    group_size = GROUP_M * num_pid_n
    first_m = (tile_id // group_size) * GROUP_M
    rows_in_group = tl.minimum(num_pid_m - first_m, GROUP_M)
    pid_m = first_m + (tile_id % group_size) % rows_in_group
    pid_n = (tile_id % group_size) // rows_in_group
    return pid_m, pid_n


@triton.jit
def _w8a8_kernel(
    # pointers
    a_ptr,  # [M, K] int8 activations
    b_ptr,  # [N, K] int8 weight
    sa_ptr,  # [M] fp32 per-token scales
    sb_ptr,  # [N] fp32 per-channel scales
    bias_ptr,  # [N] or dummy
    c_ptr,  # [M, N] output
    # sizes
    M,
    N,
    K,
    stride_am,
    stride_bn,
    stride_cm,
    # meta
    HAS_BIAS: tl.constexpr,
    EPILOGUE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    # 1. which output tile
    pid_m, pid_n = _tile_coords(tl.program_id(0), tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N), GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # [BM]
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # [BN]
    offs_k = tl.arange(0, BLOCK_K)  # [BK]
    a_ptrs = a_ptr + offs_m[:, None] * stride_am + offs_k[None, :]  # [BM, BK]
    b_ptrs = b_ptr + offs_n[:, None] * stride_bn + offs_k[None, :]  # [BN, BK]

    # 2. int32 main loop, no scaling inside
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.int32)
    for k0 in range(0, K, BLOCK_K):
        k_ok = (k0 + offs_k) < K
        a = tl.load(a_ptrs, mask=(offs_m[:, None] < M) & k_ok[None, :], other=0)
        b = tl.load(b_ptrs, mask=(offs_n[:, None] < N) & k_ok[None, :], other=0)
        acc = tl.dot(a, b.T, acc, out_dtype=tl.int32)  # [BM, BN]
        a_ptrs += BLOCK_K
        b_ptrs += BLOCK_K

    # 3. epilogue: per-token × per-channel scale, bias, cast
    m_ok = offs_m < M
    n_ok = offs_n < N
    if EPILOGUE:
        sa = tl.load(sa_ptr + offs_m, mask=m_ok, other=0.0)
        sb = tl.load(sb_ptr + offs_n, mask=n_ok, other=0.0)
        y = acc.to(tl.float32) * sa[:, None] * sb[None, :]
        if HAS_BIAS:
            y += tl.load(bias_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    else:
        y = acc.to(tl.float32)
    c_ptrs = c_ptr + offs_m[:, None] * stride_cm + offs_n[None, :]
    tl.store(c_ptrs, y.to(c_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


@triton.jit
def _w8a8_tma_kernel(
    # descriptors / pointers
    a_desc,  # [M, K] int8, block [BM, BK]
    b_desc,  # [N, K] int8, block [BN, BK]
    c_desc,  # [M, N] out dtype, block [BM, BN]
    sa_ptr,
    sb_ptr,
    bias_ptr,
    inv_ptr,  # [M] fp32 127/absmax per token, read only with FUSED_QUANT
    # sizes
    M,
    N,
    K,
    # meta
    HAS_BIAS: tl.constexpr,
    EPILOGUE: tl.constexpr,
    FUSED_QUANT: tl.constexpr,  # a_desc holds bf16/fp16 x: quantize each tile in registers
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
    NUM_SMS: tl.constexpr,
    FLATTEN: tl.constexpr = False,  # the tile and K loops as one software-pipelined loop (scripts/gemm_variants.py)
    WARP_SPEC: tl.constexpr = False,  # Triton's automatic warp specialization of the tile loop
):
    # 1. persistent schedule: program p takes tiles p, p + NUM_SMS, ...
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    k_tiles = tl.cdiv(K, BLOCK_K)
    out_dtype = c_desc.dtype
    for tile_id in tl.range(tl.program_id(0), num_pid_m * num_pid_n, NUM_SMS, flatten=FLATTEN,
                            warp_specialize=WARP_SPEC):
        pid_m, pid_n = _tile_coords(tile_id, num_pid_m, num_pid_n, GROUP_M)
        off_m = pid_m * BLOCK_M
        off_n = pid_n * BLOCK_N

        # 2. TMA loads -> wgmma, int32 accumulators in registers (out-of-range rows/cols read as 0)
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.int32)
        if FUSED_QUANT:
            rows = off_m + tl.arange(0, BLOCK_M)
            inv = tl.load(inv_ptr + rows, mask=rows < M, other=0.0)  # [BM]
        for ki in range(k_tiles):
            if FUSED_QUANT:
                v = a_desc.load([off_m, ki * BLOCK_K]).to(tl.float32) * inv[:, None]  # [BM, BK]
                v = tl.where(v >= 0, v + 0.5, v - 0.5)
                a = tl.minimum(tl.maximum(v, -127.0), 127.0).to(tl.int8)
            else:
                a = a_desc.load([off_m, ki * BLOCK_K])  # [BM, BK] int8
            b = b_desc.load([off_n, ki * BLOCK_K])  # [BN, BK]
            acc = tl.dot(a, b.T, acc, out_dtype=tl.int32)  # [BM, BN]

        # 3. epilogue; the TMA store clips rows >= M and cols >= N
        if EPILOGUE:
            offs_m = off_m + tl.arange(0, BLOCK_M)
            offs_n = off_n + tl.arange(0, BLOCK_N)
            sa = tl.load(sa_ptr + offs_m, mask=offs_m < M, other=0.0)
            sb = tl.load(sb_ptr + offs_n, mask=offs_n < N, other=0.0)
            y = acc.to(tl.float32) * sa[:, None] * sb[None, :]
            if HAS_BIAS:
                y += tl.load(bias_ptr + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)[None, :]
        else:
            y = acc.to(tl.float32)
        c_desc.store([off_m, off_n], y.to(out_dtype))


# ----------------------------------------------------------------------------------------------
# 3. configs (autotuned on GPU; one small fixed config on CPU for the interpreter)
# ----------------------------------------------------------------------------------------------

_SMEM_HEADROOM = 4 * 1024  # barriers and layout padding beyond the tiles counted below


@functools.cache
def _smem_limit(device_index: int) -> int:
    """Shared memory per block on this GPU (227 KB on H100/H200, ~99 KB on sm89/sm120)."""
    props = triton.runtime.driver.active.utils.get_device_properties(device_index)
    return props["max_shared_mem"] - _SMEM_HEADROOM


def _tma_configs() -> list[triton.Config]:
    shapes = [  # BM, BN, BK, stages, warps
        (128, 256, 128, 3, 8),
        (128, 256, 64, 4, 8),
        (256, 128, 128, 3, 8),
        (256, 128, 64, 4, 8),
        (128, 128, 128, 4, 8),
        (128, 128, 128, 4, 4),
        (128, 256, 128, 4, 8),  # pruned on 227 KB parts; kept for larger shared memory
    ]
    # The tile loop flattened (and warp-specialized): on the H200 (scripts/gemm_variants.py, session 17) 6 %
    # faster for 1.3B qkvo / ffn_up and 14B qkvo, 1-9 % slower for ffn_down / 14B ffn_up: the autotuner picks.
    loops = [  # BM, BN, BK, stages, warps, FLATTEN, WARP_SPEC
        (128, 256, 128, 3, 8, True, False),
        (256, 128, 128, 3, 8, True, False),
        (128, 256, 128, 3, 8, True, True),
    ]
    plain = [(*shape, False, False) for shape in shapes]
    return [
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8, "FLATTEN": fl, "WARP_SPEC": ws},
                      num_stages=s, num_warps=w)
        for bm, bn, bk, s, w, fl, ws in plain + loops
    ]


def _portable_configs() -> list[triton.Config]:
    shapes = [
        (128, 256, 64, 3, 8),
        (128, 128, 64, 4, 8),
        (64, 128, 64, 4, 4),
    ]
    return [
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8}, num_stages=s, num_warps=w)
        for bm, bn, bk, s, w in shapes
    ]


def _prune(configs: list[triton.Config], named_args: dict, **kwargs) -> list[triton.Config]:
    """Drop configs whose shared memory does not fit, or whose tiles are far larger than the problem."""
    return select_configs(configs, named_args["K"], _smem_limit(torch.cuda.current_device()))


def select_configs(configs: list[triton.Config], k: int, smem_limit: int) -> list[triton.Config]:
    """`_prune` for a given shared-memory limit (bytes per block) and K (also `kernels.compile_check`'s)."""
    out_bytes = 2
    kept = []
    for c in configs:
        bm, bn, bk = c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"]
        smem = c.num_stages * (bm + bn) * bk + bm * bn * out_bytes
        if smem <= smem_limit and bk <= max(32, triton.next_power_of_2(k)):
            kept.append(c)
    return kept or configs[-1:]


def _set_tma_blocks(nargs: dict) -> None:
    bm, bn, bk = nargs["BLOCK_M"], nargs["BLOCK_N"], nargs["BLOCK_K"]
    nargs["a_desc"].block_shape = [bm, bk]
    nargs["b_desc"].block_shape = [bn, bk]
    nargs["c_desc"].block_shape = [bm, bn]


def _with_hook(configs: list[triton.Config]) -> list[triton.Config]:
    for c in configs:
        c.pre_hook = _set_tma_blocks
    return configs


_w8a8_tuned = triton.autotune(
    _portable_configs(),
    key=["N", "K", "HAS_BIAS", "EPILOGUE"],
    prune_configs_by={"early_config_prune": _prune},
)(_w8a8_kernel)
_w8a8_tma_tuned = triton.autotune(
    _with_hook(_tma_configs()),
    key=["N", "K", "HAS_BIAS", "EPILOGUE"],
    prune_configs_by={"early_config_prune": _prune},
)(_w8a8_tma_kernel)

# The interpreter runs every program in Python: tiny tiles keep CPU tests fast.
INTERPRET_CONFIG = {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 32, "GROUP_M": 2}


@functools.cache
def _num_sms(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _device_index(device: torch.device) -> int:
    """A CUDA device's index ("cuda" without one: the current device)."""
    return device.index if device.index is not None else torch.cuda.current_device()


# sm90 runs `kernels.w8a8_gluon` by default: the same persistent TMA GEMM in Gluon, its int8 MMAs asynchronous
# (one wgmma group in flight), 1.00-1.15x `_w8a8_tma_kernel` with bit-equal output (Triton's pipeliner keeps
# int32-accumulator dots synchronous; kernels/NOTES_w8a8.md, session 27). TURBOVID_WORKER__W8A8_BACKEND (the
# worker setting `w8a8_backend`) = auto (default) / gluon / triton chooses on Hopper. (Kept below the kernels:
# Triton's cache key holds their lines.)
BACKEND_ENV = "TURBOVID_WORKER__W8A8_BACKEND"
BACKEND_CHOICES = ("auto", "gluon", "triton")


_GLUON_CHECKED: dict[int, bool] = {}  # device index -> `_check_gluon`'s answer, once per process
# the Triton kernel's tile for that check: fixed, so the check compiles one kernel and tunes nothing (the H200's
# autotuner picked this one at the check's shape)
_CHECK_CONFIG = {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 128, "GROUP_M": 8, "num_warps": 8, "num_stages": 4}


def _gluon_usable(device_index: int) -> bool:
    """Whether `kernels.w8a8_gluon` runs here (`_check_gluon`, once per device and process). Inside a CUDA graph
    capture the check cannot launch and compare, so a first call there answers False (the Triton kernel is
    captured) without remembering it."""
    from kernels import checked_once

    return checked_once(_GLUON_CHECKED, device_index, lambda: _check_gluon(device_index))


def _check_gluon(device_index: int) -> bool:
    """A Hopper GPU (sm90: its wgmma), a Triton with the Gluon Hopper API, not turned off by
    TURBOVID_WORKER__W8A8_BACKEND=triton, and one small launch equal to the Triton kernel's output (a Triton
    whose Gluon compiles differently falls back with a warning)."""
    import logging

    from kernels import env_choice, w8a8_gluon

    log = logging.getLogger(__name__)
    if env_choice(BACKEND_ENV, BACKEND_CHOICES, "auto") == "triton" or torch.cuda.get_device_capability(device_index) != (9, 0) or not w8a8_gluon.available():
        return False
    try:
        dev = torch.device("cuda", device_index)
        g = torch.Generator(device="cpu").manual_seed(0)
        xq = torch.randint(-127, 128, (300, 256), generator=g, dtype=torch.int8).to(dev)
        wq = torch.randint(-127, 128, (272, 256), generator=g, dtype=torch.int8).to(dev)
        sx, sw = torch.rand(300, generator=g).to(dev), torch.rand(272, generator=g).to(dev)
        bias = torch.randn(272, generator=g).to(dev, torch.bfloat16)
        want = w8a8_gemm(xq, sx, W8A8Weight(wq, sw), bias, torch.bfloat16, backend="tma", config=_CHECK_CONFIG)
        got = w8a8_gluon.w8a8_gemm_gluon(xq, sx, wq, sw, bias, torch.bfloat16)
        if torch.equal(got, want):
            return True
        log.warning("the Gluon int8 GEMM differs from the Triton one on this Triton %s: using Triton's",
                    triton.__version__)
    except Exception as exc:  # noqa: BLE001 - any failure means: use the Triton kernel
        log.warning("the Gluon int8 GEMM does not run on this Triton %s (%s): using Triton's", triton.__version__,
                    f"{type(exc).__name__}: {str(exc)[:200]}")
    return False


def gemm_kernel(device: torch.device) -> str:
    """Which int8 GEMM `w8a8_gemm` runs on `device` for TMA-aligned shapes: "gluon", "triton-tma" or "portable"
    (for the worker's log; on sm90 this runs `_gluon_usable`'s one-time check)."""
    if not tma_supported(device, 16, 16):
        return "portable"
    return "gluon" if _gluon_usable(_device_index(device)) else "triton-tma"


def tma_supported(device: torch.device, n: int, k: int) -> bool:
    """True where the sm90 TMA kernel applies: Hopper or newer and 16-byte aligned row strides."""
    if device.type != "cuda" or torch.cuda.get_device_capability(device)[0] < 9:
        return False
    return k % 16 == 0 and n % 8 == 0


# ----------------------------------------------------------------------------------------------
# 4. public wrapper: check shapes -> allocate -> launch (a torch.library op with a fake impl)
# ----------------------------------------------------------------------------------------------


def w8a8_gemm(
    xq: torch.Tensor,
    sx: torch.Tensor,
    weight: W8A8Weight,
    bias: torch.Tensor | None,
    out_dtype: torch.dtype,
    *,
    backend: str = "auto",
    config: dict | None = None,
    epilogue: bool = True,
    inv: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
):
    """Pre-quantized xq [M, K] int8 + sx [M] -> y [M, N] in out_dtype.

    backend: "auto" (sm90: the Gluon kernel, `kernels.w8a8_gluon`; the Triton TMA kernel on other sm90+
    parts, with a fixed config, with `inv` or without epilogue; else portable), "gluon", "tma" or
    "portable". config: a fixed tile config for the Triton kernels (dict of BLOCK_M/N/K, GROUP_M, optional
    num_warps/num_stages) instead of autotuning.
    epilogue=False skips scales and bias (profiling only). inv [M] (= 127/absmax per token) switches the
    TMA kernel to fused quantization: xq is then the bf16/fp16 activation, quantized tile by tile in
    registers (experimental, measured in bench). out: a contiguous [M, N] tensor of out_dtype to write y into
    (e.g. one rank's slice of a sequence-parallel send buffer) instead of a new one.
    """
    m, k = xq.shape
    n = weight.qweight.shape[0]
    if out is None:
        out = torch.empty((m, n), dtype=out_dtype, device=xq.device)
    elif out.shape != (m, n) or out.dtype != out_dtype or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous {out_dtype} [{m}, {n}], got {out.dtype} {tuple(out.shape)}")
    if m == 0:
        return out
    if backend == "auto":
        backend = "tma" if tma_supported(xq.device, n, k) else "portable"
        if backend == "tma" and config is None and inv is None and epilogue and _gluon_usable(_device_index(xq.device)):
            backend = "gluon"
    if backend == "gluon":
        from kernels import w8a8_gluon

        if inv is not None or not epilogue or config is not None:
            raise ValueError("the Gluon kernel takes pre-quantized x with the epilogue and its own tiles")
        return w8a8_gluon.w8a8_gemm_gluon(xq, sx, weight.qweight, weight.scale, bias, out_dtype,
                                          config=w8a8_gluon.pick_config(n, k), out=out)
    if xq.device.type == "cpu" and config is None:
        config = INTERPRET_CONFIG
    has_bias = bias is not None
    bias_arg = bias if has_bias else sx  # never read when HAS_BIAS is False
    fused = inv is not None
    inv_arg = inv if fused else sx  # never read unless FUSED_QUANT
    if fused and backend != "tma":
        raise ValueError("fused activation quantization exists only in the TMA kernel")
    meta = {}
    if config is not None:
        meta = {key: config[key] for key in ("BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M")}
        if xq.device.type != "cpu":
            meta["num_warps"] = config.get("num_warps", 8)
            meta["num_stages"] = config.get("num_stages", 3)

    if backend == "tma":
        from triton.tools.tensor_descriptor import TensorDescriptor

        blocks = config or {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 128}  # the autotune hook resets these
        bm, bn, bk = blocks["BLOCK_M"], blocks["BLOCK_N"], blocks["BLOCK_K"]
        a_desc = TensorDescriptor.from_tensor(xq, [bm, bk])
        b_desc = TensorDescriptor.from_tensor(weight.qweight, [bn, bk])
        c_desc = TensorDescriptor.from_tensor(out, [bm, bn])
        num_sms = _num_sms(_device_index(xq.device)) if xq.device.type == "cuda" else 4
        # The autotuned kernel picks its own tiles; a given config passes them through `meta`.
        kernel = _w8a8_tma_tuned if config is None else _w8a8_tma_kernel
        grid = lambda meta_: (min(num_sms, triton.cdiv(m, meta_["BLOCK_M"]) * triton.cdiv(n, meta_["BLOCK_N"])),)
        kernel[grid](
            a_desc,
            b_desc,
            c_desc,
            sx,
            weight.scale,
            bias_arg,
            inv_arg,
            m,
            n,
            k,
            HAS_BIAS=has_bias,
            EPILOGUE=epilogue,
            FUSED_QUANT=fused,
            NUM_SMS=num_sms,
            **meta,
        )
    elif backend == "portable":
        args = (
            xq,
            weight.qweight,
            sx,
            weight.scale,
            bias_arg,
            out,
            m,
            n,
            k,
            xq.stride(0),
            weight.qweight.stride(0),
            out.stride(0),
        )
        if config is None:
            grid = lambda meta_: (triton.cdiv(m, meta_["BLOCK_M"]) * triton.cdiv(n, meta_["BLOCK_N"]),)
            _w8a8_tuned[grid](*args, HAS_BIAS=has_bias, EPILOGUE=epilogue)
        else:
            grid = (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]),)
            _w8a8_kernel[grid](*args, HAS_BIAS=has_bias, EPILOGUE=epilogue, **meta)
    else:
        raise ValueError(f"unknown backend {backend!r}")
    return out


def _check(x: torch.Tensor, qweight: torch.Tensor, wscale: torch.Tensor, bias: torch.Tensor | None) -> None:
    if x.dtype not in (torch.bfloat16, torch.float16):
        raise TypeError(f"x must be bf16 or fp16, got {x.dtype}")
    if qweight.dtype != torch.int8 or qweight.dim() != 2 or qweight.stride(1) != 1:
        raise TypeError("qweight must be a 2-D int8 [N, K] tensor with K contiguous")
    n, k = qweight.shape
    if x.shape[-1] != k:
        raise ValueError(f"x last dim {x.shape[-1]} != weight K {k}")
    if wscale.shape != (n,) or wscale.dtype != torch.float32:
        raise ValueError(f"weight scale must be fp32 [{n}], got {wscale.dtype} {tuple(wscale.shape)}")
    if bias is not None and bias.shape != (n,):
        raise ValueError(f"bias must be [{n}], got {tuple(bias.shape)}")


INPUT_ACTS = ("none", "gelu_tanh")  # what `w8a8_linear` may apply to x first, in its quantization pass


@torch.library.custom_op("turbovid::w8a8_linear", mutates_args=())
def _w8a8_linear_op(
    x: torch.Tensor, qweight: torch.Tensor, wscale: torch.Tensor, bias: torch.Tensor | None, input_act: str = "none"
) -> torch.Tensor:
    x2 = x.reshape(-1, x.shape[-1])  # [M, K]
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    if input_act == "none":
        xq, sx = quantize_activation(x2)  # [M, K] int8, [M] fp32
    else:
        xq, sx = quantize_activation(x2, gelu=True)
    y = w8a8_gemm(xq, sx, W8A8Weight(qweight, wscale), bias, x.dtype)  # [M, N]
    return y.reshape(*x.shape[:-1], qweight.shape[0])


@_w8a8_linear_op.register_fake
def _(x, qweight, wscale, bias, input_act="none"):
    return x.new_empty((*x.shape[:-1], qweight.shape[0]))


@torch.library.custom_op("turbovid::w8a8_linear_int8", mutates_args=())
def _w8a8_linear_int8_op(
    xq: torch.Tensor,
    sx: torch.Tensor,
    qweight: torch.Tensor,
    wscale: torch.Tensor,
    bias: torch.Tensor | None,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    xq2 = xq.reshape(-1, xq.shape[-1])  # [M, K]
    if xq2.stride(-1) != 1:
        xq2 = xq2.contiguous()
    sx2 = sx.reshape(-1).contiguous()  # [M]
    y = w8a8_gemm(xq2, sx2, W8A8Weight(qweight, wscale), bias, out_dtype)  # [M, N]
    return y.reshape(*xq.shape[:-1], qweight.shape[0])


@_w8a8_linear_int8_op.register_fake
def _(xq, sx, qweight, wscale, bias, out_dtype):
    return xq.new_empty((*xq.shape[:-1], qweight.shape[0]), dtype=out_dtype)


def w8a8_linear_int8(
    xq: torch.Tensor,
    sx: torch.Tensor,
    weight: W8A8Weight,
    bias: torch.Tensor | None,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """y [..., N] from activations already quantized per token: xq [..., K] int8, sx [...] fp32 (x ≈ xq·sx),
    as kernels/adaln.layernorm_modulate(out_int8=True) and int8_quant.quantize_activation produce them.

    Skips the activation-quant pass of `w8a8_linear`: the norm kernel before the Linear quantized already.
    Output dtype `out_dtype` (bf16/fp16); the same xq feeds several Linears (Wan's q, k and v).
    """
    n, k = weight.qweight.shape
    if xq.dtype != torch.int8 or xq.shape[-1] != k:
        raise ValueError(f"xq must be int8 [..., {k}], got {xq.dtype} {tuple(xq.shape)}")
    if sx.dtype != torch.float32 or tuple(sx.shape) != tuple(xq.shape[:-1]):
        raise ValueError(f"sx must be fp32 {tuple(xq.shape[:-1])}, got {sx.dtype} {tuple(sx.shape)}")
    if out_dtype not in (torch.bfloat16, torch.float16):
        raise TypeError(f"out_dtype must be bf16 or fp16, got {out_dtype}")
    if weight.qweight.dtype != torch.int8 or weight.qweight.stride(1) != 1:
        raise TypeError("qweight must be a 2-D int8 [N, K] tensor with K contiguous")
    if weight.scale.shape != (n,) or weight.scale.dtype != torch.float32:
        raise ValueError(f"weight scale must be fp32 [{n}], got {weight.scale.dtype} {tuple(weight.scale.shape)}")
    if bias is not None and bias.shape != (n,):
        raise ValueError(f"bias must be [{n}], got {tuple(bias.shape)}")
    return _w8a8_linear_int8_op(xq, sx, weight.qweight, weight.scale, bias, out_dtype)


def w8a8_linear(
    x: torch.Tensor, weight: W8A8Weight, bias: torch.Tensor | None = None, *, input_act: str = "none"
) -> torch.Tensor:
    """y [..., N] = act(x) [..., K] @ wᵀ + bias, x 2-D or 3-D bf16/fp16; output dtype = x dtype.

    Quantizes x per token to int8 (Triton), int8 GEMM with int32 accumulation, per-token × per-channel
    scales and bias in the epilogue. `weight` comes from `prepare_weight`. input_act "gelu_tanh" applies
    GELU (tanh approximation, fp32) to x inside the quantization pass (Wan's FFN-down: no GELU pass of
    its own); "none": x as given.
    """
    if input_act not in INPUT_ACTS:
        raise ValueError(f"unknown input_act {input_act!r}; known: {INPUT_ACTS}")
    _check(x, weight.qweight, weight.scale, bias)
    return _w8a8_linear_op(x, weight.qweight, weight.scale, bias, input_act)


def w8a8_linear_chunked(
    buf: torch.Tensor, weight: W8A8Weight, bias: torch.Tensor | None, out_dtype: torch.dtype
) -> torch.Tensor:
    """`w8a8_linear` of x [M, K] held as column chunks buf [G, N, M, W] (x[m, (j·G + g)·W + w] =
    buf[g, j, m, w], `int8_quant.quantize_activation_chunked`): the quantization pass gathers the chunks,
    so the Ulysses way back's received buffers feed the output projection without an unpacking copy.
    -> y [M, N_out] in out_dtype."""
    from kernels.int8_quant import quantize_activation_chunked

    if buf.dtype not in (torch.bfloat16, torch.float16):
        raise TypeError(f"buf must be bf16 or fp16, got {buf.dtype}")
    g, n, m, w = buf.shape
    if weight.qweight.shape[1] != n * g * w:
        raise ValueError(f"chunks hold K = {n * g * w}, the weight wants {weight.qweight.shape[1]}")
    xq, sx = quantize_activation_chunked(buf)
    return w8a8_gemm(xq, sx, weight, bias, out_dtype)


# ----------------------------------------------------------------------------------------------
# 5. bench (GPU): ratios against baselines measured in this process
# ----------------------------------------------------------------------------------------------

WAN_SHAPES = [  # name, K (in), N (out)
    ("1.3B qkvo", 1536, 1536),
    ("1.3B ffn_up", 1536, 8960),
    ("1.3B ffn_down", 8960, 1536),
    ("14B qkvo", 5120, 5120),
    ("14B ffn_up", 5120, 13824),
    ("14B ffn_down", 13824, 5120),
]
WAN_TOKENS = [32760, 75600]  # 480p and 720p, 81 frames
# the fused-quant tile kept for the experiment (why: kernels/NOTES_w8a8.md, run 2)
FUSED_CONFIGS = [
    {"BLOCK_M": 128, "BLOCK_N": 256, "BLOCK_K": 64, "GROUP_M": 8, "num_warps": 8, "num_stages": 3}
]


def _rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    return ((y.float() - ref.float()).norm() / ref.float().norm()).item()


def _fp8_blockwise_fns(x: torch.Tensor, w: torch.Tensor):
    """torch FP8 e4m3 scaled_mm with 1×128 activation and 128×128 weight block scales (cuBLAS, sm90).

    Returns (quantize x, GEMM on the quantized x, description), or (None, None, why not).
    """
    m, k = x.shape
    n = w.shape[0]
    if k % 128 or n % 128:
        return None, None, "K or N not a multiple of 128"
    fp8 = torch.float8_e4m3fn
    kb = k // 128
    l4 = triton.cdiv(kb, 4) * 4
    wb = w.float().view(n // 128, 128, kb, 128)
    w_scale = wb.abs().amax(dim=(1, 3)).clamp_min(1e-12) / 448.0  # [N/128, K/128]
    w8 = (wb / w_scale[:, None, :, None]).view(n, k).to(fp8)
    ws = torch.ones(n // 128, l4, device=x.device)
    ws[:, :kb] = w_scale
    ws = ws.t()  # [L4, N/128], stride (1, L4)

    def quant():
        xg = x.view(m, kb, 128)
        xs = xg.abs().amax(dim=2).float().clamp_min(1e-12) / 448.0  # [M, K/128]
        x8 = (xg / xs[:, :, None]).view(m, k).to(fp8)
        return x8, xs.t().contiguous().t()  # scales outer-dim-major

    x8, xs = quant()
    errors = []
    try:
        torch._scaled_mm(x8, w8.t(), scale_a=xs, scale_b=ws, out_dtype=torch.bfloat16)
        gemm = lambda: torch._scaled_mm(x8, w8.t(), scale_a=xs, scale_b=ws, out_dtype=torch.bfloat16)
        return quant, gemm, "torch._scaled_mm, 1x128 (x) and 128x128 (w) block scales"
    except Exception as e:  # noqa: BLE001 - report why the baseline is absent
        errors.append(f"_scaled_mm {type(e).__name__}: {str(e)[:120]}")
    try:
        from torch.nn.functional import ScalingType, scaled_mm

        kw = {
            "scale_recipe_a": ScalingType.BlockWise1x128,
            "scale_recipe_b": ScalingType.BlockWise128x128,
            "output_dtype": torch.bfloat16,
        }
        scaled_mm(x8, w8.t(), xs, ws, **kw)
        gemm = lambda: scaled_mm(x8, w8.t(), xs, ws, **kw)
        return quant, gemm, "F.scaled_mm, BlockWise1x128 (x) and BlockWise128x128 (w)"
    except Exception as e:  # noqa: BLE001
        errors.append(f"F.scaled_mm {type(e).__name__}: {str(e)[:120]}")
    return None, None, "; ".join(errors)


def inspect_sass(config: dict) -> str:
    """Compile the TMA kernel at a Wan shape and report which MMA instructions PTX/SASS contain."""
    from triton.tools.tensor_descriptor import TensorDescriptor

    m, k, n = 4096, 5120, 5120
    xq = torch.randint(-127, 128, (m, k), dtype=torch.int8, device="cuda")
    wq = torch.randint(-127, 128, (n, k), dtype=torch.int8, device="cuda")
    sx = torch.rand(m, device="cuda")
    sw = torch.rand(n, device="cuda")
    out = torch.empty(m, n, dtype=torch.bfloat16, device="cuda")
    bm, bn, bk = config["BLOCK_M"], config["BLOCK_N"], config["BLOCK_K"]
    descs = (
        TensorDescriptor.from_tensor(xq, [bm, bk]),
        TensorDescriptor.from_tensor(wq, [bn, bk]),
        TensorDescriptor.from_tensor(out, [bm, bn]),
    )
    nsm = _num_sms(0)
    compiled = _w8a8_tma_kernel[(nsm,)](
        *descs,
        sx,
        sw,
        sx,
        sx,
        m,
        n,
        k,
        HAS_BIAS=False,
        EPILOGUE=True,
        FUSED_QUANT=False,
        NUM_SMS=nsm,
        BLOCK_M=bm,
        BLOCK_N=bn,
        BLOCK_K=bk,
        GROUP_M=config["GROUP_M"],
        num_warps=config["num_warps"],
        num_stages=config["num_stages"],
    )
    ptx = compiled.asm["ptx"]
    wg = [line.strip() for line in ptx.splitlines() if "wgmma.mma_async" in line]
    report = f"PTX: {len(wg)} wgmma.mma_async lines, e.g. {wg[0].split()[0] if wg else '-'}"
    try:
        from triton.tools.disasm import get_sass

        sass = get_sass(compiled.asm["cubin"])
        counts = {op: sass.count(op) for op in ("IGMMA", "HGMMA", "QGMMA", "IMMA", "UTMALDG", "UTMASTG")}
        report += f"; SASS counts {counts}"
    except Exception as e:  # noqa: BLE001 - disassembler may be missing
        report += f"; SASS unavailable ({type(e).__name__}: {str(e)[:80]})"
    regs = getattr(compiled, "n_regs", "?")
    spills = getattr(compiled, "n_spills", "?")
    return report + f"; regs {regs}, spills {spills}, shared {compiled.metadata.shared} B"


def _bench_case(name: str, m: int, k: int, n: int, layer: dict, gen: torch.Generator) -> dict:
    do_bench = functools.partial(triton.testing.do_bench, warmup=25, rep=100, return_mode="median")
    weight, w_bf16, bias = layer["weight"], layer["w_bf16"], layer["bias"]
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16, generator=gen)
    r: dict = {"shape": name, "M": m}
    r["bf16"] = do_bench(lambda: torch.nn.functional.linear(x, w_bf16, bias))
    y = w8a8_linear(x, weight, bias)  # autotunes on the first call per (N, K)
    r["ours"] = do_bench(lambda: w8a8_linear(x, weight, bias))
    xq, sx = quantize_activation(x)
    r["quant"] = do_bench(lambda: quantize_activation(x))
    r["gemm"] = do_bench(lambda: w8a8_gemm(xq, sx, weight, bias, torch.bfloat16))
    cfg = None
    if tma_supported(x.device, n, k):
        best = _w8a8_tma_tuned.best_config
        cfg = dict(best.kwargs, num_warps=best.num_warps, num_stages=best.num_stages)
        r["noepi"] = do_bench(
            lambda: w8a8_gemm(xq, sx, weight, bias, torch.bfloat16, config=cfg, epilogue=False)
        )
    r["tile"] = (
        f"{cfg['BLOCK_M']}x{cfg['BLOCK_N']}x{cfg['BLOCK_K']}s{cfg['num_stages']}w{cfg['num_warps']}"
        if cfg
        else "-"
    )
    r["port"] = do_bench(lambda: w8a8_gemm(xq, sx, weight, bias, torch.bfloat16, backend="portable"))
    if cfg:  # experimental: absmax pass + GEMM that quantizes x tiles in registers (A read as bf16)
        from kernels.int8_quant import activation_scales

        fused_times = {}
        for fc in FUSED_CONFIGS:

            def fused(fc=fc):
                s, inv = activation_scales(x)
                return w8a8_gemm(x, s, weight, bias, torch.bfloat16, backend="tma", config=fc, inv=inv)

            try:
                r["err_fused"] = _rel_err(fused(), y)
                fused_times[f"{fc['BLOCK_M']}x{fc['BLOCK_N']}x{fc['BLOCK_K']}s{fc['num_stages']}"] = do_bench(
                    fused
                )
            except Exception as e:  # noqa: BLE001
                r["fused_error"] = f"{type(e).__name__}: {str(e)[:200]}"
        if fused_times:
            r["fused_tile"], r["fused"] = min(fused_times.items(), key=lambda kv: kv[1])
            r["fused_all"] = fused_times
    wt = weight.qweight.t()
    r["intmm"] = do_bench(lambda: torch._int_mm(xq, wt))
    fp8_quant, fp8_gemm, r["fp8_note"] = _fp8_blockwise_fns(x, w_bf16)
    r["fp8"] = do_bench(fp8_gemm) if fp8_gemm else float("nan")
    r["fp8_q"] = do_bench(fp8_quant) if fp8_quant else float("nan")
    ref = reference(x, layer["int8_weight"], layer["scale"], bias).float()  # fp32, checkpoint weights
    r["err"] = _rel_err(y, ref)
    r["err_bf16"] = _rel_err(torch.nn.functional.linear(x, w_bf16, bias), ref)
    r["tops"] = 2 * m * n * k / r["gemm"] * 1e-9
    return r


def bench(shapes=WAN_SHAPES, tokens=WAN_TOKENS) -> None:
    """Time torch bf16 matmul, ours (activation quant included), _int_mm and FP8 block-scaled at Wan shapes."""
    from kernels.int8_quant import quantize_weight_blockwise

    torch.backends.cuda.matmul.allow_tf32 = False
    print(f"device {torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}")
    if torch.cuda.get_device_capability()[0] >= 9:
        first = _tma_configs()[0]
        try:
            print(
                "sm90 kernel:",
                inspect_sass(dict(first.kwargs, num_warps=first.num_warps, num_stages=first.num_stages)),
            )
        except Exception as e:  # noqa: BLE001 - keep the timings
            print(f"sm90 kernel inspection FAILED: {type(e).__name__}: {str(e)[:300]}")
    rows = []
    for name, k, n in shapes:
        gen = torch.Generator(device="cuda").manual_seed(0)
        w = torch.randn(n, k, device="cuda", generator=gen) * 0.02
        iw, sc = quantize_weight_blockwise(w)
        layer = {
            "int8_weight": iw,
            "scale": sc,
            "weight": prepare_weight(iw, sc),
            "w_bf16": dequantize_weight_blockwise(iw, sc, dtype=torch.bfloat16),
            "bias": torch.randn(n, device="cuda", generator=gen).to(torch.bfloat16),
        }
        for m in tokens:
            try:
                rows.append(_bench_case(name, m, k, n, layer, gen))
                print("row", rows[-1], flush=True)
            except Exception as e:  # noqa: BLE001 - keep the other shapes' numbers
                print(f"FAILED {name} M={m}: {type(e).__name__}: {e}", flush=True)
    print(f"fp8 baseline: {rows[-1]['fp8_note'] if rows else '-'}")
    print(
        f"{'shape':<14}{'M':>6}{'bf16 ms':>9}{'ours ms':>9}{'x bf16':>8}{'quant':>7}{'gemm':>7}{'gemm x':>7}"
        f"{'TOP/s':>6}{'no-epi':>7}{'port x':>7}{'intmm x':>8}{'fp8 x':>7}{'fused x':>8}{'err':>9}{'err bf16':>9}  tile"
    )
    for r in rows:
        b = r["bf16"]
        print(
            f"{r['shape']:<14}{r['M']:>6}{b:>9.3f}{r['ours']:>9.3f}{b / r['ours']:>8.2f}{r['quant']:>7.3f}"
            f"{r['gemm']:>7.3f}{b / r['gemm']:>7.2f}{r['tops']:>6.0f}{r.get('noepi', float('nan')):>7.3f}"
            f"{b / r['port']:>7.2f}{b / r['intmm']:>8.2f}{b / r['fp8']:>7.2f}{b / r.get('fused', float('nan')):>8.2f}{r['err']:>9.2e}{r['err_bf16']:>9.2e}"
            f"  {r['tile']}"
        )
    print(
        "x bf16 = bf16 ms / ours ms (quant + GEMM + epilogue); gemm: our GEMM alone (ms); no-epi: GEMM without "
        "scales/bias (ms); port x, intmm x: portable kernel GEMM alone, torch._int_mm alone (no quant, no "
        "scaling); fp8 x: torch FP8 block-scaled GEMM alone (its x->fp8 step in the log); err: ||y - ref|| / ||ref||, ref = fp32 x @ "
        "checkpoint block-dequantized w; fused x: bf16 ms / (absmax pass + GEMM quantizing x tiles in registers)"
    )


def accuracy_study(m: int = 512, k: int = 1536, n: int = 1536, seed: int = 0) -> None:
    """CPU, torch only: what per-channel requant and per-token activations cost against the checkpoint.

    Weights: gaussian × a per-input-channel spread (so 128×128 block scales differ along K); activations:
    gaussian with a few outlier channels, as DiT hidden states have. Prints ||y - ref|| / ||ref||.
    """
    from kernels.int8_quant import QMAX, _round_half_away, quantize_weight_blockwise

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g)
    x[:, torch.randperm(k, generator=g)[:8]] *= 20.0  # outlier channels
    print(f"accuracy_study M={m} K={k} N={n}: rel. Frobenius error of y vs fp32 x @ checkpoint w")
    for label, spread in (("gaussian w", 0.0), ("w with K spread 10x", 1.0), ("w with K spread 100x", 2.0)):
        w = torch.randn(n, k, generator=g) * 0.02 * torch.logspace(-spread / 2, spread / 2, k)[None, :]
        iw, sc = quantize_weight_blockwise(w)
        wck = dequantize_weight_blockwise(iw, sc)
        ref = x @ wck.t()
        wt = prepare_weight(iw, sc)
        wreq = wt.qweight.float() * wt.scale[:, None]
        q, sx = reference_quantize_activation(x)
        xt = q.float() * sx[:, None]  # per-token
        xg = x.view(m, k // 128, 128)  # per-token × 128-K-group
        sg = xg.abs().amax(-1, keepdim=True) / QMAX
        xgq = (_round_half_away(xg / sg.clamp_min(1e-30)).clamp(-QMAX, QMAX) * sg).view(m, k)
        err = lambda y, ref=ref: ((y - ref).norm() / ref.norm()).item()
        print(
            f"  {label:<22} weight requant only: {err(x @ wreq.t()):.2e} | per-token x, block w: "
            f"{err(xt @ wck.t()):.2e} | per-token x, per-channel w (ours): {err(xt @ wreq.t()):.2e} | "
            f"per-group x, block w: {err(xgq @ wck.t()):.2e} | bf16 x, bf16 w: "
            f"{err((x.bfloat16() @ wck.bfloat16().t()).float()):.2e}"
        )


if __name__ == "__main__":
    bench()
