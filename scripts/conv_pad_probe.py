"""Is the 96-channel implicit-GEMM conv bound by its per-K-step cost? (kernels/NOTES_vae.md, session 26)

At 96 input channels the conv's K step is 32 (no larger power of two divides 96); int8 operands, which halve
the MMA time and the bytes, made it only 5 % faster. If the cost is per K step, a 96-channel input held in a
128-channel buffer (the extra channels zero, the weights' extra rows zero) runs fewer, wider steps and should
beat the 96-channel conv despite 33 % more MMA work. This times, on one GPU, the conv of the VAE's 96-wide
480p / 720p blocks (16 frames, each epilogue) with C_in 96 and with C_in 128 (zero-padded), every config that
fits (plus 128-wide K steps), the best of each, and checks that the padded conv gives the same output.

    python3 scripts/conv_pad_probe.py
"""

# ruff: noqa: T201 - a measurement script: printing is its output
from __future__ import annotations

import torch
import triton
from triton.testing import do_bench

from kernels import conv3d_igemm as cv

CL3D = torch.channels_last_3d
EXTRA = [(128, 1, 64, 32, 128, 4, 3), (128, 2, 64, 32, 128, 4, 3), (128, 2, 64, 32, 128, 8, 3),
         (128, 1, 64, 32, 64, 4, 4), (128, 2, 64, 32, 64, 4, 4), (128, 2, 64, 32, 64, 8, 4),
         (128, 2, 64, 32, 32, 4, 4)]  # fmt: skip


def configs(c_in: int, epi: int, w: int) -> list[dict]:
    smem = cv._smem_limit(torch.cuda.current_device())
    out = []
    for bm, bh, n0, n1, bk, warps, stages in [*cv._TILES, *EXTRA]:
        if c_in % bk or n0 + n1 < 96 or not cv._fits(c_in, 96, epi, bm, n0, n1, bk, stages, smem):
            continue
        if cv._row_waste(w, bm, bh) > 0.1:
            continue
        cfg = {"BLOCK_M": bm, "BLOCK_H": bh, "BLOCK_N0": n0, "BLOCK_N1": n1, "BLOCK_K": bk, "num_warps": warps,
               "num_stages": stages}
        if cfg not in out:
            out.append(cfg)
    return out


def main() -> None:
    print(f"{torch.cuda.get_device_name()} torch {torch.__version__} triton {triton.__version__}", flush=True)
    for h, w in ((480, 832), (720, 1280)):
        t = 16
        g = torch.Generator(device="cuda").manual_seed(0)
        x96 = torch.randn(1, 96, t + 2, h, w, device="cuda", generator=g, dtype=torch.bfloat16).contiguous(memory_format=CL3D)
        x128 = torch.zeros(1, 128, t + 2, h, w, device="cuda", dtype=torch.bfloat16).contiguous(memory_format=CL3D)
        x128[:, :96] = x96
        weight = (torch.randn(96, 96, 3, 3, 3, device="cuda", generator=g) / (27 * 96) ** 0.5).to(torch.bfloat16)
        w128 = torch.zeros(96, 128, 3, 3, 3, device="cuda", dtype=torch.bfloat16)
        w128[:, :96] = weight
        m96, m128 = cv.weight_matrix(weight), cv.weight_matrix(w128)
        bias = 0.1 * torch.randn(96, device="cuda", generator=g).to(torch.bfloat16)
        gamma = 1 + 0.1 * torch.randn(96, device="cuda", generator=g).to(torch.bfloat16)
        res = torch.randn(1, 96, t, h, w, device="cuda", generator=g, dtype=torch.bfloat16).contiguous(memory_format=CL3D)
        nxt = torch.empty(1, 96, t + 2, h, w, device="cuda", dtype=torch.bfloat16).contiguous(memory_format=CL3D)
        same = torch.equal(cv.causal_conv3x3x3(x96, m96, 96, bias=bias), cv.causal_conv3x3x3(x128, m128, 96, bias=bias))
        flop = 2 * t * h * w * 96 * 27 * 96
        print(f"== {w}x{h}, {t} frames, 96 -> 96 channels; autotuned outputs equal (96 vs 128-padded input): {same}",
              flush=True)
        for epi, kw in ((0, {}), (1, {"norm_gamma": gamma, "out": nxt[:, :, 2:]}), (2, {"residual": res})):
            best = {}
            for c_in, x, m in ((96, x96, m96), (128, x128, m128)):
                for cfg in configs(c_in, epi, w):
                    try:
                        ms = do_bench(lambda: cv.causal_conv3x3x3(x, m, 96, bias=bias, config=cfg, **kw),  # noqa: B023
                                      warmup=5, rep=40, return_mode="median")
                    except Exception as exc:  # noqa: BLE001 - report and go on
                        print(f"   C_in {c_in} {cfg}: failed {type(exc).__name__}: {str(exc)[:120]}", flush=True)
                        continue
                    print(f"   epi {epi} C_in {c_in} {cfg}: {ms:.3f} ms ({flop / ms / 1e9:.0f} useful TFLOP/s)", flush=True)
                    if c_in not in best or ms < best[c_in][0]:
                        best[c_in] = (ms, cfg)
            b96, b128 = best[96][0], best[128][0]
            print(f"  epilogue {epi}: best C_in 96 {b96:.3f} ms {best[96][1]} | C_in 128 (padded) {b128:.3f} ms "
                  f"{best[128][1]} | padded / plain = {b128 / b96:.3f}", flush=True)


if __name__ == "__main__":
    main()
