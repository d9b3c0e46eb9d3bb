"""Wan DiT per-NFE time and peak memory at real sizes (random weights, CUDA), plus GPU correctness checks.

    python -m models.bench_dit                 # checks, then 1.3B @ 480p/81f and 14B @ 720p/81f
    python -m models.bench_dit --sizes 1.3b    # one size; --budget-s stops starting new variants
    python -m models.bench_dit --sizes tiny    # CPU smoke test of the script itself

One NFE = one forward of the transformer: 1.3B on latents [1, 16, 21, 60, 104] (832×480, 81 frames,
32 760 tokens), 14B on [1, 16, 21, 90, 160] (1280×720, 81 frames, 75 600 tokens), text context
[1, 512, 4096]. Variants: attention dense (SDPA) / sagesla (Triton, Top-K 10 %), linear native (cuBLAS
bf16) / w8a8 (Triton int8), and the norms/residuals either as plain PyTorch ("torch") or the fused Triton
kernels ("fused"). Baselines, measured in the same run (no diffusers on the GPU machine): the plain-PyTorch
dense bf16 path of this same model, and the "GEMM+SDPA floor" — the sum over layers of cuBLAS bf16 time
for every Linear at its real shape plus SDPA time for self- and cross-attention, i.e. what the forward
would cost if everything else were free.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from models.config import WanConfig
from models.cuda_graphs import ForwardGraphs
from models.dit import WanTransformer
from models.linear import convert_for_runtime, prepare_for_kernels
from models.ops import Ops

SIZES = {
    "tiny": ("wan-tiny", (1, 16, 3, 8, 8)),  # CPU smoke test of this script
    "1.3b": ("wan2.1-t2v-1.3b", (1, 16, 21, 60, 104)),
    "14b": ("wan2.1-t2v-14b", (1, 16, 21, 90, 160)),
}


def random_model(cfg: WanConfig, *, device: str, dtype: torch.dtype, attention: str = "dense",
                 linear: str = "native", kernels: bool = False, seed: int = 0) -> WanTransformer:
    """A WanTransformer with random weights made directly on `device` (no CPU copy); kernels: the Triton
    norm / gated-add / int8 GEMM path (what the loader picks on CUDA) instead of plain PyTorch."""
    with torch.device("meta"):
        model = WanTransformer(cfg, ops=Ops(attention, linear, kernels)).to_dtype(dtype)
    model = model.to_empty(device=device)
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.fill_(1.0)
            elif name.endswith("bias"):
                p.normal_(0.0, 0.02, generator=gen)
            elif "modulation" in name:
                p.normal_(0.0, 1.0 / math.sqrt(cfg.dim), generator=gen)
            elif "proj_l" in name:
                p.normal_(0.0, 0.05, generator=gen)
            else:  # Linear/Conv weights: unit-variance activations
                fan_in = p[0].numel()
                p.normal_(0.0, 1.0 / math.sqrt(fan_in), generator=gen)
    convert_for_runtime(model, linear)  # w8a8: quantizes the block Linears (block-128) on the device
    if kernels:
        prepare_for_kernels(model)  # the W8A8 GEMM's per-channel layout, once (as the loader does)
    return model.eval().requires_grad_(False)


def inputs(cfg: WanConfig, shape: tuple[int, ...], device: str, dtype: torch.dtype, seed: int = 1):
    gen = torch.Generator(device=device).manual_seed(seed)
    latents = torch.randn(shape, device=device, generator=gen)
    ctx = torch.randn(shape[0], cfg.text_len, cfg.text_dim, device=device, generator=gen).to(dtype)
    cond = torch.randn(shape[0], cfg.cond_dim, *shape[2:], device=device, generator=gen) if cfg.cond_dim else None
    return latents, torch.full((shape[0],), 500.0, device=device), ctx, cond


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return F.cosine_similarity(a.double().flatten(), b.double().flatten(), dim=0).item()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _median_s(fn, device: str, reps: int) -> float:  # noqa: ANN001
    """Median seconds of fn() over reps runs (CUDA events on GPU, wall clock on CPU)."""
    times = []
    for _ in range(reps):
        _sync(device)
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def time_forward(model: WanTransformer, args: tuple, reps: int, device: str) -> tuple[float, float]:
    """(median seconds per forward, peak GiB allocated during a forward; 0 on CPU)."""
    with torch.no_grad():
        model(*args)  # warm-up: autotune, compile, cuDNN plans
        _sync(device)
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        sec = _median_s(lambda: model(*args), device, reps)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else 0.0
    return sec, peak


def gemm_sdpa_floor(cfg: WanConfig, tokens: int, dtype: torch.dtype, device: str) -> float:
    """Seconds per forward if only the block Linears (cuBLAS) and attention (SDPA) cost anything."""
    dev = device
    x = torch.randn(tokens, cfg.dim, device=dev, dtype=dtype)
    t = torch.randn(cfg.text_len, cfg.dim, device=dev, dtype=dtype)
    w = torch.randn(cfg.dim, cfg.dim, device=dev, dtype=dtype) / cfg.dim**0.5
    w1 = torch.randn(cfg.ffn_dim, cfg.dim, device=dev, dtype=dtype) / cfg.dim**0.5
    w2 = torch.randn(cfg.dim, cfg.ffn_dim, device=dev, dtype=dtype) / cfg.ffn_dim**0.5
    h = torch.randn(tokens, cfg.ffn_dim, device=dev, dtype=dtype)
    q = torch.randn(1, cfg.num_heads, tokens, cfg.head_dim, device=dev, dtype=dtype)
    kt = torch.randn(1, cfg.num_heads, cfg.text_len, cfg.head_dim, device=dev, dtype=dtype)

    def timed(fn) -> float:  # noqa: ANN001
        fn()
        return _median_s(fn, device, 10)

    sec = (
        6 * timed(lambda: F.linear(x, w))  # self q,k,v,o + cross q,o
        + 2 * timed(lambda: F.linear(t, w))  # cross k,v on the text
        + timed(lambda: F.linear(x, w1))
        + timed(lambda: F.linear(h, w2))
        + timed(lambda: F.scaled_dot_product_attention(q, q, q))
        + timed(lambda: F.scaled_dot_product_attention(q, kt, kt))
    )
    return sec * cfg.num_layers


def checks(device: str) -> list[dict]:
    """Small real-head-dim model: each fast path against an fp32 PyTorch reference on the same weights."""
    cfg = WanConfig(dim=512, num_layers=2, num_heads=4, ffn_dim=1024, text_dim=256, sla_topk=1.0)
    shape = (1, 16, 5, 32, 32)  # 1280 tokens: 10 query blocks of 128, 20 key blocks of 64
    rows = []
    ref_model = random_model(cfg, device=device, dtype=torch.float32, attention="sla", seed=3)
    sd = ref_model.state_dict()
    latents, t, ctx, _ = inputs(cfg, shape, device, torch.float32)

    def load(dtype, attention, linear="native", topk=1.0, zero_proj=False, kernels=False):
        with torch.device("meta"):
            m = WanTransformer(cfg.with_(sla_topk=topk), ops=Ops(attention, linear, kernels))
        weights = {k: v.clone() for k, v in sd.items() if attention != "dense" or "proj_l" not in k}
        if zero_proj:
            weights = {k: (v.zero_() if "proj_l" in k else v) for k, v in weights.items()}
        m.load_state_dict(weights, assign=True)
        m.to_dtype(dtype)
        convert_for_runtime(m, linear)
        if kernels:
            prepare_for_kernels(m)
        return m.eval()

    with torch.no_grad():
        dense_ref = load(torch.float32, "dense")(latents, t, ctx)
        sla_ref = load(torch.float32, "sla", topk=0.1)(latents, t, ctx)
        variants = [("dense bf16 torch", torch.bfloat16, "dense", "native", 1.0, False, False, dense_ref)]
        variants += [("dense bf16 fused", torch.bfloat16, "dense", "native", 1.0, False, True, dense_ref)]
        variants += [("w8a8 bf16 fused", torch.bfloat16, "dense", "w8a8", 1.0, False, True, dense_ref)]
        if device == "cuda":
            variants += [("sagesla topk=1 proj_l=0", torch.bfloat16, "sagesla", "native", 1.0, True, True, dense_ref)]
            variants += [("sagesla topk=.1 vs sla fp32", torch.bfloat16, "sagesla", "native", 0.1, False, True, sla_ref)]
        for name, dtype, attention, linear, topk, zero, fused, ref in variants:
            try:
                out = load(dtype, attention, linear, topk, zero, fused and device == "cuda")(latents, t, ctx.to(dtype))
                rows.append({"check": name, "cos": _cos(out, ref), "rel_err": _rel(out, ref),
                             "finite": bool(torch.isfinite(out).all())})
            except Exception as exc:  # noqa: BLE001 - report and go on to the next check
                rows.append({"check": name, "error": f"{type(exc).__name__}: {exc}"[:300]})
    return rows


VARIANTS = [("dense", "native", True), ("dense", "native", False), ("dense", "w8a8", True),
            ("sagesla", "native", True), ("sagesla", "w8a8", True)]


def profile_forward(model: WanTransformer, args: tuple, path: Path, device: str) -> None:
    """One forward under torch.profiler; the kernels' table (top 40 by device time) written to `path`."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with torch.inference_mode(), profile(activities=activities) as prof:
        model(*args)
        _sync(device)
    key = "self_cuda_time_total" if device == "cuda" else "self_cpu_time_total"
    path.write_text(prof.key_averages().table(sort_by=key, row_limit=40, max_name_column_width=70))


def bench(sizes: list[str], reps: int, budget_s: float, out: Path | None, device: str = "cuda",
          variants: list[tuple[str, str, bool | str]] | None = None, profile_dir: Path | None = None,
          graphs: bool = False, floor: bool = True, ab_env: list[tuple[str, list[str]]] | None = None) -> list[dict]:
    """variants: (attention, linear, norms) with norms True / "fused" (the Triton norm kernels), False /
    "torch" (plain PyTorch), or "split" (the kernels, with each residual add in a pass of its own instead
    of inside the next norm's: `Ops.fuse_residual_norms` off). floor False: no GEMM+SDPA floor row.
    ab_env [(variable, values)]: each variant's same weights timed with each variable at each of its values in
    turn, twice round (`ab_rows`), one variable after the other, instead of once as they are: kernel switches'
    A/Bs within one process (the weights are built once)."""
    started = time.time()
    rows: list[dict] = []
    dtype = torch.bfloat16
    for size in sizes:
        preset, shape = SIZES[size]
        cfg = WanConfig.from_name(preset)
        tokens = math.prod(shape[2:]) // math.prod(cfg.patch)
        floor_s = gemm_sdpa_floor(cfg, tokens, dtype, device) if floor else math.nan
        if floor:
            rows.append({"size": size, "variant": "GEMM+SDPA floor (cuBLAS bf16 + SDPA)", "s_per_nfe": floor_s})
            print(json.dumps(rows[-1]), flush=True)
        for attention, linear, norms in variants or VARIANTS:
            mode = ("fused" if norms else "torch") if isinstance(norms, bool) else norms
            fused = mode != "torch"
            name = f"{attention}/{linear}/{mode}"
            if time.time() - started > budget_s:
                rows.append({"size": size, "variant": name, "skipped": "time budget"})
                continue
            model = args = None
            try:
                if device == "cuda":
                    torch.cuda.empty_cache()
                model = random_model(cfg, device=device, dtype=dtype, attention=attention, linear=linear,
                                     kernels=fused and device == "cuda")
                if mode == "split":
                    model.ops = dataclasses.replace(model.ops, fuse_residual_norms=False)
                weights_gib = torch.cuda.memory_allocated() / 2**30 if device == "cuda" else 0.0
                args = inputs(cfg, shape, device, dtype)
                if ab_env:
                    for spec in ab_env:
                        rows.extend(ab_rows(model, args, reps, device, name, size, spec, graphs))
                    continue
                sec, peak = time_forward(model, args, reps, device)
                rows.append({"size": size, "variant": name, "s_per_nfe": sec, "peak_gib": peak,
                             "weights_gib": weights_gib, "vs_floor": sec / floor_s})
                if graphs and device == "cuda":  # the same forward replayed as a CUDA graph
                    print(json.dumps(rows[-1]), flush=True)
                    graphed = ForwardGraphs(model)
                    g_sec, g_peak = time_forward(graphed, args, reps, device)  # type: ignore[arg-type]
                    with torch.no_grad():
                        same = torch.equal(graphed(*args), model(*args))
                    rows.append({"size": size, "variant": name + " +CUDA graph", "s_per_nfe": g_sec,
                                 "peak_gib": g_peak, "vs_eager": g_sec / sec, "equal_to_eager": same,
                                 "captured": len(graphed.captured)})
                if profile_dir is not None:
                    profile_dir.mkdir(parents=True, exist_ok=True)
                    profile_forward(model, args, profile_dir / f"profile_{size}_{name.replace('/', '-')}.txt", device)
            except Exception as exc:  # noqa: BLE001 - report and go on to the next variant
                rows.append({"size": size, "variant": name, "error": f"{type(exc).__name__}: {exc}"[:300]})
            finally:
                del model, args  # free the weights before the next variant, also after an error
            print(json.dumps(rows[-1]), flush=True)
            if out is not None:
                out.write_text("\n".join(json.dumps(r) for r in rows))
    return rows


def ab_rows(model: WanTransformer, args: tuple, reps: int, device: str, name: str, size: str,
            ab_env: tuple[str, list[str]], graphs: bool) -> list[dict]:
    """One model's forward timed with the environment variable at each value, in the order A, B, .., A, B, ..
    (two rounds, so a drift of the GPU's clock shows as a spread, not as a difference), each value's forward
    under a CUDA graph of its own with `graphs`; the variable is restored afterwards. The rows also say
    whether each value's output equals the first value's."""
    import os

    variable, values = ab_env
    before = os.environ.get(variable)
    rows: list[dict] = []
    first: torch.Tensor | None = None
    try:
        for round_ in (1, 2):
            for value in values:
                os.environ[variable] = value
                run = ForwardGraphs(model) if graphs else model
                sec, peak = time_forward(run, args, reps, device)  # type: ignore[arg-type]
                with torch.no_grad():
                    out = run(*args)
                first = out if first is None else first
                cos = F.cosine_similarity(out.double().flatten(), first.double().flatten(), dim=0).item()
                rows.append({"size": size, "variant": f"{name}{' +CUDA graph' if graphs else ''} {variable}={value}",
                             "round": round_, "s_per_nfe": sec, "peak_gib": peak, "cos_to_first": cos})
                print(json.dumps(rows[-1]), flush=True)
    finally:
        if before is None:
            os.environ.pop(variable, None)
        else:
            os.environ[variable] = before
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1.3b,14b")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--budget-s", type=float, default=300.0, help="start no new variant after this")
    parser.add_argument("--no-checks", action="store_true")
    parser.add_argument("--no-floor", action="store_true", help="skip the GEMM+SDPA floor (it takes 30 s at 14B)")
    parser.add_argument("--ab-env", action="append", default=[], metavar="VAR=A,B",
                        help="time each variant with the environment variable VAR at A, then B, .., twice round, "
                             "on the same weights (e.g. TURBOVID_WORKER__QUANT_KERNEL=triton,auto); repeatable")
    parser.add_argument("--out", type=Path, default=None, help="write JSON lines here")
    parser.add_argument("--profile", type=Path, default=None,
                        help="folder: one torch.profiler kernel table per variant (one forward, after timing)")
    parser.add_argument("--graphs", action="store_true",
                        help="also time each variant replayed as a CUDA graph (models.cuda_graphs)")
    parser.add_argument("--variants", default=None,
                        help="comma-separated attention/linear/fused|torch|split, e.g. "
                        "dense/native/torch,sagesla/w8a8/fused (split: the kernels without the residual adds "
                        "folded into the norms)")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"device: {torch.cuda.get_device_name() if device == 'cuda' else 'cpu'}, torch {torch.__version__}")

    check_rows = [] if args.no_checks else checks(device)
    for r in check_rows:
        print(json.dumps(r), flush=True)
    variants = None
    if args.variants:
        variants = [(a, lin, f) for a, lin, f in (v.split("/") for v in args.variants.split(","))]
        if any(f not in ("fused", "torch", "split") for _, _, f in variants):
            parser.error("--variants: the third part is fused, torch or split")
    ab_env = []
    for spec in args.ab_env:
        var, _, vals = spec.partition("=")
        if not var or not vals:
            parser.error("--ab-env: VAR=A,B")
        ab_env.append((var, vals.split(",")))
    rows = bench(args.sizes.split(","), args.reps, args.budget_s, args.out, device, variants, args.profile, args.graphs,
                 floor=not args.no_floor, ab_env=ab_env)

    print("\n== checks (vs fp32 PyTorch reference on the same weights) ==")
    for r in check_rows:
        if "error" in r:
            print(f"{r['check']:<30} ERROR {r['error']}")
        else:
            print(f"{r['check']:<30} cos {r['cos']:.6f}  rel_err {r['rel_err']:.2e}  finite {r['finite']}")
    print("\n== per-NFE forward, bf16, batch 1 ==")
    print(f"{'size':<5} {'variant':<38} {'s/NFE':>8} {'peak GiB':>9} {'weights':>8} {'vs floor':>8}")
    for r in rows:
        if "s_per_nfe" not in r:
            print(f"{r['size']:<5} {r['variant']:<38} {r.get('skipped') or r.get('error')}")
            continue
        peak = f"{r['peak_gib']:.1f}" if "peak_gib" in r else ""
        weights = f"{r['weights_gib']:.1f}" if "weights_gib" in r else ""
        ratio = f"{r['vs_floor']:.2f}x" if "vs_floor" in r else ""
        print(f"{r['size']:<5} {r['variant']:<38} {r['s_per_nfe']:>8.3f} {peak:>9} {weights:>8} {ratio:>8}")


if __name__ == "__main__":
    main()
