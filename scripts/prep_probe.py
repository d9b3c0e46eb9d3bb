"""SageSLA's preparation at the Wan shapes: the fused form (kernels/sagesla_prep.py) against the split one (the K
pass writing phi(K), then a batched GEMM over it; the Q pass one program per block), in one process (GPU).

Prints, per shape: median ms of the whole `_prepare` call each way; of the K-pass stage alone each way (split: the
pool/quant K pass + phi(K)ᵀ V's GEMM; fused: `k_pass` at each programs-per-SM count tried); of the Q pass alone
each way (fused: `q_pass` at each count tried); the fused kernels' autotuned configs, and how far the linear
branch's output is from the split form's.

    python3 scripts/prep_probe.py [--shapes 1.3b,14b] [--per-sm 1,2,3,4] [--q-per-sm 2,4,8,16]
"""

# ruff: noqa: T201 - a measurement script: printing is its output
from __future__ import annotations

import argparse
import math
import os

import torch
import triton
from triton.testing import do_bench

SHAPES = {"1.3b": (12, 32760), "14b": (40, 75600)}  # heads, tokens (480p / 720p, 81 frames)


def _bench(fn) -> float:  # noqa: ANN001
    return do_bench(fn, warmup=10, rep=100, return_mode="median")


def probe(name: str, h: int, length: int, per_sm: list[int], q_per_sm: list[int]) -> None:
    from kernels import sagesla as sg
    from kernels import sagesla_prep as kp

    d, bk = 128, sg.BLOCK_K
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(1, length, h, d, device="cuda", generator=g, dtype=torch.bfloat16).transpose(1, 2)
               for _ in range(3))
    w = torch.randn(d, d, device="cuda", generator=g) / math.sqrt(d)
    bias = torch.randn(d, device="cuda", generator=g) * 0.01
    prep_args = (q, k, v, 0.1, w, bias, sg.BLOCK_Q, bk, False, True)
    prepared, ms = {}, {}
    for form in ("split", "fused"):
        os.environ[kp.PREP_ENV] = form
        prepared[form] = sg._prepare(*prep_args)
        ms[form] = _bench(lambda: sg._prepare(*prep_args))
    split, fused = prepared["split"], prepared["fused"]
    diff = ((fused.olin.float() - split.olin.float()).norm() / split.olin.float().norm()).item()
    same = all(torch.equal(getattr(fused, n), getattr(split, n)) for n in ("k8", "k_scale", "lut"))
    nk = split.k_scale.shape[1]
    print(f"== {name}: H={h} L={length}, {nk} key blocks")
    print(f"_prepare: split {ms['split']:.3f} ms, fused {ms['fused']:.3f} ms ({ms['split'] / ms['fused']:.2f}x); "
          f"codes and block map identical: {same}; linear branch {diff:.2e} from the split form's", flush=True)
    del prepared, split, fused

    # the K-pass stage alone
    k_mean, v_scale = torch.randn(h, d, device="cuda"), torch.rand(h, d, device="cuda") + 0.01
    k8 = torch.empty(h, length, d, device="cuda", dtype=torch.int8)
    k_scale, k_pool = torch.empty(h, nk, device="cuda"), torch.empty(h, nk, d, device="cuda")
    vt = torch.empty(h, d, nk * bk, device="cuda", dtype=torch.float8_e4m3fn)
    phi = torch.empty(h, length, d, device="cuda", dtype=torch.bfloat16)
    phi_pool = torch.empty(h, nk, d, device="cuda")

    def split_stage() -> None:
        sg._pool_quant[(nk, h)](
            k, k_mean, k8, k_scale, k_pool, v, v_scale, vt, k_scale, k_scale, k_scale, k_scale, phi, phi_pool,
            length, nk * bk, h, nk, 1.0, 0.0, *k.stride()[:3], *v.stride()[:3],
            D=d, BLK=bk, SMOOTH=True, DO_POOL=True, V_FP8=True, HAS_LINEAR=False, HAS_BIAS=False, PHI_OUT=True)
        torch.bmm(phi.transpose(1, 2), v[0]).float()
        phi_pool.sum(1)

    def fused_stage() -> None:
        kp.k_pass(k, v, k_mean, v_scale, bk, k8, k_scale, k_pool, vt)

    t_split = _bench(split_stage)
    line = [f"K pass + phi(K)^T V: split {t_split:.3f} ms"]
    keep = kp.PROGRAMS_PER_SM
    for n in per_sm:
        kp.PROGRAMS_PER_SM = n
        t = _bench(fused_stage)
        line.append(f"fused {n}/SM {t:.3f} ms ({t_split / t:.2f}x; {getattr(kp._k_pass, 'best_config', '?')})")
    kp.PROGRAMS_PER_SM = keep
    print("; ".join(line), flush=True)

    # the Q pass alone
    nq = triton.cdiv(length, sg.BLOCK_Q)
    q8 = torch.empty(h, length, d, device="cuda", dtype=torch.int8)
    q_scale, q_pool = torch.empty(h, nq, device="cuda"), torch.empty(h, nq, d, device="cuda")
    lin_m = (torch.randn(h, d, d, device="cuda") / d).half()
    fk = torch.rand(h, d, device="cuda") / d
    olin = torch.empty(h, length, d, device="cuda", dtype=torch.float16)
    scale, eps = 1.0 / math.sqrt(d), 1e-5 / length

    def split_q() -> None:
        sg._pool_quant[(nq, h)](
            q, k_mean, q8, q_scale, q_pool, v, v_scale, vt, lin_m, fk, bias, olin, k_scale, k_scale,
            length, nk * bk, h, nq, scale, eps, *q.stride()[:3], *v.stride()[:3],
            D=d, BLK=sg.BLOCK_Q, SMOOTH=False, DO_POOL=True, V_FP8=False, HAS_LINEAR=True, HAS_BIAS=True,
            PHI_OUT=False)

    def fused_q() -> None:
        kp.q_pass(q, lin_m, fk, bias, sg.BLOCK_Q, scale, eps, q8, q_scale, q_pool, olin)

    t_split = _bench(split_q)
    line = [f"Q pass: split {t_split:.3f} ms"]
    keep = kp.Q_PROGRAMS_PER_SM
    for n in q_per_sm:
        kp.Q_PROGRAMS_PER_SM = n
        t = _bench(fused_q)
        line.append(f"fused {n}/SM {t:.3f} ms ({t_split / t:.2f}x; {getattr(kp._q_pass, 'best_config', '?')})")
    kp.Q_PROGRAMS_PER_SM = keep
    print("; ".join(line), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="1.3b,14b")
    ap.add_argument("--per-sm", default="1,2,3,4", help="fused K pass: programs per SM to time")
    ap.add_argument("--q-per-sm", default="2,4,8,16", help="fused Q pass: programs per SM to time")
    args = ap.parse_args()
    for name in args.shapes.split(","):
        probe(name, *SHAPES[name], [int(x) for x in args.per_sm.split(",")],
              [int(x) for x in args.q_per_sm.split(",")])
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
