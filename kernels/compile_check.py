"""Compile the kernels' GPU-only forms for an NVIDIA architecture without a GPU (default sm_90: H100/H200).

CI runs every kernel under Triton's interpreter (TRITON_INTERPRET=1), which never compiles it, and several
kernels take other branches there. What only a GPU compile exercises:
  - TMA descriptor loads and stores and wgmma tiles (`conv3d_igemm`, the W8A8 TMA GEMM);
  - FP8 (e4m3) casts and dots (SageSLA's P @ V, V's transposed FP8 copy in the K pass);
  - the GELU's `tanh.approx.f32` inline asm (`int8_quant`, FAST_TANH);
  - every autotune config's tile shapes and shared memory (the interpreter runs one small config), also
    of the DiT's row kernels (LayerNorm + AdaLN with int8 out, RMSNorm + RoPE).
This module compiles those through Triton's own compiler (ptxas comes with its wheel), for the target given,
with a stand-in driver that reports that target instead of asking a device. Nothing is launched, so it says
nothing about speed or results; the GPU tests do. It does catch what used to cost a device call: a kernel
that does not compile on the GPU's Triton (e.g. `tl.dot` of int8 without out_dtype on 3.6), or a config
whose shared memory exceeds the part's.

    TRITON_INTERPRET=0 python -m kernels.compile_check                       # sm_90, the installed Triton
    TRITON_INTERPRET=0 PYTHONPATH=DIR python -m kernels.compile_check        # DIR: `pip install --target DIR
                                                                             #  triton==3.6.0` (the H200 image's)

One line per case: the configs compiled and the largest shared memory among them; exit status 1 when a case
fails to compile or a config the autotuner would keep needs more shared memory than `--smem` (227 KB, an
H100/H200 block's limit). The compiles are spread over `--jobs` processes (default: the CPUs, at most 8):
process k of n compiles every n-th config of every case, in the same order, and the results are summed
(a cold run is ~350 compiles, ~4 minutes on one core; each compile is single-threaded).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import traceback
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

import torch
import triton

__all__ = ["CASES", "Result", "run"]

_SMEM = 227 * 1024


@dataclass
class Result:
    case: str
    compiled: int = 0
    max_shared: int = 0
    errors: list[str] = field(default_factory=list)


def use_target(arch: int) -> None:
    """Make Triton compile for CUDA `arch` (e.g. 90) in this process, with no device present."""
    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia.driver import CudaDriver
    from triton.runtime import driver

    class _TargetOnly(CudaDriver):  # what JIT compilation asks of a driver, without touching libcuda
        def __init__(self) -> None:
            pass

        def get_current_target(self) -> GPUTarget:
            return GPUTarget("cuda", arch, 32)

        def get_current_device(self) -> int:
            return 0

        def get_current_stream(self, device: int | None = None) -> int:
            return 0

        def get_active_torch_device(self) -> torch.device:
            return torch.device("cpu")

    driver.set_active(_TargetOnly())


# this process's share of the compiles: (k, n) compiles the calls i with i % n == k (see `run`)
_SHARD = [0, 1]
_CALLS = [0]
_LAST: list = [None]  # the last compiled kernel (its PTX, for cases that check it)


def _compile(res: Result, fn: object, cfg: triton.Config | dict, grid: tuple[int, ...], smem: int,
             **args: object) -> None:
    """Compile `fn` (a @triton.jit kernel) with `args` and one config; record it in `res`. Another
    process's share (see `run`) is skipped."""
    call = _CALLS[0]
    _CALLS[0] += 1
    if call % _SHARD[1] != _SHARD[0]:
        return
    if isinstance(cfg, triton.Config):
        meta = {**cfg.kwargs, "num_warps": cfg.num_warps, "num_stages": cfg.num_stages}
    else:
        meta = dict(cfg)
    from triton import knobs

    # as in a worker, which records every compiled specialization (worker/precompile.py): with a post-compile hook
    # set, Triton serializes the launch's constexprs to JSON, and a value that does not serialize fails the launch
    before = knobs.runtime.jit_post_compile_hook

    def hook(**kw: object) -> object:  # a hook set before (a recording worker's, a test's) still sees every compile
        return before(**kw) if before is not None else None

    knobs.runtime.jit_post_compile_hook = hook
    try:
        kernel = fn.warmup(**args, **meta, grid=grid)  # type: ignore[attr-defined]
    except Exception as exc:  # noqa: BLE001 - report every failing config, go on with the next
        res.errors.append(f"{meta}: {type(exc).__name__}: {str(exc).strip().splitlines()[-1][:300]}")
        return
    finally:
        knobs.runtime.jit_post_compile_hook = before
    _LAST[0] = kernel
    res.compiled += 1
    shared = int(kernel.metadata.shared)
    if shared > smem:
        res.errors.append(f"{meta}: needs {shared} B of shared memory (limit {smem})")
    res.max_shared = max(res.max_shared, shared)


def _ptxas_report(ptx: str, arch: int) -> tuple[int, bool]:
    """(bytes of spill stores, whether ptxas serializes the wgmmas) for a kernel's PTX, from `ptxas -v` (the
    compiler's own binary; a compile without a device has no loaded kernel to ask). ptxas serializes the
    wgmmas (its advisories C7513-C7515) when other instructions read or write an in-flight wgmma's accumulator or
    A-fragment registers (e.g. a copy of an accumulator still being written), or when it cannot tell: the MMAs
    then no longer overlap anything."""
    import re
    import subprocess
    import tempfile

    from triton.backends.nvidia.compiler import get_ptxas

    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        proc = subprocess.run([get_ptxas(arch).path, "-v", f"-arch=sm_{arch}a", src, "-o", os.path.join(tmp, "k.o")],
                              capture_output=True, text=True, timeout=300)
    if proc.returncode:
        raise RuntimeError(f"ptxas failed: {proc.stderr.strip()[-300:]}")
    spilled = sum(int(n) for n in re.findall(r"(\d+) bytes spill stores", proc.stderr))
    return spilled, "wgmma.mma_async instructions are serialized" in proc.stderr


def _check_warp_specialized(res: Result, name: str, ptx: str, *, partitions: int, overlap: str | None,
                            max_spill: int = 0) -> None:
    """What a warp-specialized Gluon kernel's sm_90 compile must show: `setmaxnreg` for each of its `partitions`
    (registers moved between them), no more than `max_spill` bytes of spilled registers (default none), no wgmmas
    serialized by ptxas (its advisories C7513-C7515: the MMAs would no longer overlap anything) and, where `overlap`
    says what it is for, a `wgmma.wait_group 1` (one MMA group kept in flight)."""
    import re

    if overlap is not None and "1" not in re.findall(r"wgmma.wait_group.sync.aligned (\d+)", ptx):
        res.errors.append(f"{name}: no wgmma.wait_group 1 ({overlap})")
    if ptx.count("setmaxnreg") < partitions:
        res.errors.append(f"{name}: not warp-specialized as meant (setmaxnreg in the PTX)")
    spilled, serialized = _ptxas_report(ptx, 90)
    if spilled > max_spill:
        bound = f" (at most {max_spill})" if max_spill else ""
        res.errors.append(f"{name}: {spilled} bytes of registers spilled{bound}")
    if serialized:
        res.errors.append(f"{name}: ptxas serializes its wgmmas (C7513-C7515)")


def _conv3d_igemm(smem: int) -> Result:
    """The VAE's implicit-GEMM conv: every tile the autotuner keeps, each epilogue, the 96/192/384-wide
    blocks at the 480p rows (832, 416, 208 pixels)."""
    from kernels import conv3d_igemm as cv

    res = Result("conv3d_igemm (TMA, wgmma)")
    for c, w in ((96, 832), (192, 416), (384, 208)):
        x = torch.zeros(1, c, 3, 2, w, dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last_3d)
        out = torch.zeros(1, c, 1, 2, w, dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last_3d)
        wmat = torch.zeros(cv.TAPS * c, c, dtype=torch.bfloat16)
        vec = torch.zeros(c, dtype=torch.bfloat16)
        for epi in (0, 1, 2):
            for cfg in cv.select_configs(cv._configs(), c, c, epi, smem, w=w):
                tensors = (x, wmat, wmat, out, out, out, out)
                descs = {name: cv._descriptor(t) for name, t in zip(cv._DESCS, tensors, strict=True)}
                cv._set_blocks({**descs, **cfg.kwargs})
                _compile(res, cv._conv_tma_kernel, cfg, (1, 1, 1), smem, **descs, bias_ptr=vec, gamma_ptr=vec,
                         T=1, H=2, W=w, scale=1.0, eps=1e-12, C_IN=c, C_OUT=c, HAS_BIAS=True, EPI=epi)
    return res


def _conv3d_gluon(smem: int) -> Result:
    """The VAE's conv in Gluon (`kernels.conv3d_gluon`) at the channel counts in use (96, 192): each epilogue, with
    and without bias, the default ring depth and two slots: warp-specialized (`setmaxnreg`), one step's MMAs in
    flight while the next slot is awaited (a `wgmma.wait_group` of one step's count), no wgmmas serialized by ptxas,
    and no spills, except up to SPILL_192 bytes in the 192-channel residual epilogue (see `conv3d_gluon.USED`)."""
    import re

    from kernels import conv3d_gluon as cg

    res = Result("conv3d Gluon (row taps from one box)")
    if not cg.available():
        res.errors.append(f"Triton {triton.__version__} has no Gluon Hopper API")
        return res
    for c, w in ((96, 832), (192, 416)):
        assert c in cg.USED
        rows, n0, n1, _ = cg.tile_config(c)
        x = torch.zeros(1, c, 3, 8, w, dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last_3d)
        out = torch.zeros(1, c, 1, 8, w, dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last_3d)
        wmat, vec = torch.zeros(27 * c, 256, dtype=torch.bfloat16), torch.zeros(c, dtype=torch.bfloat16)
        x_desc, w0_desc, w1_desc = cg.descriptors(x, wmat, n0, n1)
        strides = [out.stride(i) for i in (0, 2, 3, 4)]
        for epi, bias, stages in ((0, True, None), (1, True, None), (2, True, None), (2, False, 2)):
            before = res.compiled
            _compile(res, cg._conv_gluon_kernel, cg.launch_meta(c, bias, epi, stages), (1,), smem, x_desc=x_desc,
                     w0_desc=w0_desc, w1_desc=w1_desc, out_ptr=out, res_ptr=out, bias_ptr=vec, gamma_ptr=vec, T=1,
                     H=8, W=w, so_b=strides[0], so_t=strides[1], so_h=strides[2], so_w=strides[3], sr_b=strides[0],
                     sr_t=strides[1], sr_h=strides[2], sr_w=strides[3], scale=1.0, eps=1e-12, n_tiles=4)
            if res.compiled > before:
                ptx = _LAST[0].asm["ptx"]
                name = f"C={c} epilogue {epi} bias={bias} stages={stages}"
                _check_warp_specialized(res, name, ptx, partitions=3, overlap=None,
                                        max_spill=SPILL_192 if (c, epi) == (192, 2) else 0)
                if str(6 * rows) not in re.findall(r"wgmma.wait_group.sync.aligned (\d+)", ptx):
                    res.errors.append(f"{name}: no wgmma.wait_group {6 * rows} (a step's MMAs not kept in flight)")
    return res


# the 192-channel conv's residual epilogue: 192 accumulator registers per thread are live while a row's residual
# is loaded, and ptxas spills 120-204 bytes there, once per tile after the K loop; measured 1.11-1.28x the Triton
# kernel with it (kernels/NOTES_vae.md, session 33). More would mean a spill that grew, e.g. into the K loop
SPILL_192 = 256


def _w8a8_tma(smem: int) -> Result:
    """The W8A8 GEMM's TMA kernel: every config its prune keeps, at the Wan shapes' K (1536, 5120, 8960),
    bf16 out."""
    from triton.tools.tensor_descriptor import TensorDescriptor

    from kernels import w8a8

    res = Result("w8a8 TMA GEMM (int8 wgmma)")
    for k in (1536, 5120, 8960):
        for cfg in w8a8.select_configs(w8a8._w8a8_tma_tuned.configs, k, smem):
            bm, bn, bk = cfg.kwargs["BLOCK_M"], cfg.kwargs["BLOCK_N"], cfg.kwargs["BLOCK_K"]
            a, b = torch.zeros(256, k, dtype=torch.int8), torch.zeros(256, k, dtype=torch.int8)
            c = torch.zeros(256, 256, dtype=torch.bfloat16)
            descs = {"a_desc": TensorDescriptor.from_tensor(a, [bm, bk]),
                     "b_desc": TensorDescriptor.from_tensor(b, [bn, bk]),
                     "c_desc": TensorDescriptor.from_tensor(c, [bm, bn])}  # fmt: skip
            f32 = torch.zeros(256)
            _compile(res, w8a8._w8a8_tma_kernel, cfg, (1,), smem, **descs, sa_ptr=f32, sb_ptr=f32,
                     bias_ptr=torch.zeros(256, dtype=torch.bfloat16), inv_ptr=f32, M=256, N=256, K=k,
                     HAS_BIAS=True, EPILOGUE=True, FUSED_QUANT=False, NUM_SMS=132)
    return res


def _w8a8_gluon(smem: int) -> Result:
    """The Gluon int8 GEMM (`kernels.w8a8_gluon`): every config, at the Wan shapes' K, bf16 out; each must keep
    one MMA group in flight in its K loop (`wgmma.wait_group 1` in the PTX), the point of this kernel, and be
    warp-specialized (a loader warp: `setmaxnreg` in the PTX)."""
    import re

    from kernels import w8a8_gluon as wg

    res = Result("w8a8 Gluon GEMM (async int8 wgmma)")
    if not wg.available():
        res.errors.append(f"Triton {triton.__version__} has no Gluon Hopper API")
        return res
    for k in (1536, 5120, 8960):
        for cfg in wg.CONFIGS:
            bm, bn, bk, stages, warps = cfg
            xq, wq = torch.zeros(256, k, dtype=torch.int8), torch.zeros(256, k, dtype=torch.int8)
            y = torch.zeros(256, 256, dtype=torch.bfloat16)
            a_desc, b_desc, c_desc = wg.descriptors(xq, wq, y, bm, bn, bk)
            f32 = torch.zeros(256)
            before = res.compiled
            meta = {"HAS_BIAS": True, "STAGES": stages, "GROUP_M": 8, "NUM_SMS": 132, "num_warps": warps,
                    "maxnreg": wg.maxnreg(warps)}
            _compile(res, wg._w8a8_gluon_kernel, meta, (1,), smem, a_desc=a_desc, b_desc=b_desc, c_desc=c_desc,
                     sa_ptr=f32, sb_ptr=f32, bias_ptr=y[0], M=256, N=256, K=k)
            if res.compiled > before:
                ptx = _LAST[0].asm["ptx"] if _LAST[0] is not None else ""
                if "1" not in re.findall(r"wgmma.wait_group.sync.aligned (\d+)", ptx):
                    res.errors.append(f"{cfg} at K={k}: no wgmma.wait_group 1 (its MMAs do not overlap)")
                if "setmaxnreg" not in ptx:  # the loader warp's partition hands its registers to the MMA warps
                    res.errors.append(f"{cfg} at K={k}: not warp-specialized (no setmaxnreg in the PTX)")
    return res


def _w8a8_blockq(smem: int) -> Result:
    """The block-scaled FFN kernels (`kernels.w8a8_blockq`): ffn_up with its GELU + int8 epilogue and ffn_down
    with block-scaled activations (two MMA warpgroups), at the Wan shapes' K, with and without bias. Each must
    be warp-specialized (`setmaxnreg`), spill no registers and keep its wgmmas unserialized (ptxas -v); ffn_up
    must keep one MMA group in flight in its K loop (`wgmma.wait_group 1`)."""
    from kernels import w8a8_blockq as bq

    res = Result("w8a8 block-scaled FFN (Gluon)")
    if not bq.available():
        res.errors.append(f"Triton {triton.__version__} has no Gluon Hopper API")
        return res
    for up, pingpong, cfg, ks in ((True, False, bq.UP_CONFIG, (1536, 5120)),
                                  (True, True, bq.UP_PINGPONG_CONFIG, (1536, 5120)),
                                  (False, False, bq.DOWN_CONFIG, (8960, 13824))):
        for k in ks:
            for has_bias in (True, False):
                xq, wq = torch.zeros(256, k, dtype=torch.int8), torch.zeros(256, k, dtype=torch.int8)
                y = torch.zeros(256, 256, dtype=torch.int8 if up else torch.bfloat16)
                a_desc, b_desc, c_desc = bq.descriptors(xq, wq, y, cfg, up)
                f32 = torch.zeros(256 * (k // bq.SCALE_BLOCK))
                before = res.compiled
                meta = {"HAS_BIAS": has_bias, "NUM_SMS": 132, **bq.launch_meta(cfg, up, pingpong)}
                _compile(res, bq._ffn_blockq_kernel, meta, (1,), smem, a_desc=a_desc, b_desc=b_desc, c_desc=c_desc,
                         sa_ptr=f32, sb_ptr=f32, bias_ptr=torch.zeros(256, dtype=torch.bfloat16), so_ptr=f32,
                         M=256, N=256, K=k)
                if res.compiled > before:
                    name = f"{'up' if up else 'down'}{' ping-pong' if pingpong else ''} K={k} bias={has_bias}"
                    _check_warp_specialized(res, name, _LAST[0].asm["ptx"], partitions=2 if up and not pingpong else 3,
                                            overlap="its MMAs do not overlap" if up else None)
    return res


def _sagesla(smem: int) -> Result:
    """SageSLA's fused attention with FP8 P @ V (with and without the linear branch), every config the
    autotuner keeps at the default blocks, and both pool/quant passes (the K pass's FP8 V^T, the Q pass's
    linear branch)."""
    from kernels import sagesla as sg

    res = Result("sagesla (fp8 P@V, pool/quant passes)")
    bh, length, d, blk_q, blk_k = 2, 256, 128, sg.BLOCK_Q, sg.BLOCK_K
    nq, nk = length // blk_q, length // blk_k
    i8, f32, f16 = (torch.zeros(bh, length, d, dtype=t) for t in (torch.int8, torch.float32, torch.float16))
    bf = torch.zeros(1, 2, length, d, dtype=torch.bfloat16)
    vt = torch.zeros(bh, d, length, dtype=torch.float8_e4m3fn)
    scales = torch.zeros(bh, max(nq, nk))
    lut = torch.zeros(bh, nq, 2, dtype=torch.int32)
    named = {"BLK_Q": blk_q, "BLOCK_N": blk_k}
    for linear in (True, False):
        for cfg in sg._prune_attn_configs(sg._ATTN_CONFIGS, named):
            _compile(res, sg._sagesla_fwd_kernel, cfg, (1, bh), smem, QQ=i8, QSCALE=scales, KQ=i8, KSCALE=scales,
                     V=bf, VT=vt, VSCALE=f32, LUT=lut, OLIN=f16, O=bf, L=length, L_PAD=length, H=2,
                     n_qblocks=nq, n_kblocks=nk, TOPK=2, stride_vb=bf.stride(0), stride_vh=bf.stride(1),
                     stride_vl=bf.stride(2), stride_ob=bf.stride(0), stride_oh=bf.stride(1), stride_ol=bf.stride(2),
                     D=d, BLK_Q=blk_q, BLOCK_N=blk_k, DENSE=False, PV_FP8=True, HAS_LINEAR=linear, P_OFF=8.8)
    pool = torch.zeros(bh, max(nq, nk), d)
    for k_pass in (True, False):
        for cfg in sg._pool_quant.configs:
            _compile(res, sg._pool_quant_kernel, cfg, (1, bh), smem, X=bf, MEAN=f32, XQ=i8, SCALE=scales, POOL=pool,
                     V=bf, VSCALE=f32, VT=vt, LIN_M=f16, FKSUM=f32, LIN_B=f32, OLIN=f16, PHI=f16, PHI_POOL=pool,
                     L=length, L_PAD=length, H=2, n_blocks=nk, scale_mult=1.0, lin_eps=1e-6,
                     stride_xb=bf.stride(0), stride_xh=bf.stride(1), stride_xl=bf.stride(2), stride_vb=bf.stride(0),
                     stride_vh=bf.stride(1), stride_vl=bf.stride(2), D=d, BLK=blk_k if k_pass else blk_q,
                     SMOOTH=k_pass, DO_POOL=True, V_FP8=k_pass, HAS_LINEAR=not k_pass, HAS_BIAS=not k_pass,
                     PHI_OUT=k_pass)
    return res


def _sagesla_gluon(smem: int) -> Result:
    """SageSLA's Gluon attention (`kernels.sagesla_gluon`), with and without the linear branch, an even and an odd
    count of selected blocks (the loop's two peelings), 2 and 3 ring slots: warp-specialized (`setmaxnreg`), its
    score MMAs overlapping the softmax (a `wgmma.wait_group 1`), no spills and no wgmmas serialized by ptxas."""
    from kernels import sagesla_gluon as sgg

    res = Result("sagesla Gluon attention (FA3-style)")
    if not sgg.available():
        res.errors.append(f"Triton {triton.__version__} has no Gluon Hopper API")
        return res
    bh, length, d, block_k = 2, 256, 128, 64
    nq, nk = length // 128, length // block_k
    q8, k8 = torch.zeros(bh, length, d, dtype=torch.int8), torch.zeros(bh, length, d, dtype=torch.int8)
    vt = torch.zeros(bh, d, length, dtype=torch.float8_e4m3fn)
    q_desc, k_desc, v_desc = sgg.descriptors(q8, k8, vt, block_k)
    o = torch.zeros(1, length, 2, d, dtype=torch.bfloat16).transpose(1, 2)
    # both parities of the selected-block count (the key loop's two peelings), each ring depth
    for linear, topk, stages in ((True, 4, 2), (False, 5, 2), (True, 5, 3)):
        before = res.compiled
        _compile(res, sgg._sagesla_gluon_kernel, sgg.launch_meta(linear, 8.8, topk, stages), (nq, bh), smem,
                 q_desc=q_desc, k_desc=k_desc, v_desc=v_desc, QSCALE=torch.zeros(bh, nq), KSCALE=torch.zeros(bh, nk),
                 VSCALE=torch.zeros(bh, d), LUT=torch.zeros(bh, nq, topk, dtype=torch.int32),
                 OLIN=torch.zeros(bh, length, d, dtype=torch.float16), O=o, L=length, H=2, n_qblocks=nq,
                 n_kblocks=nk, TOPK=topk, stride_ob=o.stride(0), stride_oh=o.stride(1), stride_ol=o.stride(2))
        if res.compiled > before:
            _check_warp_specialized(res, f"linear={linear} topk={topk} stages={stages}", _LAST[0].asm["ptx"],
                                    partitions=3, overlap="its score MMAs do not overlap the softmax")
    return res


def _int8_quant(smem: int) -> Result:
    """The per-token activation quantization as the GPU runs it: whole rows in registers, the GELU's
    `tanh.approx` (FAST_TANH) at the FFN-down widths, plain at the projection widths."""
    from kernels import int8_quant as iq

    res = Result("int8_quant activation pass (tanh.approx GELU, rows as pieces)")
    for k, gelu in ((8960, True), (13824, True), (1536, False), (5120, False), (20480, False)):
        meta = iq.launch_meta(k, False)
        x, q = torch.zeros(4, k, dtype=torch.bfloat16), torch.zeros(4, k, dtype=torch.int8)
        s = torch.zeros(4)
        _compile(res, iq._quantize_rows_kernel, meta, (1,), smem, x_ptr=x, q_ptr=q, s_ptr=s,
                 inv_ptr=s, M=4, K=k, stride_xm=k, stride_qm=k, chunk_w=1, chunk_g=1, chunk_n=1, chunk_s=0,
                 WRITE_Q=True, GELU=gelu, FAST_TANH=gelu, CHUNKED=False)
    return res


def _int8_quant_gluon(smem: int) -> Result:
    """The Gluon activation quantization at the Wan widths (GELU at the FFN-down inputs) and a padded one: it
    must compile, spill nothing, run the GELU's tanh once per element a thread holds (the Triton kernel's
    layouts made it twice) and round without a float-to-int conversion (`cvt.r*i`)."""
    from kernels import int8_quant_gluon as iqg

    res = Result("int8_quant_gluon activation pass (pieces in their own layouts, no F2I)")
    if not iqg.available():
        res.errors.append(f"this Triton {triton.__version__} has no Gluon")
        return res
    for k, gelu in ((8960, True), (13824, True), (300, True), (1536, False), (5120, False)):
        meta = iqg.launch_meta(k)
        x, q = torch.zeros(4, k, dtype=torch.bfloat16), torch.zeros(4, k, dtype=torch.int8)
        _LAST[0] = None  # set again only if this process compiles this call (see `run`'s shards)
        errors = len(res.errors)
        _compile(res, iqg._quant_rows_kernel, meta, (1,), smem, x_ptr=x, q_ptr=q, s_ptr=torch.zeros(4), M=4, K=k,
                 stride_xm=k, stride_qm=k, GELU=gelu)
        if _LAST[0] is None or len(res.errors) > errors:
            continue
        ptx = _LAST[0].asm["ptx"]
        held = meta["BLOCK_M"] * sum(iqg.pieces(k)) // (32 * meta["num_warps"])
        tanh = ptx.count("tanh.approx.f32")
        if tanh != (held if gelu else 0):
            res.errors.append(f"K={k}: {tanh} tanh.approx for {held} elements per thread")
        _check_rounding_and_spills(res, f"K={k}", ptx)
    return res


def _check_rounding_and_spills(res: Result, name: str, ptx: str) -> None:
    """What a Gluon row kernel's sm_90 compile must show: codes rounded by an FFMA, not a float-to-int conversion
    (`cvt.r*i`, on the quarter-rate pipe), and no spilled registers."""
    import re

    if re.search(r"cvt\.r[nz]i\.s(8|16|32)\.f32", ptx):
        res.errors.append(f"{name}: a float-to-int cvt in the PTX")
    spilled, _ = _ptxas_report(ptx, 90)
    if spilled:
        res.errors.append(f"{name}: {spilled} bytes of registers spilled")


def _adaln_gluon(smem: int) -> Result:
    """The Gluon residual add + LayerNorm + modulation (`kernels.adaln_gluon`) at the Wan widths (1536, 5120) and a
    padded one, gated and not, int8 and bf16 out: it must compile, spill nothing, and round without a float-to-int
    conversion (`cvt.r*i`)."""
    from kernels import adaln_gluon as ag

    res = Result("adaln_gluon residual LayerNorm + modulate (pieces in their own layouts)")
    if not ag.available():
        res.errors.append(f"this Triton {triton.__version__} has no Gluon")
        return res
    for c, gate, int8 in ((5120, True, True), (5120, False, False), (1536, True, True), (1536, True, False),
                          (300, False, True)):
        meta = ag.launch_meta(c)
        x = torch.zeros(1, 4, c)
        y = torch.zeros(1, 4, c, dtype=torch.bfloat16)
        vec = torch.zeros(1, c)
        out = torch.zeros(1, 4, c, dtype=torch.int8 if int8 else torch.bfloat16)
        _LAST[0] = None  # set again only if this process compiles this call (see `run`'s shards)
        errors = len(res.errors)
        _compile(res, ag._residual_ln_modulate_kernel, meta, (1, 1), smem, x_ptr=x, y_ptr=y, gate_ptr=vec,
                 xo_ptr=x, shift_ptr=vec, scale_ptr=vec, out_ptr=out, qscale_ptr=torch.zeros(4), L=4, C=c,
                 stride_gate_b=c, stride_shift_b=c, stride_scale_b=c, eps=1e-6, HAS_GATE=gate, OUT_INT8=int8)
        if _LAST[0] is None or len(res.errors) > errors:
            continue
        _check_rounding_and_spills(res, f"C={c} gate={gate} int8={int8}", _LAST[0].asm["ptx"])
    return res


def _softmax_rows(smem: int) -> Result:
    """The VAE attention's softmax at 480p and 720p rows (6,240 and 14,400 keys) and the longest row."""
    from kernels import softmax_rows as sm

    res = Result("softmax_rows (VAE attention)")
    for n in (6240, 14400, sm.MAX_COLS):
        block = triton.next_power_of_2(n)
        s, p = torch.zeros(2, n), torch.zeros(2, n, dtype=torch.bfloat16)
        _compile(res, sm._softmax_rows_kernel, {"num_warps": min(32, max(1, block // 2048))}, (2,), smem,
                 s_ptr=s, p_ptr=p, n_cols=n, stride_s=n, stride_p=n, scale_log2e=1.0, BLOCK=block)
    return res


def _row_norms(smem: int) -> Result:
    """The DiT's row kernels (LayerNorm + AdaLN modulate with bf16 or int8 out, alone and fused after the
    gated residual add, q/k RMSNorm + RoPE) at the 1.3B and 14B widths: every row config the GPU autotuner
    keeps (the interpreter keeps the first)."""
    from types import SimpleNamespace

    from kernels import adaln, rmsnorm_rope
    from kernels.row_configs import ROW_CONFIGS, prune_row_configs, split_tail

    res = Result("row norms (adaln bf16/int8 out, residual + adaln, rmsnorm_rope)")
    on_gpu = SimpleNamespace(is_cuda=True)  # what the prune asks of x (its CPU branch keeps one config)
    for c in (1536, 5120):
        sizes = {"BLOCK_C": triton.next_power_of_2(c), "BLOCK_TAIL": split_tail(c)}
        configs = prune_row_configs(ROW_CONFIGS, {"x_ptr": on_gpu, "C": c}, **sizes)
        x, vec = torch.zeros(2, c, dtype=torch.bfloat16), torch.zeros(1, c, dtype=torch.bfloat16)
        x32, vec32 = torch.zeros(2, c), torch.zeros(1, c)
        for out_int8 in (False, True):
            out = torch.zeros(2, c, dtype=torch.int8 if out_int8 else torch.bfloat16)
            for cfg in configs:
                _compile(res, adaln._ln_modulate_kernel, cfg, (1, 1), smem, x_ptr=x, shift_ptr=vec, scale_ptr=vec,
                         out_ptr=out, qscale_ptr=torch.zeros(2), N=2, L=2, C=c, stride_shift_b=c, stride_scale_b=c,
                         eps=1e-6, **sizes, OUT_INT8=out_int8)
                # fused after the residual add (fp32 stream, bf16 branch output; gated and gate 1)
                for has_gate in (True, False):
                    _compile(res, adaln._residual_ln_modulate_kernel, cfg, (1, 1), smem, x_ptr=x32, y_ptr=x,
                             gate_ptr=vec32, x_out_ptr=x32, shift_ptr=vec32, scale_ptr=vec32, out_ptr=out,
                             qscale_ptr=torch.zeros(2), N=2, L=2, C=c, stride_gate_b=c, stride_shift_b=c,
                             stride_scale_b=c, eps=1e-6, **sizes, HAS_GATE=has_gate, OUT_INT8=out_int8)
        rope = torch.zeros(2, 64)
        for cfg in configs:
            _compile(res, rmsnorm_rope._rmsnorm_rope_kernel, cfg, (1,), smem, x_ptr=x, w_ptr=vec, cos_ptr=rope,
                     sin_ptr=rope, out_ptr=x, N=2, L=2, C=c, eps=1e-6, out_w=c, out_s=2 * c, HALF_D=64, **sizes,
                     HAS_WEIGHT=True, HAS_ROPE=True)
    return res


CASES: dict[str, Callable[[int], Result]] = {
    "conv3d_igemm": _conv3d_igemm,
    "conv3d_gluon": _conv3d_gluon,
    "w8a8": _w8a8_tma,
    "w8a8_gluon": _w8a8_gluon,
    "w8a8_blockq": _w8a8_blockq,
    "sagesla": _sagesla,
    "sagesla_gluon": _sagesla_gluon,
    "int8_quant": _int8_quant,
    "int8_quant_gluon": _int8_quant_gluon,
    "adaln_gluon": _adaln_gluon,
    "softmax_rows": _softmax_rows,
    "row_norms": _row_norms,
}


def _run_shard(cases: list[str], arch: int, smem: int, shard: int, shards: int) -> list[Result]:
    """One process's share: every `shards`-th compile of the cases, starting at `shard`."""
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        raise RuntimeError("the interpreter never compiles: run with TRITON_INTERPRET=0 (before importing kernels)")
    use_target(arch)
    _SHARD[:] = [shard, shards]
    _CALLS[0] = 0
    results = []
    for name in cases:
        try:
            results.append(CASES[name](smem))
        except Exception:  # noqa: BLE001 - a case that cannot even set up is a failure too
            results.append(Result(name, errors=[traceback.format_exc(limit=3).strip().splitlines()[-1]]))
    return results


def run(cases: list[str] | None = None, arch: int = 90, smem: int = _SMEM, jobs: int = 1) -> list[Result]:
    """Compile the named cases (default all) for CUDA `arch` in `jobs` processes (1: this one); the results,
    in order, each summed over the processes."""
    names = cases or list(CASES)
    if jobs <= 1:
        return _run_shard(names, arch, smem, 0, 1)
    # spawn: each process imports the kernels afresh and installs its own stand-in driver
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        parts = [f.result() for f in [pool.submit(_run_shard, names, arch, smem, k, jobs) for k in range(jobs)]]
    results = []
    for i, first in enumerate(parts[0]):
        merged = Result(first.case)
        for part in parts:
            r = part[i]
            merged.compiled += r.compiled
            merged.max_shared = max(merged.max_shared, r.max_shared)
            merged.errors += [e for e in r.errors if e not in merged.errors]  # a set-up error comes from each
        results.append(merged)
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cases", nargs="*", help=f"some of {', '.join(CASES)} (default: all)")
    ap.add_argument("--arch", type=int, default=90, help="CUDA compute capability as one number (90: sm_90)")
    ap.add_argument("--smem", type=int, default=_SMEM, help="shared memory per block in bytes")
    ap.add_argument("--jobs", type=int, default=min(8, os.cpu_count() or 1), help="compile processes")
    args = ap.parse_args()
    unknown = [c for c in args.cases if c not in CASES]
    if unknown:
        ap.error(f"unknown cases {unknown}; known: {list(CASES)}")
    print(f"triton {triton.__version__}, target sm_{args.arch}, {args.jobs} processes", flush=True)
    failed = False
    for r in run(args.cases or None, args.arch, args.smem, args.jobs):
        status = "ok" if not r.errors and r.compiled else "FAILED"
        failed |= status != "ok"
        print(f"{status:6} {r.case}: {r.compiled} configs compiled, max shared {r.max_shared} B", flush=True)
        for err in r.errors:
            print(f"       {err}", flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
