"""Wan VAE encode/decode: the fast path vs our eager path (and diffusers when installed), same weights.

    python -m models.bench_vae                               # 480p and 720p, 81 frames, bf16, on CUDA
    python -m models.bench_vae --sizes 832x480 --micro       # + conv3d layouts and the norm kernel
    python -m models.bench_vae --preset tiny --sizes 64x64 --frames 9 --no-reference   # CPU smoke run

Per stage and size: seconds per call (median of --repeats after one warm-up), the ratio to the eager
path ("old": fp32-normalising norms, contiguous NCDHW convs, one latent frame per chunk), the peak memory
the call allocated beyond what was allocated before it (output included), and the cosine similarity to
an fp32 decode/encode of the same weights (eager path, TF32 off). `--profile` writes the fast decode's
top CUDA kernels. Random full-size weights (default init): the timings are those of real weights.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from models.vae import CONV_IMPLS, RMSNorm, VAEConfig, WanVAE

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _measure(fn: Callable[[], torch.Tensor], device: torch.device, repeats: int) -> tuple[float, float, torch.Tensor]:
    """(median seconds, peak GiB allocated beyond the start on CUDA else nan, last output)."""
    out = fn()  # warm-up
    del out
    times, peak = [], float("nan")
    for i in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
        start = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            peak = (torch.cuda.max_memory_allocated(device) - base) / 2**30
        times.append(time.perf_counter() - start)
        if i < repeats - 1:
            del out
    return statistics.median(times), peak, out


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.nn.functional.cosine_similarity(a.double().flatten(), b.double().flatten(), dim=0).item()


def micro_convs(device: torch.device) -> None:
    """conv3d (3×3×3, causal: T+2 input frames) at the decoder's 480p shapes: NCDHW vs channels-last-3d,
    cuDNN heuristics vs benchmark mode, vs three conv2d over time taps summed (frames as the batch), vs
    one conv2d over the 3 taps stacked on the channels, vs C_out zero-padded to 16 (nan: not checked/wrong)."""
    import torch.nn.functional as F
    from triton.testing import do_bench

    cl3, cl2 = torch.channels_last_3d, torch.channels_last
    shapes = [  # (C_in, C_out, T_out, H, W)
        (96, 96, 8, 480, 832), (192, 192, 8, 240, 416), (192, 384, 4, 120, 208), (384, 384, 4, 120, 208),
        (384, 384, 21, 60, 104), (96, 3, 8, 480, 832),
    ]  # fmt: skip
    print(f"{'conv3d C_in->C_out T HxW':32} {'NCDHW ms':>9} {'CL ms':>8} {'CL+bm ms':>9} {'taps2d ms':>9} "
          f"{'taps+bm':>9} {'stack2d':>9} {'CL Cout16':>9} {'best TFLOP/s':>12}")  # fmt: skip
    for cin, cout, t, h, w in shapes:
        x = torch.randn(1, cin, t + 2, h, w, device=device, dtype=torch.bfloat16)
        wt = torch.randn(cout, cin, 3, 3, 3, device=device, dtype=torch.bfloat16) * 0.02
        b = torch.zeros(cout, device=device, dtype=torch.bfloat16)
        xc, wc = x.contiguous(memory_format=cl3), wt.contiguous(memory_format=cl3)
        w2 = [wt[:, :, k].contiguous(memory_format=cl2) for k in range(3)]
        frames = xc[0].transpose(0, 1)  # [T+2, C, H, W], channels-last view

        def taps(frames=frames, w2=w2, b=b, t=t):
            out = F.conv2d(frames[0:t], w2[0], b, padding=1)
            out += F.conv2d(frames[1 : t + 1], w2[1], None, padding=1)
            out += F.conv2d(frames[2 : t + 2], w2[2], None, padding=1)
            return out

        w3 = wt.transpose(1, 2).reshape(cout, 3 * cin, 3, 3).contiguous(memory_format=cl2)

        def stack(frames=frames, w3=w3, b=b, t=t):
            x3 = torch.cat([frames[0:t], frames[1 : t + 1], frames[2 : t + 2]], dim=1)
            return F.conv2d(x3, w3, b, padding=1)

        wp = F.pad(wc, (0, 0, 0, 0, 0, 0, 0, 0, 0, 16 - cout)).contiguous(memory_format=cl3) if cout < 16 else wc
        bp = F.pad(b, (0, 16 - cout)) if cout < 16 else b

        ref = F.conv3d(x.float(), wt.float(), b.float(), padding=(0, 1, 1))
        times = []
        for fn, bm in (
            (lambda x=x, wt=wt, b=b: F.conv3d(x, wt, b, padding=(0, 1, 1)), False),
            (lambda xc=xc, wc=wc, b=b: F.conv3d(xc, wc, b, padding=(0, 1, 1)), False),
            (lambda xc=xc, wc=wc, b=b: F.conv3d(xc, wc, b, padding=(0, 1, 1)), True),
            (taps, False),
            (taps, True),
            (stack, False),
            (lambda xc=xc, wp=wp, bp=bp, cout=cout: F.conv3d(xc, wp, bp, padding=(0, 1, 1))[:, :cout], False),
        ):
            torch.backends.cudnn.benchmark = bm
            out = fn()
            got = out if out.dim() == 5 else out.transpose(0, 1)[None]
            cos = _cosine(got.float(), ref)
            times.append(do_bench(fn, warmup=10, rep=100, return_mode="median") if cos > 0.999 else float("nan"))
        torch.backends.cudnn.benchmark = False
        flops = 2 * 27 * cin * cout * t * h * w
        best = min(v for v in times if v == v)
        print(f"{cin:4d}->{cout:<4d} T={t:<3d} {h}x{w:<10} " + " ".join(f"{v:9.2f}" for v in times)
              + f" {flops / best / 1e9:12.0f}")  # fmt: skip
    # The upsamplers' 3×3 conv2d on nearest-2x frames (480p, 8 frames).
    x = torch.randn(8, 192, 480, 832, device=device, dtype=torch.bfloat16)
    wt = torch.randn(96, 192, 3, 3, device=device, dtype=torch.bfloat16) * 0.02
    t_nchw = do_bench(lambda: F.conv2d(x, wt, None, padding=1), warmup=10, rep=100, return_mode="median")
    xc, wc = x.contiguous(memory_format=cl2), wt.contiguous(memory_format=cl2)
    t_nhwc = do_bench(lambda: F.conv2d(xc, wc, None, padding=1), warmup=10, rep=100, return_mode="median")
    flops = 2 * 9 * 192 * 96 * 8 * 480 * 832
    print(f"conv2d 192->96 x8 480x832: NCHW {t_nchw:.2f} ms, NHWC {t_nhwc:.2f} ms ({flops / t_nhwc / 1e9:.0f} TFLOP/s)")


def bench() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="wan2.1", choices=["wan2.1", "tiny"])
    parser.add_argument("--frames", type=int, default=81)
    parser.add_argument("--sizes", default="832x480,1280x720", help="comma-separated WxH")
    parser.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--budget-gib", type=float, default=12.0)
    parser.add_argument("--chunks", default="", help="extra fast-path decode rows: comma-separated chunk_latents")
    parser.add_argument("--cudnn-benchmark", action="store_true", help="also time the fast path in cuDNN benchmark mode")
    parser.add_argument("--skip-encode", action="store_true")
    parser.add_argument("--skip-decode", action="store_true")
    parser.add_argument("--i2v", action="store_true", help="also encode an I2V condition (the image, then zeros) "
                        "with every frame through every layer vs the steady frames skipped")
    parser.add_argument("--no-reference", action="store_true", help="skip the fp32 reference (no cosine)")
    parser.add_argument("--rows", default="", help="only the rows whose path contains one of these comma-separated "
                        "strings (e.g. 'chunk,igemm'); default: every row")
    parser.add_argument("--gain-spread", type=float, default=0.0, help="draw every RMS-norm gain as exp(S·N(0, 1)) "
                        "instead of the init's ones (trained gains differ per channel; a harder fidelity case)")
    parser.add_argument("--micro", action="store_true", help="conv3d layout table and the norm kernel bench")
    parser.add_argument("--profile", default="", help="write the fast decode's top CUDA kernels (first size) here")
    parser.add_argument("--conv-impl", default="igemm", choices=CONV_IMPLS, help="for the profiled decode")
    parser.add_argument("--igemm", default="96,96+192", help="rows with conv_impl igemm (CUDA): comma-separated "
                        "residual-block widths joined by +, e.g. 96,96+192")
    args = parser.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = DTYPES[args.dtype]
    cfg = VAEConfig.from_name(args.preset)
    torch.manual_seed(0)
    torch.backends.cudnn.allow_tf32 = False  # the fp32 reference is fp32
    torch.backends.cuda.matmul.allow_tf32 = False
    budget = int(args.budget_gib * 2**30)
    ref_model = WanVAE(cfg).eval().requires_grad_(False).to(device)
    ref_model.skip_steady_frames = False  # the reference: every frame through every layer
    if args.gain_spread:
        with torch.no_grad():
            for m in ref_model.modules():
                if isinstance(m, RMSNorm):
                    m.gamma.copy_(torch.exp(args.gain_spread * torch.randn_like(m.gamma)))
    ours = WanVAE(cfg, memory_budget=budget).eval().requires_grad_(False)
    ours.load_state_dict(ref_model.state_dict())
    ours = ours.to(device, dtype)
    print(f"{args.preset} {args.dtype} on {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}, "
          f"torch {torch.__version__}, cudnn {torch.backends.cudnn.version()}, budget {args.budget_gib} GiB")  # fmt: skip
    if args.micro and device.type == "cuda":
        try:
            micro_convs(device)
            from kernels.rmsnorm_silu import bench as bench_norm

            bench_norm()
        except Exception as exc:  # the end-to-end rows below matter more than the micro table
            print(f"micro bench failed: {exc!r}")

    rows = []
    for size in args.sizes.split(","):
        width, height = (int(v) for v in size.split("x"))
        t_lat = (args.frames - 1) // cfg.temporal_factor + 1
        sf = cfg.spatial_factor
        gen = torch.Generator(device).manual_seed(1)
        latents = torch.randn(1, cfg.z_dim, t_lat, height // sf, width // sf, device=device, generator=gen)
        video = torch.rand(1, 3, args.frames, height, width, device=device, generator=gen) * 2 - 1
        stages: list[tuple[str, Callable[..., torch.Tensor], torch.Tensor]] = []
        if not args.skip_decode:
            stages.append(("decode", WanVAE.decode, latents))
        if not args.skip_encode:
            stages.append(("encode", WanVAE.encode, video))
        if args.i2v:
            i2v = torch.zeros_like(video)
            i2v[:, :, :1] = video[:, :, :1]
            stages.append(("i2v-encode", WanVAE.encode, i2v))
        for stage, method, x in stages:
            ref = None if args.no_reference else method(ref_model, x, fused=False)
            variants: list[tuple[str, dict]] = [("old (eager, 1/chunk)", dict(fused=False, chunk_latents=1)),
                                                ("fast, cudnn3d", dict(fused=True))]  # fmt: skip
            if stage == "i2v-encode":
                variants = [("fast, every frame", dict(fused=True)), ("fast, steady skipped", dict(fused=True))]
            if stage == "decode":
                variants[0][1]["prefix_latents"] = 1
                variants += [(f"fast (chunk {n})", dict(fused=True, chunk_latents=int(n))) for n in args.chunks.split(",") if n]
            if stage != "i2v-encode":
                variants += [("fast, taps2d", dict(fused=True)),
                             ("fast, budget 6 GiB", dict(fused=True, memory_budget=6 * 2**30))]  # fmt: skip
            if stage == "decode":  # the RGB head through cuDNN's conv3d (before the GEMM + gather head), and
                # the head's partials in fp32
                variants += [("fast, cuDNN RGB head", dict(fused=True)), ("fast, fp32 head partials", dict(fused=True))]
            if stage == "decode":  # the mid blocks' attention through torch's SDPA (before `_frame_attention`)
                variants += [("fast, sdpa attention", dict(fused=True))]
            if device.type == "cuda" and stage != "i2v-encode":  # the implicit-GEMM residual blocks by width
                variants += [(f"fast, igemm {widths}", dict(fused=True)) for widths in args.igemm.split(",") if widths]
            if args.cudnn_benchmark:
                variants += [("fast + cudnn.benchmark", dict(fused=True))]
            if args.rows:
                variants = [(n, kw) for n, kw in variants if any(r in n for r in args.rows.split(",") if r)]
            base = None
            for name, kw in variants:
                torch.backends.cudnn.benchmark = "benchmark" in name
                conv_impl, widths, head_impl, attn = ours.conv_impl, ours.igemm_channels, ours.head_impl, ours.attention_impl
                ours.attention_impl = "sdpa" if "sdpa attention" in name else attn
                ours.conv_impl = next((c for c in CONV_IMPLS if c in name), conv_impl)
                if "igemm" in name:
                    ours.igemm_channels = tuple(int(v) for v in name.split("igemm ")[1].split("+"))
                xin = x.to(dtype)
                ours.skip_steady_frames = name != "fast, every frame"
                ours.head_impl = "cudnn" if "cuDNN RGB" in name else "gemm_fp32" if "fp32 head" in name else head_impl
                t, peak, out = _measure(lambda m=method, xin=xin, kw=kw: m(ours, xin, **kw), device, args.repeats)
                ours.conv_impl, ours.head_impl, ours.igemm_channels, ours.attention_impl = conv_impl, head_impl, widths, attn
                torch.backends.cudnn.benchmark = False
                base = base or t
                cos = float("nan") if ref is None else _cosine(out, ref)
                rows.append((f"{width}x{height}", stage, name, t, base / t, peak, cos))
                print(f"  {width}x{height} {stage} {name:24} {t:7.3f} s  x{base / t:5.2f}  {peak:6.2f} GiB  cos {cos:.6f}",
                      flush=True)  # fmt: skip
                del out
            if stage == "decode" and device.type == "cuda":  # streaming: when the first chunk is out
                torch.cuda.synchronize()
                start = time.perf_counter()
                chunks = ours.decode_iter(latents.to(dtype))
                next(chunks)
                torch.cuda.synchronize()
                first = time.perf_counter() - start
                n_chunks = 1 + sum(1 for _ in chunks)
                print(f"  {width}x{height} decode_iter: first of {n_chunks} chunks after {first:.3f} s")
            del ref
    print(f"\n{'size':10} {'stage':7} {'path':24} {'s':>7} {'vs old':>7} {'peak GiB':>9} {'cos fp32':>9}")
    for size, stage, name, t, ratio, peak, cos in rows:
        print(f"{size:10} {stage:7} {name:24} {t:7.3f} {ratio:6.2f}x {peak:9.2f} {cos:9.6f}")

    if args.profile and device.type == "cuda":
        from torch.profiler import ProfilerActivity, profile

        width, height = (int(v) for v in args.sizes.split(",")[0].split("x"))
        latents = torch.randn(1, cfg.z_dim, (args.frames - 1) // 4 + 1, height // 8, width // 8, device=device)
        ours.conv_impl = args.conv_impl
        ours.decode(latents.to(dtype))
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], record_shapes=True) as prof:
            ours.decode(latents.to(dtype))
            torch.cuda.synchronize()
        table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=90)
        by_shape = prof.key_averages(group_by_input_shape=True).table(
            sort_by="cuda_time_total", row_limit=40, max_name_column_width=60, max_shapes_column_width=120
        )
        with open(args.profile, "w") as f:
            f.write(table + "\n\n" + by_shape)
        print(table)


if __name__ == "__main__":
    bench()
