"""Benchmark all fused elementwise kernels in one process at Wan 1.3B / 14B shapes.

    python -m kernels.bench_norms [--L 32760] [--compile] [--no-sweep] [--json out.json]
    python -m kernels.bench_norms --residual [--residual-lengths 32760 75600] [--dims 1536 5120]

Measures a device-to-device copy's bandwidth first (bytes read + written, 2 GiB buffers, and one at
each kernel's own traffic size), then sweeps every autotune config of rmsnorm_rope / ln_modulate /
ln_modulate_int8 (checked against the reference, then timed; ``--no-sweep`` skips it), then runs rmsnorm_rope, adaln and gated_residual's ``bench()`` (B=1,
bf16, C = 1536 / 5120), printing per kernel: time, GB/s, % of the copy bandwidth, speedup vs eager
PyTorch, and the autotuner's timing of every config it tried. ``--compile`` adds torch.compile'd eager
baselines (Inductor fuses these ops too, so it is the stronger baseline). A table comes last.

``--residual`` times only the DiT block's residual-add boundary (fp32 residual stream x, bf16 branch output,
int8 out for a W8A8 linear): gated_residual + layernorm_modulate (two passes, x' written then read back) vs
adaln.residual_layernorm_modulate (one pass), both autotuned, with the ratio and whether the bits agree.

Measurements (dated bench tables, the per-config sweep, offline SASS counts): kernels/NOTES_norms.md.
"""

from __future__ import annotations

import argparse
import functools
import json

import torch
import triton
from triton.testing import do_bench


def copy_bandwidth(nbytes: int) -> float:
    """GB/s of ``dst.copy_(src)`` for an ``nbytes`` buffer, counting read + write."""
    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda").random_()
    dst = torch.empty_like(src)
    t = do_bench(lambda: dst.copy_(src), warmup=25, rep=200, return_mode="median")
    return 2 * nbytes / t / 1e6


def _pruned(kernel, prune, **args) -> list[triton.Config]:
    """The configs the autotuner would time for these constexpr/size arguments."""

    class _Cuda:
        is_cuda = True

    return prune(kernel.configs, {"x_ptr": _Cuda(), **args})


def _cfg_dict(cfg: triton.Config) -> dict:
    return {**cfg.kwargs, "num_warps": cfg.num_warps, "num_stages": cfg.num_stages}


def _cfg_name(cfg: triton.Config) -> str:
    k = cfg.kwargs
    return f"BL={k['BLOCK_L']} split={k['SPLIT']} pps={k['PROGS_PER_SM']} nw={cfg.num_warps}"


def sweep(L: int, dims: tuple[int, ...], copy_gbps: float) -> list[dict]:
    """Every config the autotuner keeps, launched directly: checked against the reference, then timed.

    rmsnorm_rope, ln_modulate (bf16 out) and ln_modulate_int8 at B=1, bf16, each C. A config is marked
    BAD (and the run's exit code set) when its output is off the reference or not fully written.
    """
    from kernels import adaln
    from kernels import rmsnorm_rope as rr
    from kernels.row_configs import prune_row_configs

    rows = []
    for C in dims:
        D = 128
        x4 = torch.randn(1, L, C // D, D, device="cuda", dtype=torch.bfloat16)
        w = torch.rand(C, device="cuda", dtype=torch.bfloat16) + 0.5
        ang = torch.rand(L, D // 2, device="cuda") * 6.28
        cos, sin = ang.cos(), ang.sin()
        x2 = x4.view(L, C)
        x = (torch.randn(1, L, C, device="cuda") * 2 + 0.7).to(torch.bfloat16)
        mod = torch.randn(1, 6, C, device="cuda") * 0.5
        shift, scale = mod[:, 0], mod[:, 1]
        ref_rope = rr.reference(x4, w, cos, sin).view(L, C)
        ref_ln = adaln.reference(x, shift, scale)
        q_ref, s_ref = adaln.reference_int8(x, shift, scale)
        out_bf = torch.empty_like(x)
        q = torch.empty(1, L, C, dtype=torch.int8, device="cuda")
        s = torch.empty(1, L, device="cuda")
        bytes_rope = 2 * x2.numel() * 2 + 2 * cos.numel() * 4 + C * 2
        bytes_ln = 2 * x.numel() * 2 + 2 * C * 4
        bytes_q = x.numel() * 3 + L * 4 + 2 * C * 4
        pow2 = triton.next_power_of_2(C)
        cases = [
            ("rmsnorm_rope", _pruned(rr._rmsnorm_rope, prune_row_configs, BLOCK_C=pow2, C=C), bytes_rope),
            ("ln_modulate", _pruned(adaln._ln_modulate, prune_row_configs, BLOCK_C=pow2, C=C), bytes_ln),
            ("ln_modulate_int8", _pruned(adaln._ln_modulate, prune_row_configs, BLOCK_C=pow2, C=C), bytes_q),
        ]
        for name, cfgs, nbytes in cases:
            for cfg in cfgs:
                cd = _cfg_dict(cfg)
                try:
                    if name == "rmsnorm_rope":
                        fn = functools.partial(rr._launch, x2, w, cos, sin, L, D // 2, 1e-6, config=cd)
                        out = fn()
                        bad = not bool(torch.isfinite(out).all())
                        err = ((out.float() - ref_rope).norm() / ref_rope.norm()).item()
                        bad = bad or err > 1e-2
                    elif name == "ln_modulate":
                        fn = functools.partial(adaln._launch, x, shift, scale, 1e-6, out_bf, out_bf, config=cd)
                        out_bf.fill_(float("nan"))
                        fn()
                        err = ((out_bf.float() - ref_ln).norm() / ref_ln.norm()).item()
                        bad = not bool(torch.isfinite(out_bf).all()) or err > 1e-2
                    else:
                        fn = functools.partial(adaln._launch, x, shift, scale, 1e-6, q, s, config=cd)
                        q.fill_(-128)
                        s.fill_(float("nan"))
                        fn()
                        err = (q.int() - q_ref.int()).abs().max().item()  # codes apart (<= 1 allowed)
                        bad = err > 1 or bool((q == -128).any()) or not torch.allclose(s, s_ref, rtol=1e-5, atol=1e-7)
                    t = do_bench(fn, warmup=10, rep=50, return_mode="median")
                except Exception as e:  # noqa: BLE001 - one failing variant must not stop the sweep
                    print(f"  sweep {name:16s} C={C:5d} {_cfg_name(cfg):32s} FAILED {type(e).__name__}: {e}",
                          flush=True)
                    rows.append({"kernel": name, "C": C, "config": _cfg_name(cfg), "failed": str(e)[:300]})
                    continue
                gbps = nbytes / t / 1e6
                rows.append({"kernel": name, "C": C, "config": _cfg_name(cfg), "ms": t, "GB/s": gbps,
                             "pct_copy": 100 * gbps / copy_gbps, "err": err, "bad": bad})
                print(f"  sweep {name:16s} C={C:5d} {_cfg_name(cfg):32s} {t * 1e3:7.1f} us {gbps:6.0f} GB/s "
                      f"{100 * gbps / copy_gbps:5.1f}% copy err {err:.1e}{'  BAD' if bad else ''}", flush=True)
    return rows


def _sweep_table(rows: list[dict]) -> None:
    print("\n== sweep: best and worst correct config per kernel and C ==")
    groups: dict[tuple[str, int], list[dict]] = {}
    for r in rows:
        if "ms" in r and not r["bad"]:
            groups.setdefault((r["kernel"], r["C"]), []).append(r)
    for (name, C), rs in groups.items():
        rs.sort(key=lambda r: r["ms"])
        best, worst = rs[0], rs[-1]
        print(f"{name:16s} C={C:5d} best {best['config']:32s} {best['ms'] * 1e3:7.1f} us {best['pct_copy']:5.1f}%"
              f" | worst {worst['config']:32s} {worst['ms'] * 1e3:7.1f} us ({len(rs)} configs)")
    nbad = sum(1 for r in rows if r.get("bad") or "failed" in r)
    print(f"sweep: {nbad} config(s) BAD or FAILED", flush=True)


def residual_rows(lengths: tuple[int, ...], dims: tuple[int, ...], copy_gbps: float | None = None,
                  device: str = "cuda") -> list[dict]:
    """Residual add + LayerNorm/AdaLN with int8 out at B=1: the two kernels in sequence vs the fused pass.

    GB/s counts each tensor once (fused: x and x' fp32, y bf16, q int8, s; unfused also reads x' back).
    ``device`` "cpu" runs one small shape under the interpreter (a smoke test of this code, no timing)."""
    from kernels.adaln import _residual_ln_modulate, layernorm_modulate, residual_layernorm_modulate
    from kernels.gated_residual import gated_residual

    rows = []
    for L in lengths:
        for C in dims:
            x = torch.randn(1, L, C, device=device) * 2 + 0.7  # the fp32 residual stream
            y = torch.randn(1, L, C, device=device, dtype=torch.bfloat16)  # a branch output
            mod = torch.randn(1, 6, C, device=device) * 0.1  # Wan's [B, 6, C] fp32 modulation
            gate, shift, scale = mod[:, 2], mod[:, 0], mod[:, 1]

            def unfused(x=x, y=y, gate=gate, shift=shift, scale=scale):
                x_new = gated_residual(x, y, gate)
                return x_new, layernorm_modulate(x_new, shift, scale, out_int8=True)

            def fused(x=x, y=y, gate=gate, shift=shift, scale=scale):
                return residual_layernorm_modulate(x, y, gate, shift, scale, out_int8=True)

            (xa, (qa, sa)), (xb, (qb, sb)) = unfused(), fused()
            same = torch.equal(xa, xb) and torch.equal(qa, qb) and torch.equal(sa, sb)
            codes_apart = (qa.int() - qb.int()).abs().max().item()  # configs may differ: the sums' rounding
            if device == "cpu":
                t_u = t_f = float("nan")
            else:
                t_u = do_bench(unfused, warmup=25, rep=200, return_mode="median")
                t_f = do_bench(fused, warmup=25, rep=200, return_mode="median")
            nbytes = x.numel() * (4 + 2 + 4 + 1) + L * 4  # x, y, x', q, s
            gbps = nbytes / t_f / 1e6
            row = {"kernel": "residual_ln_modulate_int8", "C": C, "L": L, "unfused_ms": t_u, "fused_ms": t_f,
                   "ratio": t_u / t_f, "GB/s": gbps, "pct_copy": 100 * gbps / copy_gbps if copy_gbps else float("nan"),
                   "bit_equal": same, "codes_apart": codes_apart, "config": str(_residual_ln_modulate.best_config)}
            rows.append(row)
            print(f"residual+ln int8 C={C:5d} L={L:6d}: unfused {t_u * 1e3:8.1f} us | fused {t_f * 1e3:8.1f} us "
                  f"{gbps:6.0f} GB/s {row['pct_copy']:5.1f}% copy | x{row['ratio']:.2f} | "
                  f"{'bit-equal' if same else f'differs ({codes_apart} codes apart at most)'} | {row['config']}",
                  flush=True)
    return rows


def _tuning_log(name: str, kernel) -> None:
    timings = getattr(kernel, "configs_timings", None) or {}
    for cfg, t in sorted(timings.items(), key=lambda kv: kv[1][0] if isinstance(kv[1], list) else kv[1]):
        ms = t[0] if isinstance(t, list) else t
        print(f"    tune {name}: {cfg} -> {ms * 1e3:.1f} us")


def _compiled_baselines(L: int, dims: tuple[int, ...]) -> dict[tuple[str, int], float]:
    """torch.compile'd eager versions of the three ops (ms), keyed by (kernel, C)."""
    import torch.nn.functional as F

    from kernels import rmsnorm_rope as rr

    out: dict[tuple[str, int], float] = {}
    for C in dims:
        D = 128
        x4 = torch.randn(1, L, C // D, D, device="cuda", dtype=torch.bfloat16)
        w = torch.rand(C, device="cuda", dtype=torch.bfloat16) + 0.5
        ang = torch.rand(L, D // 2, device="cuda") * 6.28
        cos, sin = ang.cos(), ang.sin()
        x = x4.view(1, L, C)
        y = torch.randn_like(x)
        mod = torch.randn(1, 6, C, device="cuda") * 0.1
        shift, scale, gate = mod[:, 0], mod[:, 1], mod[:, 2]

        def rope_eager(x4, w, cos, sin):
            return rr.reference(x4, w, cos, sin).to(x4.dtype)

        def ln_eager(x, shift, scale, C=C):
            return (F.layer_norm(x.float(), (C,), eps=1e-6) * (1 + scale[:, None]) + shift[:, None]).to(x.dtype)

        def gr_eager(x, y, gate):
            return (x.float() + y.float() * gate[:, None]).to(x.dtype)

        for name, fn, args in (
            ("rmsnorm_rope", rope_eager, (x4, w, cos, sin)),
            ("ln_modulate", ln_eager, (x, shift, scale)),
            ("gated_residual", gr_eager, (x, y, gate)),
        ):
            cfn = torch.compile(fn, dynamic=False)
            cfn(*args)
            out[(name, C)] = do_bench(lambda: cfn(*args), warmup=25, rep=200, return_mode="median")  # noqa: B023
            print(f"  torch.compile {name:14s} C={C:5d}: {out[(name, C)] * 1e3:8.1f} us", flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--L", type=int, default=32760)
    p.add_argument("--dims", type=int, nargs="+", default=[1536, 5120])
    p.add_argument("--compile", action="store_true", help="also time torch.compile'd eager baselines")
    p.add_argument("--json", default=None, help="write all rows here")
    p.add_argument("--no-sweep", action="store_true", help="skip the per-config check-and-time sweep")
    p.add_argument("--residual", action="store_true",
                   help="only the residual add + norm boundary: two passes vs the fused one")
    p.add_argument("--residual-lengths", type=int, nargs="+", default=[32760, 75600])
    args = p.parse_args()

    from kernels import adaln, gated_residual, rmsnorm_rope

    torch.manual_seed(0)
    print(f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}", flush=True)
    big = copy_bandwidth(2 << 30)
    print(f"copy bandwidth (2 GiB, read+write): {big:.0f} GB/s", flush=True)
    if args.residual:
        rows = residual_rows(tuple(args.residual_lengths), tuple(args.dims), big)
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"copy_gbps": big, "residual": rows}, f, indent=1)
        return
    for C in args.dims:
        print(f"copy bandwidth ({args.L}x{C} bf16): {copy_bandwidth(args.L * C * 2):.0f} GB/s", flush=True)

    dims = tuple(args.dims)
    sweep_rows = [] if args.no_sweep else sweep(args.L, dims, big)
    rows = []
    for C in dims:  # per C, so each tuning log belongs to one shape
        rows += rmsnorm_rope.bench(big, args.L, (C,))
        _tuning_log("rmsnorm_rope", rmsnorm_rope._rmsnorm_rope)
        rows += adaln.bench(big, args.L, (C,))
        _tuning_log("ln_modulate_int8 (last tuned)", adaln._ln_modulate)
        rows += gated_residual.bench(big, args.L, (C,))
        _tuning_log("gated_residual", gated_residual._gated_residual)

    if args.json:
        with open(args.json, "w") as f:
            json.dump({"copy_gbps": big, "rows": rows, "sweep": sweep_rows}, f, indent=1)
    if sweep_rows:
        _sweep_table(sweep_rows)
    _table(rows, {}, args.L, big)
    if args.compile:
        _table(rows, _compiled_baselines(args.L, dims), args.L, big)
    if any(r.get("bad") or "failed" in r for r in sweep_rows):
        raise SystemExit(1)


def _table(rows: list[dict], compiled: dict[tuple[str, int], float], L: int, big: float) -> None:
    print(f"\n== fused norm kernels, B=1 L={L} bf16, copy {big:.0f} GB/s ==", flush=True)
    print(f"{'kernel':18s} {'C':>5s} {'us':>8s} {'GB/s':>6s} {'%copy':>6s} {'eager us':>9s} {'x eager':>7s}"
          f" {'compile us':>10s} {'x comp':>6s} {'rel err':>8s}")
    for r in rows:
        tc = compiled.get(({"gated_residual_": "gated_residual"}.get(r["kernel"], r["kernel"]), r["C"]))
        comp = f"{tc * 1e3:10.1f} {tc / r['ms']:6.2f}" if tc else f"{'-':>10s} {'-':>6s}"
        print(f"{r['kernel']:18s} {r['C']:5d} {r['ms'] * 1e3:8.1f} {r['GB/s']:6.0f} {r['pct_copy']:6.1f}"
              f" {r['eager_ms'] * 1e3:9.1f} {r['speedup']:7.2f} {comp} {r['rel_err']:8.1e}", flush=True)


if __name__ == "__main__":
    main()
