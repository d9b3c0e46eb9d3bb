"""Wan's int8 FFN (ffn_up → GELU → ffn_down) as the row-scaled three-kernel path vs the block-scaled two-kernel
one (`kernels.w8a8_blockq`), per kernel and in all, at the Wan 1.3B / 14B shapes, in one process (GPU, sm90).

    python -m kernels.bench_ffn [--sizes 1.3b,14b] [--reps 50]

Row-scaled: `w8a8_gemm` (ffn_up, bf16 out) + `quantize_activation(gelu=True)` + `w8a8_gemm` (ffn_down).
Block-scaled: `ffn_up_gelu_q` (one 256x128 tile at a time, and ping-pong: two warpgroups on alternate tiles) +
`ffn_down_blockq`; "block" is `ffn_int8` (its ffn_up form by `up_pingpong`). Also a bf16 cuBLAS FFN
(`F.linear` + GELU + `F.linear`) for scale. Each path's error against an fp32 FFN on the same int8 weights
(the dequantized ones) and inputs is printed next to its time; one JSON line per size comes last.
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F
from triton.testing import do_bench

from kernels import w8a8_blockq as bq
from kernels.int8_quant import quantize_activation
from kernels.w8a8 import W8A8Weight, w8a8_gemm

SIZES = {"1.3b": (32760, 1536, 8960), "14b": (75600, 5120, 13824)}  # tokens (81 frames: 480p / 720p), C, F


def _weight(n: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    w = torch.randn(n, k, device="cuda") * 0.02
    s = w.abs().amax(dim=1) / 127
    return torch.round(w / s[:, None]).clamp(-127, 127).to(torch.int8), s


def run(name: str, reps: int, pingpong: bool = True) -> dict:
    m, c, f = SIZES[name]
    torch.manual_seed(0)
    x = torch.randn(m, c, device="cuda", dtype=torch.bfloat16)
    x[:, :8] *= 20  # outlier channels
    (uq, us), (dq, ds) = _weight(f, c), _weight(c, f)
    ub = (torch.randn(f, device="cuda") * 0.1).to(torch.bfloat16)
    db = (torch.randn(c, device="cuda") * 0.1).to(torch.bfloat16)
    up, down = W8A8Weight(uq, us), W8A8Weight(dq, ds)
    xq, sx = quantize_activation(x)

    def row_up() -> torch.Tensor:
        return w8a8_gemm(xq, sx, up, ub, torch.bfloat16)

    h = row_up()

    def row_quant() -> tuple[torch.Tensor, torch.Tensor]:
        return quantize_activation(h, gelu=True)

    hq, hs = row_quant()

    def row_down() -> torch.Tensor:
        return w8a8_gemm(hq, hs, down, db, torch.bfloat16)

    def row() -> torch.Tensor:
        hq_, hs_ = quantize_activation(w8a8_gemm(xq, sx, up, ub, torch.bfloat16), gelu=True)
        return w8a8_gemm(hq_, hs_, down, db, torch.bfloat16)

    def blk_up() -> tuple[torch.Tensor, torch.Tensor]:
        return bq.ffn_up_gelu_q(xq, sx, uq, us, ub)

    q, s = blk_up()

    def blk_up_pingpong() -> tuple[torch.Tensor, torch.Tensor]:
        return bq.ffn_up_gelu_q(xq, sx, uq, us, ub, pingpong=True)

    same_codes = None
    if pingpong:
        q2, s2 = blk_up_pingpong()
        same_codes = bool(torch.equal(q, q2) and torch.equal(s, s2))

    def blk_down() -> torch.Tensor:
        return bq.ffn_down_blockq(q, s, dq, ds, db, torch.bfloat16)

    def blk() -> torch.Tensor:
        return bq.ffn_int8(xq, sx, uq, us, ub, dq, ds, db, torch.bfloat16)

    wu, wd = (uq.float() * us[:, None]).to(torch.bfloat16), (dq.float() * ds[:, None]).to(torch.bfloat16)

    def cublas() -> torch.Tensor:
        return F.linear(F.gelu(F.linear(x, wu, ub), approximate="tanh"), wd, db)

    rows = slice(0, 2048)  # the fp32 reference on a slice of the rows
    exact = F.linear(F.gelu(F.linear(x[rows].float(), wu.float(), ub.float()), approximate="tanh"), wd.float(),
                     db.float())

    def err(y: torch.Tensor) -> float:
        return ((y[rows].float() - exact).norm() / exact.norm()).item()

    times = {key: do_bench(fn, warmup=10, rep=reps, return_mode="median") for key, fn in (
        ("row_up", row_up), ("row_quant", row_quant), ("row_down", row_down), ("row", row),
        ("block_up", blk_up), *((("block_up_pingpong", blk_up_pingpong),) if pingpong else ()), ("block_down", blk_down), ("block", blk),
        ("cublas_bf16", cublas))}
    out = {"size": name, "M": m, "C": c, "F": f, "ms": {k: round(v, 4) for k, v in times.items()},
           "row_over_block": round(times["row"] / times["block"], 3),
           "cublas_over_block": round(times["cublas_bf16"] / times["block"], 3),
           "pingpong_same_codes": same_codes, "err_row": round(err(row()), 5), "err_block": round(err(blk()), 5), "err_cublas": round(err(cublas()), 5)}
    print(f"== {name}: M={m} C={c} F={f}")
    print(f"  row-scaled    ffn_up {times['row_up']:.3f} + quant(GELU) {times['row_quant']:.3f} + ffn_down "
          f"{times['row_down']:.3f} ms; whole {times['row']:.3f} ms; error {out['err_row']:.4f}")
    print(f"  block-scaled  ffn_up+GELU+int8 {times['block_up']:.3f} + ffn_down {times['block_down']:.3f} ms; "
          f"whole {times['block']:.3f} ms; error {out['err_block']:.4f}")
    if pingpong:
        print(f"  block-scaled  ffn_up ping-pong {times['block_up_pingpong']:.3f} ms (codes equal: {same_codes})")
    print(f"  bf16 cuBLAS   whole {times['cublas_bf16']:.3f} ms; error {out['err_cublas']:.4f}")
    print(f"  row / block {out['row_over_block']:.3f}x, cuBLAS bf16 / block {out['cublas_over_block']:.3f}x")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1.3b,14b")
    ap.add_argument("--reps", type=int, default=50, help="do_bench's rep (ms of timed runs)")
    ap.add_argument("--no-pingpong", action="store_true", help="leave the ping-pong ffn_up out")
    args = ap.parse_args()
    print(torch.cuda.get_device_name(), "torch", torch.__version__, flush=True)
    results = [run(name, args.reps, not args.no_pingpong) for name in args.sizes.split(",")]
    for r in results:
        print(json.dumps(r))


if __name__ == "__main__":
    main()
