"""The VAE's 96- and 192-channel convs: the Gluon kernel (kernels/conv3d_gluon.py) against the Triton implicit-GEMM kernel and
the fp32 conv, on one GPU (sm90).

    python3 scripts/conv_gluon_probe.py [--check-only] [--frames 16] [--forms wait0,aregs0] [--decode 832x480 --reps 3]

First the outputs: every epilogue (plain, norm + SiLU, residual; with bias) at small and odd shapes (rows not a
multiple of 6, widths not of 64, batch 2, output written into frames of a larger buffer), each kernel's error
relative to the fp32 conv with the same epilogue, persistent and one program per tile, at 96 and 192 channels.
Then the times (median ms, the same inputs): one 16-frame chunk at the decoder's 480p and 720p sizes for each width,
each epilogue, the Triton kernel at its autotuned choice against the Gluon kernel's forms. Then (--decode) the whole
decode with each kernel in turns. Prints one JSON line per row.

--forms: also these variants of the kernel at 96 channels, compiled from a copy of its source with a change
(`variant_kernel`; the production kernel and its cache entries stay as they are):
- wait0: each step waits for all its MMAs (no MMAs in flight across steps), A from shared memory as kept;
- aregs0: as wait0, with each A view loaded into registers once and used by both dots. Session 34 ran the A views
  from registers with the kept in-flight MMAs and got wrong outputs (kernels/NOTES_vae.md): registers an in-flight
  wgmma still reads were probably reloaded by the next step. Waiting for the step's MMAs makes that impossible."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from triton.testing import do_bench  # noqa: E402

from kernels import conv3d_gluon as cg  # noqa: E402
from kernels import conv3d_igemm as cv  # noqa: E402


def _inputs(b: int, t: int, h: int, w: int, c: int = 96, seed: int = 0) -> dict:
    g = torch.Generator(device="cpu").manual_seed(seed)

    def cl(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g).to("cuda", torch.bfloat16).contiguous(
            memory_format=torch.channels_last_3d)

    weight = torch.randn(c, c, 3, 3, 3, generator=g) / (27 * c) ** 0.5
    return {"x": cl(b, c, t + 2, h, w), "wmat": cv.weight_matrix(weight.to("cuda", torch.bfloat16)),
            "bias": (0.1 * torch.randn(c, generator=g)).to("cuda", torch.bfloat16),
            "gamma": (1 + 0.2 * torch.randn(c, generator=g)).to("cuda", torch.bfloat16),
            "res": cl(b, c, t, h, w)}


def _epilogue(inp: dict, epi: int) -> dict:
    return {"bias": inp["bias"], "norm_gamma": inp["gamma"] if epi == 1 else None,
            "residual": inp["res"] if epi == 2 else None}


def _rel(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.float() - want).norm() / want.norm())


_A_SMEM = """        a = a_all.slice(row * BW, BW)
        acc0 = warpgroup_mma(a, wt0, acc0, is_async=True)
        acc1 = warpgroup_mma(a, wt1, acc1, is_async=True)
"""
_A_REGS = """        l0: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                     instr_shape=[16, wt0.type.shape[1], 16])
        l1: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                     instr_shape=[16, wt1.type.shape[1], 16])
        a = a_all.slice(row * BW, BW).load(gl.DotOperandLayout(operand_index=0, parent=l0, k_width=2))
        acc0 = warpgroup_mma(a, wt0, acc0, is_async=True)
        acc1 = warpgroup_mma(gl.convert_layout(a, gl.DotOperandLayout(operand_index=0, parent=l1, k_width=2)), wt1,
                             acc1, is_async=True)
"""


def variant_kernel(name: str) -> object:
    """`_conv_gluon_kernel` compiled from a copy of kernels/conv3d_gluon.py with the change `name` names (see the
    module docstring), imported as a module of its own from a temporary file (Triton reads a kernel's source)."""
    src = Path(cg.__file__).read_text()

    def swap(old: str, new: str) -> None:
        nonlocal src
        if src.count(old) != 1:
            raise SystemExit(f"variant {name}: the kernel's source changed ({old.strip()[:60]!r} not found once)")
        src = src.replace(old, new)

    if name not in ("wait0", "aregs0"):
        raise SystemExit(f"unknown form {name!r}: wait0, aregs0")
    swap("IN_FLIGHT: gl.constexpr = 6 * ROWS", "IN_FLIGHT: gl.constexpr = 0")
    if name == "aregs0":
        swap(_A_SMEM, _A_REGS)
    path = Path(tempfile.mkdtemp()) / f"conv3d_gluon_{name}.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location(f"conv3d_gluon_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module._conv_gluon_kernel


_FIXED = {"BLOCK_M": 64, "BLOCK_N0": 64, "BLOCK_N1": 32, "BLOCK_K": 32, "num_warps": 4, "num_stages": 3}


def check(shapes: list[tuple[int, int, int, int, int]], forms: dict[str, object] | None = None) -> bool:
    ok = True
    for c, b, t, h, w in shapes:
        inp = _inputs(b, t, h, w, c)
        fixed = {**_FIXED, "BLOCK_N0": 128, "BLOCK_N1": 64} if c == 192 else _FIXED
        for epi in (0, 1, 2):
            kw = _epilogue(inp, epi)
            want = cv.reference_out(inp["x"], inp["wmat"], c, **kw)
            tri = cv.causal_conv3x3x3(inp["x"], inp["wmat"], c, config=fixed, **kw)  # no autotuning here
            runs = [("persistent", {}), ("per tile", {"persistent": False})]
            runs += [(name, {"kernel": k}) for name, k in (forms or {}).items() if c == 96]
            for form, extra in runs:
                # the output as frames 2.. of a larger buffer (how a block's first conv writes the second's input)
                big = torch.empty(b, c, t + 2, h, w, device="cuda", dtype=torch.bfloat16,
                                  memory_format=torch.channels_last_3d).zero_()
                got = cg.conv(inp["x"], inp["wmat"], big[:, :, 2:], eps=1e-12, **extra, **kw)
                row = {"check": [c, b, t, h, w], "epi": epi, "form": form, "gluon_err": _rel(got, want),
                       "triton_err": _rel(tri, want), "gluon_vs_triton": _rel(got, tri.float()),
                       "context_untouched": bool((big[:, :, :2] == 0).all())}
                row["ok"] = row["gluon_err"] < 1.5 * row["triton_err"] + 1e-3 and row["context_untouched"]
                ok &= row["ok"]
                print(json.dumps(row), flush=True)
    return ok


def timing(frames: int, forms: dict[str, object] | None = None) -> None:
    v96 = ((4, True, None), (4, False, None)) + tuple((4, True, k) for k in (forms or {}).values())
    names = {id(k): n for n, k in (forms or {}).items()}
    for c, h, w, variants in ((96, 480, 832, v96), (96, 720, 1280, v96),
                              (192, 240, 416, ((3, True, None), (2, True, None))),
                              (192, 360, 640, ((3, True, None), (2, True, None)))):
        inp = _inputs(1, frames, h, w, c)
        flop = 2 * frames * h * w * c * 27 * c
        for epi in (0, 1, 2):
            kw = _epilogue(inp, epi)
            out = torch.empty(1, c, frames, h, w, device="cuda", dtype=torch.bfloat16,
                              memory_format=torch.channels_last_3d)
            os.environ[cv.KERNEL_ENV] = "triton"
            cv.causal_conv3x3x3(inp["x"], inp["wmat"], c, out=out, **kw)  # autotune first
            t_tri = do_bench(lambda: cv.causal_conv3x3x3(inp["x"], inp["wmat"], c, out=out, **kw),  # noqa: B023
                             warmup=10, rep=100, return_mode="median")
            os.environ[cv.KERNEL_ENV] = "auto"
            row = {"c": c, "size": f"{w}x{h}", "frames": frames, "epi": epi, "triton_ms": round(t_tri, 3),
                   "triton_tflops": round(flop / t_tri / 1e9)}
            for stages, persistent, kernel in variants:
                name = f"gluon_s{stages}{'p' if persistent else ''}" + (f"_{names[id(kernel)]}" if kernel else "")
                t_g = do_bench(lambda: cg.conv(inp["x"], inp["wmat"], out, eps=1e-12, stages=stages,  # noqa: B023
                                               persistent=persistent, kernel=kernel, **kw),  # noqa: B023
                               warmup=10, rep=100, return_mode="median")
                row[f"{name}_ms"] = round(t_g, 3)
                row[f"{name}_x"] = round(t_tri / t_g, 3)
            print(json.dumps(row), flush=True)


def decode_ab(sizes: list[str], reps: int) -> None:
    """The whole VAE decode (Wan2.1 config, random weights, 81 frames, the fast path) with the Triton conv, the
    Gluon conv at 96 channels (the default) and at 96 and 192, in turns on the same model and latents (the kernels
    read the variable at each call); each output's cosine to the fp32 decode."""
    import time

    from models.vae import VAEConfig, WanVAE

    cfg = VAEConfig.from_name("wan2.1")
    torch.manual_seed(0)
    torch.backends.cudnn.allow_tf32 = False
    ref_model = WanVAE(cfg).eval().requires_grad_(False).to("cuda")
    ref_model.skip_steady_frames = False
    ours = WanVAE(cfg, memory_budget=12 * 2**30).eval().requires_grad_(False)
    ours.load_state_dict(ref_model.state_dict())
    ours = ours.to("cuda", torch.bfloat16)
    variants = {"triton": ("triton", (96,)), "gluon96": ("auto", (96,)), "gluon96+192": ("auto", (96, 192))}
    for size in sizes:
        w, h = (int(v) for v in size.split("x"))
        gen = torch.Generator("cuda").manual_seed(1)
        lat = torch.randn(1, cfg.z_dim, 21, h // 8, w // 8, device="cuda", generator=gen)
        with torch.no_grad():
            ref = ref_model.decode(lat, fused=False).double().flatten()
            times: dict[str, list[float]] = {k: [] for k in variants}
            cos = {}
            for i in range(len(variants) * (reps + 1)):
                name = list(variants)[i % len(variants)]
                os.environ[cv.KERNEL_ENV], cg.USED = variants[name]
                torch.cuda.synchronize()
                start = time.perf_counter()
                out = ours.decode(lat.to(torch.bfloat16), fused=True)
                torch.cuda.synchronize()
                if i >= len(variants):  # the first of each: compiles, autotuning, the first-call check
                    times[name].append(round(time.perf_counter() - start, 4))
                cos[name] = round(float(torch.nn.functional.cosine_similarity(out.double().flatten(), ref, dim=0)), 7)
            os.environ[cv.KERNEL_ENV], cg.USED = "auto", (96,)
        med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
        print(json.dumps({"decode": size, "seconds": times, "median": med,
                          "speedup": {k: round(med["triton"] / v, 3) for k, v in med.items()}, "cos_fp32": cos,
                          "conv_kernel": cv.kernel_in_use(torch.cuda.current_device())}), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check-only", action="store_true")
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--decode", default="", help="also the whole decode A/B at these sizes, e.g. 832x480,1280x720")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--decode-only", action="store_true", help="only the --decode A/B")
    ap.add_argument("--forms", default="", help="also these variants at 96 channels: wait0, aregs0 (comma-separated)")
    args = ap.parse_args()
    forms = {name: variant_kernel(name) for name in args.forms.split(",") if name}
    if args.decode_only:
        decode_ab(args.decode.split(","), args.reps)
        return
    ok = check([(96, 1, 1, 8, 128), (96, 1, 2, 13, 200), (96, 2, 3, 20, 70), (96, 1, 2, 480, 832),
                (192, 1, 2, 9, 100), (192, 2, 2, 240, 416)], forms)
    print(json.dumps({"all_ok": ok}), flush=True)
    if not args.check_only and ok:
        timing(args.frames, forms)
    if args.decode and ok:
        decode_ab(args.decode.split(","), args.reps)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
