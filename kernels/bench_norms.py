"""Benchmark all fused elementwise kernels in one process at Wan 1.3B / 14B shapes.

    python -m kernels.bench_norms [--L 32760] [--compile] [--json out.json]

Measures a device-to-device copy's bandwidth first (bytes read + written, 2 GiB buffers, and one at
each kernel's own traffic size), then runs rmsnorm_rope, adaln and gated_residual's ``bench()`` (B=1,
bf16, C = 1536 / 5120), printing per kernel: time, GB/s, % of the copy bandwidth, speedup vs eager
PyTorch, and the autotuner's timing of every config it tried. ``--compile`` adds torch.compile'd eager
baselines (Inductor fuses these ops too, so it is the stronger baseline). A table comes last.

Measured (H200, triton 3.6, torch 2.11, one run 2026-11-21; copy 4274 GB/s on 2 GiB, 3818 / 4160 GB/s
at the 1536 / 5120 tensor sizes; B=1, L=32760, bf16; GB/s counts each tensor once):

    kernel              C=1536: us  GB/s  %copy  x eager |  C=5120: us  GB/s  %copy  x eager
    rmsnorm_rope                65  3357   78.5    21.8  |        209  3298   77.2    21.7
    ln_modulate                 62  3252   76.1    10.3  |        211  3182   74.5    10.1
    ln_modulate_int8            97  1551   36.3     6.5  |        314  1605   37.5     6.8
    gated_residual              76  3972   92.9     8.5  |        242  4152   97.2     8.7
    gated_residual_ (in place)  76  3991   93.4     8.5  |        244  4117   96.3     8.6

ln_modulate_int8 vs the unfused path (bf16 ln_modulate + int8_quant.quantize_activation): 1.22x / 1.26x.
The packed-int32 RoPE variant below was slower than the shipped split/join kernel (83 vs 65 us at 1536).
That run stopped in the variants section (a bug here, since fixed), so the torch.compile column and the
5120 variants were not measured.
"""

from __future__ import annotations

import argparse
import json

import torch
import triton
import triton.language as tl
from triton.testing import do_bench


def copy_bandwidth(nbytes: int) -> float:
    """GB/s of ``dst.copy_(src)`` for an ``nbytes`` buffer, counting read + write."""
    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda").random_()
    dst = torch.empty_like(src)
    t = do_bench(lambda: dst.copy_(src), warmup=25, rep=200, return_mode="median")
    return 2 * nbytes / t / 1e6


# Experimental variant (bench only): rmsnorm_rope for bf16 that loads each (even, odd) pair as one
# int32 and unpacks it with shifts, instead of reshape + tl.split / tl.join on the fp32 tile. Checked
# against the reference and timed next to the shipped kernel to see what the split/join costs.
@triton.jit
def _rope_packed_bf16_kernel(
    # pointers
    x_ptr,  # int32 view of bf16 [N, C]
    w_ptr,
    cos_ptr,
    sin_ptr,
    out_ptr,  # int32 view of bf16 [N, C]
    # sizes
    N,
    L,
    P,  # pairs per row = C // 2
    eps,
    # meta
    HALF_D: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_L: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_L + tl.arange(0, BLOCK_L)
    pairs = tl.arange(0, BLOCK_P)
    row_ok = rows < N
    mask = row_ok[:, None] & (pairs < P)[None, :]
    offs = rows.to(tl.int64)[:, None] * P + pairs[None, :]
    v = tl.load(x_ptr + offs, mask=mask, other=0)
    even = (v << 16).to(tl.float32, bitcast=True)
    odd = (v & -65536).to(tl.float32, bitcast=True)
    rstd = tl.rsqrt((tl.sum(even * even, axis=1) + tl.sum(odd * odd, axis=1)) / (2 * P) + eps)
    we = tl.load(w_ptr + 2 * pairs, mask=pairs < P, other=0.0).to(tl.float32)
    wo = tl.load(w_ptr + 2 * pairs + 1, mask=pairs < P, other=0.0).to(tl.float32)
    even = even * rstd[:, None] * we[None, :]
    odd = odd * rstd[:, None] * wo[None, :]
    t_offs = (rows % L).to(tl.int64)[:, None] * HALF_D + (pairs % HALF_D)[None, :]
    c = tl.load(cos_ptr + t_offs, mask=mask, other=0.0)
    s = tl.load(sin_ptr + t_offs, mask=mask, other=0.0)
    oe = (even * c - odd * s).to(tl.bfloat16).to(tl.int16, bitcast=True).to(tl.int32) & 65535
    oo = (even * s + odd * c).to(tl.bfloat16).to(tl.int16, bitcast=True).to(tl.int32)
    tl.store(out_ptr + offs, oe | (oo << 16), mask=mask)


def _rope_packed_bf16(x, w, cos, sin, block_l: int, num_warps: int):
    B, L, H, D = x.shape
    N, P = B * L, H * D // 2
    out = torch.empty_like(x)
    _rope_packed_bf16_kernel[(triton.cdiv(N, block_l),)](
        x.view(torch.int32), w, cos, sin, out.view(torch.int32), N, L, P, 1e-6,
        HALF_D=D // 2, BLOCK_P=triton.next_power_of_2(P), BLOCK_L=block_l, num_warps=num_warps,
    )
    return out


def variants(L: int, dims: tuple[int, ...], copy_gbps: float) -> list[dict]:
    """Where rmsnorm_rope's time goes: shipped kernel vs packed-pair variant vs plain rmsnorm."""
    from kernels import rmsnorm_rope as rr

    rows = []
    for C in dims:
        D = 128
        x = torch.randn(1, L, C // D, D, device="cuda", dtype=torch.bfloat16)
        w = torch.rand(C, device="cuda", dtype=torch.bfloat16) + 0.5
        ang = torch.rand(L, D // 2, device="cuda") * 6.28
        cos, sin = ang.cos(), ang.sin()
        ref = rr.reference(x, w, cos, sin)
        nbytes_rope = 2 * x.numel() * 2 + 2 * cos.numel() * 4
        cands = [("shipped rmsnorm_rope", lambda: rr.rmsnorm_rope(x, w, cos, sin), nbytes_rope, True)]  # noqa: B023
        for bl in (1, 2, 4):
            for nw in (4, 8):
                if bl * C // 2 > 16384:
                    continue
                cands.append((f"packed bl={bl} nw={nw}",
                              lambda bl=bl, nw=nw: _rope_packed_bf16(x, w, cos, sin, bl, nw),  # noqa: B023
                              nbytes_rope, True))
        cands.append(
            ("rmsnorm only (no rope)", lambda: rr.rmsnorm(x.view(1, L, C), w), 2 * x.numel() * 2, False)  # noqa: B023
        )
        for name, fn, nbytes, check in cands:
            rel = ((fn().float() - ref).norm() / ref.norm()).item() if check else float("nan")
            t = do_bench(fn, warmup=25, rep=200, return_mode="median")
            gbps = nbytes / t / 1e6
            rows.append({"variant": name, "C": C, "ms": t, "GB/s": gbps, "rel_err": rel})
            print(f"  variant C={C:5d} {name:24s} {t * 1e3:8.1f} us {gbps:6.0f} GB/s "
                  f"{100 * gbps / copy_gbps:5.1f}% copy rel err {rel:.1e}", flush=True)
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
    args = p.parse_args()

    from kernels import adaln, gated_residual, rmsnorm_rope

    torch.manual_seed(0)
    print(f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}", flush=True)
    big = copy_bandwidth(2 << 30)
    print(f"copy bandwidth (2 GiB, read+write): {big:.0f} GB/s", flush=True)
    for C in args.dims:
        print(f"copy bandwidth ({args.L}x{C} bf16): {copy_bandwidth(args.L * C * 2):.0f} GB/s", flush=True)

    dims = tuple(args.dims)
    rows = []
    for C in dims:  # per C, so each tuning log belongs to one shape
        rows += rmsnorm_rope.bench(big, args.L, (C,))
        _tuning_log("rmsnorm_rope", rmsnorm_rope._rmsnorm_rope)
        rows += adaln.bench(big, args.L, (C,))
        _tuning_log("ln_modulate_int8 (last tuned)", adaln._ln_modulate)
        rows += gated_residual.bench(big, args.L, (C,))
        _tuning_log("gated_residual", gated_residual._gated_residual)

    var_rows = variants(args.L, dims, big)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"copy_gbps": big, "rows": rows, "variants": var_rows}, f, indent=1)
    _table(rows, {}, args.L, big)
    if args.compile:
        _table(rows, _compiled_baselines(args.L, dims), args.L, big)


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
