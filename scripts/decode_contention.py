"""Does the streamed MP4 encoder slow the VAE decode down? (GPU; issue 8)

`turbovid bench` measured the worker's 480p vae_decode at 0.62 s where `models.bench_vae` decodes the same
latents in 0.59 s. The worker's decode (`WanPipeline._decode_frames`) differs in two ways: each chunk is
turned into uint8 RGB and copied to pinned host memory, and its frames go to x264 (`worker.encode.Mp4Stream`)
on other threads while the next chunk decodes. This times `_decode_frames` on random full-size weights with
no consumer and with the encoder in each threading mode, in one process, same latents:

    python3 scripts/decode_contention.py [--size 832x480] [--repeats 3]

Prints, per consumer, the median decode seconds (start → last chunk handed over) and the encode tail.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.pipeline import WanPipeline  # noqa: E402
from models.pipeline_types import Progress  # noqa: E402
from models.vae import VAEConfig, WanVAE  # noqa: E402
from worker.encode import Mp4Stream  # noqa: E402
from worker.task import _Frames  # noqa: E402


class _Sink(Progress):
    def __init__(self, stream: Mp4Stream | _Frames | None) -> None:
        self.stream = stream

    def on_frames(self, start: int, frames: np.ndarray) -> None:
        if isinstance(self.stream, _Frames):  # the worker's: opens its Mp4Stream at the first chunk
            self.stream(start, frames)
        elif self.stream is not None:
            self.stream.write(frames)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="832x480")
    ap.add_argument("--frames", type=int, default=81)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--profile", default="", help="comma-separated rows to profile once more (GPU busy share, "
                    "largest idle gaps)")
    ap.add_argument("--preset", default="wan2.1", choices=["wan2.1", "tiny"], help="tiny: a CPU smoke run")
    args = ap.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    cuda = torch.cuda.is_available()
    device, dtype = torch.device("cuda" if cuda else "cpu"), torch.bfloat16 if cuda else torch.float32
    cfg = VAEConfig.from_name(args.preset)
    torch.manual_seed(0)
    vae = WanVAE(cfg).eval().requires_grad_(False).to(device, dtype)
    host = types.SimpleNamespace(vae=vae, device=device, dtype=dtype, _decode_chunks=vae.decode_iter)
    t_lat = (args.frames - 1) // cfg.temporal_factor + 1
    latents = torch.randn(1, cfg.z_dim, t_lat, height // cfg.spatial_factor, width // cfg.spatial_factor, device=device, dtype=dtype)
    folder = Path(tempfile.mkdtemp())
    frame8: dict[str, object] = {"threads": 8, "thread_type": "frame"}
    # (row, encoder options or None, what runs just before each decode)
    consumers: list[tuple[str, dict[str, object] | None, str]] = [
        ("none", None, ""), ("x264 frame 8", frame8, ""),
        ("x264 slice 8", {"threads": 8, "thread_type": "slice"}, ""), ("x264 frame 4", {"threads": 4, "thread_type": "frame"}, ""),
        ("none again", None, ""), ("x264 f8, empty_cache", frame8, "empty_cache"),
        ("x264 f8, after burn", frame8, "burn"), ("x264 f8, burn+0.3s", frame8, "burn+sleep"),
        ("worker sink (lazy open)", {"worker": True}, ""), ("x264 f8 + thumbnail", {**frame8, "thumbnail_index": 40}, "")]
    burn_a = torch.randint(-100, 100, (16384, 8192), dtype=torch.int8, device=device) if cuda else None
    burn_b = torch.randint(-100, 100, (8192, 8192), dtype=torch.int8, device=device) if cuda else None

    def before(what: str) -> None:
        """empty_cache: the allocator's cached blocks released (the decode mallocs again); burn: ~0.65 s of
        int8 GEMMs first (the DiT's load right before a job's decode: clocks, power, caches)."""
        if what == "empty_cache" and cuda:
            torch.cuda.empty_cache()
        if what.startswith("burn") and burn_a is not None and burn_b is not None:
            t = time.perf_counter()
            while time.perf_counter() - t < 0.65:
                for _ in range(8):
                    torch._int_mm(burn_a, burn_b)
                sync()
            if what.endswith("sleep"):
                time.sleep(0.3)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    print(f"{torch.cuda.get_device_name() if cuda else 'cpu'}, torch {torch.__version__}; {width}x{height} {args.frames} frames", flush=True)
    print(f"{'consumer':24} {'decode s':>9} {'tail s':>8}  runs", flush=True)
    with torch.inference_mode():
        WanPipeline._decode_frames(host, latents, args.frames, _Sink(None))  # type: ignore[arg-type]  # warm
        sync()
        for name, opts, pre in consumers:
            decodes, tails = [], []
            for rep in range(args.repeats + 1):
                stream: Mp4Stream | _Frames | None = None
                if opts is not None and opts.get("worker"):
                    stream = _Frames(folder / f"{rep}.mp4", fps=16, num_frames=args.frames, codec="libx264", threads=8)
                elif opts is not None:
                    stream = Mp4Stream(folder / f"{rep}.mp4", width=width, height=height, fps=16, **opts)  # type: ignore[arg-type]
                sync()
                before(pre)
                t0 = time.perf_counter()
                WanPipeline._decode_frames(host, latents, args.frames, _Sink(stream))  # type: ignore[arg-type]
                t1 = time.perf_counter()
                if isinstance(stream, _Frames):
                    assert stream.encoder is not None
                    stream.encoder.close()
                elif stream is not None:
                    stream.close()
                t2 = time.perf_counter()
                if rep:  # the first of each row is untimed
                    decodes.append(t1 - t0)
                    tails.append(t2 - t1)
            if name in args.profile.split(",") and cuda:
                _profile(name, lambda: WanPipeline._decode_frames(host, latents, args.frames, _Sink(  # type: ignore[arg-type]
                    _Frames(folder / "p.mp4", fps=16, num_frames=args.frames, codec="libx264", threads=8)
                    if opts is not None and opts.get("worker") else
                    None if opts is None else Mp4Stream(folder / "p.mp4", width=width, height=height, fps=16, **opts))))  # type: ignore[arg-type]
            print(f"{name:24} {statistics.median(decodes):9.3f} {statistics.median(tails):8.3f}  "
                  f"{' '.join(f'{d:.3f}' for d in decodes)}", flush=True)


def busy_and_gaps(spans: list[tuple[float, float]]) -> tuple[float, float, list[tuple[float, float]]]:
    """Of kernel (start, end) µs spans sorted by start: (µs with a kernel running, µs from the first start to
    the last end, [(idle µs, at µs from the first start)] for each gap between kernels)."""
    busy, gaps, cur_s, cur_e = 0.0, [], spans[0][0], spans[0][1]
    for s0, e0 in spans[1:]:
        if s0 > cur_e:
            busy += cur_e - cur_s
            gaps.append((s0 - cur_e, cur_e - spans[0][0]))
            cur_s = s0
        cur_e = max(cur_e, e0)
    busy += cur_e - cur_s
    return busy, cur_e - spans[0][0], gaps


def _profile(name: str, run: object) -> None:
    """One more run of a row under torch.profiler: how much of the decode's span the GPU was busy, and the
    largest gaps between kernels (ms from the first kernel)."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        run()  # type: ignore[operator]
        wall = time.perf_counter() - t0
    spans = sorted((e.time_range.start, e.time_range.end) for e in prof.events()
                   if e.device_type == torch.autograd.DeviceType.CUDA and e.time_range.end > e.time_range.start)
    if not spans:
        print(f"  profile {name}: no CUDA events")
        return
    busy, span, gaps = busy_and_gaps(spans)
    top = sorted(gaps, reverse=True)[:6]
    print(f"  profile {name}: wall {wall * 1e3:.1f} ms, kernels span {span / 1e3:.1f} ms, GPU busy {busy / 1e3:.1f} ms "
          f"({100 * busy / span:.1f} %), gaps > 0.2 ms: {sum(1 for g, _ in gaps if g > 200)} totalling "
          f"{sum(g for g, _ in gaps if g > 200) / 1e3:.1f} ms; largest (ms at ms): "
          + ", ".join(f"{g / 1e3:.2f}@{at / 1e3:.0f}" for g, at in top), flush=True)


if __name__ == "__main__":
    main()
