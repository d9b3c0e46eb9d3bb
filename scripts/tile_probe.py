"""Two questions from session 27's Nsight Compute profile (kernels/NOTES_w8a8.md, kernels/NOTES_vae.md), one GPU:

gemm  Does the int8 GEMM get faster when its tensor-core MMAs overlap (`kernels.w8a8_gluon`: async wgmma,
      one group in flight), against the Triton kernel that waits for every K step's MMAs? Times both at the
      Wan shapes (pre-quantized x, the real epilogue), every Gluon config, and checks the outputs are equal.
conv  Does a 256-pixel tile (two warpgroups, the weights read from L2 half as often per pixel) speed up the
      VAE's 96-channel 3x3x3 conv, which ncu found L2-bound (85 % of L2 throughput)? Times the autotuned
      choice and each candidate tile.

    python3 scripts/tile_probe.py gemm conv [--cache DIR] [--gluon-baseline OLD_w8a8_gluon.py]
"""

# ruff: noqa: T201 - a measurement script: printing is its output
from __future__ import annotations

import argparse
import functools

import torch
import triton
from triton.testing import do_bench

bench = functools.partial(do_bench, warmup=10, rep=60, return_mode="median")

GEMM_SHAPES = [("1.3B qkvo", 32760, 1536, 1536), ("1.3B ffn_up", 32760, 1536, 8960),
               ("1.3B ffn_down", 32760, 8960, 1536), ("14B qkvo", 75600, 5120, 5120),
               ("14B ffn_up", 75600, 5120, 13824), ("14B ffn_down", 75600, 13824, 5120)]  # fmt: skip


def _load_module(path: str):  # noqa: ANN202 - a module
    import importlib.util

    spec = importlib.util.spec_from_file_location("gluon_baseline", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def gemm(baseline: str = "", n_configs: int = 0) -> None:
    """baseline: the file of an earlier `kernels/w8a8_gluon.py`, timed config by config beside this one;
    n_configs: only the first n of `CONFIGS` (0: all)."""
    from kernels import w8a8_gluon as wg
    from kernels.int8_quant import quantize_activation, quantize_weight_blockwise
    from kernels.w8a8 import _w8a8_tma_tuned, prepare_weight, w8a8_gemm

    cfgs = wg.CONFIGS[:n_configs] if n_configs else wg.CONFIGS
    variants = [("gluon", wg)] + ([("gluon baseline", _load_module(baseline))] if baseline else [])
    print("== int8 GEMM: Triton (sync wgmma per K step) vs Gluon (async, 1 group in flight); ms, TOP/s", flush=True)
    for name, m, k, n in GEMM_SHAPES:
        g = torch.Generator(device="cuda").manual_seed(0)
        wq, ws = quantize_weight_blockwise(0.02 * torch.randn(n, k, device="cuda", generator=g))
        weight = prepare_weight(wq, ws)
        bias = 0.01 * torch.randn(n, device="cuda", generator=g).to(torch.bfloat16)
        xq, sx = quantize_activation(torch.randn(m, k, device="cuda", generator=g, dtype=torch.bfloat16))
        ops = 2 * m * n * k
        ref = w8a8_gemm(xq, sx, weight, bias, torch.bfloat16, backend="tma")
        t_tr = bench(lambda: w8a8_gemm(xq, sx, weight, bias, torch.bfloat16, backend="tma"))  # noqa: B023
        print(f"   triton's autotuned config: {_w8a8_tma_tuned.best_config}", flush=True)
        xb = torch.randn(m, k, device="cuda", dtype=torch.bfloat16, generator=g)
        wb = torch.randn(n, k, device="cuda", dtype=torch.bfloat16, generator=g)
        t_bf16 = bench(lambda: torch.nn.functional.linear(xb, wb))  # noqa: B023
        line = f"{name:<14} cuBLAS bf16 {t_bf16:.3f} | triton {t_tr:.3f} ({ops / t_tr / 1e9:.0f})"
        best = None
        for label, mod in variants:
            for cfg in cfgs:
                try:
                    y = mod.w8a8_gemm_gluon(xq, sx, weight.qweight, weight.scale, bias, torch.bfloat16, config=cfg)
                    same = torch.equal(y, ref)
                    diff = (y.float() - ref.float()).abs().max().item()
                    t = bench(lambda: mod.w8a8_gemm_gluon(xq, sx, weight.qweight, weight.scale, bias,  # noqa: B023
                                                          torch.bfloat16, config=cfg))  # noqa: B023
                except Exception as exc:  # noqa: BLE001 - report and go on
                    print(f"   {label} {cfg}: failed {type(exc).__name__}: {str(exc)[:300]}", flush=True)
                    continue
                print(f"   {label} {cfg}: {t:.3f} ms ({ops / t / 1e9:.0f} TOP/s) equal {same} max diff {diff:.3g}",
                      flush=True)
                if label == "gluon" and (best is None or t < best[0]):
                    best = (t, cfg)
        if best:
            line += f" | gluon best {best[0]:.3f} ({ops / best[0] / 1e9:.0f}) {best[1]} = {t_tr / best[0]:.3f}x triton"
        print(line, flush=True)
        torch.cuda.empty_cache()


CONV_TILES = {  # C: candidate tiles (BM, BH, N0, N1, BK, warps, stages) beyond the shipped list
    96: [(256, 4, 64, 32, 32, 8, 4), (256, 4, 64, 32, 32, 8, 3), (256, 4, 64, 32, 32, 8, 5), (256, 2, 64, 32, 32, 8, 4),
         (256, 4, 128, 0, 32, 8, 4), (256, 4, 64, 32, 32, 4, 4), (128, 1, 64, 32, 32, 4, 4), (128, 2, 64, 32, 32, 4, 4)],
    192: [(128, 4, 128, 64, 64, 8, 3), (128, 4, 128, 64, 32, 8, 4), (128, 4, 128, 64, 32, 8, 5),
          (256, 4, 128, 64, 32, 8, 3), (64, 1, 128, 64, 64, 4, 3)],
}  # fmt: skip


def conv() -> None:
    from ncu_targets import conv_operands  # scripts/ is this script's own directory on sys.path

    from kernels import conv3d_igemm as cv

    print("== VAE conv: autotuned choice vs candidate tiles (16 frames); ms, TFLOP/s", flush=True)
    for c, h, w in ((96, 480, 832), (96, 720, 1280), (192, 240, 416), (192, 360, 640)):
        t = 16
        o = conv_operands(c, h, w, t)
        x, m, bias, gamma, res, nxt = (o[k] for k in ("x", "m", "bias", "gamma", "res", "nxt"))
        flop = 2 * t * h * w * c * 27 * c
        for epi, kw in ((1, {"norm_gamma": gamma, "out": nxt[:, :, 2:]}), (2, {"residual": res})):
            ref = cv.causal_conv3x3x3(x, m, c, bias=bias, **kw).clone()
            t_auto = bench(lambda: cv.causal_conv3x3x3(x, m, c, bias=bias, **kw))  # noqa: B023
            key = [k for k in cv._conv_tuned.cache if c in k and w in k and epi in k]
            chosen = cv._conv_tuned.cache[key[0]] if key else "?"
            print(f"  C {c} {w}x{h} epi {epi}: autotuned {t_auto:.3f} ms ({flop / t_auto / 1e9:.0f}) {chosen}", flush=True)
            for bm, bh, n0, n1, bk, warps, stages in CONV_TILES[c]:
                cfg = {"BLOCK_M": bm, "BLOCK_H": bh, "BLOCK_N0": n0, "BLOCK_N1": n1, "BLOCK_K": bk, "num_warps": warps,
                       "num_stages": stages}
                try:
                    y = cv.causal_conv3x3x3(x, m, c, bias=bias, config=cfg, **kw)
                    err = ((y.float() - ref.float()).norm() / ref.float().norm()).item()
                    ms = bench(lambda: cv.causal_conv3x3x3(x, m, c, bias=bias, config=cfg, **kw))  # noqa: B023
                except Exception as exc:  # noqa: BLE001 - report and go on
                    print(f"    {cfg}: failed {type(exc).__name__}: {str(exc)[:200]}", flush=True)
                    continue
                print(f"    {bm}x{bh} n{n0}+{n1} k{bk} w{warps} s{stages}: {ms:.3f} ms ({flop / ms / 1e9:.0f}) "
                      f"{t_auto / ms:.3f}x, rel diff {err:.2e}", flush=True)
        torch.cuda.empty_cache()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("parts", nargs="+", choices=["gemm", "conv"])
    ap.add_argument("--gluon-baseline", default="", help="gemm: an earlier kernels/w8a8_gluon.py to time beside")
    ap.add_argument("--gluon-configs", type=int, default=0, help="gemm: time only the first N Gluon configs")
    ap.add_argument("--cache", default="", help="kernel cache dir (loads the worker's shipped autotune choices)")
    args = ap.parse_args()
    print(f"{torch.cuda.get_device_name()} torch {torch.__version__} triton {triton.__version__}", flush=True)
    if args.cache:
        from pathlib import Path

        from worker.warmup import use_kernel_cache

        use_kernel_cache(Path(args.cache))
    for part in args.parts:
        if part == "gemm":
            gemm(args.gluon_baseline, args.gluon_configs)
        else:
            conv()


if __name__ == "__main__":
    main()
