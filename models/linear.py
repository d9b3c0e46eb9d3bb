"""Linear backends of the DiT blocks: "native" (nn.Linear) and "w8a8" (int8 weights, 128×128 block scales).

Quantization is two steps (gpt-fast style):

1. offline, `quantize_state_dict(sd)`: every block Linear ``…weight`` [N, K] becomes ``…int8_weight``
   [N, K] int8 + ``…scale`` [ceil(N/128), ceil(K/128)] fp32, symmetric, w ≈ int8 · scale of its
   128×128 block, values in [-127, 127] (TurboDiffusion's ``-quant.pth`` layout);
   `dequantize_state_dict` is the inverse (up to rounding).
2. at run time, `convert_for_runtime(model, "w8a8")` swaps each block nn.Linear for `W8A8Linear`
   (built on the meta device before `load_state_dict(assign=True)`); on CUDA the loader then calls
   `prepare_for_kernels(model)` once, which converts every `W8A8Linear` to the Triton GEMM's layout.

`W8A8Linear.forward` is the plain PyTorch path (dequantize the weight, F.linear). The Triton int8 GEMM
(per-token int8 activations, int32 accumulate, scales in the epilogue) is reached through the one op
dispatch, `models.ops.Ops.linear`, with the weight from `W8A8Linear.kernel_weight()`.
Only Linears inside ``blocks`` are quantized (as TurboDiffusion does), never SLA's ``proj_l``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

BLOCK = 128
LINEAR_BACKENDS = ("native", "w8a8")
_SKIP = ("proj_l",)


def _int8_quant():  # noqa: ANN202 - the module object
    from kernels import int8_quant

    return int8_quant


def is_quantized_linear_key(key: str) -> bool:
    """True for the `weight` of a Linear that the w8a8 backend quantizes (block Linears, not proj_l)."""
    return key.startswith("blocks.") and key.endswith(".weight") and not any(s in key for s in _SKIP)


class W8A8Linear(nn.Module):
    """y = x @ (int8_weight · scale)ᵀ + bias.

    Buffers: ``int8_weight`` [N, K] int8 and ``scale`` fp32 (kept fp32 even when the module is cast to
    another dtype); parameter ``bias`` [N] or None. x: [..., K] -> [..., N]. The scale has one of two
    layouts:

    - "block" (as loaded): [ceil(N/128), ceil(K/128)], one scale per 128×128 block — the checkpoint;
    - "channel" (after `to_kernel_layout`, done once at load by `prepare_for_kernels`): [N, 1], one scale
      per output channel — what the Triton GEMM applies in its epilogue. The conversion is in place, so
      the GPU holds one int8 copy of the weight, not two.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None):  # noqa: ANN001
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        nb, kb = -(-out_features // BLOCK), -(-in_features // BLOCK)
        self.register_buffer("int8_weight", torch.empty(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer("scale", torch.empty(nb, kb, dtype=torch.float32, device=device))
        self.bias = nn.Parameter(torch.empty(out_features, device=device)) if bias else None

    @property
    def layout(self) -> str:
        return "channel" if tuple(self.scale.shape) == (self.out_features, 1) and self.out_features > 1 else "block"

    def _apply(self, fn, recurse=True):  # noqa: ANN001, ANN202
        # Module.to(dtype) would round the scales to bf16; move them but keep them fp32.
        scale = self.scale
        super()._apply(fn, recurse)
        target = fn(torch.zeros((), dtype=torch.float32, device=scale.device))
        self.scale = scale.to(device=target.device, dtype=torch.float32)
        return self

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The weight the int8 data stands for, [N, K] in `dtype`."""
        if self.layout == "channel":
            return (self.int8_weight.float() * self.scale).to(dtype)
        return _int8_quant().dequantize_weight_blockwise(self.int8_weight, self.scale, BLOCK, dtype)

    @torch.no_grad()
    def to_kernel_layout(self) -> None:
        """Requantize block scales to per-channel scales in place (extra rounding: kernels/NOTES_w8a8.md)."""
        if self.layout == "block":
            qweight, scale = _int8_quant().requantize_per_channel(self.int8_weight, self.scale, BLOCK)
            self.int8_weight = qweight.contiguous()
            self.scale = scale.reshape(self.out_features, 1).float()

    def kernel_weight(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(int8 weight [N, K], per-channel scale [N] fp32) for the Triton GEMM (kernels.w8a8.W8A8Weight)."""
        if self.layout != "channel":
            raise RuntimeError("W8A8Linear is still in the checkpoint's block layout; the loader converts it "
                               "once with models.linear.prepare_for_kernels(model) before the Triton GEMM runs")
        return self.int8_weight, self.scale.view(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The plain PyTorch path: x [..., K] @ dequantized weightᵀ + bias -> [..., N] in x.dtype."""
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.dequantized_weight(x.dtype), bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, layout={self.layout}")


def quantize_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Wan-named state dict -> the same with each block Linear weight as int8_weight + block scale."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if is_quantized_linear_key(key) and value.dim() == 2:
            q, s = _int8_quant().quantize_weight_blockwise(value, BLOCK)
            stem = key[: -len("weight")]
            out[stem + "int8_weight"], out[stem + "scale"] = q, s
        else:
            out[key] = value
    return out


def dequantize_state_dict(
    state_dict: Mapping[str, torch.Tensor], dtype: torch.dtype = torch.float32
) -> dict[str, torch.Tensor]:
    """Inverse of `quantize_state_dict`: ``int8_weight`` + ``scale`` -> ``weight`` in `dtype`."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key.endswith(".scale") and key[: -len("scale")] + "int8_weight" in state_dict:
            continue
        if key.endswith(".int8_weight"):
            stem = key[: -len("int8_weight")]
            if stem + "scale" not in state_dict:
                raise ValueError(f"{key} has no matching {stem}scale")
            out[stem + "weight"] = _int8_quant().dequantize_weight_blockwise(
                value, state_dict[stem + "scale"], BLOCK, dtype
            )
        else:
            out[key] = value
    return out


def is_quantized(state_dict: Mapping[str, torch.Tensor]) -> bool:
    return any(k.endswith(".int8_weight") for k in state_dict)


def convert_for_runtime(model: nn.Module, linear: str) -> nn.Module:
    """Swap every nn.Linear under ``model.blocks`` (except SLA's proj_l) for `W8A8Linear` in place.

    Run it on a meta-device model before loading int8 weights with `load_state_dict(assign=True)`.
    """
    if linear not in LINEAR_BACKENDS:
        raise ValueError(f"unknown linear backend {linear!r}; known: {LINEAR_BACKENDS}")
    if linear == "native":
        return model
    blocks = model.get_submodule("blocks")
    targets = [
        (name, module) for name, module in blocks.named_modules()
        if type(module) is nn.Linear and not any(s in name for s in _SKIP)
    ]
    for name, module in targets:
        parent_name, _, child = name.rpartition(".")
        parent = blocks.get_submodule(parent_name) if parent_name else blocks
        twin = W8A8Linear(module.in_features, module.out_features, module.bias is not None,
                          device=module.weight.device)
        if not module.weight.is_meta:  # a model with real weights: quantize them now
            q, s = _int8_quant().quantize_weight_blockwise(module.weight.detach(), BLOCK)
            twin.int8_weight, twin.scale = q, s
            if module.bias is not None:
                twin.bias = nn.Parameter(module.bias.detach(), requires_grad=False)
        setattr(parent, child, twin)
    return model


@torch.no_grad()
def prepare_for_kernels(model: nn.Module) -> int:
    """Convert every `W8A8Linear` of `model` to the Triton GEMM's per-channel layout, in place, once (the
    loader calls it after `load_state_dict` when the model runs the kernels). Returns how many."""
    layers = [m for m in model.modules() if isinstance(m, W8A8Linear)]
    for layer in layers:
        layer.to_kernel_layout()
    return len(layers)
