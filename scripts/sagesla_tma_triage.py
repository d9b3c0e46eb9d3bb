"""Triage of SageSLA's TMA attention kernel (session 20): one launch with the given tiles coming by TMA (the
rest by pointer loads), checked against the pointer kernel on the same prepared operands. One process per
combination, since an illegal memory access poisons the CUDA context.

    python3 scripts/sagesla_tma_triage.py --mask 7 --stages 2 [--warps 8 --block-m 128 --pair 1 --L 4096 --H 2]
"""

# ruff: noqa: T201 - a triage script: printing is its output
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from kernels.sagesla import BLOCK_K, BLOCK_Q, _launch, _prepare


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mask", type=int, default=7)
    ap.add_argument("--stages", type=int, default=2)
    ap.add_argument("--warps", type=int, default=8)
    ap.add_argument("--block-m", type=int, default=128)
    ap.add_argument("--pair", type=int, default=1)
    ap.add_argument("--ws", type=int, default=0)
    ap.add_argument("--L", type=int, default=4096)
    ap.add_argument("--H", type=int, default=2)
    ap.add_argument("--dense", type=int, default=0)
    ap.add_argument("--linear", type=int, default=0, help="with the linear branch (proj_l)")
    ap.add_argument("--no-ref", action="store_true", help="skip the pointer kernel (under compute-sanitizer)")
    a = ap.parse_args()
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(1, a.H, a.L, 128, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(3))
    w = torch.randn(128, 128, device="cuda", generator=g) / 128**0.5 if a.linear else None
    b = torch.randn(128, device="cuda", generator=g) * 0.01 if a.linear else None
    p = _prepare(q, k, v, 1.0 if a.dense else 0.1, w, b, BLOCK_Q, 128 if a.dense else BLOCK_K, bool(a.dense), True)
    ref = None if a.no_ref else _launch(p, "pointer")
    torch.cuda.synchronize()
    tag = (f"mask={a.mask} stages={a.stages} warps={a.warps} bm={a.block_m} pair={a.pair} ws={a.ws} L={a.L} "
           f"H={a.H} dense={a.dense} linear={a.linear}")
    try:
        o = _launch(p, "tma", {"BLOCK_M": a.block_m, "PAIR": bool(a.pair), "WARP_SPEC": bool(a.ws),
                               "TMA_MASK": a.mask, "num_warps": a.warps, "num_stages": a.stages})
        torch.cuda.synchronize()
        if ref is None:
            print(f"RESULT {tag}: ran")
            return
        cos = F.cosine_similarity(o.double().flatten(), ref.double().flatten(), dim=0).item()
        print(f"RESULT {tag}: ok, cos {cos:.6f}, max diff {(o.float() - ref.float()).abs().max().item():.4g}")
    except Exception as exc:  # noqa: BLE001
        print(f"RESULT {tag}: {type(exc).__name__}: {str(exc)[:200]}")


if __name__ == "__main__":
    main()
