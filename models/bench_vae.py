"""Wan VAE encode/decode: our chunked implementation vs diffusers' AutoencoderKLWan, same random weights.

    python -m models.bench_vae --preset wan2.1 --frames 81 --height 480 --width 832 --dtype bf16
    python -m models.bench_vae --preset tiny --frames 9 --height 64 --width 64      # CPU smoke run

Prints seconds per call (median of --repeats after one warm-up) and, on CUDA, the peak allocated
memory of each call; the two outputs' cosine similarity shows both computed the same thing.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from models.vae import VAEConfig, WanVAE
from models.vae_loading import diffusers_to_wan

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _measure(fn: Callable[[], torch.Tensor], device: torch.device, repeats: int) -> tuple[float, float, torch.Tensor]:
    """(median seconds, peak GiB on CUDA else nan, last output)."""
    out = fn()  # warm-up
    times, peak = [], float("nan")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            peak = torch.cuda.max_memory_allocated(device) / 2**30
        times.append(time.perf_counter() - start)
    return statistics.median(times), peak, out


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.nn.functional.cosine_similarity(a.double().flatten(), b.double().flatten(), dim=0).item()


def bench() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="wan2.1", choices=["wan2.1", "tiny"])
    parser.add_argument("--frames", type=int, default=81)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=832)
    parser.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-encode", action="store_true")
    args = parser.parse_args()
    from diffusers import AutoencoderKLWan

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = DTYPES[args.dtype]
    cfg = VAEConfig.from_name(args.preset)
    torch.manual_seed(0)
    ref = AutoencoderKLWan(
        base_dim=cfg.base_dim,
        z_dim=cfg.z_dim,
        dim_mult=list(cfg.dim_mult),
        num_res_blocks=cfg.num_res_blocks,
        temperal_downsample=list(cfg.temporal_downsample),
    ).eval()
    ours = WanVAE(cfg).eval()
    ours.load_state_dict(diffusers_to_wan(ref.state_dict()))
    ref = ref.to(device, dtype).requires_grad_(False)
    ours = ours.to(device, dtype).requires_grad_(False)
    mean = torch.tensor(cfg.latents_mean, device=device).view(1, -1, 1, 1, 1)
    std = torch.tensor(cfg.latents_std, device=device).view(1, -1, 1, 1, 1)

    t_lat = (args.frames - 1) // cfg.temporal_factor + 1
    sf = cfg.spatial_factor
    latents = torch.randn(1, cfg.z_dim, t_lat, args.height // sf, args.width // sf, device=device)
    print(f"{args.preset} {args.dtype} on {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}: "
          f"{args.frames} frames {args.width}x{args.height}, latents {tuple(latents.shape)}")

    def ref_decode() -> torch.Tensor:
        with torch.no_grad():
            return ref.decode((latents * std + mean).to(dtype)).sample

    rows = [("decode", _measure(ref_decode, device, args.repeats),
             _measure(lambda: ours.decode(latents.to(dtype)), device, args.repeats))]
    if not args.skip_encode:
        video = torch.rand(1, 3, args.frames, args.height, args.width, device=device, dtype=dtype) * 2 - 1

        def ref_encode() -> torch.Tensor:
            with torch.no_grad():
                return (ref.encode(video).latent_dist.mean.float() - mean) / std

        rows.append(("encode", _measure(ref_encode, device, args.repeats),
                     _measure(lambda: ours.encode(video), device, args.repeats)))
    print(f"{'stage':8} {'diffusers s':>12} {'ours s':>8} {'speedup':>8} {'diffusers GiB':>14} {'ours GiB':>9} {'cos':>9}")
    for name, (t_ref, m_ref, o_ref), (t_ours, m_ours, o_ours) in rows:
        print(f"{name:8} {t_ref:12.3f} {t_ours:8.3f} {t_ref / t_ours:7.2f}x {m_ref:14.2f} {m_ours:9.2f} "
              f"{_cosine(o_ref, o_ours):9.6f}")


if __name__ == "__main__":
    bench()
