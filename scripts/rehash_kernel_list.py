"""Carry a shipped kernel list (worker/autotune/*.kernels.json) over an edit of a kernel's body.

A list entry holds the kernel's name, a hash of its source and Triton's specialization data (argument
types, constexpr values, compile options). `worker.precompile` skips an entry whose source hash no longer
matches, so an edited kernel compiles at the worker's first launch until a GPU run records the list again.
When the edit kept the kernel's parameters (same names, same order), the recorded specialization still
describes a valid compile of the new body: this script puts the new source hash into such entries and
refuses entries whose parameters changed. `tests/unit/worker/test_precompile.py` checks the result
(`test_the_shipped_lists_match_the_kernels_sources`). Whether the new body still compiles and runs for
each recorded specialization is for the GPU to show: a worker's start log counts compiled and failed entries.

    python scripts/rehash_kernel_list.py KERNEL [KERNEL ...] [--files F ...]
"""

# ruff: noqa: T201 - a maintenance script: printing is its output
from __future__ import annotations

import argparse
import importlib
import inspect
import json
from pathlib import Path

import triton

from worker.precompile import SHIPPED, source_hash, unwrap, write_json


def rehash(path: Path, kernels: set[str]) -> int:
    data = json.loads(path.read_text())
    changed = 0
    for entry in data["kernels"]:
        if entry["kernel"] not in kernels:
            continue
        module, name = entry["kernel"].rsplit(".", 1)
        fn = unwrap(getattr(importlib.import_module(module), name), triton.runtime.jit.JITFunction)
        params = list(inspect.signature(fn.fn).parameters)
        recorded = list(entry["spec"]["signature"])
        if [p for p in params if p != "num_warps"] != [p for p in recorded if p != "num_warps"]:
            raise SystemExit(f"{entry['kernel']}: parameters changed ({recorded} -> {params}); record the list on a GPU")
        new = source_hash(fn)
        if entry["source"] != new:
            entry["source"], changed = new, changed + 1
    write_json(path, data, "kernel list", sort_keys=False)  # Triton's key order (its launcher follows it)
    return changed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("kernels", nargs="+", help="full names, e.g. kernels.w8a8_gluon._w8a8_gluon_kernel")
    ap.add_argument("--files", nargs="*", type=Path, default=sorted(SHIPPED.glob("*.kernels.json")))
    args = ap.parse_args()
    for path in args.files:
        print(f"{path}: {rehash(path, set(args.kernels))} entries re-hashed")


if __name__ == "__main__":
    main()
