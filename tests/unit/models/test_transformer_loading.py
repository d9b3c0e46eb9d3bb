"""load_transformer against diffusers' WanTransformer3DModel on the same random weights, in every layout."""

from __future__ import annotations

import json

import pytest
import torch
from _helpers import wan_to_diffusers
from safetensors.torch import save_file

from models import load_transformer
from models.checkpoint_io import CheckpointError, read_state_dict
from models.dit import WanTransformer
from models.linear import W8A8Linear, dequantize_state_dict, quantize_state_dict
from models.transformer_loading import (
    build_transformer,
    diffusers_to_wan,
    infer_config,
    to_wan_names,
)

diffusers = pytest.importorskip("diffusers")

LATENT = (1, 16, 2, 4, 6)  # [B, C, T, H, W] -> 2·2·3 = 12 tokens


def _diffusers_model(in_dim: int, heads: int = 2, head_dim: int = 32) -> torch.nn.Module:
    torch.manual_seed(in_dim + heads)
    model = diffusers.WanTransformer3DModel(
        num_attention_heads=heads, attention_head_dim=head_dim, in_channels=in_dim, out_channels=16,
        text_dim=32, freq_dim=256, ffn_dim=128, num_layers=2, image_dim=None, added_kv_proj_dim=None,
    ).eval()
    with torch.no_grad():
        for p in model.parameters():  # non-trivial norms, biases and modulation
            p.normal_(0.0, 0.2)
    return model


def _inputs(in_dim: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(7)
    latents = torch.randn(*LATENT, generator=g)
    t = torch.tensor([731.0])
    ctx = torch.randn(1, 512, 32, generator=g)
    cond = torch.randn(1, in_dim - 16, *LATENT[2:], generator=g) if in_dim > 16 else None
    return latents, t, ctx, cond


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.nn.functional.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0).item()


@pytest.fixture(scope="module", params=[16, 36], ids=["t2v", "i2v36"])
def reference(request, tmp_path_factory):
    """(diffusers model, Wan-named state dict, reference output, inputs, folder with every layout)."""
    in_dim = request.param
    model = _diffusers_model(in_dim)
    latents, t, ctx, cond = _inputs(in_dim)
    with torch.no_grad():
        x = latents if cond is None else torch.cat([latents, cond], dim=1)
        out = model(x, t, ctx, return_dict=False)[0]
    wan = {k: v.clone() for k, v in diffusers_to_wan(model.state_dict()).items()}
    root = tmp_path_factory.mktemp(f"layouts{in_dim}")

    # diffusers: pipeline folder with transformer/ (save_pretrained)
    model.save_pretrained(root / "diffusers" / "transformer")
    # official Wan: sharded safetensors + index, and a single .pth
    keys = sorted(wan)
    shards = {"model-00001-of-00002.safetensors": keys[: len(keys) // 2],
              "model-00002-of-00002.safetensors": keys[len(keys) // 2:]}
    (root / "wan_sharded").mkdir()
    for name, part in shards.items():
        save_file({k: wan[k].contiguous() for k in part}, str(root / "wan_sharded" / name))
    index = {"metadata": {}, "weight_map": {k: n for n, part in shards.items() for k in part}}
    (root / "wan_sharded" / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))
    torch.save(wan, root / "wan.pth")
    # TurboDiffusion: Linear patch embedding [dim, in_dim·1·2·2], keys under "net."
    td = dict(wan)
    td["patch_embedding.weight"] = wan["patch_embedding.weight"].reshape(wan["patch_embedding.weight"].shape[0], -1)
    torch.save({"net." + k: v for k, v in td.items()}, root / "turbo.pth")
    # ComfyUI: one file, Wan names under model.diffusion_model., plus another component's key
    comfy = {"model.diffusion_model." + k: v.contiguous() for k, v in wan.items()}
    comfy["first_stage_model.decoder.conv_in.weight"] = torch.zeros(1)
    save_file(comfy, str(root / "comfy.safetensors"))
    return model, wan, out, (latents, t, ctx, cond), root


@pytest.mark.parametrize(
    "layout", ["diffusers", "diffusers/transformer", "wan_sharded", "wan.pth", "turbo.pth", "comfy.safetensors"]
)
def test_layouts_match_diffusers(reference, layout):
    _, _, expected, (latents, t, ctx, cond), root = reference
    model = load_transformer(root / layout)
    assert isinstance(model, WanTransformer)
    with torch.no_grad():
        got = model(latents, t, ctx, cond)
    assert got.shape == (1, 16, *LATENT[2:])
    assert _cos(got, expected) >= 0.99999
    assert torch.allclose(got, expected, atol=2e-3, rtol=1e-3)


def test_canonical_matches_diffusers(reference, tmp_path):
    from models.convert import convert_checkpoint

    _, _, expected, (latents, t, ctx, cond), root = reference
    folder = convert_checkpoint(root / "turbo.pth", tmp_path / "canonical")
    with torch.no_grad():
        got = load_transformer(folder)(latents, t, ctx, cond)
    assert _cos(got, expected) >= 0.99999


def test_bf16_load_keeps_fp32_modulation_and_tracks_fp32(reference):
    _, _, expected, (latents, t, ctx, cond), root = reference
    model = load_transformer(root / "wan.pth", dtype=torch.bfloat16)
    assert model.blocks[0].self_attn.q.weight.dtype == torch.bfloat16
    assert model.blocks[0].modulation.dtype == torch.float32
    assert model.time_embedding[0].weight.dtype == torch.float32
    with torch.no_grad():
        got = model(latents, t, ctx, cond)
    assert 0.99 <= _cos(got, expected) < 0.99999999  # bf16 rounding is visible but small


def test_config_json_gives_head_count(tmp_path):
    """dim 64 with 4 heads (head_dim 16) differs from the wan-tiny preset's 2 heads: config.json decides."""
    model = _diffusers_model(16, heads=4, head_dim=16)
    model.save_pretrained(tmp_path / "d4")
    latents, t, ctx, _ = _inputs(16)
    with torch.no_grad():
        expected = model(latents, t, ctx, return_dict=False)[0]
        loaded = load_transformer(tmp_path / "d4")
        got = loaded(latents, t, ctx)
    assert loaded.cfg.num_heads == 4
    assert _cos(got, expected) >= 0.99999


def test_key_maps_are_inverse(reference):
    _, wan, *_ = reference
    assert set(diffusers_to_wan(wan_to_diffusers(wan))) == set(wan)
    assert "blocks.1.norm3.weight" in wan and "head.modulation" in wan and "blocks.0.ffn.2.bias" in wan


def test_load_assigns_mmapped_tensors_without_copy(reference):
    _, _, _, _, root = reference
    sd = to_wan_names(read_state_dict(root / "wan.pth"))  # torch.load(mmap=True)
    model = build_transformer(sd, infer_config(sd))
    q = model.blocks[0].self_attn.q.weight
    assert q.data_ptr() == sd["blocks.0.self_attn.q.weight"].data_ptr()
    loaded = load_transformer(root / "turbo.pth")
    assert not any(p.is_meta for p in loaded.parameters())
    assert not any(b.is_meta for b in loaded.buffers())


def test_quantized_turbodiffusion_checkpoint_with_w8a8(reference, tmp_path):
    _, wan, _, (latents, t, ctx, cond), _ = reference
    qsd = quantize_state_dict(wan)
    assert qsd["blocks.0.ffn.0.int8_weight"].dtype == torch.int8
    assert qsd["blocks.0.ffn.0.scale"].shape == (1, 1)
    assert "text_embedding.0.weight" in qsd  # only block Linears are quantized
    qsd["patch_embedding.weight"] = qsd["patch_embedding.weight"].reshape(64, -1)
    torch.save(qsd, tmp_path / "TurboWan-quant.pth")

    model = load_transformer(tmp_path / "TurboWan-quant.pth", linear="w8a8")
    ffn0 = model.blocks[0].ffn[0]
    assert isinstance(ffn0, W8A8Linear) and ffn0.int8_weight.dtype == torch.int8
    assert not isinstance(model.text_embedding[0], W8A8Linear)
    dequant = build_transformer(dequantize_state_dict(qsd), infer_config(qsd))
    native = load_transformer(tmp_path / "TurboWan-quant.pth", linear="native")
    assert isinstance(native.blocks[0].ffn[0], torch.nn.Linear)
    with torch.no_grad():
        got, want, want_native = model(latents, t, ctx, cond), dequant(latents, t, ctx, cond), native(
            latents, t, ctx, cond)
        full = build_transformer(wan, infer_config(wan))(latents, t, ctx, cond)
    assert _cos(got, want) >= 0.99999 and _cos(want_native, want) >= 0.99999
    assert 0.99 < _cos(got, full) < 0.999999  # int8 rounding changes the output, slightly


def test_dense_checkpoint_quantized_at_load(reference):
    _, wan, _, (latents, t, ctx, cond), root = reference
    model = load_transformer(root / "wan.pth", linear="w8a8")
    assert isinstance(model.blocks[1].self_attn.o, W8A8Linear)
    want = build_transformer(dequantize_state_dict(quantize_state_dict(wan)), infer_config(wan))
    with torch.no_grad():
        assert _cos(model(latents, t, ctx, cond), want(latents, t, ctx, cond)) >= 0.99999


def test_clear_errors_for_wrong_keys(reference, tmp_path):
    _, wan, *_ = reference
    missing = {k: v for k, v in wan.items() if k != "blocks.1.cross_attn.k.weight"}
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match=r"missing.*blocks\.1\.cross_attn\.k\.weight"):
        load_transformer(tmp_path / "missing.pth")
    extra = dict(wan, **{"blocks.0.self_attn.k_img.weight": torch.zeros(64, 64)})
    torch.save(extra, tmp_path / "extra.pth")
    with pytest.raises(CheckpointError, match=r"Wan2.1 I2V.*CLIP image branch"):
        load_transformer(tmp_path / "extra.pth")
    odd = dict(wan, **{"blocks.0.self_attn.extra.weight": torch.zeros(64, 64)})
    torch.save(odd, tmp_path / "odd.pth")
    with pytest.raises(CheckpointError, match=r"unexpected.*self_attn\.extra"):
        load_transformer(tmp_path / "odd.pth")
    torch.save({"encoder.weight": torch.zeros(2, 2)}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="patch_embedding"):
        load_transformer(tmp_path / "other.pth")
    bad = dict(wan, **{"blocks.0.ffn.2.weight": torch.zeros(64, 100)})
    torch.save(bad, tmp_path / "bad_shape.pth")
    with pytest.raises(CheckpointError, match="ffn.2.weight"):
        load_transformer(tmp_path / "bad_shape.pth")
    with pytest.raises(ValueError, match="attention backend"):
        load_transformer(tmp_path / "missing.pth", attention="flash")


def test_dense_checkpoint_with_sla_gets_zero_proj_l(reference):
    pytest.importorskip("kernels.sagesla")
    _, _, expected, (latents, t, ctx, cond), root = reference
    model = load_transformer(root / "wan.pth", attention="sla")
    proj_l = model.blocks[1].self_attn.attn_op.local_attn.proj_l
    assert proj_l.weight.shape == (32, 32) and not proj_l.weight.any() and not proj_l.bias.any()
    with torch.no_grad():  # 12 tokens fit one SLA block: every key block is kept, so SLA == dense here
        assert _cos(model(latents, t, ctx, cond), expected) >= 0.99999
