"""Tune the VAE's implicit-GEMM conv for the given residual-block widths at the served sizes, and write the
shipped H200 choices file with them added (session 20): load `worker/autotune/<gpu>.json`, decode and encode
(an I2V condition) at each size with `WanVAE.igemm_channels` = --widths, save every autotuner's choices to
--out (the file to ship: the shipped entries plus the new keys).

    python3 scripts/vae_autotune_choices.py --widths 96,192 --sizes 832x480,1280x720 --out /tmp/choices.json
"""

# ruff: noqa: T201 - a tool: printing is its output
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from models.vae import VAEConfig, WanVAE
from worker.warmup import SHIPPED_CHOICES, AutotuneChoices, _import_kernels, gpu_tag


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--widths", default="96,192")
    ap.add_argument("--sizes", default="832x480,1280x720")
    ap.add_argument("--frames", type=int, default=81)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    _import_kernels()
    shipped = SHIPPED_CHOICES / f"{gpu_tag()}.json"
    choices = AutotuneChoices(shipped)
    print(f"loaded {choices.load()} shipped choices from {shipped}")
    vae = WanVAE(VAEConfig()).eval().requires_grad_(False).to("cuda", torch.bfloat16)
    vae.igemm_channels = tuple(int(w) for w in args.widths.split(","))
    for size in args.sizes.split(","):
        w, h = (int(v) for v in size.split("x"))
        t0 = time.perf_counter()
        latents = torch.randn(1, 16, (args.frames - 1) // 4 + 1, h // 8, w // 8, device="cuda", dtype=torch.bfloat16)
        vae.decode(latents)
        video = torch.zeros(1, 3, args.frames, h, w, device="cuda", dtype=torch.bfloat16)
        video[:, :, 0] = torch.rand(3, h, w, device="cuda") * 2 - 1
        vae.encode(video)
        torch.cuda.synchronize()
        print(f"{size}: decode + encode with igemm widths {vae.igemm_channels} (tuning included) "
              f"{time.perf_counter() - t0:.1f} s")
    choices.path = args.out
    print(f"saved {choices.save()} choices to {args.out}")


if __name__ == "__main__":
    main()
