"""Why is the VAE decode slower inside a whole generation than alone? (GPU; issue 8)

`turbovid bench` reports the 1.3B 480p job's vae_decode at 0.60–0.63 s, `scripts/decode_contention.py` the
same decode (`WanPipeline._decode_frames`, the worker's streamed encoder) at 0.58 s on its own. This loads the
real pipeline on the bench's random full-size weights and times, in one process:

  A. `generate` as the worker runs it (CUDA graphs, the worker's encoder sink): its vae_decode stage;
  B. `_decode_frames` alone right after, on the same pipeline and A's latents, with the same sink;

then profiles one of each (GPU busy share of the decode's kernel span, the largest idle gaps, and the
kernels whose total time differs most between A and B).

    python3 scripts/decode_in_pipeline.py --weights DIR [--reps 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cli.bench import build_weights  # noqa: E402
from contract.catalog import get_card  # noqa: E402
from contract.jobs import GenerationParams  # noqa: E402
from contract.settings import WorkerSettings  # noqa: E402
from models.pipeline import load_pipeline  # noqa: E402
from models.pipeline_types import Progress  # noqa: E402
from scripts.decode_contention import busy_and_gaps  # noqa: E402
from worker.task import _Frames  # noqa: E402


class _Sink(Progress):
    def __init__(self, frames: _Frames) -> None:
        self.frames = frames

    def on_frames(self, start: int, frames: Any) -> None:
        self.frames(start, frames)

    def close(self) -> None:
        if self.frames.encoder is not None:
            self.frames.encoder.close()


class _Keep:
    """Wraps `pipe._decode_frames` to keep the latents it was given (for B)."""

    def __init__(self, pipe: Any) -> None:
        self.pipe, self.inner, self.latents = pipe, pipe._decode_frames, None
        self.trace = False  # profile the next call (the decode inside a generate), into `self.prof`
        self.prof: Any = None
        self.windows: list[tuple[str, float, float]] = []  # (label, wall start, wall end) of each decode
        self.label = "A decode"

    def __call__(self, latents: torch.Tensor, num_frames: int, progress: Any) -> Any:
        self.latents = latents.clone()
        if not self.trace:
            t0 = time.time()
            out = self.inner(latents, num_frames, progress)
            self.windows.append((self.label, t0, time.time()))
            return out
        from torch.profiler import ProfilerActivity, profile

        self.trace = False
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            out = self.inner(latents, num_frames, progress)
            if torch.cuda.is_available():
                torch.cuda.synchronize()
        self.prof = prof
        return out


def _kernels(prof: Any) -> tuple[dict[str, float], float, float, list[tuple[float, float]]]:
    """Per-kernel-name CUDA µs of a trace, and its (busy, span, gaps) (`busy_and_gaps`)."""
    events = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA
              and e.time_range.end > e.time_range.start]
    events.sort(key=lambda e: e.time_range.start)
    by_name: dict[str, float] = defaultdict(float)
    spans = [(e.time_range.start, e.time_range.end) for e in events]
    for e in events:
        by_name[e.name[:90]] += e.time_range.end - e.time_range.start
    if not spans:  # a CPU run
        return by_name, 0.0, 1.0, []
    return (by_name, *busy_and_gaps(spans))


class _Clocks:
    """`nvidia-smi` sampling the SM clock, power and throttle reasons every 20 ms in the background."""

    FIELDS = "timestamp,clocks.sm,clocks.mem,power.draw,temperature.gpu,clocks_throttle_reasons.active"

    def __init__(self) -> None:
        import subprocess

        try:
            self.proc: Any = subprocess.Popen(["nvidia-smi", f"--query-gpu={self.FIELDS}", "--format=csv,noheader,nounits",
                                               "-lms", "20"], stdout=subprocess.PIPE, text=True)
        except OSError:
            self.proc = None

    def report(self, windows: list[tuple[str, float, float]]) -> None:
        if self.proc is None:
            print("nvidia-smi: not available")
            return
        from datetime import datetime

        self.proc.terminate()
        out = self.proc.communicate()[0]
        samples = []
        for line in out.splitlines():
            parts = [p.strip() for p in line.split(",")]
            try:
                t = datetime.strptime(parts[0], "%Y/%m/%d %H:%M:%S.%f").timestamp()
                samples.append((t, float(parts[1]), float(parts[2]), float(parts[3]), float(parts[4]), parts[5]))
            except (ValueError, IndexError):
                continue
        by_label: dict[str, list[tuple[float, ...]]] = defaultdict(list)
        reasons: dict[str, set[str]] = defaultdict(set)
        for label, t0, t1 in windows:
            for smp in samples:
                if t0 <= smp[0] <= t1:
                    by_label[label].append(smp[1:5])
                    reasons[label].add(str(smp[5]))
        print(f"nvidia-smi every 20 ms ({len(samples)} samples): median SM MHz / mem MHz / W / C, throttle reasons")
        for label, rows in by_label.items():
            cols = list(zip(*rows, strict=True))
            print(f"  {label:16} n={len(rows):3}  SM {statistics.median(cols[0]):6.0f} (min {min(cols[0]):5.0f})  "
                  f"mem {statistics.median(cols[1]):5.0f}  power {statistics.median(cols[2]):5.0f} W (max "
                  f"{max(cols[2]):4.0f})  temp {statistics.median(cols[3]):3.0f} C  reasons {sorted(reasons[label])}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", type=Path, required=True)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--model", default="wan2.1-t2v-1.3b", help="wan-tiny: a CPU smoke run")
    ap.add_argument("--size", default="832x480")
    ap.add_argument("--frames", type=int, default=81)
    args = ap.parse_args()
    card = get_card(args.model)
    width, height = (int(v) for v in args.size.split("x"))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    build_weights(card, args.weights, device=device, text_encoder="small")
    tmp = Path(tempfile.mkdtemp())
    w = WorkerSettings(model=card.id, cache_dir=tmp / "cache")  # the model picks the shipped kernel list
    kernels = None
    if device == "cuda":  # as a worker starts: the shipped autotune choices, the shipped kernel list compiled
        from worker.warmup import start_kernels

        kernels = start_kernels(w, record=False)
    pipe = load_pipeline(card.id, [args.weights], device=device,
                         dtype=torch.bfloat16 if device == "cuda" else torch.float32, cache_dir=tmp / "cache")
    if kernels is not None and kernels.precompile is not None:
        print(f"precompile: {kernels.precompile.wait().describe()}", flush=True)
    pipe.cuda_graphs, pipe.vae.conv_impl = w.cuda_graphs, w.vae_conv
    keep = _Keep(pipe)
    pipe._decode_frames = keep  # type: ignore[method-assign]
    params = GenerationParams(kind="t2v", width=width, height=height, num_frames=args.frames, prompt="a cat", seed=1,
                              num_steps=4)

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def sink() -> _Sink:
        return _Sink(_Frames(tmp / "v.mp4", fps=16, num_frames=args.frames, codec="libx264", threads=w.encoder_threads,
                             thread_type=w.encoder_thread_type))

    def run_a() -> float:
        s = sink()
        t0 = time.time()
        result = pipe.generate(params, on_step=s)
        keep.windows.append(("A text+denoise", t0, keep.windows[-1][1]))
        s.close()
        return result.timings.vae_decode

    def run_b() -> float:
        s = sink()
        sync()
        t0 = time.perf_counter()
        w0 = time.time()
        keep.inner(keep.latents, args.frames, s)
        t1 = time.perf_counter()
        keep.windows.append(("B decode alone", w0, time.time()))
        s.close()
        return t1 - t0

    for _ in range(2):  # warm: graphs captured, kernels compiled and tuned
        run_a()
        run_b()
    smi = _Clocks()
    keep.windows.clear()
    a, b = [], []
    for _ in range(args.reps):
        a.append(run_a())
        time.sleep(0.5)  # B starts on a rested GPU, as in scripts/decode_contention.py
        b.append(run_b())
        time.sleep(0.5)
    smi.report(keep.windows)
    print(f"A vae_decode inside generate: median {statistics.median(a):.3f} s ({' '.join(f'{x:.3f}' for x in a)})")
    print(f"B _decode_frames alone:       median {statistics.median(b):.3f} s ({' '.join(f'{x:.3f}' for x in b)})")

    results = {}
    for name, fn in (("A", run_a), ("B", run_b)):
        keep.trace = True
        if name == "B":  # B calls the inner decode itself: trace it through the wrapper
            s = sink()
            sync()
            keep(keep.latents, args.frames, s)
            s.close()
        else:
            fn()
        results[name] = _kernels(keep.prof)
        by_name, busy, span, gaps = results[name]
        top = sorted(gaps, reverse=True)[:6]
        print(f"profile {name}: kernels span {span / 1e3:.1f} ms, busy {busy / 1e3:.1f} ms ({100 * busy / span:.1f} %), "
              f"gaps > 0.2 ms totalling {sum(g for g, _ in gaps if g > 200) / 1e3:.1f} ms; largest: "
              + ", ".join(f"{g / 1e3:.2f}@{t / 1e3:.0f}" for g, t in top), flush=True)
    a_k, b_k = results["A"][0], results["B"][0]
    diff = sorted(((a_k.get(k, 0.0) - b_k.get(k, 0.0), k) for k in set(a_k) | set(b_k)), reverse=True)
    print("kernels with the most extra time in A (ms A / B):")
    for d, k in diff[:12]:
        print(f"  {d / 1e3:+8.2f}  {a_k.get(k, 0.0) / 1e3:8.2f} / {b_k.get(k, 0.0) / 1e3:8.2f}  {k}")


if __name__ == "__main__":
    main()
