"""W8A8 linear backend: offline block-128 quantization and the runtime int8 module (CPU path)."""

from __future__ import annotations

import torch
from torch import nn

from models.linear import (
    W8A8Linear,
    convert_for_runtime,
    dequantize_state_dict,
    is_quantized_linear_key,
    quantize_state_dict,
)


def test_quantize_state_dict_block_scales_and_int8_range():
    torch.manual_seed(0)
    w = torch.randn(300, 200) * torch.linspace(0.01, 3.0, 200)  # columns of very different magnitude
    w[5, 7] = 50.0  # a block whose absmax must map to exactly 127
    w[290, 150] = -30.0
    sd = {"blocks.0.ffn.0.weight": w, "blocks.0.ffn.0.bias": torch.randn(300), "head.head.weight": w[:10]}
    q = quantize_state_dict(sd)
    int8, scale = q["blocks.0.ffn.0.int8_weight"], q["blocks.0.ffn.0.scale"]
    assert int8.dtype == torch.int8 and int8.shape == (300, 200)
    assert scale.dtype == torch.float32 and scale.shape == (3, 2)  # ceil(300/128), ceil(200/128)
    assert int8.min() >= -127 and int8.max() <= 127  # never -128
    assert int8[5, 7] == 127 and torch.isclose(scale[0, 0], torch.tensor(50.0 / 127))
    assert int8[290, 150] == -127 and torch.isclose(scale[2, 1], torch.tensor(30.0 / 127))
    # each element is within half a quantization step of its block
    step = scale.repeat_interleave(128, 0)[:300].repeat_interleave(128, 1)[:, :200]
    back = dequantize_state_dict(q)["blocks.0.ffn.0.weight"]
    assert ((back - w).abs() <= step / 2 + 1e-6).all()
    assert torch.equal(q["blocks.0.ffn.0.bias"], sd["blocks.0.ffn.0.bias"])
    assert torch.equal(q["head.head.weight"], sd["head.head.weight"])  # outside blocks: untouched
    assert not is_quantized_linear_key("blocks.0.self_attn.attn_op.local_attn.proj_l.weight")


def test_w8a8_module_forward_equals_dequantized_linear():
    torch.manual_seed(1)
    dense = nn.Linear(200, 300)
    q = quantize_state_dict({"blocks.0.x.weight": dense.weight.detach()})
    mod = W8A8Linear(200, 300)
    mod.load_state_dict({"int8_weight": q["blocks.0.x.int8_weight"], "scale": q["blocks.0.x.scale"],
                         "bias": dense.bias.detach()}, assign=True)
    x = torch.randn(4, 7, 200)
    w = dequantize_state_dict(q)["blocks.0.x.weight"]
    assert torch.allclose(mod(x), x @ w.T + dense.bias, atol=1e-5)
    assert torch.allclose(mod(x), dense(x), atol=0.05)  # and close to the float layer

    mod.to(torch.bfloat16)
    assert mod.scale.dtype == torch.float32 and mod.int8_weight.dtype == torch.int8
    assert mod.bias.dtype == torch.bfloat16
    assert mod(x.bfloat16()).dtype == torch.bfloat16


def test_convert_for_runtime_swaps_block_linears_only():
    torch.manual_seed(2)
    model = nn.Module()
    model.blocks = nn.ModuleList(nn.Sequential(nn.Linear(64, 128), nn.GELU(), nn.Linear(128, 64)) for _ in range(2))
    model.embed = nn.Linear(8, 64)
    x = torch.randn(3, 64)
    with torch.no_grad():
        want = model.blocks[1](model.blocks[0](x))
        convert_for_runtime(model, "w8a8")
        got = model.blocks[1](model.blocks[0](x))
    assert isinstance(model.blocks[0][0], W8A8Linear) and isinstance(model.blocks[1][2], W8A8Linear)
    assert type(model.embed) is nn.Linear
    assert torch.nn.functional.cosine_similarity(got.flatten(), want.flatten(), dim=0) > 0.999

    with torch.device("meta"):
        meta = nn.Module()
        meta.blocks = nn.ModuleList([nn.Linear(16, 16)])
        convert_for_runtime(meta, "w8a8")
    assert meta.blocks[0].int8_weight.is_meta and meta.blocks[0].scale.shape == (1, 1)


def test_kernel_layout_conversion_keeps_one_int8_copy_and_the_same_layer():
    import torch

    from kernels.int8_quant import quantize_weight_blockwise
    from models.linear import BLOCK, W8A8Linear

    torch.manual_seed(0)
    n, k = 300, 200
    w = torch.randn(n, k)
    q, s = quantize_weight_blockwise(w, BLOCK)
    layer = W8A8Linear(k, n)
    layer.load_state_dict({"int8_weight": q, "scale": s, "bias": torch.randn(n)}, assign=True)
    assert layer.layout == "block"
    x = torch.randn(7, k)
    before = layer(x)
    layer.to_kernel_layout()
    assert layer.layout == "channel" and layer.scale.shape == (n, 1) and layer.int8_weight.dtype == torch.int8
    assert [name for name, _ in layer.named_buffers()] == ["int8_weight", "scale"]
    after = layer(x)
    rel = (after - before).norm() / before.norm()
    assert rel < 0.02  # the per-channel requantization's extra rounding, a few 1e-3 here
    layer.to_kernel_layout()  # idempotent
    assert torch.equal(layer(x), after)
