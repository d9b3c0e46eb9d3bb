"""Causal 3×3×3 convolution of the Wan VAE as one implicit GEMM, the three time taps summed in-kernel.

The VAE's fast path (`models.vae`, `conv_impl="taps2d"`) runs a square 3×3×3 conv as three cuDNN conv2d
calls, one per time tap, and the pass after the conv sums the three partial outputs. That writes and
reads each conv's output three times, and cuDNN tiles the 96 output channels of the full-resolution
level 128 wide. This kernel computes the whole conv in one accumulation instead:

    out[b, t, p, n] = Σ_{dt, dh, dw, c} x[b, t + dt, h(p) + dh - 1, w(p) + dw - 1, c] · W[n, c, dt, dh, dw]

  x    the conv's time-padded input buffer [B, C_in, T + 2, H, W], channels-last-3d (the two causal
       context frames first, as `CausalConv3d.input_buffer` builds it); rows/columns outside the frame
       read as zero (the conv's spatial padding 1).
  W    prepared once per weight by `weight_matrix`: [27·C_in, N_pad] with row k = (dt·9 + dh·3 + dw)·C_in + c
       (the GEMM's K), columns the output channels zero-padded to a multiple of 128.
  out  [B, C_out, T, H, W] channels-last-3d (or frames of a larger buffer), x's dtype; fp32 accumulation.

Epilogues (in registers, before the one store): + bias; then nothing, or RMS-norm + SiLU over the output
channels (Wan's RMS_norm · gamma; a tile holds all channels of its pixels), or + a residual. A residual
block (`models.vae.ResidualBlock`, conv_impl "igemm") thus runs conv1 writing norm + SiLU straight into
conv2's padded input and conv2 adding bias and residual: no pass over either conv's output of its own.

GEMM view: M = the H·W pixels of one output frame in tiles of BLOCK_H rows × BLOCK_W columns (BLOCK_M
pixels; 2 or 4 rows where 128 pixels would run past a row's end, e.g. 832 = 13·64, 416 = 13·32),
N = C_out in one or two dots BLOCK_N0 + BLOCK_N1 wide (64 + 32 for 96 channels: both legal tensor-core
widths, no padded columns), K = 27·C_in. A operand: 5-D TMA loads of the shifted rows (sm90+); TMA's
out-of-bounds zero fill is the spatial padding. The first form, pointer loads with masks, ran 2.4-3.3×
slower than cuDNN and was dropped (kernels/NOTES_vae.md, session 19).

Reference: `reference` (torch conv3d). Configs are autotuned per (C_in, C_out, W, bias, epilogue) on
the GPU; the Triton interpreter runs fixed ones (CPU tests).
"""

from __future__ import annotations

import functools
import logging
import os

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from kernels.w8a8 import _smem_limit  # shared memory per block on a GPU, less headroom

__all__ = ["reference", "weight_matrix", "causal_conv3x3x3", "supported", "available", "bench"]

TAPS = 27
log = logging.getLogger(__name__)
_N_ALIGN = 128  # the weight matrix's columns are padded to this


# 1. reference -----------------------------------------------------------------------------------------
def reference(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x [B, C_in, T + 2, H, W] (the time-padded buffer), weight [C_out, C_in, 3, 3, 3] -> [B, C_out, T, H, W]:
    conv3d with no time padding (x holds the context) and spatial padding 1, in x's dtype."""
    return F.conv3d(x, weight.to(x.dtype), None, padding=(0, 1, 1))


def weight_matrix(weight: torch.Tensor) -> torch.Tensor:
    """[C_out, C_in, 3, 3, 3] -> the kernel's [27·C_in, N_pad] (see the module docstring), weight's dtype."""
    c_out, c_in = weight.shape[:2]
    n_pad = -(-c_out // _N_ALIGN) * _N_ALIGN
    m = weight.permute(2, 3, 4, 1, 0).reshape(TAPS * c_in, c_out)  # [(dt, dh, dw, c), n]
    return F.pad(m, (0, n_pad - c_out)).contiguous()


def supported(c_in: int, c_out: int) -> bool:
    """Channel counts the kernel takes: multiples of 32 (the VAE's 96, 192, 384)."""
    return c_in % 32 == 0 and c_out % 32 == 0


# 2. kernel --------------------------------------------------------------------------------------------
@triton.jit
def _conv_tma_kernel(
    x_desc,  # [B, T + 2, H, W, C_in], block [1, 1, BLOCK_H, BLOCK_W, BLOCK_K]; rows/columns outside read as zero
    w0_desc,  # [27·C_in, N_pad], block [BLOCK_K, BLOCK_N0]
    w1_desc,  # the same, block [BLOCK_K, BLOCK_N1] (unused when BLOCK_N1 = 0)
    o0_desc,  # [B, T, H, W, C_out], block [1, 1, BLOCK_H, BLOCK_W, BLOCK_N0]; stores are clipped to the tensor
    o1_desc,
    r0_desc,  # EPI 2: the residual [B, T, H, W, C_out], blocks as o0_desc / o1_desc
    r1_desc,
    bias_ptr,  # [C_out] or a dummy (HAS_BIAS)
    gamma_ptr,  # EPI 1: the norm's [C_out] gain
    T,
    H,
    W,
    scale,  # EPI 1: sqrt(C_out)
    eps,
    C_IN: tl.constexpr,
    C_OUT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    EPI: tl.constexpr,  # 0: the conv; 1: silu(rms_norm(conv + bias) · gamma); 2: conv + bias + residual
    BLOCK_M: tl.constexpr,  # pixels per tile: BLOCK_H rows of BLOCK_W = BLOCK_M / BLOCK_H
    BLOCK_H: tl.constexpr,
    BLOCK_W: tl.constexpr,
    BLOCK_N0: tl.constexpr,
    BLOCK_N1: tl.constexpr,
    BLOCK_K: tl.constexpr,
    DOT_F32: tl.constexpr = False,
):
    # sm90 form: the tensor-memory accelerator loads the shifted input rows, zero-filling the conv's padding
    pid_m = tl.program_id(0)  # (row, column tile) of one output frame
    pid_n = tl.program_id(1)
    frame = tl.program_id(2)
    n_wt = tl.cdiv(W, BLOCK_W)
    h0 = (pid_m // n_wt) * BLOCK_H
    w0 = (pid_m % n_wt) * BLOCK_W
    b = frame // T
    t = frame % T
    n_base = pid_n * (BLOCK_N0 + BLOCK_N1)
    acc0 = tl.zeros((BLOCK_M, BLOCK_N0), dtype=tl.float32)
    if BLOCK_N1 > 0:
        acc1 = tl.zeros((BLOCK_M, BLOCK_N1), dtype=tl.float32)
    for kk in range(27 * C_IN // BLOCK_K):
        k0 = kk * BLOCK_K
        tap = k0 // C_IN
        a = x_desc.load([b, t + tap // 9, h0 + (tap // 3) % 3 - 1, w0 + tap % 3 - 1, k0 % C_IN])
        a = a.reshape(BLOCK_M, BLOCK_K)
        b0 = w0_desc.load([k0, n_base])
        if DOT_F32:
            a = a.to(tl.float32)
            b0 = b0.to(tl.float32)
        acc0 = tl.dot(a, b0, acc0)
        if BLOCK_N1 > 0:
            b1 = w1_desc.load([k0, n_base + BLOCK_N0])
            if DOT_F32:
                b1 = b1.to(tl.float32)
            acc1 = tl.dot(a, b1, acc1)
    # epilogue: bias, then the residual or the next norm + SiLU, in fp32 (a tile holds whole pixel rows
    # of channels for EPI 1, so the norm needs no second pass)
    if HAS_BIAS:
        cols0 = n_base + tl.arange(0, BLOCK_N0)
        acc0 += tl.load(bias_ptr + cols0, mask=cols0 < C_OUT, other=0.0).to(tl.float32)[None, :]
        if BLOCK_N1 > 0:
            cols1 = n_base + BLOCK_N0 + tl.arange(0, BLOCK_N1)
            acc1 += tl.load(bias_ptr + cols1, mask=cols1 < C_OUT, other=0.0).to(tl.float32)[None, :]
    if EPI == 2:
        acc0 += r0_desc.load([b, t, h0, w0, n_base]).reshape(BLOCK_M, BLOCK_N0).to(tl.float32)
        if BLOCK_N1 > 0:
            acc1 += r1_desc.load([b, t, h0, w0, n_base + BLOCK_N0]).reshape(BLOCK_M, BLOCK_N1).to(tl.float32)
    if EPI == 1:
        ss = tl.sum(acc0 * acc0, axis=1)
        if BLOCK_N1 > 0:
            ss += tl.sum(acc1 * acc1, axis=1)
        inv = scale / tl.maximum(tl.sqrt(ss), eps)  # [BLOCK_M]
        g0 = tl.load(gamma_ptr + tl.arange(0, BLOCK_N0), mask=tl.arange(0, BLOCK_N0) < C_OUT, other=0.0)
        acc0 = acc0 * inv[:, None] * g0.to(tl.float32)[None, :]
        acc0 = acc0 * tl.sigmoid(acc0)
        if BLOCK_N1 > 0:
            g1 = tl.load(gamma_ptr + BLOCK_N0 + tl.arange(0, BLOCK_N1),
                         mask=BLOCK_N0 + tl.arange(0, BLOCK_N1) < C_OUT, other=0.0)  # fmt: skip
            acc1 = acc1 * inv[:, None] * g1.to(tl.float32)[None, :]
            acc1 = acc1 * tl.sigmoid(acc1)
    o0_desc.store([b, t, h0, w0, n_base], acc0.to(o0_desc.dtype).reshape(1, 1, BLOCK_H, BLOCK_W, BLOCK_N0))
    if BLOCK_N1 > 0:
        o1_desc.store([b, t, h0, w0, n_base + BLOCK_N0],
                      acc1.to(o1_desc.dtype).reshape(1, 1, BLOCK_H, BLOCK_W, BLOCK_N1))


# 3. configs -------------------------------------------------------------------------------------------
_TILES = [  # BM pixels as BH rows, N0, N1, BK, warps, stages: the H200 sweep's best few per channel count, and
    # tiles of 2 or 4 rows for widths that 128 pixels do not divide (832 = 13·64, 416 = 13·32)
    (128, 1, 64, 32, 32, 4, 4), (128, 1, 128, 0, 32, 4, 4), (64, 1, 64, 32, 32, 4, 4), (128, 2, 64, 32, 32, 4, 4),
    (128, 4, 64, 32, 32, 4, 4),
    (128, 1, 128, 64, 64, 8, 3), (128, 4, 128, 64, 64, 8, 3), (64, 1, 128, 64, 64, 4, 3), (128, 1, 256, 0, 64, 8, 3),
    (128, 1, 256, 128, 64, 8, 3), (128, 4, 256, 128, 64, 8, 3), (128, 1, 128, 0, 64, 8, 3),
    # 256 pixels on one warpgroup: the weights are read from L2 half as often per pixel (Nsight Compute found the
    # 96-wide conv L2-bound, 85 % of L2 throughput); 1.09-1.12x the 128-pixel tiles at 96 channels, 480p (s27b)
    (256, 4, 64, 32, 32, 4, 4),
]


def _configs() -> list[triton.Config]:
    return [
        triton.Config({"BLOCK_M": bm, "BLOCK_H": bh, "BLOCK_W": bm // bh, "BLOCK_N0": n0, "BLOCK_N1": n1,
                       "BLOCK_K": bk}, num_warps=w,
                      num_stages=s, pre_hook=_set_blocks)
        for bm, bh, n0, n1, bk, w, s in _TILES
    ]


def _fits(c_in: int, c_out: int, epi: int, bm: int, n0: int, n1: int, bk: int, stages: int, smem_limit: int,
          *, max_waste: bool = True) -> bool:
    """A tile fits when BK divides C_in, one tile covers all channels for the norm epilogue, the pipeline's
    stages fit shared memory and (max_waste) at most a third of its channel columns are padding."""
    nb = n0 + n1
    covered = -(-c_out // nb) * nb
    smem = stages * (bm * bk + bk * nb) * 2
    if c_in % bk or (epi == 1 and nb < c_out) or smem > smem_limit:
        return False
    return not (max_waste and covered * 3 > c_out * 4)


def _row_waste(w: int, bm: int, bh: int) -> float:
    """The share of a tile row's columns past the frame's width W (loaded as zeros, stored nowhere)."""
    bw = bm // bh
    return 1 - w / (-(-w // bw) * bw)


def select_configs(configs: list[triton.Config], c_in: int, c_out: int, epi: int, smem_limit: int,
                   w: int | None = None) -> list[triton.Config]:
    """The configs the autotuner times: those that fit (`_fits`); where none wastes at most a third of its
    channel columns (narrow outputs, e.g. 32), the ones that fit otherwise, least padded first. With the row
    width w: of those, the ones whose tile rows waste at most 8 % more of it than the least wasteful."""
    def keys(cfg: triton.Config) -> list[int]:
        return [cfg.kwargs[k] for k in _BLOCK_KEYS]

    kept = [cfg for cfg in configs if _fits(c_in, c_out, epi, *keys(cfg), cfg.num_stages, smem_limit)]
    if not kept:
        loose = [cfg for cfg in configs
                 if _fits(c_in, c_out, epi, *keys(cfg), cfg.num_stages, smem_limit, max_waste=False)]  # fmt: skip
        kept = sorted(loose, key=lambda cfg: cfg.kwargs["BLOCK_N0"] + cfg.kwargs["BLOCK_N1"])[:2]
    if not kept:
        raise ValueError(f"no conv tile fits C_in={c_in}, C_out={c_out}, epilogue {epi}")
    if w is not None:
        waste = {id(cfg): _row_waste(w, cfg.kwargs["BLOCK_M"], cfg.kwargs["BLOCK_H"]) for cfg in kept}
        least = min(waste.values())
        kept = [cfg for cfg in kept if waste[id(cfg)] <= least + 0.08]
    return kept


def _prune(configs: list[triton.Config], named_args: dict, **kwargs) -> list[triton.Config]:
    """The autotuner's early prune: it hands positional arguments in named_args and keyword ones (all of
    them, as `causal_conv3x3x3` launches) in kwargs."""
    args = {**named_args, **kwargs}
    limit = _smem_limit(torch.cuda.current_device()) if torch.cuda.is_available() else _DEFAULT_SMEM
    if torch.cuda.is_available() and not _multirow_supported(torch.cuda.current_device()):
        configs = [cfg for cfg in configs if cfg.kwargs["BLOCK_H"] == 1]
    return select_configs(configs, args["C_IN"], args["C_OUT"], args["EPI"], limit, w=args["W"])


@functools.cache
def _multirow_supported(device_index: int) -> bool:
    """Whether this Triton compiles tiles of several rows (a 5-D TMA block reshaped for the dot) and gets
    them right: one tiny launch per process, checked against conv3d; where not, single-row tiles only."""
    try:
        g = torch.Generator(device="cpu").manual_seed(0)
        x = torch.randn(1, 32, 3, 4, 64, generator=g).to(f"cuda:{device_index}", torch.bfloat16)
        x = x.contiguous(memory_format=torch.channels_last_3d)
        weight = (torch.randn(32, 32, 3, 3, 3, generator=g) / 17).to(x.device, torch.bfloat16)
        cfg = {"BLOCK_M": 64, "BLOCK_H": 2, "BLOCK_N0": 32, "BLOCK_N1": 0, "BLOCK_K": 32, "num_warps": 4,
               "num_stages": 2}
        got = causal_conv3x3x3(x, weight_matrix(weight), 32, config=cfg).float()
        want = F.conv3d(x.float(), weight.float(), None, padding=(0, 1, 1))
        ok = bool(((got - want).norm() / want.norm()).item() < 1e-2)
        if not ok:
            log.warning("multi-row conv tiles give wrong results on this Triton %s; single-row tiles only", triton.__version__)
        return ok
    except Exception as exc:  # noqa: BLE001 - any compile failure means: do not offer these tiles
        log.warning("multi-row conv tiles do not compile on this Triton %s (%s); single-row tiles only",
                    triton.__version__, f"{type(exc).__name__}: {str(exc)[:200]}")
        return False


_DEFAULT_SMEM = 227 * 1024  # an H100/H200's per-block shared memory (the limit where no GPU is queried)


_BLOCK_KEYS = ("BLOCK_M", "BLOCK_N0", "BLOCK_N1", "BLOCK_K")
_DESCS = ("x_desc", "w0_desc", "w1_desc", "o0_desc", "o1_desc", "r0_desc", "r1_desc")


def _set_blocks(nargs: dict) -> None:
    """Give the host descriptors the config's block shapes (an autotuner pre-hook, and for fixed configs)."""
    bm, n0, n1, bk = (nargs[k] for k in _BLOCK_KEYS)
    bh = nargs["BLOCK_H"]
    bw = bm // bh
    n1 = max(n1, 16)  # BLOCK_N1 = 0: the second descriptors are never read
    shapes = ([1, 1, bh, bw, bk], [bk, n0], [bk, n1], [1, 1, bh, bw, n0], [1, 1, bh, bw, n1], [1, 1, bh, bw, n0],
              [1, 1, bh, bw, n1])  # fmt: skip
    for name, shape in zip(_DESCS, shapes, strict=True):
        nargs[name].block_shape = shape


# T (frames per call) is in the key: a decode's first chunk holds one frame, and a tile tuned on that small grid
# is not the best for the 16-frame chunks that follow (session 27: up to 1.09x between choices at T = 16)
_conv_tuned = triton.autotune(
    _configs(), key=["C_IN", "C_OUT", "W", "T", "HAS_BIAS", "EPI"], prune_configs_by={"early_config_prune": _prune}
)(_conv_tma_kernel)


def available(device: torch.device) -> bool:
    """Whether the kernel runs on `device` here: CUDA sm90+ (tensor-memory-accelerator loads), or the Triton
    interpreter (TRITON_INTERPRET=1) on CPU."""
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device)[0] >= 9
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


# 4. wrapper -------------------------------------------------------------------------------------------
def _descriptor(ten: torch.Tensor) -> object:
    """A host TMA descriptor of a [B, C, T, H, W] tensor as [B, T, H, W, C] (a 2-D tensor as it is), block
    shape set later by `_set_blocks`."""
    from triton.tools.tensor_descriptor import TensorDescriptor

    view = ten.permute(0, 2, 3, 4, 1) if ten.dim() == 5 else ten
    return TensorDescriptor(view, list(view.shape), list(view.stride()), [1] * (view.dim() - 1) + [16])


def causal_conv3x3x3(
    x: torch.Tensor,
    wmat: torch.Tensor,
    c_out: int,
    *,
    bias: torch.Tensor | None = None,
    norm_gamma: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    eps: float = 1e-12,
    config: dict | None = None,
) -> torch.Tensor:
    """x [B, C_in, T + 2, H, W] channels-last-3d (the time-padded input buffer), wmat = weight_matrix(weight)
    -> [B, C_out, T, H, W] in x's dtype: `reference` (+ bias), then one of
      norm_gamma  silu(rms_norm(·) · gamma), Wan's RMS-norm (x / ||x||₂ · sqrt(C_out) · gamma) + SiLU: the
                  next conv's input, written straight into its padded buffer by passing `out`;
      residual    + residual ([B, C_out, T, H, W] channels-last-3d): a residual block's output.
    out: where to write (a channels-last-3d [B, C_out, T, H, W], possibly a view of frames of a larger
    buffer); default a new channels-last-3d tensor. config: fixed tile kwargs (BLOCK_M, BLOCK_H (default 1),
    BLOCK_N0, BLOCK_N1, BLOCK_K, num_warps, num_stages) instead of the autotuner's (the interpreter always uses fixed ones)."""
    if x.dim() != 5 or x.shape[2] < 3 or x.stride(1) != 1:
        raise ValueError(f"x must be [B, C_in, T + 2 >= 3, H, W] channels-last-3d, got {tuple(x.shape)} {x.stride()}")
    b, c_in, tp, h, w = x.shape
    t = tp - 2
    if not supported(c_in, c_out):
        raise ValueError(f"channels must be multiples of 32, got C_in={c_in}, C_out={c_out}")
    if wmat.shape[0] != TAPS * c_in or wmat.shape[1] < c_out or wmat.stride(1) != 1 or wmat.dtype != x.dtype:
        raise ValueError(f"wmat must be weight_matrix(weight) [{TAPS * c_in}, >= {c_out}] in {x.dtype}, got "
                         f"{tuple(wmat.shape)} {wmat.dtype}")
    if norm_gamma is not None and residual is not None:
        raise ValueError("norm_gamma and residual are two different epilogues; pass one")
    shape = (b, c_out, t, h, w)
    for name, ten in (("bias", bias), ("norm_gamma", norm_gamma)):
        if ten is not None and ten.numel() != c_out:
            raise ValueError(f"{name} must hold {c_out} values, got {tuple(ten.shape)}")
    for name, ten in (("residual", residual), ("out", out)):
        if ten is not None and (tuple(ten.shape) != shape or ten.stride(1) != 1 or ten.dtype != x.dtype
                                or ten.device != x.device):  # fmt: skip
            raise ValueError(f"{name} must be {list(shape)} channels-last-3d {x.dtype} on {x.device}, got "
                             f"{tuple(ten.shape)} {ten.stride()} {ten.dtype}")
    if not available(x.device):
        raise RuntimeError(f"causal_conv3x3x3 needs a CUDA sm90+ device or TRITON_INTERPRET=1, got {x.device}")
    if out is None:
        out = torch.empty(shape, device=x.device, dtype=x.dtype, memory_format=torch.channels_last_3d)
    if out.numel() == 0:
        return out
    r = residual if residual is not None else out
    descs = {name: _descriptor(ten) for name, ten in zip(_DESCS, (x, wmat, wmat, out, out, r, r), strict=True)}
    epi = 1 if norm_gamma is not None else 2 if residual is not None else 0
    dummy = bias if bias is not None else wmat
    args = dict(descs, bias_ptr=dummy, gamma_ptr=norm_gamma if norm_gamma is not None else dummy, T=t, H=h, W=w,
                scale=float(c_out) ** 0.5, eps=eps, C_IN=c_in, C_OUT=c_out, HAS_BIAS=bias is not None, EPI=epi)

    def grid(meta: dict) -> tuple[int, int, int]:
        tiles = triton.cdiv(h, meta["BLOCK_H"]) * triton.cdiv(w, meta["BLOCK_M"] // meta["BLOCK_H"])
        return (tiles, triton.cdiv(c_out, meta["BLOCK_N0"] + meta["BLOCK_N1"]), b * t)

    if x.is_cuda and config is None:
        if _gluon_runs(x, wmat, c_out, bias, norm_gamma, residual, eps) and _run_gluon(
                x, wmat, out, c_out, bias, norm_gamma, residual, eps):
            return out
        _conv_tuned[grid](**args)
        return out
    fixed = dict(config or {"BLOCK_M": triton.next_power_of_2(w), "BLOCK_H": 1,
                            "BLOCK_N0": triton.next_power_of_2(c_out) // 2,
                            "num_warps": 4, "num_stages": 1, "BLOCK_K": 32})  # fmt: skip
    if config is None:  # the interpreter: one program per output row, all channels
        rest = c_out - fixed["BLOCK_N0"]
        fixed["BLOCK_N1"] = triton.next_power_of_2(rest) if rest > 0 else 0
    fixed.setdefault("BLOCK_H", 1)
    fixed["BLOCK_W"] = fixed["BLOCK_M"] // fixed["BLOCK_H"]
    _set_blocks({**descs, **{k: fixed[k] for k in (*_BLOCK_KEYS, "BLOCK_H")}})
    _conv_tma_kernel[grid(fixed)](**args, DOT_F32=not x.is_cuda, **fixed)
    return out


# Which kernel runs the 96- and 192-channel convs on Hopper (sm90): "auto" (default) / "gluon" the Gluon kernel
# (kernels/conv3d_gluon.py: each loaded input box serves three row taps) where it covers the conv and its first-call
# check passed (`_check_gluon`); "triton" this module's kernel always. The worker setting `conv_kernel` sets it.
KERNEL_ENV = "TURBOVID_WORKER__CONV_KERNEL"
KERNEL_CHOICES = ("auto", "gluon", "triton")
# (device index, channels, epilogue, bias) -> `_check_gluon`'s answer, once per process
_GLUON_CHECKED: dict[tuple[int, int, int, bool], bool] = {}


def _gluon_runs(x: torch.Tensor, wmat: torch.Tensor, c_out: int, bias: torch.Tensor | None,
                norm_gamma: torch.Tensor | None, residual: torch.Tensor | None, eps: float) -> bool:
    """Whether this conv goes to the Gluon kernel: sm90, asked for (not "triton"), channels it covers, and (once
    per device, channel count, epilogue and bias, outside a CUDA graph capture) `_check_gluon` on this call's first
    frame."""
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        return False
    from kernels import checked_once, conv3d_gluon, env_choice

    if env_choice(KERNEL_ENV, KERNEL_CHOICES, "auto") == "triton" or not conv3d_gluon.supported(x.shape[1], c_out):
        return False
    # bf16 only (its shared layouts), and frames at least one tile's box (8 rows × 64 pixels; smaller ones are cheap)
    if x.dtype != torch.bfloat16 or x.shape[3] < conv3d_gluon.BOX_ROWS or x.shape[4] < conv3d_gluon.TILE_W:
        return False
    return checked_once(_GLUON_CHECKED, _gluon_key(x, norm_gamma, residual, bias),
                        lambda: _check_gluon(x, wmat, c_out, bias, norm_gamma, residual, eps))


def _gluon_key(x: torch.Tensor, norm_gamma: torch.Tensor | None, residual: torch.Tensor | None,
               bias: torch.Tensor | None) -> tuple[int, int, int, bool]:
    from kernels.w8a8 import _device_index

    epi = 1 if norm_gamma is not None else 2 if residual is not None else 0
    return _device_index(x.device), x.shape[1], epi, bias is not None


def _run_gluon(x: torch.Tensor, wmat: torch.Tensor, out: torch.Tensor, c_out: int, bias: torch.Tensor | None,
               norm_gamma: torch.Tensor | None, residual: torch.Tensor | None, eps: float) -> bool:
    """Launch the Gluon kernel for a checked conv; False (the caller runs the Triton kernel) where the launch raises
    (e.g. a shape the first-call check did not see), which also sends this specialization to the Triton kernel for
    the rest of the process, with the reason logged: a job never fails for the faster kernel."""
    from kernels import conv3d_gluon

    try:
        conv3d_gluon.conv(x, wmat, out, bias=bias, norm_gamma=norm_gamma, residual=residual, eps=eps)
        return True
    except Exception as exc:  # noqa: BLE001 - any launch failure means: the Triton kernel
        _GLUON_CHECKED[_gluon_key(x, norm_gamma, residual, bias)] = False
        log.warning("the Gluon conv kernel failed on %s (%s): using the Triton kernel from now on",
                    tuple(x.shape), f"{type(exc).__name__}: {str(exc)[:200]}")
        return False


def kernel_in_use(device_index: int) -> str:
    """Which kernel this process's 96- and 192-channel convs on the device took once they ran: "gluon" (every
    epilogue checked passed), "mixed" (some fell back to the Triton kernel: the log says why), or "triton"."""
    from kernels import checked_kernel

    return checked_kernel(_GLUON_CHECKED, device_index)


GLUON_MAX_ERROR = 2e-2  # relative to the fp32 conv; both kernels are ~2e-3 from it (bf16 operands and output)


def reference_out(x: torch.Tensor, wmat: torch.Tensor, c_out: int, bias: torch.Tensor | None = None,
                  norm_gamma: torch.Tensor | None = None, residual: torch.Tensor | None = None, eps: float = 1e-12,
                  frames: int | None = None) -> torch.Tensor:
    """`causal_conv3x3x3`'s output in fp32 by torch (its first `frames` output frames; default all): conv3d with the
    weight rebuilt from wmat, then the epilogue."""
    c_in = x.shape[1]
    t = x.shape[2] - 2 if frames is None else frames
    weight = wmat[:, :c_out].float().reshape(3, 3, 3, c_in, c_out).permute(4, 3, 0, 1, 2)
    y = F.conv3d(x[:, :, : t + 2].float(), weight, bias.float() if bias is not None else None, padding=(0, 1, 1))
    if norm_gamma is not None:
        y = y / y.norm(dim=1, keepdim=True).clamp_min(eps) * c_out ** 0.5 * norm_gamma.float().view(1, -1, 1, 1, 1)
        y = F.silu(y)
    if residual is not None:
        y = y + residual[:, :, :t].float()
    return y


def _check_gluon(x: torch.Tensor, wmat: torch.Tensor, c_out: int, bias: torch.Tensor | None,
                 norm_gamma: torch.Tensor | None, residual: torch.Tensor | None, eps: float) -> bool:
    """A Hopper GPU, Triton's Gluon API, and on the first call's first output frame: the Gluon kernel within
    GLUON_MAX_ERROR (relative) of the fp32 conv with the same epilogue; otherwise the Triton kernel, with the reason
    logged."""
    from kernels import conv3d_gluon

    if torch.cuda.get_device_capability(x.device) != (9, 0) or not conv3d_gluon.available():
        return False
    try:
        b, _, _, h, w = x.shape
        got = torch.empty((b, c_out, 1, h, w), device=x.device, dtype=x.dtype, memory_format=torch.channels_last_3d)
        conv3d_gluon.conv(x[:, :, :3], wmat, got, bias=bias, norm_gamma=norm_gamma,
                          residual=residual[:, :, :1] if residual is not None else None, eps=eps)
        want = reference_out(x, wmat, c_out, bias, norm_gamma, residual, eps, frames=1)
        err = float((got.float() - want).norm() / want.norm().clamp_min(1e-30))
        if err <= GLUON_MAX_ERROR:
            log.info("conv %dx%d: the Gluon kernel (relative error %.2e to fp32 on the first frame)", x.shape[1], c_out,
                     err)
            return True
        log.warning("the Gluon conv kernel is %.2e from the fp32 conv (bound %.0e) on this Triton %s: using the "
                    "Triton kernel", err, GLUON_MAX_ERROR, triton.__version__)
    except Exception as exc:  # noqa: BLE001 - any failure means: the Triton kernel
        log.warning("the Gluon conv kernel does not run on this Triton %s (%s): using the Triton kernel",
                    triton.__version__, f"{type(exc).__name__}: {str(exc)[:200]}")
    return False


# 5. bench ---------------------------------------------------------------------------------------------
def bench(shapes: list[tuple[int, int, int, int, int]] | None = None, sweep: bool = False) -> list[dict]:
    """Time the kernel against cuDNN at the 480p VAE decoder's shapes (bf16, one chunk of 16 frames at full
    resolution), per residual-block conv and with the passes around it:
      conv1   cuDNN: 3 tap convs + the norm pass over the 3 partials (+ bias)  | ours: conv + norm epilogue
      conv2   cuDNN: 3 tap convs + the residual sum over the 3 partials         | ours: conv + residual epilogue
    shapes: (C, T, H, W) of square convs. sweep: also time every config on its own (plain epilogue)."""
    from triton.testing import do_bench

    from kernels.rmsnorm_silu import tap_sum_out, tap_sum_rmsnorm_silu_out

    shapes = shapes or [(96, 16, 480, 832), (192, 16, 240, 416), (384, 8, 120, 208), (96, 16, 720, 1280)]  # type: ignore[list-item]
    print(f"multi-row tiles offered: {_multirow_supported(torch.cuda.current_device())}", flush=True)
    rows = []

    def ms(fn) -> float:  # noqa: ANN001
        return do_bench(fn, warmup=10, rep=100, return_mode="median")

    for c, t, h, w in shapes:  # type: ignore[misc]
        buf = torch.randn(1, c, t + 2, h, w, device="cuda", dtype=torch.bfloat16).contiguous(
            memory_format=torch.channels_last_3d)
        weight = (torch.randn(c, c, 3, 3, 3, device="cuda") / (27 * c) ** 0.5).to(torch.bfloat16)
        bias = 0.1 * torch.randn(c, device="cuda", dtype=torch.bfloat16)
        gamma = 1 + 0.1 * torch.randn(c, device="cuda", dtype=torch.bfloat16)
        w2d = [weight[:, :, k].contiguous(memory_format=torch.channels_last) for k in range(3)]
        wmat = weight_matrix(weight)
        res = torch.randn(1, c, t, h, w, device="cuda", dtype=torch.bfloat16).contiguous(
            memory_format=torch.channels_last_3d)
        nxt = torch.empty(1, c, t + 2, h, w, device="cuda", dtype=torch.bfloat16, memory_format=torch.channels_last_3d)
        flop = 2 * t * h * w * c * 27 * c

        def taps(buf=buf, w2d=w2d, t=t):
            return [F.conv2d(buf[0].transpose(0, 1)[k : k + t], w2d[k], None, padding=1) for k in range(3)]

        def rows_of(y: torch.Tensor) -> torch.Tensor:  # channels-last [T, C, H, W] / [1, C, T, H, W] -> [T·H·W, C]
            return (y[0] if y.dim() == 5 else y.transpose(0, 1)).movedim(0, -1).reshape(-1, y.shape[1])

        ref = F.conv3d(buf.float(), weight.float(), bias.float(), padding=(0, 1, 1))
        plain = causal_conv3x3x3(buf, wmat, c, bias=bias)
        err = ((plain.float() - ref).norm() / ref.norm()).item()
        parts = taps()
        pr = [rows_of(p) for p in parts]
        nrows = rows_of(nxt[:, :, 2:].contiguous(memory_format=torch.channels_last_3d))
        t_taps = ms(taps)
        t_norm3 = ms(lambda: tap_sum_rmsnorm_silu_out(*pr, gamma, nrows, bias=bias))  # noqa: B023
        t_sum3 = ms(lambda: tap_sum_out(*pr, rows_of(res), pr[0], bias=bias))  # noqa: B023
        t_plain = ms(lambda: causal_conv3x3x3(buf, wmat, c, bias=bias))  # noqa: B023
        t_epi1 = ms(lambda: causal_conv3x3x3(buf, wmat, c, bias=bias, norm_gamma=gamma, out=nxt[:, :, 2:]))  # noqa: B023
        t_epi2 = ms(lambda: causal_conv3x3x3(buf, wmat, c, bias=bias, residual=res))  # noqa: B023
        ratio1, ratio2 = t_epi1 / (t_taps + t_norm3), t_epi2 / (t_taps + t_sum3)
        row = {"shape": (c, t, h, w), "taps_ms": t_taps, "norm3_ms": t_norm3, "sum3_ms": t_sum3, "plain_ms": t_plain,
               "epi_norm_ms": t_epi1, "epi_res_ms": t_epi2, "tflops_taps": flop / t_taps / 1e9,
               "tflops_ours": flop / t_plain / 1e9, "rel_err": err, "ratio_conv1": ratio1, "ratio_conv2": ratio2,
               "ratio_block": (t_epi1 + t_epi2) / (2 * t_taps + t_norm3 + t_sum3)}  # fmt: skip
        rows.append(row)
        print(f"C={c} T={t} {h}x{w}: cuDNN taps {t_taps:.3f} ms ({row['tflops_taps']:.0f} TFLOP/s), ours {t_plain:.3f} "
              f"({row['tflops_ours']:.0f}) | conv1+norm: taps {t_taps + t_norm3:.3f} vs ours {t_epi1:.3f} ({ratio1:.3f}x) | "
              f"conv2+residual: taps {t_taps + t_sum3:.3f} vs ours {t_epi2:.3f} ({ratio2:.3f}x) | block "
              f"{row['ratio_block']:.3f}x | rel err {err:.2e}", flush=True)
        if sweep:
            for cfg in _configs():
                kw = [cfg.kwargs[k] for k in _BLOCK_KEYS]
                if not _fits(c, c, 0, *kw, cfg.num_stages, _smem_limit(torch.cuda.current_device())):
                    continue
                fixed = {**cfg.kwargs, "num_warps": cfg.num_warps, "num_stages": cfg.num_stages}
                t_cfg = ms(lambda: causal_conv3x3x3(buf, wmat, c, bias=bias, config=fixed))  # noqa: B023
                print(f"    {fixed}: {t_cfg:.3f} ms ({flop / t_cfg / 1e9:.0f} TFLOP/s)", flush=True)
    return rows


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sweep", action="store_true", help="also time every config on its own")
    bench(sweep=ap.parse_args().sweep)
