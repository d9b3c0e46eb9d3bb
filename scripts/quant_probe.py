"""GPU micro-bench: the per-token int8 activation quantization, the Triton kernel (`int8_quant`) against the
Gluon one (`int8_quant_gluon`), at the Wan DiT's shapes, same inputs, same process (median µs, and the
bandwidth of the bytes each must move: x read once, codes written once), the Gluon kernel also at 4 and 16
warps. Also how far apart their codes and scales are, and what the public `quantize_activation` takes under each
TURBOVID_WORKER__QUANT_KERNEL.

    python3 scripts/quant_probe.py
"""

from __future__ import annotations

import os
from functools import partial

import torch
from triton.testing import do_bench

from kernels import int8_quant as iq
from kernels import int8_quant_gluon as iqg

SHAPES = [  # (M, K, GELU, what)
    (32760, 8960, True, "1.3B FFN-down input (GELU)"),
    (75600, 13824, True, "14B FFN-down input (GELU)"),
    (32760, 1536, False, "1.3B projection input"),
    (75600, 5120, False, "14B projection input"),
]


def main() -> None:
    print(f"device {torch.cuda.get_device_name()}, gluon available {iqg.available()}", flush=True)
    for m, k, gelu, what in SHAPES:
        x = (torch.randn(m, k, device="cuda") * 2).to(torch.bfloat16)
        q = torch.empty(m, k, device="cuda", dtype=torch.int8)
        s = torch.empty(m, device="cuda")
        moved = m * k * 3  # bf16 read + int8 write
        copy = do_bench(partial(q.copy_, x), warmup=10, rep=100, return_mode="median")
        triton_run = partial(iq._quantize, x, m, k, x.stride(0), None, None, None, gelu, gluon=False)
        gluon_run = partial(iqg.quantize_rows, x, q, s, gelu)
        t_t = do_bench(triton_run, warmup=10, rep=100, return_mode="median")
        t_g = do_bench(gluon_run, warmup=10, rep=100, return_mode="median")
        t_t2 = do_bench(triton_run, warmup=10, rep=100, return_mode="median")
        q_t, s_t = triton_run()
        gluon_run()
        diff = (q.int() - q_t.int()).abs()
        s_rel = ((s - s_t).abs() / s_t.clamp_min(1e-30)).max().item()
        print(f"{what} [{m} x {k}]: copy {copy * 1e3:.0f} us ({moved / copy / 1e9:.2f} TB/s); triton {t_t * 1e3:.0f} / "
              f"{t_t2 * 1e3:.0f} us ({moved / t_t / 1e9:.2f} TB/s); gluon {t_g * 1e3:.0f} us ({moved / t_g / 1e9:.2f} TB/s, "
              f"{t_t / t_g:.2f}x); codes apart: max {int(diff.max())}, {float((diff > 0).float().mean()):.2e} of them; "
              f"scales max rel {s_rel:.1e}", flush=True)
        for warps in (4, 8, 16):  # each warp count (the line above: the kernel's default for K)
            t = do_bench(partial(iqg.quantize_rows, x, q, s, gelu, warps), warmup=10, rep=100, return_mode="median")
            print(f"  gluon, {warps} warps: {t * 1e3:.0f} us ({moved / t / 1e9:.2f} TB/s)", flush=True)
        for choice in ("triton", "auto"):
            os.environ[iq.KERNEL_ENV] = choice
            t = do_bench(partial(iq.quantize_activation, x, gelu=gelu), warmup=10, rep=100, return_mode="median")
            print(f"  quantize_activation, {iq.KERNEL_ENV}={choice}: {t * 1e3:.0f} us "
                  f"(gluon checked: {iq._GLUON_CHECKED})", flush=True)
        del x, q, s, q_t, s_t
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
