"""Where does the device idle during one whole `generate` (the 1.3B 480p job's text encode, denoise and
decode) and what is the host doing then? (kernels/NOTES_vae.md, session 26: the worker's generate took
~17-19 ms of wall time more than its stages' device time)

Loads the pipeline as `turbovid bench`'s in-process part does (its random weights folder), runs two
untimed generations with a streaming MP4 sink (the worker's way), then profiles a third with the
torch profiler (CPU, CUDA, Python stacks) and prints the device's busy time, span and idle gaps, and
for the largest gaps the Python frames (ours) and CPU ops running on the host meanwhile.

    python3 -m cli.main bench --weights W --text-encoder small --skip-e2e --skip-stages   # builds W
    python3 scripts/generate_gaps.py --weights W
"""

# ruff: noqa: T201 - a measurement script: printing is its output
from __future__ import annotations

import argparse
import re
import tempfile
import uuid
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", default="", help="the random weights folder (none for the tiny models)")
    ap.add_argument("--model", default="wan2.1-t2v-1.3b")
    ap.add_argument("--size", default="832x480")
    ap.add_argument("--frames", type=int, default=81)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--gaps", type=int, default=15, help="largest gaps to show")
    ap.add_argument("--trace", default="", help="also write a Chrome trace here")
    ap.add_argument("--device", default="cuda", help="cpu: only checks that the script runs (no device events)")
    args = ap.parse_args()

    from cli.bench import _stream_sink_class
    from contract.catalog import get_card
    from contract.jobs import GenerationParams
    from contract.settings import WorkerSettings
    from models.pipeline import load_pipeline
    from worker.encode import pick_codec

    w, h = (int(v) for v in args.size.split("x"))
    tmp = Path(tempfile.mkdtemp())
    card = get_card(args.model)
    cuda = args.device.startswith("cuda")
    checkpoints = [args.weights] if args.weights else []
    pipe = load_pipeline(card.id, checkpoints, device=args.device, dtype=torch.bfloat16 if cuda else torch.float32,
                         cache_dir=tmp / "cache")
    ws = WorkerSettings()
    pipe.cuda_graphs = ws.cuda_graphs
    pipe.vae.conv_impl = ws.vae_conv
    sink_cls = _stream_sink_class()
    codec = pick_codec("auto")[0]

    def run(rep: int):  # noqa: ANN202
        params = GenerationParams(kind="t2v", width=w, height=h, num_frames=args.frames, num_steps=args.steps,
                                  seed=rep, prompt=f"gaps run {rep}: {uuid.uuid4().hex[:8]}")
        sink = sink_cls(tmp / f"gaps-{rep}.mp4", codec)
        sink.fps = params.fps
        result = pipe.generate(params, on_step=sink)
        sink.close(result)
        return result

    for rep in range(2):
        run(rep)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    sync()
    activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])]
    with profile(activities=activities, with_stack=True) as prof:
        result = run(2)
        sync()
    t = result.timings
    print(f"stages (device time): text {t.text_encode:.4f} denoise {t.denoise:.4f} decode {t.vae_decode:.4f}")
    if args.trace:
        prof.export_chrome_trace(args.trace)
    events = prof.profiler.kineto_results.events()
    dev = sorted((e.start_ns(), e.end_ns()) for e in events
                 if e.device_type() == torch.autograd.DeviceType.CUDA and e.duration_ns() > 0)  # fmt: skip
    host = [(e.start_ns(), e.end_ns(), e.name(), _is_python(e)) for e in events
            if e.device_type() == torch.autograd.DeviceType.CPU and e.duration_ns() > 0]  # fmt: skip
    analyze(dev, host, args.gaps)

def _is_python(event: object) -> bool:
    """A Python frame of the profile (with_stack): the event's own flag where this torch has it, else its
    name ("path.py(line): function")."""
    flag = getattr(event, "is_python_function", None)
    return bool(flag()) if callable(flag) else re.search(r"\.py\(\d+\)", event.name()) is not None  # type: ignore[attr-defined]


def analyze(dev: list[tuple[int, int]], host: list[tuple[int, int, str, bool]], n_gaps: int) -> None:
    """Print the device's busy time, span and idle gaps (dev: sorted (start, end) ns of device work), and
    for the n_gaps largest gaps our Python frames and the CPU ops that ran through most of each."""
    if not dev:
        print("no device events recorded")
        return
    t0 = dev[0][0]
    busy, gaps, end = 0, [], dev[0][0]
    for s, e in dev:
        if s > end:
            gaps.append((s - end, end, s))
        busy += max(0, e - max(s, end))
        end = max(end, e)
    span = end - t0
    print(f"device span {span / 1e6:.2f} ms, busy {busy / 1e6:.2f} ms, idle {(span - busy) / 1e6:.2f} ms in "
          f"{len(gaps)} gaps ({sum(1 for g in gaps if g[0] > 2e5)} over 0.2 ms, "
          f"{sum(g[0] for g in gaps if g[0] > 2e5) / 1e6:.2f} ms together)")
    first_host = min(s for s, _, _, _ in host)
    print(f"host work before the first device event: {(t0 - first_host) / 1e6:.2f} ms")
    for length, a, b in sorted(gaps, reverse=True)[: n_gaps]:
        over = []
        for s, e, name, py in host:
            o = min(e, b) - max(s, a)
            if o <= 0.5 * length:
                continue
            if py and not any(k in name for k in ("models/", "worker/", "cli/", "kernels/", "contract/")):
                continue
            over.append((e - s, name, py))
        over.sort()
        frames = [n for _, n, py in over if py][:4]
        ops = [f"{n} {d / 1e6:.2f}" for d, n, py in over if not py and d > 1e5][:4]
        print(f"  gap {length / 1e6:6.2f} ms at +{(a - t0) / 1e6:8.2f} ms | ours: {' < '.join(frames) or '-'} | "
              f"ops: {'; '.join(ops) or '-'}")



if __name__ == "__main__":
    main()
