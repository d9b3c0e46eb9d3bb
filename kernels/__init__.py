"""TurboVid kernels: Triton kernels, each with its PyTorch reference (one file per kernel).

Import-light on purpose: `import kernels` does not import triton. The W8A8 entry points below load
`kernels.w8a8` (and triton) on first access.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Callable
from typing import Any

_LAZY = {
    "W8A8Weight": "kernels.w8a8",
    "prepare_weight": "kernels.w8a8",
    "w8a8_linear": "kernels.w8a8",
    "w8a8_linear_int8": "kernels.w8a8",
    "quantize_weight_blockwise": "kernels.int8_quant",
    "dequantize_weight_blockwise": "kernels.int8_quant",
}

__all__ = [*sorted(_LAZY), "checked_once", "checked_kernel", "env_choice"]

_WARNED: set[tuple[str, str]] = set()  # (variable, value) pairs `env_choice` has warned about


def env_choice(variable: str, choices: tuple[str, ...], default: str) -> str:
    """A kernel choice read from its environment variable (a worker setting's own name, so scripts and rank
    processes follow it too), case-insensitive; an unknown value means `default`, with a warning said once per
    value and process (these are read at every call of a forward's kernels)."""
    choice = os.environ.get(variable, default).lower()
    if choice in choices:
        return choice
    if (variable, choice) not in _WARNED:
        _WARNED.add((variable, choice))
        logging.getLogger(__name__).warning("%s=%r is not one of %s: using %s", variable, choice, choices, default)
    return default


def checked_once(cache: dict[Any, bool], key: Any, check: Callable[[], bool]) -> bool:
    """A faster kernel's first-call check, kept per key (device, specialization) for the process: `check()`'s answer,
    run on the first call outside a CUDA graph capture. A call inside a capture cannot launch the check, so it
    answers False (the fallback kernel is captured) and remembers nothing."""
    if key not in cache:
        import torch

        if torch.cuda.is_current_stream_capturing():
            return False
        cache[key] = check()
    return cache[key]


def checked_kernel(cache: dict[Any, bool], device_index: int) -> str:
    """What a `checked_once` cache says ran on a device, as /v1/models reports it: "gluon" (every check there passed),
    "mixed" (some fell back: the log says why) or "triton" (none passed, or none ran there). Its keys are the device
    index, or tuples that start with it."""
    checked = [ok for key, ok in cache.items() if (key[0] if isinstance(key, tuple) else key) == device_index]
    return "triton" if not any(checked) else "gluon" if all(checked) else "mixed"


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'kernels' has no attribute {name!r}")
