"""GPU micro-bench: the W8A8 TMA GEMM's tile loop as shipped, flattened (`tl.range(flatten=True)`: the
tile and K loops pipelined as one) and warp-specialized, at the Wan shapes, with each shape's shipped
tile config; torch._int_mm (cuBLAS int8) beside it. Prints µs and int8 TOP/s per variant (session 17)."""

from __future__ import annotations

from functools import partial

import torch
import triton
from triton.testing import do_bench
from triton.tools.tensor_descriptor import TensorDescriptor

from kernels.w8a8 import _num_sms, _w8a8_tma_kernel

SHAPES = [  # name, M, K, N, tile (BM, BN, BK, stages, warps): the shipped H200 choices
    ("1.3B qkvo", 32760, 1536, 1536, (256, 128, 128, 3, 8)),
    ("1.3B ffn_up", 32760, 1536, 8960, (128, 256, 128, 3, 8)),
    ("1.3B ffn_down", 32760, 8960, 1536, (128, 256, 128, 3, 8)),
    ("14B qkvo (one rank)", 37800, 5120, 5120, (128, 256, 128, 3, 8)),
    ("14B ffn_up (one rank)", 37800, 5120, 13824, (128, 256, 128, 3, 8)),
]


def _run(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, sa: torch.Tensor, sb: torch.Tensor, tile: tuple,
         flatten: bool, ws: bool) -> None:
    bm, bn, bk, stages, warps = tile
    m, k = a.shape
    n = b.shape[0]
    sms = _num_sms(a.device.index or 0)
    grid = (min(sms, triton.cdiv(m, bm) * triton.cdiv(n, bn)),)
    _w8a8_tma_kernel[grid](
        TensorDescriptor.from_tensor(a, [bm, bk]), TensorDescriptor.from_tensor(b, [bn, bk]),
        TensorDescriptor.from_tensor(c, [bm, bn]), sa, sb, sa, sa, m, n, k, HAS_BIAS=False, EPILOGUE=True,
        FUSED_QUANT=False, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=8, NUM_SMS=sms, FLATTEN=flatten,
        WARP_SPEC=ws, num_stages=stages, num_warps=warps)


def main() -> None:
    for name, m, k, n, tile in SHAPES:
        a = torch.randint(-127, 128, (m, k), device="cuda", dtype=torch.int8)
        b = torch.randint(-127, 128, (n, k), device="cuda", dtype=torch.int8)
        sa = torch.rand(m, device="cuda") * 1e-3
        sb = torch.rand(n, device="cuda") * 1e-3
        c = torch.empty(m, n, device="cuda", dtype=torch.bfloat16)
        tops = 2 * m * n * k / 1e12
        row = [f"{name} M={m} K={k} N={n}"]
        ms = do_bench(partial(torch._int_mm, a, b.t()), return_mode="median")
        row.append(f"cublas_int_mm {ms * 1e3:.0f} us {tops / ms * 1e3:.0f} TOP/s")
        ref = None
        for flatten, ws in ((False, False), (True, False), (False, True), (True, True)):
            label = f"flatten={int(flatten)} ws={int(ws)}"
            try:
                _run(a, b, c, sa, sb, tile, flatten, ws)
                out = c.clone()
                ref = out if ref is None else ref
                same = torch.equal(out, ref)
                ms = do_bench(partial(_run, a, b, c, sa, sb, tile, flatten, ws), return_mode="median")
                row.append(f"{label} {ms * 1e3:.0f} us {tops / ms * 1e3:.0f} TOP/s{'' if same else ' DIFFERS'}")
            except Exception as exc:  # noqa: BLE001 - a variant this Triton cannot compile is a result too
                row.append(f"{label} failed: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}")
        print("; ".join(row), flush=True)  # noqa: T201 - the bench's output


if __name__ == "__main__":
    main()
