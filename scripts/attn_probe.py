"""SageSLA's fused attention kernel alone at the Wan shapes: the Triton kernel (autotuned) against the Gluon one
(kernels/sagesla_gluon.py, each ring depth), on the same prepared operands, in one process (GPU).

Prints, per shape: median ms of each kernel (the Gluon one at each ring depth), the speed-up, the relative error and cosine to the Triton
kernel's output, the relative error to the fp32 reference (1.3B: its first two heads), the whole `sagesla_attention` call (preparation + kernel) with each kernel, and cuDNN SDPA
(bf16, dense) for scale.

    python3 scripts/attn_probe.py [--shapes 1.3b,14b] [--cache DIR]
"""

# ruff: noqa: T201 - a measurement script: printing is its output
from __future__ import annotations

import argparse
import math
import os

import torch
import torch.nn.functional as F
from triton.testing import do_bench

SHAPES = {"1.3b": (12, 32760), "14b": (40, 75600)}  # heads, tokens (480p / 720p, 81 frames)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="1.3b,14b")
    ap.add_argument("--cache", default="", help="a kernel cache dir (the worker's shipped autotune choices)")
    args = ap.parse_args()
    if args.cache:
        from pathlib import Path

        from worker.warmup import use_kernel_cache

        use_kernel_cache(Path(args.cache))
    from kernels import sagesla as sg
    from kernels import sagesla_gluon as sgg

    for name in args.shapes.split(","):
        h, length = SHAPES[name]
        g = torch.Generator(device="cuda").manual_seed(0)
        q, k, v = (torch.randn(1, length, h, 128, device="cuda", generator=g, dtype=torch.bfloat16).transpose(1, 2)
                   for _ in range(3))
        w = torch.randn(128, 128, device="cuda", generator=g) / math.sqrt(128)
        bias = torch.randn(128, device="cuda", generator=g) * 0.01
        prep = sg._prepare(q, k, v, 0.1, w, bias, sg.BLOCK_Q, sg.BLOCK_K, False, True)
        want = sg._launch_triton(prep)
        t_triton = do_bench(lambda: sg._launch_triton(prep), warmup=10, rep=100, return_mode="median")
        print(f"== {name}: H={h} L={length} topk={prep.topk} of {prep.k_scale.shape[1]} key blocks", flush=True)
        ref = None
        if h * length <= 2 * 32760:  # the fp32 reference materializes [H, L, L]
            ref = sg.reference(q, k, v, topk_ratio=0.1, proj_l_weight=w, proj_l_bias=bias)[0].float()
        elif name == "1.3b":  # its first two heads (heads are independent)
            ref = sg.reference(q[:, :2], k[:, :2], v[:, :2], topk_ratio=0.1, proj_l_weight=w,
                               proj_l_bias=bias)[0].float()

        def ref_err(o: torch.Tensor) -> str:
            if ref is None:
                return ""
            o = o[:, : ref.shape[1]].float()
            return f", vs fp32 reference {((o - ref).norm() / ref.norm()).item():.2e}"

        print(f"triton kernel {t_triton:.3f} ms{ref_err(want)}", flush=True)
        for stages in (2, 3, 4):
            def run(stages: int = stages) -> torch.Tensor:
                out = q.new_empty(1, length, h, 128).transpose(1, 2)
                return sgg.attention(prep.q8, prep.q_scale, prep.k8, prep.k_scale, prep.vt, prep.v_scale, prep.lut,
                                     prep.olin, out, h, prep.block_k, sg.P_OFF_FP8, stages=stages)

            got = run()
            err = ((got.float() - want.float()).norm() / want.float().norm()).item()
            cos = F.cosine_similarity(got.double().flatten(), want.double().flatten(), dim=0).item()
            t = do_bench(run, warmup=10, rep=100, return_mode="median")
            print(f"gluon kernel, {stages} slots: {t:.3f} ms "
                  f"({t_triton / t:.2f}x), vs triton {err:.2e} (cos {cos:.6f}){ref_err(got)}", flush=True)
        for choice in ("triton", "auto"):
            os.environ[sg.KERNEL_ENV] = choice
            sg._GLUON_CHECKED.clear()
            call = lambda: sg.sagesla_attention(q, k, v, topk_ratio=0.1, proj_l_weight=w, proj_l_bias=bias)  # noqa: E731
            call()
            t = do_bench(call, warmup=5, rep=50, return_mode="median")
            runs = sg._gluon_runs(prep)
            print(f"whole sagesla_attention call, kernel {choice} (gluon runs: {runs}): {t:.3f} ms", flush=True)
        t_sdpa = do_bench(lambda: F.scaled_dot_product_attention(q, k, v), warmup=3, rep=20, return_mode="median")
        print(f"cuDNN/flash SDPA bf16 dense {t_sdpa:.3f} ms", flush=True)
        del q, k, v, prep, want, ref
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
