"""Hardware-counter views of the kernels that hold the 1.3B job's time, for Nsight Compute (ncu).

Each target warms its kernels up (the autotuner settles on its choice), then runs them once more inside an
NVTX range named after the target, so ncu profiles exactly that call:

    ncu --clock-control none --nvtx --nvtx-include "conv96/" --section WarpStateStats ... \
        -o conv96 python3 scripts/ncu_targets.py conv96

Targets: conv96 / conv192 / conv384 (the VAE decode's 3x3x3 implicit-GEMM convs at 480p, 16 frames, norm +
SiLU epilogue), ffn_up / ffn_down / qkvo (the 1.3B W8A8 GEMMs at M = 32760 on pre-quantized x), sagesla (one
1.3B SageSLA call: its prep kernels and the attention kernel), gelu_quant (the FFN-down activation pass).
Without ncu the script times each target (median ms), so it also runs as a plain check.
"""

# ruff: noqa: T201 - a measurement script: printing is its output
from __future__ import annotations

import argparse
import math
from collections.abc import Callable

import torch
from triton.testing import do_bench

CL3D = torch.channels_last_3d
L13 = 32760  # 1.3B 480p/81f tokens


def conv_operands(c: int, h: int, w: int, t: int = 16) -> dict[str, torch.Tensor]:
    """A c -> c causal 3x3x3 conv's operands at one frame size (random, seeded): the padded input x, the weight
    matrix m, bias, the norm's gamma, a residual res and the next conv's padded buffer nxt."""
    from kernels import conv3d_igemm as cv

    g = torch.Generator(device="cuda").manual_seed(0)

    def frames(n: int) -> torch.Tensor:
        return torch.randn(1, c, n, h, w, device="cuda", generator=g, dtype=torch.bfloat16).contiguous(memory_format=CL3D)

    x = frames(t + 2)
    weight = (torch.randn(c, c, 3, 3, 3, device="cuda", generator=g) / (27 * c) ** 0.5).to(torch.bfloat16)
    return {"x": x, "m": cv.weight_matrix(weight), "bias": 0.1 * torch.randn(c, device="cuda", generator=g).to(torch.bfloat16),
            "gamma": 1 + 0.1 * torch.randn(c, device="cuda", generator=g).to(torch.bfloat16), "res": frames(t),
            "nxt": torch.empty_like(x)}


def _conv(c: int, h: int, w: int, t: int = 16) -> Callable[[], object]:
    from kernels import conv3d_igemm as cv

    o = conv_operands(c, h, w, t)
    return lambda: cv.causal_conv3x3x3(o["x"], o["m"], c, bias=o["bias"], norm_gamma=o["gamma"], out=o["nxt"][:, :, 2:])


def _gemm(k: int, n: int, m: int = L13) -> Callable[[], object]:
    from kernels.int8_quant import quantize_activation, quantize_weight_blockwise
    from kernels.w8a8 import prepare_weight, w8a8_gemm

    g = torch.Generator(device="cuda").manual_seed(0)
    wq, ws = quantize_weight_blockwise(0.02 * torch.randn(n, k, device="cuda", generator=g))
    weight = prepare_weight(wq, ws)
    bias = 0.01 * torch.randn(n, device="cuda", generator=g).to(torch.bfloat16)
    xq, sx = quantize_activation(torch.randn(m, k, device="cuda", generator=g, dtype=torch.bfloat16))
    return lambda: w8a8_gemm(xq, sx, weight, bias, torch.bfloat16)


def _gelu_quant() -> Callable[[], object]:
    from kernels.int8_quant import quantize_activation

    x = torch.randn(L13, 8960, device="cuda", dtype=torch.bfloat16)
    return lambda: quantize_activation(x, gelu=True)


def _sagesla(heads: int = 12) -> Callable[[], object]:
    from kernels.sagesla import sagesla_attention

    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(1, heads, L13, 128, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(3))
    w = torch.randn(128, 128, device="cuda", generator=g) / math.sqrt(128)
    bias = torch.randn(128, device="cuda", generator=g) * 0.01
    return lambda: sagesla_attention(q, k, v, topk_ratio=0.1, proj_l_weight=w, proj_l_bias=bias)


TARGETS: dict[str, Callable[[], Callable[[], object]]] = {
    "conv96": lambda: _conv(96, 480, 832),
    "conv192": lambda: _conv(192, 240, 416),
    "conv384": lambda: _conv(384, 120, 208),
    "ffn_up": lambda: _gemm(1536, 8960),
    "ffn_down": lambda: _gemm(8960, 1536),
    "qkvo": lambda: _gemm(1536, 1536),
    "gelu_quant": _gelu_quant,
    "sagesla": _sagesla,
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("targets", nargs="+", choices=sorted(TARGETS))
    ap.add_argument("--time", action="store_true", help="also time each target (do_bench median)")
    ap.add_argument("--cache", default="", help="a kernel cache dir: load the worker's shipped autotune choices and "
                    "keep compiled kernels there (worker.warmup.use_kernel_cache), so repeated runs skip tuning")
    args = ap.parse_args()
    if args.cache:
        from pathlib import Path

        from worker.warmup import use_kernel_cache

        use_kernel_cache(Path(args.cache))
    for name in args.targets:
        fn = TARGETS[name]()
        for _ in range(3):  # autotune + compile outside the profiled range
            fn()
        torch.cuda.synchronize()
        torch.cuda.nvtx.range_push(name)
        fn()
        torch.cuda.nvtx.range_pop()
        torch.cuda.synchronize()
        if args.time:
            print(f"{name}: {do_bench(fn, warmup=5, rep=50, return_mode='median'):.3f} ms", flush=True)
        del fn
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
