"""The VAE's 96- and 192-channel causal 3×3×3 convs in Gluon for Hopper (sm90): each loaded input box serves three taps.

Why a second form of `kernels.conv3d_igemm`'s kernel: Nsight Compute found that kernel L2-bound at 96 channels
(85 % of the L2's throughput, the tensor pipe 54 % active; kernels/NOTES_vae.md, session 27). Each of its K steps
loads, for one tap (dt, dh, dw), the tile's input pixels shifted by that tap: 27 loads of the same rows, shifted by
a pixel or a row, per channel chunk. Triton cannot take a row-shifted view of a loaded tile, so every tap is a
load of its own.

This kernel loads, per (dt, dw) and channel chunk, one box of BOX_ROWS = 8 input rows × 64 pixels (the tile's
output rows and the rows above and below them). It runs the three row taps dh = 0, 1, 2 on views of that box in shared
memory that start whole rows (64 pixels) further. Such a view is a legal wgmma operand. A view one pixel further is
not, so the column taps dw stay separate loads. At 96 channels a tile is 6 rows: the input comes from L2 as
9·8 = 72 row-loads per 6 output rows instead of 27·6 = 162, and the weights are read per 384 pixels instead of
256. That is about half the L2 traffic per output pixel.

- A tile: 2 · ROWS output rows × 64 pixels of one frame, all output channels in two dots (96 = 64 + 32,
  192 = 128 + 64: no padded columns). ROWS = 3 at 96 channels; 2 at 192, where three rows of accumulators would not
  fit the registers.
- Persistent: one program per SM loops over the tiles.
- A loader warp issues the TMA loads: the input box and the step's three weight tiles per ring slot. TMA's
  out-of-bounds zero fill is the conv's spatial padding, as in the Triton kernel. It runs ahead into the next tile
  while the current tile's epilogue runs.
- Two consumer warpgroups, ROWS output rows each, issue a step's 6 · ROWS asynchronous wgmmas with both operands in
  shared memory. They keep them in flight while they wait for the next slot, and hand a slot back once its step's
  MMAs are done.
- The epilogues are `kernels.conv3d_igemm`'s: + bias, then nothing, RMS-norm + SiLU over the channels (the next
  conv's input), or + a residual. Stores go straight from the accumulators' registers, masked at the frame's edges.

Measured on an H200 (`scripts/conv_gluon_probe.py`, session 33; kernels/NOTES_vae.md):
- one 16-frame chunk: 1.10-1.16x the Triton kernel at 96 channels (480p and 720p) and 1.11-1.28x at 192;
- the same error to the fp32 conv (1.66e-3);
- the 480p decode: 1.04x with the Gluon kernel at 96 channels and 1.085x at 96 and 192, the same cosine to the
  fp32 decode (0.9999218);
- in the worker at 96 channels, the decode took 0.558-0.565 s against 0.579-0.590 s.

Gluon has no interpreter. CPU CI compiles this kernel for sm_90 (`kernels.compile_check conv3d_gluon`). That check
fails on wgmmas serialized by ptxas, on a step's MMAs not kept in flight, and on spills, apart from a bounded one in
the 192-channel residual epilogue. `tests/unit/kernels/test_conv3d_gluon.py` checks the kernel on the GPU against the
fp32 conv and the Triton kernel. `conv3d_igemm.causal_conv3x3x3` runs it where `supported` and the first call's
check say so, unless TURBOVID_WORKER__CONV_KERNEL=triton.
"""

from __future__ import annotations

import torch
import triton

from kernels import w8a8_gluon as wg
from kernels.w8a8 import _device_index, _num_sms

if wg.available():
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import mbarrier, warpgroup_mma, warpgroup_mma_wait
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor as GluonDescriptor

    from kernels.w8a8_gluon import _tma_load

__all__ = ["available", "supported", "conv", "launch_meta", "tile_config", "SHAPES", "TILE_W"]

TILE_W = 64  # output pixels per tile row: one m64 wgmma per row
BOX_ROWS = 8  # input rows per loaded box: the tile's rows and one above and below (a TMA box is a power of two)
BLOCK_K = 32  # input channels per step
# channels -> (output rows per consumer warpgroup, N0, N1, ring slots). 96: 3 rows (6 per tile, the box's 8 rows
# all used), dots of 64 + 32, 4 slots of 50 KB. 192: 2 rows (4 per tile: 3 · (128 + 64) accumulators would not fit
# the registers), dots of 128 + 64, 3 slots of 68 KB
SHAPES = {96: (3, 64, 32, 4), 192: (2, 128, 64, 3)}
CONSUMER_REGS = 232  # the second consumer warpgroup's registers per thread (setmaxnreg); the loader's 24


def available() -> bool:
    return wg.available()


# the channel counts `causal_conv3x3x3` sends here: the decoder's full- and half-resolution residual blocks (192's
# residual epilogue spills up to ~200 bytes once per tile, and was still 1.11-1.28x the Triton kernel, s33c)
USED = (96, 192)


def supported(c_in: int, c_out: int) -> bool:
    """The channel counts the worker runs on this kernel: square convs of 96 (the decoder's full-resolution
    blocks) or 192 (the half-resolution ones)."""
    return c_in == c_out and c_in in USED


if wg.available():

    @gluon.jit
    def _tile_coords(tile, n_wt, n_ht, T, TILE_ROWS: gl.constexpr, BW: gl.constexpr):
        # tile -> (batch, frame, first output row, first column): column tiles innermost, then row tiles, then frames
        frame = tile // (n_wt * n_ht)
        rest = tile % (n_wt * n_ht)
        return frame // T, frame % T, (rest // n_wt) * TILE_ROWS, (rest % n_wt) * BW

    @gluon.jit
    def _loader(x_desc, w0_desc, w1_desc, a_bufs, w0_bufs, w1_bufs, ready, empty, n_tiles, n_wt, n_ht, T,
                C_IN: gl.constexpr, TILE_ROWS: gl.constexpr):
        # one warp: per step (dt, dw, channel chunk) the input box and the three row taps' weight tiles, running ahead
        # across this program's tiles (the next tile's first boxes load during the current one's epilogue)
        BW: gl.constexpr = x_desc.block_type.shape[3]
        BK: gl.constexpr = x_desc.block_type.shape[4]
        NSLOT: gl.constexpr = a_bufs.type.shape[0]
        KC: gl.constexpr = C_IN // BK
        nbytes: gl.constexpr = x_desc.block_type.nbytes + 3 * (w0_desc.block_type.nbytes + w1_desc.block_type.nbytes)
        n = 0
        for tile in range(gl.program_id(0), n_tiles, gl.num_programs(0)):
            b, t, h0, w0 = _tile_coords(tile, n_wt, n_ht, T, TILE_ROWS, BW)
            for i in range(9 * KC):
                kc = i % KC
                tap = i // KC  # dt · 3 + dw
                dt = tap // 3
                dw = tap % 3
                slot = n % NSLOT
                phase = ((n // NSLOT) & 1) ^ 1  # a fresh mbarrier passes a wait on the phase before its first
                mbarrier.wait(empty.index(slot), phase)
                mbarrier.expect(ready.index(slot), nbytes)
                _tma_load(x_desc, [b, t + dt, h0 - 1, w0 + dw - 1, kc * BK], ready.index(slot), a_bufs.index(slot))
                for dh in gl.static_range(3):
                    krow = (dt * 9 + dh * 3 + dw) * C_IN + kc * BK
                    _tma_load(w0_desc, [krow, 0], ready.index(slot), w0_bufs.index(slot * 3 + dh))
                    _tma_load(w1_desc, [krow, w0_desc.block_type.shape[1]], ready.index(slot),
                              w1_bufs.index(slot * 3 + dh))
                n += 1

    @gluon.jit
    def _epilogue_row(acc0, acc1, out_ptr, res_ptr, bias_ptr, gamma_ptr, b, t, hh, w0, H, W, so_b, so_t, so_h,
                      so_w, sr_b, sr_t, sr_h, sr_w, scale, eps, HAS_BIAS: gl.constexpr, EPI: gl.constexpr,
                      l0: gl.constexpr, l1: gl.constexpr):
        BN0: gl.constexpr = acc0.type.shape[1]
        BN1: gl.constexpr = acc1.type.shape[1]
        BW: gl.constexpr = acc0.type.shape[0]
        px0 = w0 + gl.arange(0, BW, layout=gl.SliceLayout(1, l0))
        px1 = w0 + gl.arange(0, BW, layout=gl.SliceLayout(1, l1))
        c0 = gl.arange(0, BN0, layout=gl.SliceLayout(0, l0))
        c1 = BN0 + gl.arange(0, BN1, layout=gl.SliceLayout(0, l1))
        if HAS_BIAS:
            acc0 = acc0 + gl.expand_dims(gl.load(bias_ptr + c0).to(gl.float32), 0)
            acc1 = acc1 + gl.expand_dims(gl.load(bias_ptr + c1).to(gl.float32), 0)
        ok0 = gl.expand_dims((px0 < W) & (hh < H), 1)
        ok1 = gl.expand_dims((px1 < W) & (hh < H), 1)
        if EPI == 2:
            rbase = res_ptr + b * sr_b + t * sr_t + hh * sr_h
            r0 = gl.load(rbase + gl.expand_dims(px0 * sr_w, 1) + gl.expand_dims(c0, 0), mask=ok0, other=0.0)
            r1 = gl.load(rbase + gl.expand_dims(px1 * sr_w, 1) + gl.expand_dims(c1, 0), mask=ok1, other=0.0)
            acc0 = acc0 + r0.to(gl.float32)
            acc1 = acc1 + r1.to(gl.float32)
        if EPI == 1:  # silu(x / ||x|| · sqrt(C) · gamma) over the pixel's channels, both dots
            ss = gl.sum(acc0 * acc0, axis=1) + gl.convert_layout(gl.sum(acc1 * acc1, axis=1), gl.SliceLayout(1, l0))
            inv = scale / gl.maximum(gl.sqrt(ss), eps)
            g0 = gl.load(gamma_ptr + c0).to(gl.float32)
            g1 = gl.load(gamma_ptr + c1).to(gl.float32)
            acc0 = acc0 * gl.expand_dims(inv, 1) * gl.expand_dims(g0, 0)
            acc1 = acc1 * gl.expand_dims(gl.convert_layout(inv, gl.SliceLayout(1, l1)), 1) * gl.expand_dims(g1, 0)
            acc0 = acc0 / (1.0 + gl.exp2(-1.4426950408889634 * acc0))
            acc1 = acc1 / (1.0 + gl.exp2(-1.4426950408889634 * acc1))
        obase = out_ptr + b * so_b + t * so_t + hh * so_h
        gl.store(obase + gl.expand_dims(px0 * so_w, 1) + gl.expand_dims(c0, 0), acc0.to(out_ptr.dtype.element_ty),
                 mask=ok0)
        gl.store(obase + gl.expand_dims(px1 * so_w, 1) + gl.expand_dims(c1, 0), acc1.to(out_ptr.dtype.element_ty),
                 mask=ok1)

    @gluon.jit
    def _mma_row(a_all, wt0, wt1, acc0, acc1, row: gl.constexpr, BW: gl.constexpr):
        a = a_all.slice(row * BW, BW)
        acc0 = warpgroup_mma(a, wt0, acc0, is_async=True)
        acc1 = warpgroup_mma(a, wt1, acc1, is_async=True)
        return acc0, acc1

    @gluon.jit
    def _consumer(a_bufs, w0_bufs, w1_bufs, ready, empty, out_ptr, res_ptr, bias_ptr, gamma_ptr, n_tiles, n_wt,
                  n_ht, T, H, W, so_b, so_t, so_h, so_w, sr_b, sr_t, sr_h, sr_w, scale, eps, C_IN: gl.constexpr,
                  ROWS: gl.constexpr, HAS_BIAS: gl.constexpr, EPI: gl.constexpr, A_SWIZZLE: gl.constexpr,
                  NEW_API: gl.constexpr, WG: gl.constexpr):
        # one warpgroup: ROWS (2 or 3) output rows of each tile, all channels in two dots
        NSLOT: gl.constexpr = a_bufs.type.shape[0]
        BOX: gl.constexpr = a_bufs.type.shape[3]
        BW: gl.constexpr = a_bufs.type.shape[4]
        BK: gl.constexpr = a_bufs.type.shape[5]
        BN0: gl.constexpr = w0_bufs.type.shape[2]
        BN1: gl.constexpr = w1_bufs.type.shape[2]
        KC: gl.constexpr = C_IN // BK
        IN_FLIGHT: gl.constexpr = 6 * ROWS  # one step's MMAs: 3 row taps × ROWS rows × 2 dots
        # the input box seen as [BOX · BW, BK] (its rows are the box's pixels, row-major), in its own swizzle
        A_LAYOUT: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=A_SWIZZLE, element_bitwidth=16, rank=2)
        l0: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, BN0, 16])
        l1: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, BN1, 16])
        R0: gl.constexpr = WG * ROWS  # this warpgroup's first output row in the tile (box row R0 + 1)
        n = 0
        for tile in range(gl.program_id(0), n_tiles, gl.num_programs(0)):
            b, t, h0, w0 = _tile_coords(tile, n_wt, n_ht, T, 2 * ROWS, BW)
            a00 = gl.zeros([BW, BN0], gl.float32, l0)
            a01 = gl.zeros([BW, BN0], gl.float32, l0)
            a10 = gl.zeros([BW, BN1], gl.float32, l1)
            a11 = gl.zeros([BW, BN1], gl.float32, l1)
            if ROWS == 3:
                a02 = gl.zeros([BW, BN0], gl.float32, l0)
                a12 = gl.zeros([BW, BN1], gl.float32, l1)
            for i in range(9 * KC):
                slot = n % NSLOT
                mbarrier.wait(ready.index(slot), (n // NSLOT) & 1)
                if NEW_API:  # renamed after Triton 3.6
                    a_all = a_bufs.index(slot).reinterpret(gl.bfloat16, [BOX * BW, BK], A_LAYOUT)
                else:
                    a_all = a_bufs.index(slot)._reinterpret(gl.bfloat16, [BOX * BW, BK], A_LAYOUT)
                for dh in gl.static_range(3):
                    wt0 = w0_bufs.index(slot * 3 + dh)
                    wt1 = w1_bufs.index(slot * 3 + dh)
                    a00, a10 = _mma_row(a_all, wt0, wt1, a00, a10, R0 + dh, BW)
                    a01, a11 = _mma_row(a_all, wt0, wt1, a01, a11, R0 + 1 + dh, BW)
                    if ROWS == 3:
                        a02, a12 = _mma_row(a_all, wt0, wt1, a02, a12, R0 + 2 + dh, BW)
                # this step's MMAs stay in flight; the previous step's are done, so its slot goes back
                if ROWS == 3:
                    a00, a01, a02, a10, a11, a12 = warpgroup_mma_wait(num_outstanding=IN_FLIGHT,
                                                                      deps=(a00, a01, a02, a10, a11, a12))
                else:
                    a00, a01, a10, a11 = warpgroup_mma_wait(num_outstanding=IN_FLIGHT, deps=(a00, a01, a10, a11))
                if i > 0:
                    mbarrier.arrive(empty.index((n - 1) % NSLOT), count=1)
                n += 1
            if ROWS == 3:
                a00, a01, a02, a10, a11, a12 = warpgroup_mma_wait(num_outstanding=0,
                                                                  deps=(a00, a01, a02, a10, a11, a12))
            else:
                a00, a01, a10, a11 = warpgroup_mma_wait(num_outstanding=0, deps=(a00, a01, a10, a11))
            mbarrier.arrive(empty.index((n - 1) % NSLOT), count=1)  # the tile's last slot
            hh = h0 + R0
            _epilogue_row(a00, a10, out_ptr, res_ptr, bias_ptr, gamma_ptr, b, t, hh, w0, H, W, so_b, so_t, so_h,
                          so_w, sr_b, sr_t, sr_h, sr_w, scale, eps, HAS_BIAS, EPI, l0, l1)
            _epilogue_row(a01, a11, out_ptr, res_ptr, bias_ptr, gamma_ptr, b, t, hh + 1, w0, H, W, so_b, so_t,
                          so_h, so_w, sr_b, sr_t, sr_h, sr_w, scale, eps, HAS_BIAS, EPI, l0, l1)
            if ROWS == 3:
                _epilogue_row(a02, a12, out_ptr, res_ptr, bias_ptr, gamma_ptr, b, t, hh + 2, w0, H, W, so_b, so_t,
                              so_h, so_w, sr_b, sr_t, sr_h, sr_w, scale, eps, HAS_BIAS, EPI, l0, l1)

    @gluon.jit
    def _conv_gluon_kernel(x_desc, w0_desc, w1_desc, out_ptr, res_ptr, bias_ptr, gamma_ptr, T, H, W, so_b, so_t,
                           so_h, so_w, sr_b, sr_t, sr_h, sr_w, scale, eps, n_tiles, C_IN: gl.constexpr,
                           ROWS: gl.constexpr, HAS_BIAS: gl.constexpr, EPI: gl.constexpr, NSLOT: gl.constexpr,
                           A_SWIZZLE: gl.constexpr, NEW_API: gl.constexpr, WORKER_REGS: gl.constexpr):
        BOX: gl.constexpr = x_desc.block_type.shape[2]
        BW: gl.constexpr = x_desc.block_type.shape[3]
        BK: gl.constexpr = x_desc.block_type.shape[4]
        BN0: gl.constexpr = w0_desc.block_type.shape[1]
        BN1: gl.constexpr = w1_desc.block_type.shape[1]
        gl.static_assert(2 * ROWS + 2 <= BOX)
        n_wt = gl.cdiv(W, BW)
        n_ht = gl.cdiv(H, 2 * ROWS)
        a_bufs = gl.allocate_shared_memory(x_desc.dtype, [NSLOT, 1, 1, BOX, BW, BK], x_desc.layout)
        w0_bufs = gl.allocate_shared_memory(w0_desc.dtype, [NSLOT * 3, BK, BN0], w0_desc.layout)
        w1_bufs = gl.allocate_shared_memory(w1_desc.dtype, [NSLOT * 3, BK, BN1], w1_desc.layout)
        ready = gl.allocate_shared_memory(gl.int64, [NSLOT, 1], mbarrier.MBarrierLayout())
        empty = gl.allocate_shared_memory(gl.int64, [NSLOT, 1], mbarrier.MBarrierLayout())
        for j in gl.static_range(NSLOT):
            mbarrier.init(ready.index(j), count=1)
            mbarrier.init(empty.index(j), count=2)  # both consumer warpgroups hand a slot back
        gl.warp_specialize([
            (_consumer, (a_bufs, w0_bufs, w1_bufs, ready, empty, out_ptr, res_ptr, bias_ptr, gamma_ptr, n_tiles,
                         n_wt, n_ht, T, H, W, so_b, so_t, so_h, so_w, sr_b, sr_t, sr_h, sr_w, scale, eps, C_IN, ROWS,
                         HAS_BIAS, EPI, A_SWIZZLE, NEW_API, 0)),
            (_consumer, (a_bufs, w0_bufs, w1_bufs, ready, empty, out_ptr, res_ptr, bias_ptr, gamma_ptr, n_tiles,
                         n_wt, n_ht, T, H, W, so_b, so_t, so_h, so_w, sr_b, sr_t, sr_h, sr_w, scale, eps, C_IN, ROWS,
                         HAS_BIAS, EPI, A_SWIZZLE, NEW_API, 1)),
            (_loader, (x_desc, w0_desc, w1_desc, a_bufs, w0_bufs, w1_bufs, ready, empty, n_tiles, n_wt, n_ht, T,
                       C_IN, 2 * ROWS)),
        ], [4, 1], [WORKER_REGS, 24])
        for j in gl.static_range(NSLOT):
            mbarrier.invalidate(ready.index(j))
            mbarrier.invalidate(empty.index(j))


def _layout(block: list[int]) -> object:
    return gl.NVMMASharedLayout.get_default_for(block, gl.bfloat16)


def tile_config(c: int) -> tuple[int, int, int, int]:
    """(output rows per consumer warpgroup, N0, N1, ring slots) for `c` channels (`supported`)."""
    return SHAPES[c]


def descriptors(x: torch.Tensor, wmat: torch.Tensor, n0: int, n1: int) -> tuple:
    """TMA descriptors: the time-padded input [B, C, T + 2, H, W] (channels-last-3d) as [B, T + 2, H, W, C] with
    boxes of BOX_ROWS rows × TILE_W pixels × BLOCK_K channels; the weight matrix [27·C, N_pad] with boxes of
    BLOCK_K rows × n0 and × n1 columns."""
    view = x.permute(0, 2, 3, 4, 1)
    xbox = [1, 1, BOX_ROWS, TILE_W, BLOCK_K]
    return (GluonDescriptor(view, list(view.shape), list(view.stride()), xbox, _layout(xbox)),
            GluonDescriptor(wmat, list(wmat.shape), list(wmat.stride()), [BLOCK_K, n0], _layout([BLOCK_K, n0])),
            GluonDescriptor(wmat, list(wmat.shape), list(wmat.stride()), [BLOCK_K, n1], _layout([BLOCK_K, n1])))


def launch_meta(c_in: int, has_bias: bool, epi: int, stages: int | None = None) -> dict:
    """The kernel's constants: 4 warps of its own (the first consumer warpgroup), a second consumer warpgroup and
    the loader warp as worker partitions: 12 warps in all, hence the register cap. A_SWIZZLE: the input box's
    shared-memory swizzle (its layout seen as [BOX_ROWS · TILE_W, BLOCK_K]); a plain int, since every constexpr of
    a launch must serialize to JSON (the worker records each compiled specialization, worker/precompile.py)."""
    rows, _, _, slots = tile_config(c_in)
    swizzle = _layout([1, 1, BOX_ROWS, TILE_W, BLOCK_K]).swizzle_byte_width
    return {"C_IN": c_in, "ROWS": rows, "HAS_BIAS": has_bias, "EPI": epi, "NSLOT": stages or slots,
            "A_SWIZZLE": swizzle, "NEW_API": hasattr(gl.shared_memory_descriptor, "reinterpret"),
            "WORKER_REGS": CONSUMER_REGS, "num_warps": 4, "maxnreg": wg.maxnreg(8)}


def tiles(c: int, b: int, t: int, h: int, w: int) -> int:
    """How many output tiles (2 · ROWS rows × TILE_W pixels of one frame) a conv has."""
    rows = 2 * tile_config(c)[0]
    return triton.cdiv(h, rows) * triton.cdiv(w, TILE_W) * b * t


def conv(x: torch.Tensor, wmat: torch.Tensor, out: torch.Tensor, *, bias: torch.Tensor | None,
         norm_gamma: torch.Tensor | None, residual: torch.Tensor | None, eps: float, stages: int | None = None,
         persistent: bool = True, kernel: object | None = None) -> torch.Tensor:
    """`kernels.conv3d_igemm.causal_conv3x3x3` on this kernel, arguments already checked there: x the time-padded
    input [B, C, T + 2, H, W] channels-last-3d (C `supported`), wmat its weight matrix, out [B, C, T, H, W]
    channels-last-3d (possibly frames of a larger buffer). persistent: one program per SM looping over the tiles
    (False: one program per tile). kernel: a variant of `_conv_gluon_kernel` with its parameters (a probe's)."""
    b, c_in, tp, h, w = x.shape
    t = tp - 2
    _, n0, n1, _ = tile_config(c_in)
    x_desc, w0_desc, w1_desc = descriptors(x, wmat, n0, n1)
    epi = 1 if norm_gamma is not None else 2 if residual is not None else 0
    r = residual if residual is not None else out
    dummy = bias if bias is not None else wmat
    n_tiles = tiles(c_in, b, t, h, w)
    programs = min(n_tiles, _num_sms(_device_index(x.device))) if persistent else n_tiles
    (kernel or _conv_gluon_kernel)[(programs,)](  # type: ignore[index]
        x_desc, w0_desc, w1_desc, out, r, dummy, norm_gamma if norm_gamma is not None else dummy, t, h, w,
        out.stride(0), out.stride(2), out.stride(3), out.stride(4), r.stride(0), r.stride(2), r.stride(3), r.stride(4),
        float(out.shape[1]) ** 0.5, eps, n_tiles, **launch_meta(c_in, bias is not None, epi, stages))
    return out
