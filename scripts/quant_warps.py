"""GPU micro-bench: the per-token int8 activation quantization (with the FFN's GELU) at the 1.3B / 14B
FFN-down inputs, by num_warps and rows per program, vs a plain copy of the same bytes (session 16: the
1.3B DiT profile shows this pass at ~1.6 TB/s). Session 17: the GELU's tanh as `tanh.approx.f32` ("fast")
against the sigmoid form ("gelu"), which made the pass compute-bound (653 vs 300 µs at 1.3B). Session 22
(`--pieces`): the shipped pass with the row held as one next-power-of-two block vs as power-of-two pieces
(`int8_quant.row_pieces`: 8960 lanes instead of 16384 at 1.3B), codes compared bit for bit."""

from __future__ import annotations

from functools import partial

import torch
import triton
from triton.testing import do_bench

from kernels.int8_quant import _quantize_rows_kernel


def _run(x: torch.Tensor, q: torch.Tensor, s: torch.Tensor, bm: int, bk: int, warps: int, act: str) -> None:
    m, k = x.shape
    _quantize_rows_kernel[(triton.cdiv(m, bm),)](
        x, q, s, s, m, k, x.stride(0), q.stride(0), 1, 1, 1, 0, BLOCK_M=bm, BLOCK_K=bk, WRITE_Q=True,
        ONE_PASS=True, GELU=act != "none", FAST_TANH=act == "fast", num_warps=warps,
    )


def main() -> None:
    for m, k in ((32760, 8960), (32760, 1536), (75600, 13824)):
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        q = torch.empty(m, k, device="cuda", dtype=torch.int8)
        s = torch.empty(m, device="cuda", dtype=torch.float32)
        bk = triton.next_power_of_2(k)
        copy = do_bench(partial(q.copy_, x), return_mode="median")  # reads bf16, writes int8
        row = [f"M={m} K={k}: copy {copy * 1e3:.0f} us"]
        for bm in (1, 2) if bk <= 8192 else (1,):
            for warps in (4, 8):
                for act in ("none", "gelu", "fast"):
                    t = do_bench(partial(_run, x, q, s, bm, bk, warps, act), return_mode="median")
                    row.append(f"bm{bm} w{warps} {act} {t * 1e3:.0f} us")
        print("; ".join(row), flush=True)  # noqa: T201 - the bench's output


def pieces() -> None:
    from kernels.int8_quant import _quantize

    for m, k in ((32760, 8960), (75600, 13824), (32760, 1536), (75600, 5120)):
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16) * 3
        row = [f"M={m} K={k}"]
        for gelu in (True, False):
            one = partial(_quantize, x, m, k, x.stride(0), None, None, None, gelu, pieces=False)
            split = partial(_quantize, x, m, k, x.stride(0), None, None, None, gelu, pieces=True)
            a, b = one(), split()
            same = torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
            t1, t2 = (do_bench(f, return_mode="median") for f in (one, split))
            row.append(f"{'gelu' if gelu else 'plain'}: one block {t1 * 1e3:.0f} us, pieces {t2 * 1e3:.0f} us "
                       f"({t1 / t2:.2f}x), equal {same}")
        print("; ".join(row), flush=True)  # noqa: T201 - the bench's output


if __name__ == "__main__":
    import sys

    pieces() if "--pieces" in sys.argv else main()
