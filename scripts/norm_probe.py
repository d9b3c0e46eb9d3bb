"""The DiT's fused residual norm pass at the Wan shapes: the Triton kernel (autotuned) against the Gluon one
(kernels/adaln_gluon.py, its default launch and other warps / rows per program), on the same operands, in one process
(GPU).

Prints, per shape and form (gated or not, int8 or bf16 out): median µs of each kernel, the speed-up, GB/s (bytes in
+ out once each), and how far the Gluon kernel's outputs are from the Triton kernel's (x' equal; int8 codes: the
largest difference and the fraction differing).

    python3 scripts/norm_probe.py [--shapes 1.3b,14b]
"""

# ruff: noqa: T201 - a measurement script: printing is its output
from __future__ import annotations

import argparse

import torch
from triton.testing import do_bench

SHAPES = {"1.3b": (32760, 1536), "14b": (75600, 5120)}  # tokens, channels (480p / 720p, 81 frames)
VARIANTS = {1536: [(4, 4), (4, 8), (8, 4)], 5120: [(8, 1), (8, 2), (4, 2)]}  # (warps, rows) besides the default


def probe(name: str, L: int, C: int) -> None:
    from kernels import adaln
    from kernels import adaln_gluon as ag

    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(1, L, C, device="cuda", generator=g) * 4
    y = torch.randn(1, L, C, device="cuda", generator=g).to(torch.bfloat16)
    gate, shift, scale = (torch.randn(1, C, device="cuda", generator=g) * 0.3 for _ in range(3))
    for gated, int8 in ((True, True), (False, True), (True, False)):
        gt = gate if gated else None
        dtype = torch.int8 if int8 else torch.bfloat16
        want = [torch.empty_like(x), torch.empty(1, L, C, device="cuda", dtype=dtype), torch.empty(L, device="cuda")]
        got = [torch.empty_like(t) for t in want]
        moved = L * C * (4 + 2 + 4 + (1 if int8 else 2)) + (L * 4 if int8 else 0)

        def triton_pass(want=want, gt=gt) -> None:
            adaln._launch_residual_triton(x, y, gt, shift, scale, 1e-6, *want)

        t_tri = do_bench(triton_pass, warmup=10, rep=100, return_mode="median") * 1e3
        line = [f"{name} {'gated' if gated else 'plain'} {'int8' if int8 else 'bf16'}: Triton {t_tri:.1f} us "
                f"({moved / t_tri / 1e3:.0f} GB/s)"]
        for nw, bm in [(None, None), *VARIANTS[C]]:
            def gluon_pass(got=got, gt=gt, nw=nw, bm=bm) -> None:
                ag.residual_ln_modulate(x, y, gt, shift, scale, 1e-6, *got, num_warps=nw, block_m=bm)

            gluon_pass()
            t = do_bench(gluon_pass, warmup=10, rep=100, return_mode="median") * 1e3
            meta = ag.launch_meta(C, nw, bm)
            same_x = torch.equal(got[0], want[0])
            if int8:
                diff = (got[1].int() - want[1].int()).abs()
                err = f"codes max {int(diff.max())} apart, {float((diff > 0).float().mean()):.1e} differ"
            else:
                err = f"out max {float((got[1].float() - want[1].float()).abs().max()):.2e} apart"
            line.append(f"Gluon {meta['num_warps']}w x{meta['BLOCK_M']} {t:.1f} us ({t_tri / t:.2f}x, "
                        f"{moved / t / 1e3:.0f} GB/s; x' equal {same_x}, {err})")
        print("; ".join(line), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="1.3b,14b")
    args = ap.parse_args()
    for name in args.shapes.split(","):
        probe(name, *SHAPES[name])
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
