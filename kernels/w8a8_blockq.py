"""Wan's FFN on the int8 tensor cores without an activation-quantization pass between its two GEMMs (Hopper, Gluon).

The row-scaled path (`kernels.w8a8`) runs the FFN as three kernels: ffn_up writes its bf16 output [M, F], a
quantization pass reads it back, applies the GELU, finds each row's absmax over all F columns and writes int8
[M, F] with one scale per row, and ffn_down reads that. At Wan 1.3B 480p (M = 32760, F = 8960) the pass took
14.5 ms of a 152 ms forward (kernels/NOTES_w8a8.md, session 28): 1.2 GB of traffic per block that exists only
because a row's absmax spans all of ffn_up's column tiles.

Here one scale belongs to a (row, 128 columns) block instead of a row, so one ffn_up tile (128 columns wide)
has every value its scales need:
- `ffn_up_gelu_q`: the GEMM's epilogue applies the bias and the GELU (tanh approximation, the same formula as
  the quantization pass), takes each row's absmax over the tile's 128 columns, and writes int8 codes
  [M, F] plus the scales transposed, s [F/128, M] (contiguous per column block: ffn_down reads one block's
  scales for a run of rows). No bf16 copy of the hidden activation is ever written.
- `ffn_down_blockq`: a K step is exactly one scale block (BLOCK_K = 128). Each step's MMAs go into a fresh
  int32 accumulator; once they are done, the CUDA cores add it, times that block's row scales, to an fp32
  accumulator. Two MMA warpgroups take 64 rows each of a 128x128 tile, so one promotes while the other's MMAs
  run. The per-channel weight scale and the bias come last.

Opt-in (`worker.w8a8_ffn: blockq`): on the H200 the pair is no faster than the row-scaled path (1.3B FFN
1.68-1.81 ms against 1.66-1.71, 14B 21.1 against 16.1; kernels/NOTES_w8a8.md, session 30, says why: the GELU and
code work is compute-bound wherever it runs, and ffn_down's per-step promotion keeps its tensor cores waiting).

Finer scales are no less accurate than one per row (each block's codes use the whole int8 range); the
reference forms (`reference_ffn_up_gelu_q`, `reference_ffn_down_blockq`) are the fp32 definitions the GPU tests
hold the kernels to. Gluon has no interpreter: CPU CI compiles both kernels for sm_90 (`kernels.compile_check`,
case "w8a8_blockq") and checks the reference forms' accuracy; tests/unit/kernels/test_w8a8_blockq.py checks the
kernels on the GPU.
"""

from __future__ import annotations

import logging

import torch
import triton

from kernels import checked_once, env_choice
from kernels import w8a8_gluon as wg
from kernels.int8_quant import QMAX
from kernels.w8a8 import _device_index, _num_sms

SCALE_BLOCK = 128  # columns of the hidden activation per scale (= ffn_up's BLOCK_N = ffn_down's BLOCK_K)

# BLOCK_M, BLOCK_N, BLOCK_K, stages, MMA warps. ffn_up: the row-scaled kernel's pick for short K (session 28's
# sweep: 256x128x64 ran the 1.3B ffn_up in 0.760 ms), whose 128 columns are one scale block. ffn_down: 128x128
# tiles, K steps of one scale block, two MMA warpgroups of 64 rows each (an fp32 and an int32 accumulator of
# 64 registers per thread each).
UP_CONFIG = (256, 128, 64, 5, 8)
UP_PINGPONG_CONFIG = (128, 128, 64, 6, 4)  # per MMA warpgroup: a 128x128 tile (128 int32 registers per thread)
DOWN_CONFIG = (128, 128, 128, 5, 8)
DOWN_WORKER_REGS_ = 232  # the second MMA warpgroup's registers per thread (setmaxnreg), the loader's 24


def up_pingpong(k: int) -> bool:
    """Whether `ffn_int8` runs ffn_up as the ping-pong kernel for an input width k: where it was faster on the
    H200 (s30c, kernels.bench_ffn): 0.764 against 0.835 ms at the 1.3B's K = 1536, 8.78 against 7.93 at the
    14B's K = 5120 (its 128-row tiles load the weights twice as often)."""
    return k <= 2048


# TURBOVID_WORKER__W8A8_FFN (the worker setting `w8a8_ffn`): "rowq" (default) runs Wan's FFN as ffn_up, the
# row-scaled quantization pass, ffn_down; "blockq" as these two kernels wherever `usable` says they run. Not the
# default: on the H200 they are no faster (kernels/NOTES_w8a8.md, session 30).
FFN_ENV = "TURBOVID_WORKER__W8A8_FFN"
FFN_CHOICES = ("rowq", "blockq")

__all__ = ["SCALE_BLOCK", "FFN_ENV", "available", "supported", "usable", "ffn_int8", "ffn_up_gelu_q",
           "ffn_down_blockq", "reference_ffn_up_gelu_q", "reference_ffn_down_blockq"]
log = logging.getLogger(__name__)


def available() -> bool:
    return wg.available()


def supported(n_hidden: int, k_in: int, n_out: int) -> bool:
    """Whether an FFN of these sizes fits the kernels: the hidden width a whole number of scale blocks, every
    row stride 16-byte aligned (TMA)."""
    return n_hidden % SCALE_BLOCK == 0 and k_in % 16 == 0 and n_out % 16 == 0


_CHECKED: dict[int, bool] = {}  # device index -> `_check`'s answer, once per process


def usable(device: torch.device, n_hidden: int, k_in: int, n_out: int) -> bool:
    """Whether `ffn_int8` runs an FFN of these sizes on `device`: asked for (TURBOVID_WORKER__W8A8_FFN=blockq),
    supported sizes, and (once per device and process, `_check`) the Gluon int8 GEMM in use there and one small
    FFN through these kernels within tolerance of the reference. Inside a CUDA graph capture the check cannot
    launch, so a first call there answers False (the row-scaled path is captured) without remembering it."""
    if env_choice(FFN_ENV, FFN_CHOICES, "rowq") != "blockq" or device.type != "cuda" or not supported(n_hidden, k_in, n_out):
        return False
    index = _device_index(device)
    return checked_once(_CHECKED, index, lambda: _check(index))


def _check(device_index: int) -> bool:
    from kernels.w8a8 import _gluon_usable

    if not available() or not _gluon_usable(device_index):  # sm90, Gluon, w8a8_backend not "triton"
        return False
    try:
        dev = torch.device("cuda", device_index)
        g = torch.Generator(device="cpu").manual_seed(0)
        xq = torch.randint(-127, 128, (300, 256), generator=g, dtype=torch.int8)
        wu = torch.randint(-127, 128, (512, 256), generator=g, dtype=torch.int8)
        wd = torch.randint(-127, 128, (272, 512), generator=g, dtype=torch.int8)
        sx, su, sd = (torch.rand(n, generator=g) * f for n, f in ((300, 1e-2), (512, 1e-2), (272, 1e-3)))
        bu, bd = torch.randn(512, generator=g), torch.randn(272, generator=g)
        want = reference_ffn_down_blockq(*reference_ffn_up_gelu_q(xq, sx, wu, su, bu), wd, sd, bd, torch.float32)
        got = ffn_int8(*(t.to(dev) for t in (xq, sx, wu, su)), bu.to(dev, torch.bfloat16), wd.to(dev), sd.to(dev),
                       bd.to(dev, torch.bfloat16), torch.bfloat16).float().cpu()
        err = ((got - want).norm() / want.norm()).item()
        if err < 2e-2:
            return True
        log.warning("the block-scaled int8 FFN is off by %.3g (relative) on this Triton %s: using the row-scaled "
                    "path", err, triton.__version__)
    except Exception as exc:  # noqa: BLE001 - any failure means: the row-scaled path
        log.warning("the block-scaled int8 FFN does not run on this Triton %s (%s): using the row-scaled path",
                    triton.__version__, f"{type(exc).__name__}: {str(exc)[:200]}")
    return False


# ----------------------------------------------------------------------------------------------
# reference forms (fp32, any device): the definitions the kernels are held to
# ----------------------------------------------------------------------------------------------


def quantize_blocks(h: torch.Tensor, block: int = SCALE_BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """h [M, F] (F a multiple of block) -> (q [M, F] int8, s [F/block, M] fp32), h ≈ q · s per (row, block);
    codes rounded to nearest, ties to even (as the kernel's magic-number rounding; the row-scaled pass rounds
    ties away from zero)."""
    m, f = h.shape
    hb = h.float().reshape(m, f // block, block)
    amax = hb.abs().amax(dim=2)  # [M, F/block]
    inv = torch.where(amax > 0, QMAX / amax.clamp_min(1e-30), torch.zeros_like(amax))
    q = torch.round((hb * inv[..., None]).clamp_(-QMAX, QMAX)).to(torch.int8).reshape(m, f)  # ties to even
    return q, (amax / QMAX).t().contiguous()


def reference_ffn_up_gelu_q(xq: torch.Tensor, sx: torch.Tensor, qweight: torch.Tensor, wscale: torch.Tensor,
                            bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """GELU_tanh((xq @ qweightᵀ) · sx · wscale + bias) quantized per (row, 128 columns); the integer products
    summed exactly (fp64), the rest in fp32 as the kernel does."""
    y = (xq.double() @ qweight.double().t()).float() * sx.float()[:, None] * wscale.float()[None, :]
    if bias is not None:
        y = y + bias.float()[None, :]
    return quantize_blocks(torch.nn.functional.gelu(y, approximate="tanh"))


def reference_ffn_down_blockq(q: torch.Tensor, s: torch.Tensor, qweight: torch.Tensor, wscale: torch.Tensor,
                              bias: torch.Tensor | None, out_dtype: torch.dtype) -> torch.Tensor:
    """Σ over K blocks b of (q[:, b] @ qweight[:, b]ᵀ) · s[b][:, None], then · wscale + bias; each block's
    integer product exact (fp64), the rest in fp32 as the kernel does."""
    m, k = q.shape
    nb = k // SCALE_BLOCK
    parts = torch.einsum("mbk,nbk->bmn", q.double().reshape(m, nb, SCALE_BLOCK),
                         qweight.double().reshape(-1, nb, SCALE_BLOCK)).float()  # [nb, M, N]
    y = (parts * s.float()[:, :, None]).sum(dim=0) * wscale.float()[None, :]
    if bias is not None:
        y = y + bias.float()[None, :]
    return y.to(out_dtype)


# ----------------------------------------------------------------------------------------------
# the kernels (sm90, Gluon)
# ----------------------------------------------------------------------------------------------

if wg.available():
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import (
        fence_async_shared,
        mbarrier,
        tma,
        warpgroup_mma,
        warpgroup_mma_wait,
    )

    DOWN_WORKER_REGS = gl.constexpr(DOWN_WORKER_REGS_)

    @gluon.jit
    def _gelu_tanh_fast(x):
        # 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))), the tanh as one `tanh.approx.f32` (as the quant pass's)
        u = 0.7978845608028654 * (x + 0.044715 * x * x * x)
        t = gl.inline_asm_elementwise("tanh.approx.f32 $0, $1;", "=f,f", [u], dtype=gl.float32, is_pure=True,
                                      pack=1)
        return 0.5 * x * (1.0 + t)

    @gluon.jit
    def _up_partition(a_desc, b_desc, c_desc, a_bufs, b_bufs, ready, empty, order, c_smem, sa_ptr, sb_ptr,
                      bias_ptr, so_ptr, M, N, K, HAS_BIAS: gl.constexpr, GROUP_M: gl.constexpr,
                      NUM_SMS: gl.constexpr, WARPS: gl.constexpr, PARITY: gl.constexpr, STRIDE: gl.constexpr):
        # ffn_up's MMA warps: the row-scaled kernel's K loop, then an epilogue that writes GELU'd int8 codes and
        # one scale per (row, tile) -- the tile is BLOCK_N = 128 columns wide, one scale block. STRIDE 2 (ping-
        # pong): two such partitions take the program's tiles in turn (this one every other, from PARITY), so one
        # partition's epilogue (CUDA-core work: GELU, absmax, codes) runs while the other's MMAs do. A partition
        # starts a tile's K loop only once the other has waited for every K step of the tile before (`order`):
        # a ring slot's phase parity tells its laps apart only for a waiter at most one lap ahead.
        BLOCK_M: gl.constexpr = c_desc.block_type.shape[0]
        BLOCK_N: gl.constexpr = c_desc.block_type.shape[1]
        BLOCK_K: gl.constexpr = a_desc.block_type.shape[1]
        STAGES: gl.constexpr = a_bufs.type.shape[0]
        mma: gl.constexpr = wg._mma_layout(BLOCK_M, BLOCK_N, WARPS)
        num_pid_m = gl.cdiv(M, BLOCK_M)
        num_pid_n = gl.cdiv(N, BLOCK_N)
        k_tiles = gl.cdiv(K, BLOCK_K)
        turn = PARITY  # the tile's place among this program's tiles: its K steps are ring entries turn * k_tiles...
        for tile in range(gl.program_id(0) + PARITY * NUM_SMS, num_pid_m * num_pid_n, STRIDE * NUM_SMS):
            off_m, off_n = wg._tile_offsets(tile, num_pid_m, num_pid_n, GROUP_M, BLOCK_M, BLOCK_N)
            step = turn * k_tiles
            if STRIDE == 2:  # my j-th tile (turn // 2): the other's j-th hand-over (PARITY 0: the first is free)
                mbarrier.wait(order.index(PARITY), ((turn // 2) & 1) ^ (1 - PARITY))
            turn += STRIDE
            acc = gl.zeros([BLOCK_M, BLOCK_N], gl.int32, layout=mma)
            for ki in range(k_tiles):
                slot = step % STAGES
                mbarrier.wait(ready.index(slot), (step // STAGES) & 1)
                acc = warpgroup_mma(a_bufs.index(slot), b_bufs.index(slot).permute((1, 0)), acc, is_async=True)
                acc = warpgroup_mma_wait(num_outstanding=1, deps=(acc,))
                mbarrier.arrive(empty.index((step + STAGES - 1) % STAGES), count=1, pred=ki > 0)
                step += 1
            if STRIDE == 2:  # every K step of this tile waited for: the other partition may start its next tile
                mbarrier.arrive(order.index(1 - PARITY), count=1)
            acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
            mbarrier.arrive(empty.index((step + STAGES - 1) % STAGES), count=1)

            rows = off_m + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, mma))
            cols = off_n + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, mma))
            sa = gl.load(sa_ptr + rows, mask=rows < M, other=0.0)
            sb = gl.load(sb_ptr + cols, mask=cols < N, other=0.0)
            y = acc.to(gl.float32) * gl.expand_dims(sa, 1) * gl.expand_dims(sb, 0)
            if HAS_BIAS:
                bias = gl.load(bias_ptr + cols, mask=cols < N, other=0.0).to(gl.float32)
                y = y + gl.expand_dims(bias, 0)
            y = _gelu_tanh_fast(y)  # columns past N: acc, sb and bias are 0 there, and GELU(0) = 0
            amax = gl.max(gl.abs(y), axis=1)  # [BLOCK_M]: this tile's 128 columns of each row
            inv = gl.where(amax > 0, 127.0 / gl.maximum(amax, 1e-30), 0.0)
            v = gl.minimum(gl.maximum(y * gl.expand_dims(inv, 1), -127.0), 127.0)
            # round to the nearest integer (ties to even) by adding 1.5 * 2^23: the sum's low mantissa bits are
            # the integer, in two's complement, so its low byte is the int8 code. Full-rate FADD instead of a
            # float-to-int conversion (F2I, a quarter-rate unit: 128 per thread per tile)
            codes = (v + 12582912.0).to(gl.int32, bitcast=True).to(gl.int8)
            gl.store(so_ptr + (off_n // BLOCK_N) * M + rows, amax / 127.0, mask=rows < M)
            tma.store_wait(pendings=0)
            c_smem.store(codes)
            fence_async_shared()
            wg._tma_store(c_desc, [off_m, off_n], c_smem)
        tma.store_wait(pendings=0)

    @gluon.jit
    def _down_partition(a_desc, b_desc, c_desc, a_bufs, b_bufs, ready, empty, c_smem, sa_ptr, sb_ptr, bias_ptr,
                        M, N, K, HAS_BIAS: gl.constexpr, GROUP_M: gl.constexpr, NUM_SMS: gl.constexpr,
                        HALF: gl.constexpr):
        # one of ffn_down's two MMA warpgroups: rows HALF * BLOCK_M/2 ... of each tile (the other warpgroup has
        # the other half; both read the same ring slots, which go back to the loader once both are done). Each
        # K step (one scale block) goes into a fresh int32 accumulator and is promoted into the fp32 one with its
        # rows' scales sa[step, rows] once its MMAs finish; while one warpgroup promotes, the other's MMAs keep
        # the tensor cores busy.
        BLOCK_M: gl.constexpr = a_desc.block_type.shape[0]
        BLOCK_N: gl.constexpr = b_desc.block_type.shape[0]
        BLOCK_K: gl.constexpr = a_desc.block_type.shape[1]
        HALF_M: gl.constexpr = c_desc.block_type.shape[0]
        STAGES: gl.constexpr = a_bufs.type.shape[0]
        mma: gl.constexpr = wg._mma_layout(HALF_M, BLOCK_N, 4)
        num_pid_m = gl.cdiv(M, BLOCK_M)
        num_pid_n = gl.cdiv(N, BLOCK_N)
        k_tiles = gl.cdiv(K, BLOCK_K)
        zero = gl.zeros([HALF_M, BLOCK_N], gl.int32, layout=mma)
        step = 0
        for tile in range(gl.program_id(0), num_pid_m * num_pid_n, NUM_SMS):
            off_m, off_n = wg._tile_offsets(tile, num_pid_m, num_pid_n, GROUP_M, BLOCK_M, BLOCK_N)
            off_m = off_m + HALF * HALF_M
            rows = off_m + gl.arange(0, HALF_M, layout=gl.SliceLayout(1, mma))
            row_ok = rows < M
            acc = gl.zeros([HALF_M, BLOCK_N], gl.float32, layout=mma)
            for ki in range(k_tiles):
                s = gl.load(sa_ptr + ki * M + rows, mask=row_ok, other=0.0)
                slot = step % STAGES
                mbarrier.wait(ready.index(slot), (step // STAGES) & 1)
                part = warpgroup_mma(a_bufs.index(slot).slice(HALF * HALF_M, HALF_M),
                                     b_bufs.index(slot).permute((1, 0)), zero, use_acc=False, is_async=True)
                part = warpgroup_mma_wait(num_outstanding=0, deps=(part,))
                mbarrier.arrive(empty.index(slot), count=1)
                # int32 -> fp32 by a magic number instead of a conversion instruction: a step's sum is below
                # 128 * 127 * 127 < 2^22 in magnitude, so the bits of part + 0x4B400000 are the float
                # 1.5 * 2^23 + part exactly, and taking 1.5 * 2^23 off is exact too (1.180 ms with the offset
                # folded out once at the end instead, 0.967 with I2FP, 0.912 this way: s30a/s30c)
                f = (part + 0x4B400000).to(gl.float32, bitcast=True) - 12582912.0
                acc = acc + f * gl.expand_dims(s, 1)
                step += 1

            cols = off_n + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, mma))
            sb = gl.load(sb_ptr + cols, mask=cols < N, other=0.0)
            y = acc * gl.expand_dims(sb, 0)
            if HAS_BIAS:
                bias = gl.load(bias_ptr + cols, mask=cols < N, other=0.0).to(gl.float32)
                y = y + gl.expand_dims(bias, 0)
            tma.store_wait(pendings=0)
            c_smem.store(y.to(c_desc.dtype))
            fence_async_shared()
            wg._tma_store(c_desc, [off_m, off_n], c_smem)
        tma.store_wait(pendings=0)

    @gluon.jit
    def _ffn_blockq_kernel(a_desc, b_desc, c_desc, sa_ptr, sb_ptr, bias_ptr, so_ptr, M, N, K,
                           UP: gl.constexpr, HAS_BIAS: gl.constexpr, STAGES: gl.constexpr, GROUP_M: gl.constexpr,
                           NUM_SMS: gl.constexpr, num_warps: gl.constexpr, PINGPONG: gl.constexpr = False):
        # UP: ffn_up (int8 codes + block scales out, so_ptr; num_warps MMA warps). Else ffn_down (block-scaled A
        # in, sa_ptr [K/128, M]): two MMA warpgroups (the kernel's 4 warps and a worker's 4), each with half of
        # the tile's rows and its own c_desc-sized output buffer.
        BLOCK_M: gl.constexpr = a_desc.block_type.shape[0]
        BLOCK_N: gl.constexpr = b_desc.block_type.shape[0]
        BLOCK_K: gl.constexpr = a_desc.block_type.shape[1]
        a_bufs = gl.allocate_shared_memory(a_desc.dtype, [STAGES, BLOCK_M, BLOCK_K], a_desc.layout)
        b_bufs = gl.allocate_shared_memory(b_desc.dtype, [STAGES, BLOCK_N, BLOCK_K], b_desc.layout)
        ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        order = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())  # ping-pong's hand-overs
        for i in gl.static_range(STAGES):
            mbarrier.init(ready.index(i), count=1)
            mbarrier.init(empty.index(i), count=1 if UP else 2)  # ffn_down: both MMA warpgroups hand a slot back
        for i in gl.static_range(2):
            mbarrier.init(order.index(i), count=1)
        if UP and PINGPONG:
            c0 = gl.allocate_shared_memory(c_desc.dtype, [BLOCK_M, BLOCK_N], c_desc.layout)
            c1 = gl.allocate_shared_memory(c_desc.dtype, [BLOCK_M, BLOCK_N], c_desc.layout)
            gl.warp_specialize([
                (_up_partition, (a_desc, b_desc, c_desc, a_bufs, b_bufs, ready, empty, order, c0, sa_ptr, sb_ptr,
                                 bias_ptr, so_ptr, M, N, K, HAS_BIAS, GROUP_M, NUM_SMS, num_warps, 0, 2)),
                (_up_partition, (a_desc, b_desc, c_desc, a_bufs, b_bufs, ready, empty, order, c1, sa_ptr, sb_ptr,
                                 bias_ptr, so_ptr, M, N, K, HAS_BIAS, GROUP_M, NUM_SMS, num_warps, 1, 2)),
                (wg._load_partition, (a_desc, b_desc, a_bufs, b_bufs, ready, empty, M, N, K, GROUP_M, NUM_SMS)),
            ], [num_warps, 1], [DOWN_WORKER_REGS, 24])
        elif UP:
            c_smem = gl.allocate_shared_memory(c_desc.dtype, [BLOCK_M, BLOCK_N], c_desc.layout)
            gl.warp_specialize([
                (_up_partition, (a_desc, b_desc, c_desc, a_bufs, b_bufs, ready, empty, order, c_smem, sa_ptr,
                                 sb_ptr, bias_ptr, so_ptr, M, N, K, HAS_BIAS, GROUP_M, NUM_SMS, num_warps, 0, 1)),
                (wg._load_partition, (a_desc, b_desc, a_bufs, b_bufs, ready, empty, M, N, K, GROUP_M, NUM_SMS)),
            ], [1], [40])
        else:
            HALF_M: gl.constexpr = c_desc.block_type.shape[0]
            c0 = gl.allocate_shared_memory(c_desc.dtype, [HALF_M, BLOCK_N], c_desc.layout)
            c1 = gl.allocate_shared_memory(c_desc.dtype, [HALF_M, BLOCK_N], c_desc.layout)
            gl.warp_specialize([
                (_down_partition, (a_desc, b_desc, c_desc, a_bufs, b_bufs, ready, empty, c0, sa_ptr, sb_ptr,
                                   bias_ptr, M, N, K, HAS_BIAS, GROUP_M, NUM_SMS, 0)),
                (_down_partition, (a_desc, b_desc, c_desc, a_bufs, b_bufs, ready, empty, c1, sa_ptr, sb_ptr,
                                   bias_ptr, M, N, K, HAS_BIAS, GROUP_M, NUM_SMS, 1)),
                (wg._load_partition, (a_desc, b_desc, a_bufs, b_bufs, ready, empty, M, N, K, GROUP_M, NUM_SMS)),
            ], [4, 1], [DOWN_WORKER_REGS, 24])
        for i in gl.static_range(STAGES):
            mbarrier.invalidate(ready.index(i))
            mbarrier.invalidate(empty.index(i))
        for i in gl.static_range(2):
            mbarrier.invalidate(order.index(i))


def descriptors(xq: torch.Tensor, qweight: torch.Tensor, y: torch.Tensor, config: tuple, up: bool) -> tuple:
    """The kernel's TMA descriptors for x, the weight and y: ffn_up's as the row-scaled GEMM's; ffn_down's y
    in half-tile boxes (each MMA warpgroup stores its half of the rows; A's loads are whole tiles)."""
    bm, bn, bk = config[:3]
    a_desc, b_desc, c_desc = wg.descriptors(xq, qweight, y, bm, bn, bk)
    if not up:
        c_desc = wg.descriptors(xq, qweight, y, bm // 2, bn, bk)[2]
    return a_desc, b_desc, c_desc


def launch_meta(config: tuple, up: bool, pingpong: bool) -> dict:
    """The kernel's launch constants for a config: the kernel's own warps are ffn_up's MMA warps, or one of the
    two MMA warpgroups (ffn_down, ping-pong ffn_up; the other is a worker partition); 12 warps in all, so one
    register cap."""
    stages, warps = config[3:]
    return {"UP": up, "PINGPONG": pingpong, "STAGES": stages, "GROUP_M": 8,
            "num_warps": warps if up and not pingpong else 4, "maxnreg": wg.maxnreg(8)}


def _launch(xq: torch.Tensor, sa: torch.Tensor, qweight: torch.Tensor, wscale: torch.Tensor,
            bias: torch.Tensor | None, y: torch.Tensor, so: torch.Tensor | None, config: tuple,
            pingpong: bool = False) -> None:
    if not wg.available():
        raise RuntimeError(f"Triton {triton.__version__} has no Gluon Hopper API")
    m, k = xq.shape
    n = qweight.shape[0]
    up = so is not None
    a_desc, b_desc, c_desc = descriptors(xq, qweight, y, config, up)
    sms = _num_sms(_device_index(xq.device))
    tiles = triton.cdiv(m, config[0]) * triton.cdiv(n, config[1])
    _ffn_blockq_kernel[(min(sms, tiles),)](
        a_desc, b_desc, c_desc, sa, wscale, bias if bias is not None else wscale, so if up else sa,
        m, n, k, HAS_BIAS=bias is not None, NUM_SMS=sms, **launch_meta(config, up, pingpong))


def ffn_up_gelu_q(xq: torch.Tensor, sx: torch.Tensor, qweight: torch.Tensor, wscale: torch.Tensor,
                  bias: torch.Tensor | None, *, pingpong: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """xq [M, K] int8 with per-token scales sx [M] fp32, qweight [F, K] int8 with per-channel wscale [F] fp32,
    bias [F] or None -> (q [M, F] int8, s [F/128, M] fp32): GELU_tanh of the Linear's output, quantized per
    (row, 128 columns) (`reference_ffn_up_gelu_q`). F a multiple of 128. pingpong: two MMA warpgroups on
    alternate 128x128 tiles (one's epilogue overlaps the other's MMAs) instead of one 256x128 tile at a time."""
    m, k = xq.shape
    f = qweight.shape[0]
    if f % SCALE_BLOCK:
        raise ValueError(f"the hidden width {f} is not a multiple of {SCALE_BLOCK}")
    q = torch.empty(m, f, device=xq.device, dtype=torch.int8)
    s = torch.empty(f // SCALE_BLOCK, m, device=xq.device, dtype=torch.float32)
    if m:
        _launch(xq, sx, qweight, wscale, bias, q, s, UP_PINGPONG_CONFIG if pingpong else UP_CONFIG,
                pingpong=pingpong)
    return q, s


def ffn_down_blockq(q: torch.Tensor, s: torch.Tensor, qweight: torch.Tensor, wscale: torch.Tensor,
                    bias: torch.Tensor | None, out_dtype: torch.dtype, *,
                    out: torch.Tensor | None = None) -> torch.Tensor:
    """q [M, K] int8 with block scales s [K/128, M] fp32 (`ffn_up_gelu_q`'s output), qweight [N, K] int8 with
    per-channel wscale [N] -> y [M, N] in out_dtype (`reference_ffn_down_blockq`)."""
    m, k = q.shape
    n = qweight.shape[0]
    if k % SCALE_BLOCK or s.shape != (k // SCALE_BLOCK, m) or s.dtype != torch.float32 or not s.is_contiguous():
        raise ValueError(f"s must be a contiguous fp32 [{k // SCALE_BLOCK}, {m}], got {s.dtype} {tuple(s.shape)}")
    y = out if out is not None else torch.empty(m, n, device=q.device, dtype=out_dtype)
    if m:
        _launch(q, s, qweight, wscale, bias, y, None, DOWN_CONFIG)
    return y


@torch.library.custom_op("turbovid::w8a8_ffn_blockq", mutates_args=())
def _ffn_op(xq: torch.Tensor, sx: torch.Tensor, up_q: torch.Tensor, up_s: torch.Tensor, up_b: torch.Tensor | None,
            down_q: torch.Tensor, down_s: torch.Tensor, down_b: torch.Tensor | None,
            out_dtype: torch.dtype) -> torch.Tensor:
    k = xq.shape[-1]
    q, s = ffn_up_gelu_q(xq.reshape(-1, k), sx.reshape(-1), up_q, up_s, up_b, pingpong=up_pingpong(k))
    y = ffn_down_blockq(q, s, down_q, down_s, down_b, out_dtype)
    return y.reshape(*xq.shape[:-1], down_q.shape[0])


@_ffn_op.register_fake
def _(xq, sx, up_q, up_s, up_b, down_q, down_s, down_b, out_dtype):
    return xq.new_empty((*xq.shape[:-1], down_q.shape[0]), dtype=out_dtype)


def ffn_int8(xq: torch.Tensor, sx: torch.Tensor, up_q: torch.Tensor, up_s: torch.Tensor, up_b: torch.Tensor | None,
             down_q: torch.Tensor, down_s: torch.Tensor, down_b: torch.Tensor | None,
             out_dtype: torch.dtype) -> torch.Tensor:
    """Wan's FFN ``Linear → GELU(tanh) → Linear`` on per-token int8 activations: xq [..., C] int8, sx [...] fp32
    (x ≈ xq·sx, as the norm kernel writes them), up [F, C] and down [N, F] int8 weights with per-channel fp32
    scales and optional biases -> [..., N] in out_dtype. Two kernels: `ffn_up_gelu_q`, `ffn_down_blockq`."""
    f, c = up_q.shape
    n = down_q.shape[0]
    if xq.dtype != torch.int8 or xq.shape[-1] != c or tuple(sx.shape) != tuple(xq.shape[:-1]):
        raise ValueError(f"xq must be int8 [..., {c}] with fp32 sx [...], got {xq.dtype} {tuple(xq.shape)} and "
                         f"{tuple(sx.shape)}")
    if down_q.shape[1] != f or not supported(f, c, n):
        raise ValueError(f"up [{f}, {c}] and down {tuple(down_q.shape)} do not make an FFN these kernels run")
    return _ffn_op(xq, sx, up_q, up_s, up_b, down_q, down_s, down_b, out_dtype)
