"""`turbovid generate | convert | download | memory-plan`: the offline model commands.

Registered on the `turbovid` parser by cli/main.py through `add_model_commands(subparsers)`. These
are entry points: they read their arguments and pass plain values down. `generate` builds the same
`GenerationParams` a job carries and checks it against the loaded pipeline like a worker does, so an
option the pipeline would not honour is refused (exit 2, naming it) instead of ignored.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from contract.catalog import MODELS


def _user_errors(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Bad input (a checkpoint that does not fit, a wrong size, a missing file) is a one-line error
    and exit status 2, not a traceback."""

    @functools.wraps(fn)
    def run(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except (ValueError, OSError) as exc:  # CheckpointError is a ValueError
            print(f"turbovid {args.command}: error: {exc}", file=sys.stderr)
            return 2

    return run


def add_model_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    g = sub.add_parser("generate", help="generate one video offline (no service needed)",
                       description="Generate one video on this machine, without the service: load the model, "
                                   "run the sampler, write an MP4.",
                       epilog=_models_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    g.add_argument("--model", default="wan-tiny", choices=sorted(MODELS), metavar="ID",
                   help="model id, one of the table below (default: wan-tiny)")
    g.add_argument("--checkpoint", nargs="*", default=[], metavar="PATH",
                   help="checkpoint files/folders, or ROLE=PATH (transformer, high, low, text_encoder, tokenizer, vae);"
                        " none for wan-tiny (random tiny weights)")
    g.add_argument("--prompt", required=True, help="what the video shows")
    g.add_argument("--negative-prompt", default=None,
                   help="what it should not show (flow solver only: classifier-free guidance; refused with rCM)")
    g.add_argument("--image", type=Path, default=None,
                   help="conditioning image: image-to-video (the first frame); needs an I2V model or pipeline")
    g.add_argument("--out", type=Path, required=True, help="output .mp4 path")
    g.add_argument("--size", default=None, help="WIDTHxHEIGHT, e.g. 832x480 (default: the model's; with --image, "
                                                "the image's aspect at the model's area)")
    g.add_argument("--resolution", choices=["480p", "720p"], default=None,
                   help="a preset size instead of --size, with --aspect")
    g.add_argument("--aspect", choices=["16:9", "9:16", "1:1"], default="16:9",
                   help="aspect ratio of --resolution (default: 16:9)")
    g.add_argument("--frames", type=int, default=None,
                   help="number of frames, 4k+1 (e.g. 81 = 5 s at 16 fps; default: the model's)")
    g.add_argument("--fps", type=int, default=16, help="frame rate written to the MP4 (default: 16)")
    g.add_argument("--steps", type=int, default=None, help="sampling steps (default: the solver's: rCM 4, flow 50)")
    g.add_argument("--seed", type=int, default=0, help="random seed: the same seed and options give the same video")
    g.add_argument("--sigma-max", type=float, default=None,
                   help="rCM only: the starting noise level (default: the model's, T2V 80, I2V 200)")
    g.add_argument("--sampler", choices=["sde", "ode"], default=None,
                   help="rCM only: sde adds fresh noise each step, ode is deterministic (default: sde)")
    g.add_argument("--solver", choices=["rcm", "flow"], default=None,
                   help="rcm for TurboDiffusion checkpoints, flow (50 steps + CFG) for original Wan "
                        "(default: the model's)")
    g.add_argument("--guidance-scale", type=float, default=None,
                   help="flow solver only: classifier-free guidance strength (default: 5.0)")
    g.add_argument("--device", default=None, help="torch device, e.g. cuda:0 or cpu (default: cuda if available)")
    g.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], default=None,
                   help="compute dtype (default: bfloat16 on cuda, float32 on cpu)")
    g.add_argument("--attention", choices=["auto", "dense", "sla", "sagesla"], default="auto",
                   help="attention kernel: dense (SDPA), sla (sparse + linear), sagesla (sla with int8/fp8); "
                        "auto: from the checkpoint and the device")
    g.add_argument("--linear", choices=["auto", "native", "w8a8"], default="auto",
                   help="linear layers: native (bf16/fp32) or w8a8 (int8 weights and activations); "
                        "auto: w8a8 for int8 checkpoints, else native")
    g.add_argument("--sla-topk", type=float, default=None,
                   help="SLA attention only: fraction of key blocks each query block attends to, in (0, 1] "
                        "(default: the model's attention setting)")
    g.add_argument("--cache-dir", type=Path, default=None, help="where wan-tiny's random weights are built and kept")
    g.set_defaults(func=_user_errors(_generate))

    c = sub.add_parser("convert", help="convert a checkpoint to TurboVid's canonical safetensors + manifest")
    c.add_argument("src", type=Path)
    c.add_argument("dst", type=Path)
    c.add_argument("--component", choices=["transformer", "text_encoder", "vae"], default="transformer")
    c.add_argument("--quantize", choices=["w8a8"], default=None, help="quantize DiT linears (128x128 int8 blocks)")
    c.set_defaults(func=_user_errors(_convert))

    d = sub.add_parser("download", help="fetch a model's published checkpoints from the Hugging Face Hub")
    d.add_argument("model", choices=sorted(m for m, card in MODELS.items() if card.downloads))
    d.add_argument("--dir", type=Path, default=Path("checkpoints"))
    d.add_argument("--full-precision", action="store_true", help="the bf16 DiT instead of the -quant one")
    d.set_defaults(func=_user_errors(_download))

    m = sub.add_parser("memory-plan", help="what a worker would keep on the GPU and offload, without loading",
                       description="The memory plan a worker makes at start (worker/memory.py), from the checkpoint "
                                   "files' headers (or the catalog presets without --checkpoint): per component, "
                                   "what it offloads under the budget and the VAE's chunk budget. Exit status 1 "
                                   "when even the plan's offloads do not fit.")
    m.add_argument("--model", required=True, choices=sorted(MODELS), metavar="ID", help="model id")
    m.add_argument("--checkpoint", nargs="*", default=[], metavar="PATH",
                   help="checkpoint files/folders or ROLE=PATH, as the worker takes them (TURBOVID_WORKER__CHECKPOINT)")
    m.add_argument("--gpu-memory-gb", type=float, default=None,
                   help="the worker's budget in GiB (TURBOVID_WORKER__GPU_MEMORY_GB); default: the GPU's memory")
    m.add_argument("--device-memory-gb", type=float, default=None,
                   help="the GPU's memory in GiB (default: this machine's first GPU; e.g. 31.4 for an RTX 5090)")
    m.add_argument("--linear", choices=["auto", "native", "w8a8"], default="auto", help="TURBOVID_WORKER__LINEAR")
    m.add_argument("--solver", choices=["auto", "rcm", "flow"], default="auto", help="TURBOVID_WORKER__SOLVER")
    m.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], default="bfloat16", help="compute dtype")
    m.set_defaults(func=_user_errors(_memory_plan))


def _models_epilog() -> str:
    """The model table of `generate --help`: id, kind, sizes and the longest clip."""
    rows = ["models:"]
    for card in sorted(MODELS.values(), key=lambda c: c.id):
        default = f"{card.default_size[0]}x{card.default_size[1]}"
        kind = "image-to-video (--image)" if card.kind == "i2v" else "text-to-video"
        rows.append(f"  {card.id:<16} {kind}; sizes {', '.join(card.size_names)} (default {default}); "
                    f"up to {card.max_frames} frames ({card.max_seconds:g} s at 16 fps)")
    return "\n".join(rows)


def _parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise SystemExit(f"--size must look like 832x480, got {text!r}") from None
    return w, h


def _generate(args: argparse.Namespace) -> int:
    import numpy as np
    import torch
    from PIL import Image
    from tqdm import tqdm

    from contract.catalog import adaptive_size, get_card, preset_size
    from contract.jobs import GenerationParams
    from models.pipeline import load_pipeline
    from worker.encode import Mp4Stream

    card = get_card(args.model)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype_name = args.dtype or ("bfloat16" if device.startswith("cuda") else "float32")
    image = np.asarray(Image.open(args.image).convert("RGB")) if args.image else None
    kind: Literal["t2v", "i2v"] = "i2v" if image is not None else "t2v"
    if args.size:
        width, height = _parse_size(args.size)
    elif args.resolution:
        width, height = preset_size(args.resolution, args.aspect)
    else:
        width, height = card.default_size
    if image is not None and not args.size:
        width, height = adaptive_size(image.shape[1], image.shape[0], width * height)

    t0 = time.perf_counter()
    pipe = load_pipeline(
        args.model, args.checkpoint, device=device, dtype=getattr(torch, dtype_name),
        attention=args.attention, linear=args.linear, cache_dir=args.cache_dir, solver=args.solver,
    )
    load_s = time.perf_counter() - t0
    params = GenerationParams(
        kind=kind, width=width, height=height, num_frames=args.frames or card.default_frames, fps=args.fps,
        prompt=args.prompt, negative_prompt=args.negative_prompt, seed=args.seed, num_steps=args.steps,
        sampler=args.sampler, sigma_max=args.sigma_max, sla_topk=args.sla_topk, guidance_scale=args.guidance_scale,
    ).resolve(pipe.card, pipe.capabilities())  # ParamError (a ValueError): exit 2 naming the option
    out = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    progress = _bar_progress(tqdm(total=100, unit="%", file=sys.stderr, bar_format=_BAR_FORMAT),
                             Mp4Stream(out, width=width, height=height, fps=args.fps))
    try:
        result = pipe.generate(params, image=image, on_step=progress)
        t1 = time.perf_counter()
        progress.show("video_encode", 95)
        if progress.encoder.frames == 0:  # nothing streamed (not expected from WanPipeline)
            progress.encoder.write(result.frames)
        size = progress.encoder.close()
        encode_s = time.perf_counter() - t1
        progress.show(f"done in {time.perf_counter() - t0:.1f} s", 100)
    except BaseException:
        progress.encoder.abort()
        raise
    finally:
        progress.bar.close()
    total_s = time.perf_counter() - t0

    t = result.timings
    print(f"wrote {out} ({size} bytes): {result.frames.shape[0]} frames {width}x{height} @ {args.fps} fps, "
          f"seed {result.seed}")
    print("stage          seconds")
    rows = [("load", load_s), ("text_encode", t.text_encode), ("image_encode", t.image_encode)]
    rows += [(f"denoise[{i}]", s) for i, s in enumerate(t.denoise_steps)]
    rows += [("denoise", t.denoise), ("vae_decode", t.vae_decode), ("video_encode", encode_s), ("total", total_s)]
    for name, seconds in rows:
        print(f"{name:<14} {seconds:8.3f}")
    return 0


_BAR_FORMAT = "{desc:<24} {percentage:3.0f}%|{bar}| {elapsed}"


def _bar_progress(bar: Any, encoder: Any) -> Any:
    """The `generate` progress bar over every stage (the worker's bands: denoise 8-80 %, decode
    80-95 %, encode 95-100 %), a `Progress` that also streams the decoded chunks into the MP4 encoder.
    Built here because its base class is imported lazily with the model code."""
    from models.pipeline_types import Progress, StageEvent
    from worker.progress import percent

    class BarProgress(Progress):
        def __init__(self) -> None:
            self.bar, self.encoder = bar, encoder

        def on_stage(self, event: StageEvent) -> None:
            label = {"denoise": "denoise step", "vae_decode": "decode latent frame"}.get(event.stage, event.stage)
            self.show(f"{label} {event.done}/{event.total}" if event.total > 1 else label, percent(event))

        def on_frames(self, start: int, frames: Any) -> None:
            self.encoder.write(frames)

        def show(self, label: str, pct: int) -> None:
            self.bar.set_description_str(label, refresh=False)
            self.bar.n = max(self.bar.n, pct)
            self.bar.refresh()

    return BarProgress()


def _convert(args: argparse.Namespace) -> int:
    if args.component == "transformer":
        from models.convert import convert_checkpoint

        out = convert_checkpoint(args.src, args.dst, quantize=args.quantize)
    elif args.quantize:
        raise SystemExit("--quantize applies to the transformer only")
    elif args.component == "text_encoder":
        from models.text_encoder_loading import convert_text_encoder

        out = convert_text_encoder(args.src, args.dst)
    else:
        from models.vae_loading import load_vae, save_vae_canonical

        out = save_vae_canonical(load_vae(args.src), args.dst, source=str(args.src))
    print(f"wrote {out}")
    return 0


def _download(args: argparse.Namespace) -> int:
    from contract.catalog import get_card
    from models.hub import download

    card = get_card(args.model)
    checkpoints = download(card.id, card.downloads, args.dir, full_precision=args.full_precision)
    for folder in checkpoints:
        print(f"fetched {folder}")
    print(f"then: turbovid generate --model {card.id} --checkpoint {' '.join(checkpoints)} --prompt ... --out x.mp4")
    return 0


def _memory_plan(args: argparse.Namespace) -> int:
    from contract.catalog import get_card
    from worker.memory import GIB, checkpoint_gib, plan_memory

    card = get_card(args.model)
    dtype_bytes = 4 if args.dtype == "float32" else 2
    device_gib = args.device_memory_gb
    if device_gib is None:
        import torch

        if torch.cuda.is_available():
            device_gib = torch.cuda.get_device_properties(0).total_memory / GIB
    if args.gpu_memory_gb is not None and args.gpu_memory_gb <= 0:
        raise ValueError(f"--gpu-memory-gb must be positive, got {args.gpu_memory_gb}")
    weights = checkpoint_gib(card, args.checkpoint, linear=args.linear, dtype_bytes=dtype_bytes, solver=args.solver,
                             strict=True)
    plan = plan_memory(card, budget_gib=args.gpu_memory_gb, device_gib=device_gib, linear=args.linear,
                       dtype_bytes=dtype_bytes, weights=weights)
    print(f"{card.id}: linear {args.linear}, {args.dtype}, weights from the "
          f"{'checkpoint files' if weights is not None else 'catalog presets'}")
    for name, gib in plan.parts.items():
        print(f"  {name:<40} {gib:7.2f} GiB")
    print(plan.describe())
    if plan.vae_budget_gib is not None:
        print(f"VAE chunk budget: {plan.vae_budget_gib:.1f} GiB")
    if plan.budget_gib is None:
        print("(no GPU here and no --gpu-memory-gb / --device-memory-gb: nothing to plan against)")
        return 0
    return 0 if plan.need_gib <= plan.budget_gib else 1
