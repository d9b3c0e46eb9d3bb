"""convert_checkpoint: any layout -> canonical folder with a manifest, optionally W8A8-quantized."""

from __future__ import annotations

import pytest
import torch

from models import convert_checkpoint, load_transformer
from models.checkpoint_io import read_manifest, read_state_dict
from models.config import WanConfig
from models.dit import WanTransformer
from models.linear import W8A8Linear

CFG = WanConfig.from_name("wan-tiny").with_(in_dim=36)


@pytest.fixture(scope="module")
def turbo_pth(tmp_path_factory):
    """A TurboDiffusion-style SLA checkpoint: Linear patch embedding, proj_l present, bf16 tensors."""
    torch.manual_seed(0)
    model = WanTransformer(CFG, attention="sla")
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    sd = {k: v.to(torch.bfloat16) for k, v in model.state_dict().items()}
    sd["patch_embedding.weight"] = sd["patch_embedding.weight"].reshape(CFG.dim, -1)
    path = tmp_path_factory.mktemp("src") / "TurboWan2.2-I2V-tiny.pth"
    torch.save(sd, path)
    return path


def _run(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(1, 16, 2, 4, 4, generator=g)
    cond = torch.randn(1, 20, 2, 4, 4, generator=g)
    ctx = torch.randn(1, 512, CFG.text_dim, generator=g)
    with torch.no_grad():
        return model(latents, torch.tensor([900.0]), ctx, cond)


def test_convert_writes_manifest_and_same_model(turbo_pth, tmp_path):
    dst = convert_checkpoint(turbo_pth, tmp_path / "canon")
    manifest = read_manifest(dst)
    assert manifest is not None and manifest.component == "transformer"
    assert WanConfig.from_dict(manifest.architecture) == CFG
    assert manifest.quantization is None and manifest.attention["sla"] is True
    sd = read_state_dict(dst)
    assert sd["patch_embedding.weight"].shape == (64, 36, 1, 2, 2)  # stored in Conv3d layout
    assert sd["blocks.0.self_attn.q.weight"].dtype == torch.bfloat16  # source dtype kept
    assert "blocks.1.self_attn.attn_op.local_attn.proj_l.weight" in sd

    sla = load_transformer(dst, attention="sla")
    assert sla.blocks[1].self_attn.attn_op.local_attn.proj_l.weight.any()  # the checkpoint's proj_l, not zeros
    for attention in ("dense", "sla"):
        a = _run(load_transformer(turbo_pth, attention=attention))
        b = _run(load_transformer(dst, attention=attention))
        assert torch.equal(a, b)


def test_convert_quantized(turbo_pth, tmp_path):
    dst = convert_checkpoint(turbo_pth, tmp_path / "canon_q", quantize="w8a8")
    manifest = read_manifest(dst)
    assert manifest.quantization == {"method": "w8a8", "block": 128}
    sd = read_state_dict(dst)
    assert sd["blocks.0.ffn.0.int8_weight"].dtype == torch.int8 and "blocks.0.ffn.0.weight" not in sd
    assert sd["blocks.0.self_attn.attn_op.local_attn.proj_l.weight"].dtype == torch.bfloat16  # never quantized
    quant = load_transformer(dst, linear="w8a8")
    assert isinstance(quant.blocks[0].cross_attn.q, W8A8Linear)
    a, b = _run(load_transformer(turbo_pth)), _run(quant)
    assert 0.99 < torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0) < 1.0

    # converting a quantized checkpoint again keeps it quantized and identical
    again = convert_checkpoint(dst, tmp_path / "canon_q2")
    assert read_manifest(again).quantization == {"method": "w8a8", "block": 128}
    assert torch.equal(read_state_dict(again)["blocks.1.ffn.2.int8_weight"], sd["blocks.1.ffn.2.int8_weight"])


def test_convert_rejects_unknown_quantization(turbo_pth, tmp_path):
    with pytest.raises(ValueError, match="unknown quantization"):
        convert_checkpoint(turbo_pth, tmp_path / "x", quantize="fp8")
