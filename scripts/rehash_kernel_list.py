"""Carry a shipped kernel list (worker/autotune/*.kernels.json) over an edit of a kernel's body.

A list entry holds the kernel's name, a hash of its source and Triton's specialization data (argument
types, constexpr values, compile options). `worker.precompile` skips an entry whose source hash no longer
matches, so an edited kernel compiles at the worker's first launch until a GPU run records the list again.
When the edit kept the kernel's parameters (same names, same order), the recorded specialization still
describes a valid compile of the new body: this script puts the new source hash into such entries and
refuses entries whose parameters changed. `tests/unit/worker/test_precompile.py` checks the result
(`test_the_shipped_lists_match_the_kernels_sources`). Whether the new body still compiles and runs for
each recorded specialization is for the GPU to show: a worker's start log counts compiled and failed entries.

`--launch-option maxnreg=168`: the kernel's launch now passes that compile option (Triton keeps such
options in the entry's `options` and, as `{'maxnreg': 168, 'debug': ..., ...}`, at the end of its cache
`key`): both are rewritten, so the precompiled kernel is the one the launch looks up.

    python scripts/rehash_kernel_list.py KERNEL [KERNEL ...] [--files F ...]
"""

# ruff: noqa: T201 - a maintenance script: printing is its output
from __future__ import annotations

import argparse
import ast
import importlib
import inspect
import json
from pathlib import Path

import triton

from worker.precompile import SHIPPED, source_hash, unwrap, write_json


def _with_option(key: str, name: str, value: int) -> str:
    """The cache key with `name=value` first in its trailing options dict (Triton 3.6's
    `str(specialization) + str(options)`, the launch's own options ahead of debug / instrumentation)."""
    head, brace, tail = key.rpartition("{")
    if not brace or not tail.endswith("}"):
        raise SystemExit(f"unexpected cache key layout: ...{key[-120:]}")
    opts = ast.literal_eval(brace + tail)
    opts.pop(name, None)
    return head + str({name: value, **opts})


def rehash(path: Path, kernels: set[str], options: dict[str, int] | None = None) -> int:
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
        spec, updated = entry["spec"], False
        for name, value in (options or {}).items():
            if spec["options"].get(name) != value:
                spec["options"][name] = value
                spec["key"] = _with_option(spec["key"], name, value)
                updated = True
        new = source_hash(fn)
        if entry["source"] != new:
            entry["source"], updated = new, True
        changed += updated
    write_json(path, data, "kernel list", sort_keys=False)  # Triton's key order (its launcher follows it)
    return changed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("kernels", nargs="+", help="full names, e.g. kernels.w8a8_gluon._w8a8_gluon_kernel")
    ap.add_argument("--files", nargs="*", type=Path, default=sorted(SHIPPED.glob("*.kernels.json")))
    ap.add_argument("--launch-option", action="append", default=[], metavar="NAME=INT",
                    help="a compile option the kernel's launch passes (e.g. maxnreg=168)")
    args = ap.parse_args()
    options = {k: int(v) for k, v in (o.split("=", 1) for o in args.launch_option)}
    for path in args.files:
        print(f"{path}: {rehash(path, set(args.kernels), options)} entries updated")


if __name__ == "__main__":
    main()
