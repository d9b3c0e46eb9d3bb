"""W8A8 GEMM for Hopper (sm90) written in Gluon, so the int8 tensor-core MMAs overlap each other.

Why a second form of `kernels.w8a8`'s TMA GEMM: Triton's software pipeliner makes a Hopper `tl.dot`
asynchronous (keeps one wgmma group in flight while the next K step's operands are waited for and issued)
only when the accumulator is fp32 ("Rule 2.1" of its WGMMA pipeline pass, Triton 3.6 and 3.9). An int8 dot
accumulates in int32, so every K step of `_w8a8_tma_kernel` ends in `wgmma.wait_group 0`: the tensor cores
idle while the warps wait on the next stage's barrier and issue its MMAs. Nsight Compute on the H200 put
40-46 % of the GEMM's warp samples on that wait (kernels/NOTES_w8a8.md, session 27). Gluon states the
pipeline explicitly (shared-memory ring, mbarriers, `warpgroup_mma(is_async=True)` and
`warpgroup_mma_wait(num_outstanding=1)`), which the pass's rule does not touch.

The kernel is warp-specialized (`gl.warp_specialize`): one loader warp issues every TMA load of the program's
tiles as soon as a ring slot is free (`empty` barriers), running ahead across tiles while an epilogue runs; the
kernel's own warps only wait for a slot, issue its MMAs and hand the previous slot back. What the MMA warps do
between two MMA groups is the loop's critical path: moving the loads' address math into them (one ring over
all tiles without a loader warp) made the kernel 4-37 % slower; with the loader warp the 1.3B denoise ran 2.7 %
faster (kernels/NOTES_w8a8.md, session 28). The extra warpgroup needs a register cap at launch (`maxnreg`).

Same contract as `w8a8.w8a8_gemm`'s TMA path: xq [M, K] int8, sx [M] fp32 per-token scales, the prepared
weight [N, K] int8 with per-channel scales, optional bias, y [M, N] = (xq @ wq^T) · sx · sw + bias in
bf16/fp16/fp32; out-of-range rows/columns of a tile read as zeros and are not stored.

Gluon has no interpreter: CPU CI compiles this kernel for sm_90 (`kernels.compile_check`), and
`tests/unit/kernels/test_w8a8_gpu.py` checks it against the Triton kernel on the GPU. `available()` says
whether this Triton has the Gluon Hopper API.
"""

from __future__ import annotations

import torch
import triton

from kernels.w8a8 import _device_index, _num_sms

try:  # Gluon (Triton >= 3.5): Hopper TMA, mbarriers and asynchronous warpgroup MMA
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import (
        fence_async_shared,
        mbarrier,
        tma,
        warpgroup_mma,
        warpgroup_mma_wait,
    )
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor as GluonDescriptor
    from triton.runtime.jit import constexpr_function

    # the TMA copies were renamed after Triton 3.6 (async_copy_global_to_shared -> async_load, ...)
    _tma_load = tma.async_load if hasattr(tma, "async_load") else tma.async_copy_global_to_shared
    _tma_store = tma.async_store if hasattr(tma, "async_store") else tma.async_copy_shared_to_global
    _HAVE_GLUON = True
except ImportError:  # pragma: no cover - older Triton
    _HAVE_GLUON = False

__all__ = ["available", "w8a8_gemm_gluon", "pick_config", "CONFIGS"]

# BLOCK_M, BLOCK_N, BLOCK_K, stages, warps (8 MMA warps: two warpgroups, plus the loader's); the first two are
# the ones `pick_config` returns, the rest were measured against them (scripts/tile_probe.py gemm, session 27,
# before the kernel was warp-specialized)
CONFIGS = [(128, 256, 128, 3, 8), (256, 128, 64, 5, 8), (128, 256, 64, 5, 8), (128, 256, 64, 4, 8), (128, 128, 128, 5, 8)]


def pick_config(n: int, k: int) -> tuple:
    """The tile for an [M, K] x [K, N] GEMM, from the H200 sweep of the warp-specialized kernel at the Wan
    shapes (M = 32760 / 75600, session 28): 256x128 with 64-wide K steps when K is short (the 1.3B's K = 1536:
    qkvo 0.127 against 0.138 ms, ffn_up 0.760 against 0.828), 128x256 with 128-wide K steps otherwise (1.3B
    ffn_down, every 14B GEMM: 1.01-1.07x the other). A fixed choice, no autotuning: nothing to tune or ship at
    a worker's first start."""
    return CONFIGS[1] if k <= 2048 else CONFIGS[0]


def maxnreg(warps: int) -> int:
    """The per-thread register cap of a launch with `warps` MMA warps: the loader warp's partition takes a
    whole warpgroup, and the SM's 64 Ki registers are shared by warps + 4 warps of one program (setmaxnreg then
    moves the loader's unused share to the MMA warps)."""
    return 65536 // ((warps + 4) * 32) // 8 * 8


def available() -> bool:
    return _HAVE_GLUON


if _HAVE_GLUON:

    @constexpr_function
    def _mma_layout(block_m, block_n, num_warps):
        # warps tile M first (16 rows each), an instruction covers up to 128 output columns (int8 n list)
        wm = min(num_warps, block_m // 16)
        wn = num_warps // wm
        n = min(128, block_n // wn)
        return gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[wm, wn], instr_shape=[16, n, 32])

    @gluon.jit
    def _tile_offsets(tile, num_pid_m, num_pid_n, GROUP_M: gl.constexpr, BLOCK_M: gl.constexpr,
                      BLOCK_N: gl.constexpr):
        # grouped order: GROUP_M row tiles share each column tile's weights while they are in L2
        group = tile // (GROUP_M * num_pid_n)
        first_m = group * GROUP_M
        size_m = gl.minimum(num_pid_m - first_m, GROUP_M)
        pid_m = first_m + (tile % (GROUP_M * num_pid_n)) % size_m
        pid_n = (tile % (GROUP_M * num_pid_n)) // size_m
        return pid_m * BLOCK_M, pid_n * BLOCK_N

    @gluon.jit
    def _load_partition(a_desc, b_desc, a_bufs, b_bufs, ready, empty, M, N, K,
                        GROUP_M: gl.constexpr, NUM_SMS: gl.constexpr):
        # one warp: the TMA loads of every K step of this program's tiles, as soon as a ring slot is free (the
        # MMA partition frees a slot once the MMAs that read it are done), so the next tile's first steps load
        # while the current tile's last MMAs and its epilogue run
        BLOCK_M: gl.constexpr = a_desc.block_type.shape[0]
        BLOCK_N: gl.constexpr = b_desc.block_type.shape[0]
        BLOCK_K: gl.constexpr = a_desc.block_type.shape[1]
        STAGES: gl.constexpr = a_bufs.type.shape[0]
        num_pid_m = gl.cdiv(M, BLOCK_M)
        num_pid_n = gl.cdiv(N, BLOCK_N)
        k_tiles = gl.cdiv(K, BLOCK_K)
        step = 0
        for tile in range(gl.program_id(0), num_pid_m * num_pid_n, NUM_SMS):
            off_m, off_n = _tile_offsets(tile, num_pid_m, num_pid_n, GROUP_M, BLOCK_M, BLOCK_N)
            for ki in range(k_tiles):
                slot = step % STAGES
                # a fresh mbarrier counts as having completed the phase before its first: the first lap passes
                mbarrier.wait(empty.index(slot), ((step // STAGES) & 1) ^ 1)
                bar = ready.index(slot)
                mbarrier.expect(bar, a_desc.block_type.nbytes + b_desc.block_type.nbytes)
                _tma_load(a_desc, [off_m, ki * BLOCK_K], bar, a_bufs.index(slot))
                _tma_load(b_desc, [off_n, ki * BLOCK_K], bar, b_bufs.index(slot))
                step += 1

    @gluon.jit
    def _mma_partition(a_desc, b_desc, c_desc, a_bufs, b_bufs, ready, empty, c_smem, sa_ptr, sb_ptr, bias_ptr,
                       M, N, K, HAS_BIAS: gl.constexpr, GROUP_M: gl.constexpr, NUM_SMS: gl.constexpr,
                       num_warps: gl.constexpr):
        # the kernel's warps: asynchronous int8 wgmma with one group in flight, then the epilogue of each tile
        BLOCK_M: gl.constexpr = c_desc.block_type.shape[0]
        BLOCK_N: gl.constexpr = c_desc.block_type.shape[1]
        BLOCK_K: gl.constexpr = a_desc.block_type.shape[1]
        STAGES: gl.constexpr = a_bufs.type.shape[0]
        mma: gl.constexpr = _mma_layout(BLOCK_M, BLOCK_N, num_warps)
        num_pid_m = gl.cdiv(M, BLOCK_M)
        num_pid_n = gl.cdiv(N, BLOCK_N)
        k_tiles = gl.cdiv(K, BLOCK_K)
        step = 0
        for tile in range(gl.program_id(0), num_pid_m * num_pid_n, NUM_SMS):
            off_m, off_n = _tile_offsets(tile, num_pid_m, num_pid_n, GROUP_M, BLOCK_M, BLOCK_N)
            acc = gl.zeros([BLOCK_M, BLOCK_N], gl.int32, layout=mma)
            for ki in range(k_tiles):
                slot = step % STAGES
                mbarrier.wait(ready.index(slot), (step // STAGES) & 1)
                acc = warpgroup_mma(a_bufs.index(slot), b_bufs.index(slot).permute((1, 0)), acc, is_async=True)
                # one group left in flight: the previous step's MMAs are done, so its slot goes back to the loader
                acc = warpgroup_mma_wait(num_outstanding=1, deps=(acc,))
                mbarrier.arrive(empty.index((step + STAGES - 1) % STAGES), count=1, pred=ki > 0)
                step += 1
            acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
            mbarrier.arrive(empty.index((step + STAGES - 1) % STAGES), count=1)

            # epilogue: scales and bias in fp32, then one TMA store (the previous tile's store drains first)
            rows = off_m + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, mma))
            cols = off_n + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, mma))
            sa = gl.load(sa_ptr + rows, mask=rows < M, other=0.0)
            sb = gl.load(sb_ptr + cols, mask=cols < N, other=0.0)
            y = acc.to(gl.float32) * gl.expand_dims(sa, 1) * gl.expand_dims(sb, 0)
            if HAS_BIAS:
                bias = gl.load(bias_ptr + cols, mask=cols < N, other=0.0).to(gl.float32)
                y = y + gl.expand_dims(bias, 0)
            tma.store_wait(pendings=0)
            c_smem.store(y.to(c_desc.dtype))
            fence_async_shared()
            _tma_store(c_desc, [off_m, off_n], c_smem)
        tma.store_wait(pendings=0)

    @gluon.jit
    def _w8a8_gluon_kernel(a_desc, b_desc, c_desc, sa_ptr, sb_ptr, bias_ptr, M, N, K,
                           HAS_BIAS: gl.constexpr, STAGES: gl.constexpr, GROUP_M: gl.constexpr,
                           NUM_SMS: gl.constexpr, num_warps: gl.constexpr):
        BLOCK_M: gl.constexpr = c_desc.block_type.shape[0]
        BLOCK_N: gl.constexpr = c_desc.block_type.shape[1]
        BLOCK_K: gl.constexpr = a_desc.block_type.shape[1]
        a_bufs = gl.allocate_shared_memory(a_desc.dtype, [STAGES, BLOCK_M, BLOCK_K], a_desc.layout)
        b_bufs = gl.allocate_shared_memory(b_desc.dtype, [STAGES, BLOCK_N, BLOCK_K], b_desc.layout)
        c_smem = gl.allocate_shared_memory(c_desc.dtype, [BLOCK_M, BLOCK_N], c_desc.layout)
        ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        for i in gl.static_range(STAGES):
            mbarrier.init(ready.index(i), count=1)
            mbarrier.init(empty.index(i), count=1)
        gl.warp_specialize([
            (_mma_partition, (a_desc, b_desc, c_desc, a_bufs, b_bufs, ready, empty, c_smem, sa_ptr, sb_ptr,
                              bias_ptr, M, N, K, HAS_BIAS, GROUP_M, NUM_SMS, num_warps)),
            (_load_partition, (a_desc, b_desc, a_bufs, b_bufs, ready, empty, M, N, K, GROUP_M, NUM_SMS)),
        ], [1], [40])  # the loader: one warp (its warpgroup's registers: 40 each), the rest to the MMA warps
        for i in gl.static_range(STAGES):
            mbarrier.invalidate(ready.index(i))
            mbarrier.invalidate(empty.index(i))


def _gl_dtype(dtype: torch.dtype):  # noqa: ANN202 - a Gluon dtype
    return {torch.int8: gl.int8, torch.bfloat16: gl.bfloat16, torch.float16: gl.float16,
            torch.float32: gl.float32, torch.float8_e4m3fn: gl.float8e4nv}[dtype]  # fmt: skip


def tma_descriptor(t: torch.Tensor, block: list[int]) -> object:
    """A Gluon TMA descriptor over all of t with boxes of `block`, in Gluon's default swizzled shared layout for
    that box and t's dtype (the layout the kernels' shared-memory buffers are allocated with)."""
    layout = gl.NVMMASharedLayout.get_default_for(block, _gl_dtype(t.dtype))
    return GluonDescriptor(t, list(t.shape), list(t.stride()), block, layout)


def descriptors(xq: torch.Tensor, wq: torch.Tensor, y: torch.Tensor, bm: int, bn: int, bk: int) -> tuple:
    """Gluon TMA descriptors for x [M, K], w [N, K] and y [M, N] with the config's blocks."""
    return tma_descriptor(xq, [bm, bk]), tma_descriptor(wq, [bn, bk]), tma_descriptor(y, [bm, bn])


def w8a8_gemm_gluon(xq: torch.Tensor, sx: torch.Tensor, qweight: torch.Tensor, wscale: torch.Tensor,
                    bias: torch.Tensor | None, out_dtype: torch.dtype, *, config: tuple | None = None,
                    out: torch.Tensor | None = None) -> torch.Tensor:
    """y [M, N] = (xq @ qweight^T) · sx[:, None] · wscale[None, :] (+ bias), in out_dtype. xq [M, K] int8,
    qweight [N, K] int8 (K contiguous, K and N multiples of 16), sx [M] / wscale [N] fp32. config: one of
    CONFIGS (default `pick_config`'s)."""
    if not _HAVE_GLUON:
        raise RuntimeError(f"Triton {triton.__version__} has no Gluon Hopper API")
    m, k = xq.shape
    n = qweight.shape[0]
    bm, bn, bk, stages, warps = config or pick_config(n, k)
    y = out if out is not None else torch.empty(m, n, device=xq.device, dtype=out_dtype)
    a_desc, b_desc, c_desc = descriptors(xq, qweight, y, bm, bn, bk)
    sms = _num_sms(_device_index(xq.device))
    tiles = triton.cdiv(m, bm) * triton.cdiv(n, bn)
    _w8a8_gluon_kernel[(min(sms, tiles),)](
        a_desc, b_desc, c_desc, sx, wscale, bias if bias is not None else wscale, m, n, k,
        HAS_BIAS=bias is not None, STAGES=stages, GROUP_M=8, NUM_SMS=sms, num_warps=warps, maxnreg=maxnreg(warps))
    return y
