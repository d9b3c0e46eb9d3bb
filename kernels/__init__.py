"""TurboVid kernels: Triton kernels, each with its PyTorch reference (one file per kernel).

Import-light on purpose: `import kernels` does not import triton. The W8A8 entry points below load
`kernels.w8a8` (and triton) on first access.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "W8A8Weight": "kernels.w8a8",
    "prepare_weight": "kernels.w8a8",
    "w8a8_linear": "kernels.w8a8",
    "w8a8_linear_int8": "kernels.w8a8",
    "quantize_weight_blockwise": "kernels.int8_quant",
    "dequantize_weight_blockwise": "kernels.int8_quant",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'kernels' has no attribute {name!r}")
