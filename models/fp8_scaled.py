"""fp8 checkpoints (ComfyUI / Kijai) for the DiT and umT5: plain `float8_e4m3fn` and "scaled" fp8.

Layouts, any key prefix:

- plain fp8: Linear weights stored as `float8_e4m3fn` (or `float8_e5m2`), w = weight;
- scaled fp8 (ComfyUI `*_fp8_scaled.safetensors`, Kijai `*_fp8_e4m3fn_scaled_KJ.safetensors`): a marker
  tensor `scaled_fp8` (empty, its dtype names the fp8 format) and per Linear `X.scale_weight` (fp32,
  one value, or one per output row) with w = weight · scale_weight; `X.scale_input` is the activation
  scale of ComfyUI's fp8 matmul and is not needed for a dequantized weight;
- the newer ComfyUI spelling `X.weight_scale` (+ `X.input_scale`, `X.comfy_quant`) means the same.

`dequantize_fp8(sd, dtype)` turns every such weight into a dense tensor in `dtype` and drops the scale
and marker tensors, so that the result is an ordinary state dict (and `linear="w8a8"` requantizes it).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)
MARKER = "scaled_fp8"
_WEIGHT_SCALES = ("scale_weight", "weight_scale")
_DROPPED = ("scale_input", "input_scale", "comfy_quant")


def has_fp8(sd: Mapping[str, torch.Tensor]) -> bool:
    return any(v.dtype in FP8_DTYPES for v in sd.values())


def is_marker(key: str) -> bool:
    """The `scaled_fp8` marker tensor (any prefix)."""
    return key == MARKER or key.endswith("." + MARKER)


def _suffix(key: str) -> str:
    return key.rpartition(".")[2]


def dequantize_fp8(
    sd: Mapping[str, torch.Tensor], dtype: torch.dtype = torch.float32
) -> dict[str, torch.Tensor]:
    """A state dict without fp8: scaled weights multiplied out, plain fp8 cast; both in `dtype`.
    Dicts without fp8 tensors or scales are returned unchanged (as a new dict)."""
    if not has_fp8(sd) and not any(_suffix(k) in _WEIGHT_SCALES for k in sd):
        return dict(sd)
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if is_marker(key) or _suffix(key) in _DROPPED or _suffix(key) in _WEIGHT_SCALES:
            continue
        stem = key[: -len("weight")] if key.endswith("weight") else None
        scale = next((sd[stem + s] for s in _WEIGHT_SCALES if stem is not None and stem + s in sd), None)
        if scale is not None:
            w = value.to(torch.float32)
            s = scale.to(torch.float32)
            if s.numel() > 1 and w.dim() >= 1 and s.numel() == w.shape[0]:
                s = s.reshape(-1, *([1] * (w.dim() - 1)))  # one scale per output row
            elif s.numel() == 1:
                s = s.reshape(())
            out[key] = (w * s).to(dtype)
        elif value.dtype in FP8_DTYPES:
            out[key] = value.to(torch.float32).to(dtype)
        else:
            out[key] = value
    return out
