# ruff: noqa: T201 - a bench: printing is its output
"""GPU micro-bench: SageSLA's fused attention kernel as pointer loads (`_sagesla_fwd_kernel`, autotuned) against
the TMA kernel (`_sagesla_tma_kernel`) at each of its configs (paired key blocks or not, Triton's warp
specialization of the key loop or not, tiles, warps, stages), on the same prepared operands (int8 Q/K, fp8 V,
block map, linear branch), at the Wan 1.3B 480p and 14B 720p shapes, Top-K 0.1; cuDNN SDPA (bf16, dense) and
the whole `sagesla_attention` call (preparation included) beside them. Prints ms, the speed-up over cuDNN and
over the pointer kernel, and the cosine to the pointer kernel's output (session 20).

    python3 scripts/sagesla_variants.py [--heads 12,40] [--lengths 32760,75600]
"""

from __future__ import annotations

import argparse
import math
from functools import partial

import torch
import torch.nn.functional as F
import triton
from triton.testing import do_bench

from kernels import sagesla
from kernels.sagesla import BLOCK_K, BLOCK_Q, _launch, _prepare


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return F.cosine_similarity(a.double().flatten(), b.double().flatten(), dim=0).item()


def _configs() -> list[dict]:
    out = []
    for pair in (True, False):
        for ws in (False, True):
            for bm, w, st in [(128, 8, 2), (128, 8, 3), (128, 4, 2), (128, 4, 3), (64, 4, 3), (128, 8, 4)]:
                out.append({"BLOCK_M": bm, "PAIR": pair, "WARP_SPEC": ws, "num_warps": w, "num_stages": st})
    return out


def run(H: int, L: int, D: int = 128, topk: float = 0.1, dense_too: bool = True, mask: int = 7) -> None:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    dev = torch.device("cuda")
    g = torch.Generator(device=dev).manual_seed(0)
    q, k, v = (torch.randn(1, H, L, D, device=dev, dtype=torch.bfloat16, generator=g) for _ in range(3))
    w = torch.randn(D, D, device=dev, generator=g) / math.sqrt(D)
    bias = torch.randn(D, device=dev, generator=g) * 0.01
    with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
        t_sdpa = do_bench(partial(F.scaled_dot_product_attention, q, k, v), return_mode="median")
    print(f"== H={H} L={L} D={D} topk={topk}: cuDNN SDPA {t_sdpa:.3f} ms", flush=True)
    for dense in ([False, True] if dense_too else [False]):
        bk = 128 if dense else BLOCK_K
        p = _prepare(q, k, v, 1.0 if dense else topk, None if dense else w, None if dense else bias,
                     BLOCK_Q, bk, dense, True)
        tag = "dense bk128" if dense else "sparse"
        ref = _launch(p, "pointer")
        t_ptr = do_bench(partial(_launch, p, "pointer"), return_mode="median")
        print(f"{tag:<12} pointer (autotuned)        {t_ptr:7.3f} ms  {t_sdpa / t_ptr:6.2f}x cuDNN", flush=True)
        best = (math.inf, None)
        for cfg in _configs():
            cfg["TMA_MASK"] = mask
            label = (f"m{mask} pair={int(cfg['PAIR'])} ws={int(cfg['WARP_SPEC'])} bm={cfg['BLOCK_M']} w={cfg['num_warps']} "
                     f"st={cfg['num_stages']}")
            try:
                o = _launch(p, "tma", cfg)
                torch.cuda.synchronize()
                c = _cos(o, ref)
                t = do_bench(partial(_launch, p, "tma", cfg), return_mode="median")
                best = min(best, (t, label), key=lambda r: r[0])
                print(f"{tag:<12} tma {label:<24} {t:7.3f} ms  {t_sdpa / t:6.2f}x cuDNN  {t_ptr / t:5.2f}x pointer  "
                      f"cos {c:.6f}", flush=True)
            except Exception as exc:  # noqa: BLE001 - a config this Triton cannot build is a result too
                print(f"{tag:<12} tma {label:<24} failed: {type(exc).__name__}: {str(exc)[:160]}", flush=True)
        if mask != 7:  # the autotuned kernel loads every tile by TMA
            continue
        try:
            o_auto = _launch(p, "tma")  # the autotuner over _TMA_ATTN_CONFIGS
            t_auto = do_bench(partial(_launch, p, "tma"), return_mode="median")
            print(f"{tag:<12} tma (autotuned)            {t_auto:7.3f} ms  {t_sdpa / t_auto:6.2f}x cuDNN  "
                  f"{t_ptr / t_auto:5.2f}x pointer  cos {_cos(o_auto, ref):.6f}; best fixed: {best[1]} {best[0]:.3f} ms")
        except Exception as exc:  # noqa: BLE001
            print(f"{tag:<12} tma (autotuned) failed: {type(exc).__name__}: {str(exc)[:300]}", flush=True)
            continue
        if not dense:
            for kern in ("pointer", "tma"):
                sagesla.ATTN_KERNEL = kern
                fn = partial(sagesla.sagesla_attention, q, k, v, topk_ratio=topk, proj_l_weight=w, proj_l_bias=bias)
                t = do_bench(fn, return_mode="median")
                print(f"{tag:<12} whole sagesla_attention, {kern:<7} {t:7.3f} ms  {t_sdpa / t:6.2f}x cuDNN", flush=True)
            sagesla.ATTN_KERNEL = "auto"
        del p, ref
    print("tma autotune choices:", {str(key): str(cfg) for key, cfg in sagesla._sagesla_tma.cache.items()})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--heads", default="12,40")
    ap.add_argument("--lengths", default="32760,75600")
    ap.add_argument("--mask", type=int, default=7, help="TMA_MASK: which tiles come by TMA (1 Q, 2 K, 4 V^T)")
    args = ap.parse_args()
    print(f"{torch.cuda.get_device_name()} torch {torch.__version__} triton {triton.__version__}")
    for H, L in zip((int(h) for h in args.heads.split(",")), (int(n) for n in args.lengths.split(",")), strict=True):
        run(H, L, dense_too=False, mask=args.mask)
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
