"""SageSLA's fused sparse attention for Hopper (sm90) in Gluon: the score MMAs overlap the softmax.

Why a second form of `kernels.sagesla`'s `_sagesla_fwd_kernel`: in the Triton kernel every key tile's int8
Q·Kᵀ runs as four chained wgmmas, each waited for before the next is issued (ptxas serializes all of the
kernel's wgmmas: its advisory C7515, the accumulator rescale written between them), and the softmax of a tile can
only start after its scores are back. The scores' MMA and the CUDA-core work (int32 → fp32, max, exp2, row sums,
the fp8 P) take turns, and with ~150 registers per thread three 64-row programs per SM are too few warps to
fill the gaps (Nsight Compute, session 27: 13-17 % of the samples on `wgmma.wait_group 0`, 14 % on a barrier).

This kernel is FlashAttention-3's plan on the same operands (`sagesla._prepare`'s int8 Q/K with block scales,
the FP8 Vᵀ, the sorted block LUT, the linear branch's output):
- one program per 128-row query block of one head; a loader warp issues TMA loads of the Q block and of each
  selected key block's K tile and Vᵀ tile into a ring of shared-memory slots (mbarriers `ready`/`empty`);
- two consumer warpgroups, 64 query rows each, share every K/Vᵀ tile (a tile is loaded once per 128 rows);
- in each warpgroup the next key block's Q·Kᵀ is issued before the current block's softmax, so the tensor
  cores work during the softmax, and the two warpgroups' softmaxes interleave with each other's MMAs. (Keeping
  the previous block's P·V in flight during the softmax as well, FlashAttention-3's other overlap, makes ptxas
  serialize every wgmma of the kernel (C7513/C7514) on Triton 3.6, so P·V is waited for at the end of its step;
  the scores in flight across the key loop's back edge need the loop taken two blocks at a time, for the same
  reason);
- the int32 scores become floats by a magic number instead of a conversion instruction: |s| ≤ 128·127·127 <
  2^22, so the bits of s + 0x4B400000 are the float 1.5·2^23 + s exactly; the offset is folded into the
  per-row constant of the one FFMA that scales and shifts each score (exact to < 1 unit of s).

Measured on an H200 (`scripts/attn_probe.py`, session 31 `s31c`-`s31e`; kernels/NOTES_sagesla.md): 1.05x the
Triton kernel at the 1.3B shape (1.069-1.075 against 1.127-1.130 ms), 1.07x at the 14B shape (17.9-18.1 against
19.2-19.3 ms), the same error to the fp32 reference (3.55e-2 both); the 1.3B DiT took 0.154 s per NFE with it and
0.156 with the Triton kernel. Nsight Compute: still latency-bound (an eligible warp in 46 % of the cycles; a third
of the stalls at the warpgroup syncs that precede each mbarrier arrive and wait). Freeing a slot's K and Vᵀ with one
barrier, and FA3's ping-pong of the two warpgroups' softmaxes (turns handed over by mbarriers), gained nothing and
were dropped (commit 40fc684 has them).

Same results as the Triton kernel up to fp32 rounding order (P in FP8 e4m3 scaled by 2^P_OFF, V per channel in
FP8, the sparse part rounded to the output dtype before the linear branch is added).

Gluon has no interpreter: CPU CI compiles this kernel for sm_90 (`kernels.compile_check sagesla_gluon`, which
also fails if ptxas serializes its wgmmas or spills), and `tests/unit/kernels/test_sagesla_gluon.py` checks it
on the GPU against the fp32 reference and the Triton kernel. `sagesla._launch` runs it where `supported` and the
first call's check (`sagesla._check_gluon`) say so, unless TURBOVID_WORKER__SAGESLA_KERNEL=triton.
"""

from __future__ import annotations

import torch
import triton

from kernels import w8a8_gluon as wg

if wg.available():
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import mbarrier, warpgroup_mma, warpgroup_mma_wait

    from kernels.w8a8_gluon import _tma_load

__all__ = ["available", "supported", "attention", "STAGES", "CONSUMER_REGS"]

STAGES = 2  # K / Vᵀ ring slots: 2 was 1.05x the Triton kernel at 1.3B, 3 and 4 1.01x (14B: 1.07x either way)
HALF_M = 64  # query rows per consumer warpgroup (two per program: the LUT's 128-row query block)
CONSUMER_REGS = 232  # the second consumer warpgroup's registers per thread (setmaxnreg); the loader's 24


def available() -> bool:
    return wg.available()


def supported(d: int, block_q: int, block_k: int, topk: int, dense: bool, pv_fp8: bool) -> bool:
    """Whether this kernel covers a prepared call: sparse, FP8 P·V, head dim 128, 128-row query blocks (two
    64-row warpgroups), 64-row key blocks (128-row ones spill and serialize the wgmmas), at least four selected
    key blocks (the first and last steps are peeled, the middle ones taken two at a time)."""
    return not dense and pv_fp8 and d == 128 and block_q == 2 * HALF_M and block_k == 64 and topk >= 4


if wg.available():

    @gluon.jit
    def _loader(q_desc, k_desc, v_desc, q_smem, k_bufs, v_bufs, q_bar, k_ready, k_empty, v_ready, v_empty,
                lut_ptr, q_row, kv_row, v_row, TOPK):
        # one warp: the Q block (both halves), then each selected key block's K and Vᵀ tiles as slots free up
        HALF: gl.constexpr = q_desc.block_type.shape[0]
        BLOCK_N: gl.constexpr = k_desc.block_type.shape[0]
        NSLOT: gl.constexpr = k_bufs.type.shape[0]
        mbarrier.expect(q_bar, 2 * q_desc.block_type.nbytes)
        _tma_load(q_desc, [q_row, 0], q_bar, q_smem.index(0))
        _tma_load(q_desc, [q_row + HALF, 0], q_bar, q_smem.index(1))
        for i in range(TOPK):
            kb = gl.load(lut_ptr + i)
            slot = i % NSLOT
            phase = ((i // NSLOT) & 1) ^ 1  # a fresh mbarrier passes a wait on the phase before its first
            mbarrier.wait(k_empty.index(slot), phase)
            mbarrier.expect(k_ready.index(slot), k_desc.block_type.nbytes)
            _tma_load(k_desc, [kv_row + kb * BLOCK_N, 0], k_ready.index(slot), k_bufs.index(slot))
            mbarrier.wait(v_empty.index(slot), phase)
            mbarrier.expect(v_ready.index(slot), v_desc.block_type.nbytes)
            _tma_load(v_desc, [v_row, kb * BLOCK_N], v_ready.index(slot), v_bufs.index(slot))

    @gluon.jit
    def _softmax(s, m_i, l_i, sc, kb, L, BLOCK_N: gl.constexpr, P_OFF: gl.constexpr, MASKED: gl.constexpr,
                 s_layout: gl.constexpr):
        # int32 scores -> P (fp32, times 2^P_OFF), the rescale factor of the running sums, the new row max / sum
        sf = (s + 0x4B400000).to(gl.float32, bitcast=True)  # = 1.5 * 2^23 + s, exactly
        if MASKED:  # the last selected block may reach past L (keys of the next head, or TMA's zeros)
            cols = kb * BLOCK_N + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, s_layout))
            sf = gl.where(gl.expand_dims(cols < L, 0), sf, float("-inf"))
        m_new = gl.maximum(m_i, (gl.max(sf, axis=1) - 12582912.0) * sc)
        p = gl.exp2(sf * sc - gl.expand_dims(m_new - P_OFF + 12582912.0 * sc, 1))
        alpha = gl.exp2(m_i - m_new)
        l_i = l_i * alpha + gl.sum(p, axis=1)
        return p, alpha, m_new, l_i

    @gluon.jit
    def _step(i, s, acc, m_i, l_i, q_tile, k_bufs, v_bufs, k_ready, k_empty, v_ready, v_empty, zero_s, q_scale,
              ks_base, lut_ptr, L, P_OFF: gl.constexpr, FIRST: gl.constexpr, LAST: gl.constexpr,
              s_layout: gl.constexpr, o_layout: gl.constexpr):
        # one key block of one consumer warpgroup; S_i may be in flight on entry (issued by the step before)
        BLOCK_N: gl.constexpr = k_bufs.type.shape[1]
        NSLOT: gl.constexpr = k_bufs.type.shape[0]
        p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=4)
        slot = i % NSLOT
        s = warpgroup_mma_wait(num_outstanding=0, deps=(s,))
        mbarrier.arrive(k_empty.index(slot), count=1)
        s_next = s
        if not LAST:  # the next block's scores run on the tensor cores during this block's softmax
            nslot = (i + 1) % NSLOT
            mbarrier.wait(k_ready.index(nslot), ((i + 1) // NSLOT) & 1)
            s_next = warpgroup_mma(q_tile, k_bufs.index(nslot).permute((1, 0)), zero_s, use_acc=False,
                                   is_async=True)
            s_next = warpgroup_mma_wait(num_outstanding=1, deps=(s_next,))  # a type change; waits for nothing
        kb = gl.load(lut_ptr + i)
        sc = q_scale * gl.load(ks_base + kb)
        p, alpha, m_i, l_i = _softmax(s, m_i, l_i, sc, kb, L, BLOCK_N, P_OFF, LAST, s_layout)
        if not FIRST:
            acc = acc * gl.expand_dims(gl.convert_layout(alpha, gl.SliceLayout(1, o_layout)), 1)
        p8 = gl.convert_layout(p.to(gl.float8e4nv), p_layout)
        mbarrier.wait(v_ready.index(slot), (i // NSLOT) & 1)
        # P·V is waited for here (with the next scores, issued long before): ptxas serializes every wgmma of the
        # kernel when a P·V stays in flight across the softmax while the next scores' MMA is in flight too
        acc = warpgroup_mma(p8, v_bufs.index(slot).permute((1, 0)), acc, is_async=True)
        acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
        mbarrier.arrive(v_empty.index(slot), count=1)
        return s_next, acc, m_i, l_i

    @gluon.jit
    def _consumer(q_smem, k_bufs, v_bufs, q_bar, k_ready, k_empty, v_ready, v_empty, QSCALE, KSCALE, VSCALE,
                  lut_ptr, OLIN, O, L, bh, b, h, qb, n_qblocks, n_kblocks, TOPK, stride_ob, stride_oh, stride_ol,
                  HAS_LINEAR: gl.constexpr, P_OFF: gl.constexpr, EVEN: gl.constexpr, WG: gl.constexpr):
        HALF: gl.constexpr = q_smem.type.shape[1]
        D: gl.constexpr = q_smem.type.shape[2]
        BLOCK_N: gl.constexpr = k_bufs.type.shape[1]
        s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                           instr_shape=[16, BLOCK_N, 32])
        o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                           instr_shape=[16, D, 32])
        q_tile = q_smem.index(WG)
        q_scale = gl.load(QSCALE + bh * n_qblocks + qb)
        ks_base = KSCALE + bh * n_kblocks
        zero_s = gl.zeros([HALF, BLOCK_N], gl.int32, s_layout)
        m_i = gl.full([HALF], float("-inf"), gl.float32, gl.SliceLayout(1, s_layout))
        l_i = gl.zeros([HALF], gl.float32, gl.SliceLayout(1, s_layout))
        acc = gl.zeros([HALF, D], gl.float32, o_layout)

        mbarrier.wait(q_bar, 0)
        mbarrier.wait(k_ready.index(0), 0)
        s = warpgroup_mma(q_tile, k_bufs.index(0).permute((1, 0)), zero_s, use_acc=False, is_async=True)
        s = warpgroup_mma_wait(num_outstanding=1, deps=(s,))  # a type change; waits for nothing
        bufs = (q_tile, k_bufs, v_bufs, k_ready, k_empty, v_ready, v_empty, zero_s, q_scale, ks_base, lut_ptr, L)
        s, acc, m_i, l_i = _step(0, s, acc, m_i, l_i, *bufs, P_OFF, True, False, s_layout, o_layout)
        # the middle blocks two per iteration: the scores in flight across the loop's back edge are then the ones
        # the iteration started with, in the same registers (ptxas serializes every wgmma of the kernel when
        # scores still being written are copied); an odd count peels one. The trip count is at least one by
        # construction (`supported`: topk >= 4), which the compiler sees, so no path skips the loop either
        if not EVEN:
            s, acc, m_i, l_i = _step(1, s, acc, m_i, l_i, *bufs, P_OFF, False, False, s_layout,
                                     o_layout)
        START: gl.constexpr = 1 if EVEN else 2
        for j in range(0, gl.maximum((TOPK - 1 - START) // 2, 1)):
            i = START + 2 * j
            s, acc, m_i, l_i = _step(i, s, acc, m_i, l_i, *bufs, P_OFF, False, False, s_layout,
                                     o_layout)
            s, acc, m_i, l_i = _step(i + 1, s, acc, m_i, l_i, *bufs, P_OFF, False, False, s_layout,
                                     o_layout)
        s, acc, m_i, l_i = _step(TOPK - 1, s, acc, m_i, l_i, *bufs, P_OFF, False, True, s_layout, o_layout)

        # epilogue: V's per-channel scale and 1 / row sum, the linear branch, one store per row
        rows = qb * (2 * HALF) + WG * HALF + gl.arange(0, HALF, layout=gl.SliceLayout(1, o_layout))
        cols = gl.arange(0, D, layout=gl.SliceLayout(0, o_layout))
        vscale = gl.load(VSCALE + bh * D + cols)
        l_o = gl.convert_layout(l_i, gl.SliceLayout(1, o_layout))
        o = acc * gl.expand_dims(vscale, 0) / gl.expand_dims(l_o, 1)
        ok = gl.expand_dims(rows < L, 1)
        if HAS_LINEAR:  # the sparse part rounded to the output dtype first, as the Triton kernel does
            o = o.to(O.dtype.element_ty).to(gl.float32)
            lin = gl.load(OLIN + bh * L * D + gl.expand_dims(rows, 1) * D + gl.expand_dims(cols, 0), mask=ok,
                          other=0.0)
            o = o + lin.to(gl.float32)
        gl.store(O + b * stride_ob + h * stride_oh + gl.expand_dims(rows, 1) * stride_ol + gl.expand_dims(cols, 0),
                 o.to(O.dtype.element_ty), mask=ok)

    @gluon.jit
    def _sagesla_gluon_kernel(q_desc, k_desc, v_desc, QSCALE, KSCALE, VSCALE, LUT, OLIN, O, L, H, n_qblocks,
                              n_kblocks, TOPK, stride_ob, stride_oh, stride_ol, HAS_LINEAR: gl.constexpr,
                              P_OFF: gl.constexpr, EVEN: gl.constexpr, NSLOT: gl.constexpr,
                              WORKER_REGS: gl.constexpr):
        HALF: gl.constexpr = q_desc.block_type.shape[0]
        D: gl.constexpr = q_desc.block_type.shape[1]
        BLOCK_N: gl.constexpr = k_desc.block_type.shape[0]
        qb = gl.program_id(0)
        bh = gl.program_id(1)
        b = bh // H
        h = bh % H
        q_smem = gl.allocate_shared_memory(q_desc.dtype, [2, HALF, D], q_desc.layout)
        k_bufs = gl.allocate_shared_memory(k_desc.dtype, [NSLOT, BLOCK_N, D], k_desc.layout)
        v_bufs = gl.allocate_shared_memory(v_desc.dtype, [NSLOT, D, BLOCK_N], v_desc.layout)
        q_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
        k_ready = gl.allocate_shared_memory(gl.int64, [NSLOT, 1], mbarrier.MBarrierLayout())
        k_empty = gl.allocate_shared_memory(gl.int64, [NSLOT, 1], mbarrier.MBarrierLayout())
        v_ready = gl.allocate_shared_memory(gl.int64, [NSLOT, 1], mbarrier.MBarrierLayout())
        v_empty = gl.allocate_shared_memory(gl.int64, [NSLOT, 1], mbarrier.MBarrierLayout())
        mbarrier.init(q_bar, count=1)
        for j in gl.static_range(NSLOT):
            mbarrier.init(k_ready.index(j), count=1)
            mbarrier.init(v_ready.index(j), count=1)
            mbarrier.init(k_empty.index(j), count=2)  # both consumer warpgroups hand a slot back
            mbarrier.init(v_empty.index(j), count=2)
        lut_ptr = LUT + (bh * n_qblocks + qb) * TOPK
        gl.warp_specialize([
            (_consumer, (q_smem, k_bufs, v_bufs, q_bar, k_ready, k_empty, v_ready, v_empty, QSCALE, KSCALE, VSCALE,
                         lut_ptr, OLIN, O, L, bh, b, h, qb, n_qblocks, n_kblocks, TOPK, stride_ob, stride_oh,
                         stride_ol, HAS_LINEAR, P_OFF, EVEN, 0)),
            (_consumer, (q_smem, k_bufs, v_bufs, q_bar, k_ready, k_empty, v_ready, v_empty, QSCALE, KSCALE, VSCALE,
                         lut_ptr, OLIN, O, L, bh, b, h, qb, n_qblocks, n_kblocks, TOPK, stride_ob, stride_oh,
                         stride_ol, HAS_LINEAR, P_OFF, EVEN, 1)),
            (_loader, (q_desc, k_desc, v_desc, q_smem, k_bufs, v_bufs, q_bar, k_ready, k_empty, v_ready, v_empty,
                       lut_ptr, bh * L + qb * (2 * HALF), bh * L, bh * D, TOPK)),
        ], [4, 1], [WORKER_REGS, 24])
        mbarrier.invalidate(q_bar)
        for j in gl.static_range(NSLOT):
            mbarrier.invalidate(k_ready.index(j))
            mbarrier.invalidate(v_ready.index(j))
            mbarrier.invalidate(k_empty.index(j))
            mbarrier.invalidate(v_empty.index(j))


def descriptors(q8: torch.Tensor, k8: torch.Tensor, vt: torch.Tensor, block_k: int) -> tuple:
    """TMA descriptors over all heads' rows: int8 Q and K as [B·H·L, D] (boxes of 64 query rows / one key block),
    FP8 Vᵀ as [B·H·D, L_pad] (boxes of D channels × one key block)."""
    bh, length, d = q8.shape
    return (wg.tma_descriptor(q8.view(bh * length, d), [HALF_M, d]),
            wg.tma_descriptor(k8.view(bh * length, d), [block_k, d]),
            wg.tma_descriptor(vt.view(bh * d, vt.shape[-1]), [d, block_k]))


def launch_meta(has_linear: bool, p_off: float, topk: int, stages: int = STAGES) -> dict:
    """The kernel's launch constants: 4 warps of its own (the first consumer warpgroup), a second consumer
    warpgroup and the loader warp as worker partitions: 12 warps in all, hence the register cap. EVEN: whether
    the selected block count is even (how the key loop is peeled)."""
    return {"HAS_LINEAR": has_linear, "P_OFF": p_off, "EVEN": topk % 2 == 0, "NSLOT": stages,
            "WORKER_REGS": CONSUMER_REGS,
            "num_warps": 4, "maxnreg": wg.maxnreg(8)}


def attention(q8: torch.Tensor, q_scale: torch.Tensor, k8: torch.Tensor, k_scale: torch.Tensor, vt: torch.Tensor,
              v_scale: torch.Tensor, lut: torch.Tensor, olin: torch.Tensor | None, out: torch.Tensor,
              heads: int, block_k: int, p_off: float, stages: int = STAGES) -> torch.Tensor:
    """o = the sparse attention (+ olin) into `out` ([B, H, L, D] view of token-major storage), from prepared
    operands: q8 / k8 [B·H, L, D] int8 with block scales q_scale [B·H, NQ] (log2(e)/√D folded in) / k_scale
    [B·H, NK], vt [B·H, D, NK·block_k] FP8 with v_scale [B·H, D], lut [B·H, NQ, topk] int32 sorted key blocks
    (`supported` says which calls this kernel covers)."""
    if not available():
        raise RuntimeError(f"Triton {triton.__version__} has no Gluon Hopper API")
    bh, length, d = q8.shape
    nq, nk, topk = q_scale.shape[1], k_scale.shape[1], lut.shape[-1]
    q_desc, k_desc, v_desc = descriptors(q8, k8, vt, block_k)
    has_linear = olin is not None
    _sagesla_gluon_kernel[(nq, bh)](
        q_desc, k_desc, v_desc, q_scale, k_scale, v_scale, lut, olin if has_linear else q_scale, out,
        length, heads, nq, nk, topk, *out.stride()[:3], **launch_meta(has_linear, p_off, topk, stages))
    return out
