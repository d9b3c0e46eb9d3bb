"""Launch configurations shared by the row-wise norm kernels (rmsnorm_rope.py, adaln.py).

Both kernels process one token row (C channels) per tile and come in three forms chosen by autotuning:
straight-line tiles of BLOCK_L rows (PROGS_PER_SM = 0), a persistent grid of PROGS_PER_SM programs per
SM, and rows SPLIT into two power-of-two parts (C = BLOCK_C/2 + tail, no idle lanes for C = 1536, 5120).
kernels/NOTES_norms.md records which form won where on the H200.
"""

from __future__ import annotations

import torch
import triton

ROW_CONFIGS = [
    triton.Config({"BLOCK_L": bl, "SPLIT": 0, "PROGS_PER_SM": 0}, num_warps=nw, num_stages=1)
    for bl in (1, 2, 4, 8)
    for nw in (4, 8, 16)
] + [triton.Config({"BLOCK_L": bl, "SPLIT": 0, "PROGS_PER_SM": 0}, num_warps=2, num_stages=1) for bl in (1, 2)] + [
    triton.Config({"BLOCK_L": 1, "SPLIT": split, "PROGS_PER_SM": 32 // nw}, num_warps=nw, num_stages=1)
    for split in (0, 1)
    for nw in (2, 4, 8, 16)
]


def prune_row_configs(configs: list[triton.Config], named_args: dict, **kwargs) -> list[triton.Config]:
    """Straight-line: tiles of 2K-32K elements with >= 4 per thread. Persistent: 8-32 elements per
    thread in the first part, SPLIT only where the row is not a power of two. On CPU keep the first."""
    args = {**named_args, **kwargs}
    block_c, c = args["BLOCK_C"], args["C"]
    kept = []
    for cfg in configs:
        bl, split, nw = cfg.kwargs["BLOCK_L"], cfg.kwargs["SPLIT"], cfg.num_warps
        if cfg.kwargs["PROGS_PER_SM"] == 0:
            ok = 2048 <= bl * block_c <= 32768 and bl * block_c >= 4 * 32 * nw
        else:
            head = block_c // 2 if split else block_c
            ok = not (split and c == block_c) and head // (32 * nw) in (8, 16, 32)
        if ok:
            kept.append(cfg)
    kept = kept or configs[:1]
    if not named_args["x_ptr"].is_cuda:
        return kept[:1]
    return kept



def split_tail(C: int) -> int:
    """Width of the second part when a row is split: next power of two >= C - next_pow2(C)/2."""
    return triton.next_power_of_2(max(1, C - triton.next_power_of_2(C) // 2))


def num_sms(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 1
