"""Would FP8 (e4m3) convolutions keep the VAE decode's fidelity (issue 8: cos >= 0.999 to the fp32 decode)?
CPU emulation on the real Wan2.1 VAE config with random weights (session 20): the causal convs of the
decoder's residual blocks of the given widths get FP8 operands (the activation with one scale per tensor,
the weight with one per output channel: e4m3's relative rounding does not depend on the scale while values
stay in its normal range), everything else fp32; printed beside the same convs with bf16 operands.

    python3 scripts/vae_fp8_fidelity.py 96,192      # the widths kernels/conv3d_igemm.py runs
"""

# ruff: noqa: T201 - a measurement script: printing is its output
from __future__ import annotations

import sys

import torch

from models.bench_vae import _cosine
from models.vae import CausalCache, CausalConv3d, ResidualBlock, VAEConfig, WanVAE


def _fp8(t: torch.Tensor, dim: tuple[int, ...] | None = None) -> torch.Tensor:
    amax = t.abs().amax() if dim is None else t.abs().amax(dim=dim, keepdim=True)
    scale = amax.clamp_min(1e-12) / 448  # e4m3's largest normal value
    return (t / scale).to(torch.float8_e4m3fn).float() * scale


def _bf16(t: torch.Tensor, dim: tuple[int, ...] | None = None) -> torch.Tensor:
    return t.bfloat16().float()


def main() -> None:
    widths = tuple(int(v) for v in (sys.argv[1] if len(sys.argv) > 1 else "96,192").split(","))
    torch.manual_seed(0)
    vae = WanVAE(VAEConfig()).eval()
    targets = {m for blk in vae.decoder.modules() if isinstance(blk, ResidualBlock) and blk.shortcut is None
               and blk.residual[2].in_channels in widths for m in blk.residual if isinstance(m, CausalConv3d)}
    original = CausalConv3d.forward
    quant = {"fn": None}

    def forward(self: CausalConv3d, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        fn = quant["fn"]
        if fn is None or self not in targets:
            return original(self, x, cache)
        weight = self.weight.data
        self.weight.data = fn(weight, (1, 2, 3, 4))
        try:
            return original(self, fn(x), cache)
        finally:
            self.weight.data = weight

    CausalConv3d.forward = forward  # type: ignore[method-assign]
    latents = torch.randn(1, 16, 5, 12, 16)  # 17 frames of 128×96
    with torch.no_grad():
        exact = vae.decode(latents, fused=False)
        print(f"{len(targets)} convs of widths {widths}; decode of 17 frames at 128x96, fp32 elsewhere")
        for name, fn in (("bf16 operands", _bf16), ("fp8 e4m3 operands", _fp8)):
            quant["fn"] = fn
            out = vae.decode(latents, fused=False)
            quant["fn"] = None
            print(f"  {name:18} cos to fp32 {_cosine(out, exact):.6f}  max |diff| {(out - exact).abs().max().item():.4f}")


if __name__ == "__main__":
    main()
