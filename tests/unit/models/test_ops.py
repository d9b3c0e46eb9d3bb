"""models/ops.py: the one dispatch (backends fixed at load, the test override), the AdaLN int8 output
feeding W8A8 directly, the W8A8 layout converted once at load, and "auto" backends from the manifest."""

from __future__ import annotations

import dataclasses
import json
import logging
import os

import pytest
import torch

from models.config import WanConfig
from models.dit import WanTransformer
from models.linear import W8A8Linear, convert_for_runtime, prepare_for_kernels
from models.ops import Int8Activation, Ops, override, select_ops

TINY = WanConfig.from_name("wan-tiny")
PROJ_L = "self_attn.attn_op.local_attn.proj_l"

needs_kernels = pytest.mark.skipif(
    not (torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"),
    reason="needs CUDA or TRITON_INTERPRET=1",
)


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.nn.functional.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0).item()


def _state_dict(cfg: WanConfig = TINY, sla: bool = False, seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    model = WanTransformer(cfg, attention="sla" if sla else "dense")
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(0.0, 0.05 if "proj_l" in name else 0.2)
    return model.state_dict()


def _inputs(cfg: WanConfig = TINY, device: str = "cpu", dtype: torch.dtype = torch.float32, text_len: int = 512):
    g = torch.Generator().manual_seed(3)
    latents = torch.randn(1, 16, 2, 4, 6, generator=g)
    ctx = torch.randn(1, text_len, cfg.text_dim, generator=g)
    return latents.to(device), torch.tensor([500.0], device=device), ctx.to(device, dtype)


# 1. the dispatch object and the override ---------------------------------------------------------------
def test_ops_validate_and_override_is_scoped():
    with pytest.raises(ValueError, match="unknown attention backend"):
        Ops(attention="flash")
    with pytest.raises(ValueError, match="unknown linear backend"):
        Ops(linear="fp4")
    ops = Ops(attention="sla", linear="w8a8", kernels=True)
    assert ops.effective() is ops
    with override(attention="dense"):
        assert ops.effective() == Ops(attention="dense", linear="w8a8", kernels=True)
        with override(kernels=False):  # nests, keeping the outer choice
            assert ops.effective() == Ops(attention="dense", linear="w8a8", kernels=False)
        assert ops.effective().kernels is True
    assert ops.effective() is ops  # nothing outlives the block
    with pytest.raises(ValueError, match="unknown attention backend"), override(attention="nope"):
        pass


def test_old_override_name_still_imports_and_forces_attention():
    from models.attention import override_backend

    with override_backend("sla"):
        assert Ops().effective().attention == "sla"
    assert Ops().effective().attention == "dense"


def test_model_holds_its_ops_and_rejects_a_contradiction():
    model = WanTransformer(TINY, ops=Ops(attention="sla"))
    assert model.ops.attention == "sla" and model.blocks[0].self_attn.attn_op.local_attn is not None
    assert WanTransformer(TINY).ops == Ops()
    with pytest.raises(ValueError, match="contradicts"):
        WanTransformer(TINY, attention="dense", ops=Ops(attention="sla"))


def test_plain_modulate_is_layernorm_then_adaln():
    x = torch.randn(2, 5, 16) * 3 + 1
    shift, scale = torch.randn(2, 1, 16), torch.randn(2, 1, 16)
    want = torch.nn.functional.layer_norm(x, (16,), eps=1e-6) * (1 + scale) + shift
    got = Ops().modulate(x, shift, scale, 1e-6, torch.float32, next_linear=W8A8Linear(16, 8))
    assert isinstance(got, torch.Tensor)  # plain PyTorch never emits int8
    torch.testing.assert_close(got, want)


# 2. the kernels path (Triton interpreter on CPU): AdaLN int8 out -> W8A8 without a quant pass ---------
def _w8a8_model(dtype: torch.dtype) -> WanTransformer:
    with torch.device("meta"):
        model = WanTransformer(TINY, ops=Ops(linear="w8a8"))
        convert_for_runtime(model, "w8a8")
    from models.linear import quantize_state_dict

    model.load_state_dict(quantize_state_dict(_state_dict()), assign=True)
    model.to_dtype(dtype)
    return model.eval()


@needs_kernels
def test_kernel_layout_is_made_once_at_load_never_in_forward():
    model = _w8a8_model(torch.bfloat16)
    layers = [m for m in model.modules() if isinstance(m, W8A8Linear)]
    assert layers and all(m.layout == "block" for m in layers)
    latents, t, ctx = _inputs(dtype=torch.bfloat16, text_len=16)
    with torch.no_grad(), override(kernels=True), pytest.raises(RuntimeError, match="prepare_for_kernels"):
        model(latents, t, ctx)
    assert all(m.layout == "block" for m in layers)  # forward did not convert anything
    assert prepare_for_kernels(model) == len(layers)
    assert all(m.layout == "channel" for m in layers)


@needs_kernels
def test_adaln_int8_output_feeds_w8a8_directly(monkeypatch):
    import kernels.w8a8 as w8a8

    model = _w8a8_model(torch.bfloat16)
    latents, t, ctx = _inputs(dtype=torch.bfloat16, text_len=16)  # few text tokens: the interpreter is slow
    with torch.no_grad():
        plain = model(latents, t, ctx)  # PyTorch: block-scaled dequantized weights
    prepare_for_kernels(model)
    quant_passes, int8_calls = [], []
    real_quant, real_int8 = w8a8.quantize_activation, w8a8.w8a8_linear_int8

    def count_quant(x, **kwargs):
        quant_passes.append((tuple(x.shape), kwargs.get("gelu", False)))
        return real_quant(x, **kwargs)

    def count_int8(xq, *args, **kwargs):
        int8_calls.append(xq)  # kept alive, so ids are distinct per tensor
        return real_int8(xq, *args, **kwargs)

    monkeypatch.setattr(w8a8, "quantize_activation", count_quant)
    monkeypatch.setattr(w8a8, "w8a8_linear_int8", count_int8)
    with torch.no_grad(), override(kernels=True):
        fused = model(latents, t, ctx)
    layers = TINY.num_layers
    # self-attn q, k, v (one int8 tensor for the three), cross-attn q (norm3) and ffn.0 take a norm
    # kernel's int8 output ...
    assert len(int8_calls) == 5 * layers
    assert len({id(xq) for xq in int8_calls}) == 3 * layers  # one quantization per norm, shared by q, k, v
    # ... and only self-attn o, cross-attn k/v (the text) and o, and ffn.2 quantize their input separately;
    # ffn.2's pass applies the FFN's GELU too (no GELU pass of its own)
    assert len(quant_passes) == 5 * layers
    assert [shape for shape, gelu in quant_passes if gelu] == [(12, TINY.ffn_dim)] * layers
    assert fused.dtype == torch.float32 and torch.isfinite(fused).all()
    assert _cos(fused, plain) >= 0.999  # per-channel requant + int8 activations vs the dequantized path


@needs_kernels
def test_cross_attention_norms_and_residual_run_on_the_kernels(monkeypatch):
    """norm3 (LayerNorm with affine), the cross-attention's q/k RMSNorm and its residual add run on the
    kernels path (they were several plain-PyTorch passes), and match plain PyTorch. Every residual add runs
    inside the next norm's pass (residual_layernorm_modulate): the self-attention's in norm3, the
    cross-attention's in norm2, the FFN's in the next block's norm1 or the head's norm. With
    `fuse_residual_norms` off the same forward runs each add as a pass of its own, with the same bits."""
    import kernels.adaln as adaln
    import kernels.gated_residual as gated_residual
    import kernels.rmsnorm_rope as rmsnorm_rope

    torch.manual_seed(0)
    model = WanTransformer(TINY).eval()
    with torch.no_grad():
        for block in model.blocks:  # a norm3 affine and q/k norm gains that are not the identity
            for p in (block.norm3.weight, block.norm3.bias, block.cross_attn.norm_q.weight,
                      block.cross_attn.norm_k.weight):
                p.normal_(1.0 if p is not block.norm3.bias else 0.0, 0.3)
    latents, t, ctx = _inputs(text_len=16)
    calls: dict[str, list[tuple[int, ...]]] = {"layernorm_modulate": [], "residual_layernorm_modulate": [],
                                               "rmsnorm": [], "gated_residual": []}
    for module in (adaln, rmsnorm_rope, gated_residual):
        for name in calls:
            if hasattr(module, name):
                real = getattr(module, name)

                def counted(x, *args, _real=real, _name=name, **kwargs):
                    calls[_name].append(tuple(x.shape))
                    return _real(x, *args, **kwargs)

                monkeypatch.setattr(module, name, counted)
    with torch.no_grad():
        plain = model(latents, t, ctx)
        assert not any(calls.values())
        with override(kernels=True):
            fused = model(latents, t, ctx)
    layers, tokens = TINY.num_layers, 2 * 2 * 3  # latents 2×4×6 in 1×2×2 patches
    assert len(calls["layernorm_modulate"]) == 1  # the first block's norm1: no residual before it
    # the previous block's FFN residual + norm1 (blocks 1..), self-attn's residual + norm3 (affine), cross-attn's
    # residual (gate 1) + norm2, and the last FFN's residual + the head's norm
    assert calls["residual_layernorm_modulate"] == [(1, tokens, TINY.dim)] * (3 * layers)
    assert calls["rmsnorm"] == [(1, tokens, TINY.dim), (1, 16, TINY.dim)] * layers  # cross-attn q, k
    assert calls["gated_residual"] == []  # no residual add is a pass of its own
    assert _cos(fused, plain) >= 0.99999

    for name in calls:
        calls[name].clear()
    model.ops = dataclasses.replace(model.ops, fuse_residual_norms=False)
    with torch.no_grad(), override(kernels=True):
        split = model(latents, t, ctx)
    assert calls["residual_layernorm_modulate"] == []
    assert len(calls["gated_residual"]) == 3 * layers and len(calls["layernorm_modulate"]) == 3 * layers + 1
    assert torch.equal(split, fused)  # the interpreter runs both forms on one row config: the same bits


def test_plain_layer_norm_and_add_are_wans_norm3_and_residual():
    x, y = torch.randn(2, 5, 16) * 3 + 1, torch.randn(2, 5, 16).to(torch.bfloat16)
    norm = torch.nn.LayerNorm(16, eps=1e-6)
    with torch.no_grad():
        norm.weight.normal_(1.0, 0.3)
        norm.bias.normal_()
    got = Ops().layer_norm(x, norm.weight, norm.bias, 1e-6, torch.bfloat16, next_linear=W8A8Linear(16, 8))
    assert isinstance(got, torch.Tensor) and got.dtype == torch.bfloat16  # plain PyTorch never emits int8
    torch.testing.assert_close(got, norm(x).to(torch.bfloat16))
    torch.testing.assert_close(Ops().add(x, y), x + y.float())


@pytest.mark.parametrize("gated", [True, False])
def test_plain_fused_residual_norms_are_the_two_ops(gated):
    """Off the kernels, gated_add_modulate / gated_add_layer_norm are gated_add (or add) then the norm."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(2, 5, 16, generator=g) * 3 + 1, torch.randn(2, 5, 16, generator=g).to(torch.bfloat16)
    gate, shift, scale = (torch.randn(2, 1, 16, generator=g) for _ in range(3))
    weight, bias = torch.randn(16, generator=g) + 1, torch.randn(16, generator=g)
    ops, lin = Ops(), W8A8Linear(16, 8)
    x_want = ops.gated_add(x, y, gate) if gated else ops.add(x, y)
    x_new, h = ops.gated_add_modulate(x, y, gate if gated else None, shift, scale, 1e-6, torch.bfloat16, lin)
    assert torch.equal(x_new, x_want)
    assert torch.equal(h, ops.modulate(x_want, shift, scale, 1e-6, torch.bfloat16, lin))
    x_new, h = ops.gated_add_layer_norm(x, y, gate if gated else None, weight, bias, 1e-6, torch.bfloat16, lin)
    assert torch.equal(x_new, x_want)
    assert torch.equal(h, ops.layer_norm(x_want, weight, bias, 1e-6, torch.bfloat16, lin))


@needs_kernels
@pytest.mark.parametrize("gated", [True, False])
@pytest.mark.parametrize("int8", [False, True])
def test_kernel_fused_residual_norms_equal_the_unfused_kernels(gated, int8):
    """On the kernels, one residual+norm pass gives the bits of gated_add (or add) then modulate / layer_norm,
    for bf16 out and for the int8 activations a W8A8 linear takes."""
    g = torch.Generator().manual_seed(1)
    C = 48  # split 32 + 16, like 1536 = 1024 + 512
    x, y = torch.randn(2, 7, C, generator=g) * 3 + 1, torch.randn(2, 7, C, generator=g).to(torch.bfloat16)
    mod = torch.randn(2, 6, C, generator=g)
    shift, scale, gate = mod[:, 0:1], mod[:, 1:2], mod[:, 2:3] if gated else None  # [B, 1, C] chunks
    weight, bias = torch.randn(C, generator=g) + 1, torch.randn(C, generator=g)
    ops = Ops(linear="w8a8", kernels=True)
    lin = W8A8Linear(C, 8) if int8 else None
    x_want = ops.add(x, y) if gate is None else ops.gated_add(x, y, gate)
    for fused, unfused in (
        (ops.gated_add_modulate(x, y, gate, shift, scale, 1e-6, torch.bfloat16, lin),
         ops.modulate(x_want, shift, scale, 1e-6, torch.bfloat16, lin)),
        (ops.gated_add_layer_norm(x, y, gate, weight, bias, 1e-6, torch.bfloat16, lin),
         ops.layer_norm(x_want, weight, bias, 1e-6, torch.bfloat16, lin)),
    ):
        x_new, h = fused
        assert torch.equal(x_new, x_want)
        assert isinstance(h, Int8Activation) == int8 == isinstance(unfused, Int8Activation)
        if int8:
            assert torch.equal(h.q, unfused.q) and torch.equal(h.scale, unfused.scale) and h.dtype == torch.bfloat16
        else:
            assert torch.equal(h, unfused)


def test_int8_activation_falls_back_to_dequantized_input_on_plain_linear():
    q = torch.randint(-127, 128, (1, 3, 8), dtype=torch.int8)
    s = torch.rand(1, 3)
    act = Int8Activation(q, s, torch.float32)
    lin = torch.nn.Linear(8, 4)
    torch.testing.assert_close(Ops().apply_linear(lin, act), lin(q.float() * s[..., None]))


# 3. backends chosen at load ----------------------------------------------------------------------------
def test_select_ops_auto_follows_the_checkpoint_and_device(caplog):
    caplog.set_level(logging.INFO, logger="models.ops")
    assert select_ops("cpu", sla_checkpoint=False, quantized=False) == Ops("dense", "native", False)
    assert select_ops("cpu", sla_checkpoint=False, quantized=True) == Ops("dense", "w8a8", False)
    caplog.clear()
    assert select_ops("cpu", sla_checkpoint=True, quantized=True) == Ops("sla", "w8a8", False)
    assert "PyTorch SLA reference (slow)" in caplog.text and "not CUDA" in caplog.text
    assert "linear backend auto -> w8a8" in caplog.text
    # explicit values force
    assert select_ops("cpu", attention="dense", linear="native", sla_checkpoint=True, quantized=True) == Ops()
    assert select_ops("cpu", attention="sla", sla_checkpoint=False, quantized=False).attention == "sla"
    with pytest.raises(ValueError, match="needs CUDA"):
        select_ops("cpu", attention="sagesla", sla_checkpoint=True, quantized=False)
    with pytest.raises(ValueError, match="unknown linear backend"):
        select_ops("cpu", linear="fp8", sla_checkpoint=False, quantized=False)


def test_load_transformer_auto_reads_turbodiffusion_keys(tmp_path, caplog):
    pytest.importorskip("kernels.sagesla")
    from models.linear import quantize_state_dict
    from models.transformer_loading import load_transformer

    sd = quantize_state_dict(_state_dict(sla=True))  # TurboDiffusion -quant.pth with SLA proj_l
    torch.save(sd, tmp_path / "turbo-quant.pth")
    caplog.set_level(logging.INFO, logger="models.ops")
    model = load_transformer(tmp_path / "turbo-quant.pth")
    assert model.ops == Ops("sla", "w8a8", False)
    assert isinstance(model.blocks[0].self_attn.q, W8A8Linear)
    assert model.blocks[0].self_attn.attn_op.local_attn.proj_l.weight.abs().sum() > 0  # from the file
    assert "slow" in caplog.text
    forced = load_transformer(tmp_path / "turbo-quant.pth", attention="dense", linear="native")
    assert forced.ops == Ops() and type(forced.blocks[0].self_attn.q) is torch.nn.Linear


def test_load_transformer_auto_reads_the_manifest(tmp_path):
    from models.checkpoint_io import CheckpointError
    from models.convert import convert_checkpoint
    from models.transformer_loading import load_transformer

    torch.save(_state_dict(), tmp_path / "wan.pth")
    quant = convert_checkpoint(tmp_path / "wan.pth", tmp_path / "quant", quantize="w8a8")
    plain = convert_checkpoint(tmp_path / "wan.pth", tmp_path / "plain")
    assert load_transformer(quant).ops == Ops("dense", "w8a8")
    assert load_transformer(plain).ops == Ops("dense", "native")

    manifest = quant / "turbovid.json"
    data = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**data, "quantization": None}))
    with pytest.raises(CheckpointError, match="manifest says quantization None"):
        load_transformer(quant)
    manifest.write_text(json.dumps({**data, "quantization": {"method": "nf4"}}))
    with pytest.raises(CheckpointError, match="not one TurboVid runs"):
        load_transformer(quant)
    manifest.write_text(json.dumps({**data, "attention": {**data["attention"], "sla": True}}))
    with pytest.raises(CheckpointError, match="lack SLA proj_l"):
        load_transformer(quant)


# 4. GPU: the fused path against plain PyTorch on CUDA ---------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("linear", ["native", "w8a8"])
def test_cuda_fused_kernels_match_plain_pytorch(tmp_path, linear):
    from models.transformer_loading import load_transformer

    torch.save(_state_dict(), tmp_path / "wan.pth")
    model = load_transformer(tmp_path / "wan.pth", device="cuda", dtype=torch.bfloat16, linear=linear)
    assert model.ops.kernels is True  # chosen at load on CUDA with triton
    layers = [m for m in model.modules() if isinstance(m, W8A8Linear)]
    assert bool(layers) == (linear == "w8a8") and all(m.layout == "channel" for m in layers)
    latents, t, ctx = _inputs(device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        fused = model(latents, t, ctx)
        with override(kernels=False):
            plain = model(latents, t, ctx)
    assert torch.isfinite(fused).all()
    assert _cos(fused, plain) >= (0.999 if linear == "w8a8" else 0.9999)


def test_the_fusion_switch_runs_the_two_kernels_with_the_same_bits(monkeypatch):
    """`fuse_residual_norms=False` (bench_dit's "split" variants, the before/after of the fusion) runs the
    residual add and the norm as two kernel passes, and gives the fused form's bits."""
    from kernels import adaln

    calls = []
    fused_op = adaln.residual_layernorm_modulate
    monkeypatch.setattr(adaln, "residual_layernorm_modulate", lambda *a, **k: calls.append(1) or fused_op(*a, **k))
    g = torch.Generator().manual_seed(2)
    C = 48
    x, y = torch.randn(1, 5, C, generator=g), torch.randn(1, 5, C, generator=g).to(torch.bfloat16)
    mod = torch.randn(1, 6, C, generator=g)
    lin = W8A8Linear(C, 8)
    outs = []
    for switch in (True, False):
        ops = Ops(linear="w8a8", kernels=True, fuse_residual_norms=switch)
        outs.append(ops.gated_add_modulate(x, y, mod[:, 2:3], mod[:, 0:1], mod[:, 1:2], 1e-6, torch.bfloat16, lin))
    assert calls == [1]  # only the fused run called the one-pass kernel
    (x_f, h_f), (x_s, h_s) = outs
    assert torch.equal(x_f, x_s) and torch.equal(h_f.q, h_s.q) and torch.equal(h_f.scale, h_s.scale)
