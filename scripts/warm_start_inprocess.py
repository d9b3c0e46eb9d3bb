"""A fresh worker's start in process, without the gateway, Redis or a checkpoint on disk (the A14B's random
weights are built on the device in ~25 s instead of written and read): the worker's own kernel set-up (`worker.warmup.start_kernels`: the shipped list precompiling while the
pipeline builds), its warm-up at the served sizes, then two jobs. Prints one JSON line; `--out DIR` gets the
kernel list and autotune choices it recorded (to ship as worker/autotune/<GPU>.<model>.kernels.json).

    python3 scripts/warm_start_inprocess.py --out DIR                 # H200: wan2.2-i2v-a14b at 1280x720
    python3 scripts/warm_start_inprocess.py --no-precompile           # the same start without the lists
    python3 scripts/warm_start_inprocess.py --model wan-tiny-i2v --device cpu --steps 1   # CPU smoke (a test)

The pipeline is `models.bench_a14b.build_pipeline`'s (random weights made on the device, no disk), so "load"
here is that build, not a checkpoint read: compare the warm-up and the jobs, not the load, with a real
worker's log.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="wan2.2-i2v-a14b")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--no-precompile", action="store_true", help="worker.precompile_kernels = false")
    p.add_argument("--device", default="cuda", help="cpu: a smoke run (no kernels to precompile there)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    import torch

    from cli.bench import copy_shippable
    from contract.settings import WorkerSettings
    from models.bench_a14b import _card, _runs, build_pipeline, input_image
    from worker import precompile, warmup

    card = _card(args.model)
    cache = Path(tempfile.mkdtemp(prefix="turbovid-warm-start-")) / "cache"  # a fresh host's cache dir
    settings = WorkerSettings(model=card.id, cache_dir=cache, precompile_kernels=not args.no_precompile)
    shipped = precompile.shipped_list(card.id)
    t0 = time.perf_counter()
    kernels = warmup.start_kernels(settings)
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    pipe = build_pipeline(card, device=args.device, dtype=dtype)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    built = time.perf_counter() - t0
    report = warmup.warm_up(pipe, settings, kernels)
    ready = time.perf_counter() - t0
    width, height = card.default_size
    image = input_image(width, height)
    jobs = []
    for i in range(args.jobs):
        params = _runs(width, height, card.default_frames, args.steps, seed=100 + i)[0]
        params = params.model_copy(update={"prompt": f"{params.prompt}, job {i}"})  # each job encodes its prompt
        t1 = time.perf_counter()
        result = pipe.generate(params, image=image)
        jobs.append({"s": round(time.perf_counter() - t1, 3),
                     "stages": {k: round(v, 3) for k, v in result.timings.as_dict().items()}})
    row = {"model": card.id, "size": f"{width}x{height}", "shipped_list": shipped.name if shipped.is_file() else None,
           "precompile": not args.no_precompile, "build_s": round(built, 1), "start_to_ready_s": round(ready, 1),
           "warmup_s": round(report.seconds, 1), "compiled_at_launch": report.compiled_at_launch,
           "precompiled": report.precompile.compiled if report.precompile else 0,
           "choices_loaded": report.choices_loaded, "choices_saved": report.choices_saved, "jobs": jobs,
           "first_over_second": round(jobs[0]["s"] / jobs[1]["s"], 3) if len(jobs) > 1 else None}
    print(json.dumps(row), flush=True)  # noqa: T201 - the result line
    if args.out is not None:
        copy_shippable(cache, args.out)


if __name__ == "__main__":
    main()
