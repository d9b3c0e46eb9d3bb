"""GPU micro-bench: the VAE decoder's 3×3×3 convs as 2-D convs over time taps, with the taps' weights
stacked on the output channels (one conv2d C -> k·C reads each input frame once and yields k taps'
partial outputs). cuDNN tiles a 96-channel output as 128 wide (25 % of the tile idle); 192 or 288 output
channels may tile better. Prints, per decoder level at 480p, ms for T output frames:

    taps2d   3 × conv2d C -> C over T frames (what `conv_impl="taps2d"` runs)
    2+1      conv2d C -> 2C over T+1 frames (taps 0 and 1) + conv2d C -> C over T frames (tap 2)
    3in      conv2d C -> 3C over the T new frames only (input-stationary: the partial outputs that
             reach into the next chunk are kept instead of the input frames)

    python3 scripts/vae_tap_merge.py            # the table above
    python3 scripts/vae_tap_merge.py --sweep    # one tap's conv2d by frames per call: µs per frame with
                                                # cuDNN's heuristic choice and with benchmark mode
    python3 scripts/vae_tap_merge.py --stacked  # the three taps' input frames stacked on the channels: one
                                                # conv2d 3C -> C (K = 27·C, no partials) vs three C -> C
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from triton.testing import do_bench


def _conv(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return F.conv2d(x, w, None, padding=1)


def sweep() -> None:
    """The 480p decode profile showed a 96-channel 3×3 conv2d over 8 frames taking as long as over 16."""
    cl = torch.channels_last
    dev, dt = "cuda", torch.bfloat16
    for c, h, w in ((96, 480, 832), (192, 240, 416), (384, 120, 208)):
        wt = (torch.randn(c, c, 3, 3, device=dev, dtype=dt) * 0.02).contiguous(memory_format=cl)
        row = []
        for n in (1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 20):
            x = torch.randn(n, c, h, w, device=dev, dtype=dt).contiguous(memory_format=cl)
            per = []
            for bench in (False, True):
                torch.backends.cudnn.benchmark = bench
                per.append(do_bench(partial(_conv, x, wt), return_mode="median") * 1e3 / n)
            torch.backends.cudnn.benchmark = False
            row.append(f"{n}: {per[0]:.0f}/{per[1]:.0f}")
            del x
        print(f"C={c} {h}x{w} us per frame (heuristic/benchmark): " + "  ".join(row), flush=True)  # noqa: T201


def stacked() -> None:
    """One conv2d over [T, 3C, H, W] (frames t, t+1, t+2 on the channels) against taps2d's three convs."""
    cl = torch.channels_last
    dev, dt = "cuda", torch.bfloat16
    for c, h, w in ((96, 480, 832), (192, 240, 416), (384, 120, 208)):
        for t in (4, 16):
            x = torch.randn(t + 2, c, h, w, device=dev, dtype=dt).contiguous(memory_format=cl)
            xs = torch.randn(t, 3 * c, h, w, device=dev, dtype=dt).contiguous(memory_format=cl)
            w1 = (torch.randn(c, c, 3, 3, device=dev, dtype=dt) * 0.02).contiguous(memory_format=cl)
            w3 = (torch.randn(c, 3 * c, 3, 3, device=dev, dtype=dt) * 0.02).contiguous(memory_format=cl)
            taps = 3 * do_bench(partial(_conv, x[:t], w1), return_mode="median")
            one = do_bench(partial(_conv, xs, w3), return_mode="median")
            flops = 3 * 2 * t * h * w * c * c * 9
            line = (f"C={c} {h}x{w} T={t}: taps2d {taps:.3f} ms ({flops / taps / 1e9:.0f} TF/s)  stacked {one:.3f} ms "
                    f"({flops / one / 1e9:.0f} TF/s, {taps / one:.2f}x)")
            print(line, flush=True)  # noqa: T201 - the bench's output
            del x, xs


def main() -> None:
    import sys

    if "--stacked" in sys.argv:
        stacked()
        return
    if "--sweep" in sys.argv:
        sweep()
        return
    torch.backends.cudnn.benchmark = False
    cl = torch.channels_last
    dev, dt = "cuda", torch.bfloat16
    for c, h, w in ((96, 480, 832), (192, 240, 416), (384, 120, 208)):
        for t in (4, 16):
            x = torch.randn(t + 2, c, h, w, device=dev, dtype=dt).contiguous(memory_format=cl)
            ws = {k: (torch.randn(k * c, c, 3, 3, device=dev, dtype=dt) * 0.02).contiguous(memory_format=cl)
                  for k in (1, 2, 3)}  # fmt: skip
            one = do_bench(partial(_conv, x[:t], ws[1]), return_mode="median")
            two = do_bench(partial(_conv, x[: t + 1], ws[2]), return_mode="median")
            three = do_bench(partial(_conv, x[:t], ws[3]), return_mode="median")
            flops = 3 * 2 * t * h * w * c * c * 9
            base = 3 * one
            row = {"taps2d": base, "2+1": two + one, "3in": three}
            text = "  ".join(f"{k} {v:.3f} ms ({flops / v / 1e9:.0f} TF/s, {base / v:.2f}x)" for k, v in row.items())
            print(f"C={c} {h}x{w} T={t}: {text}", flush=True)  # noqa: T201 - the bench's output
            del x, ws


if __name__ == "__main__":
    main()
