"""WanConfig presets, WanTransformer structure and forward contract, and the attention backends in the model."""

from __future__ import annotations

import json

import pytest
import torch

from models.attention import attention, override_backend
from models.config import WanConfig
from models.dit import WanTransformer, apply_rope, rope_angles, sinusoidal_embedding

TINY = WanConfig.from_name("wan-tiny")


def _model(cfg: WanConfig = TINY, attention: str = "dense", seed: int = 0) -> WanTransformer:
    torch.manual_seed(seed)
    model = WanTransformer(cfg, attention=attention)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    return model.eval()


def _inputs(cfg: WanConfig = TINY, shape: tuple[int, int, int] = (2, 4, 6)):
    g = torch.Generator().manual_seed(3)
    latents = torch.randn(1, 16, *shape, generator=g)
    ctx = torch.randn(1, 512, cfg.text_dim, generator=g)
    cond = torch.randn(1, cfg.cond_dim, *shape, generator=g) if cfg.cond_dim else None
    return latents, torch.tensor([500.0]), ctx, cond


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.nn.functional.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0).item()


def test_presets():
    small = WanConfig.from_name("wan2.1-t2v-1.3b")
    assert (small.dim, small.num_layers, small.num_heads, small.ffn_dim, small.head_dim) == (1536, 30, 12, 8960, 128)
    assert small.rope_split == (44, 42, 42)  # Wan: t gets D - 4·(D//6) channels
    big = WanConfig.from_name("wan2.1-t2v-14b")
    assert (big.dim, big.num_layers, big.num_heads, big.ffn_dim) == (5120, 40, 40, 13824)
    i2v = WanConfig.from_name("wan2.2-i2v-a14b")
    assert (i2v.in_dim, i2v.out_dim, i2v.cond_dim, i2v.dim) == (36, 16, 20, 5120)
    assert (TINY.dim, TINY.num_heads, TINY.text_dim) == (64, 2, 32)
    assert all(c.text_len == 512 and c.freq_dim == 256 and c.patch == (1, 2, 2) for c in (small, big, i2v))
    with pytest.raises(ValueError, match="unknown Wan architecture"):
        WanConfig.from_name("wan3")
    with pytest.raises(ValueError, match="divisible"):
        WanConfig(dim=100, num_layers=1, num_heads=3, ffn_dim=8)


def test_config_dict_roundtrip_through_json():
    cfg = WanConfig.from_name("wan2.2-i2v-a14b").with_(sla_topk=0.2)
    back = WanConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg and back.patch == (1, 2, 2)
    with pytest.raises(ValueError, match="unknown WanConfig fields"):
        WanConfig.from_dict({**cfg.to_dict(), "window": 3})


def test_parameter_names_and_sizes_are_wans():
    with torch.device("meta"):
        model = WanTransformer(WanConfig.from_name("wan2.1-t2v-1.3b"), attention="sla")
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes["patch_embedding.weight"] == (1536, 16, 1, 2, 2)
    assert shapes["text_embedding.0.weight"] == (1536, 4096) and shapes["text_embedding.2.weight"] == (1536, 1536)
    assert shapes["time_embedding.0.weight"] == (1536, 256) and shapes["time_projection.1.weight"] == (9216, 1536)
    for name in ("q", "k", "v", "o"):
        assert shapes[f"blocks.29.self_attn.{name}.weight"] == (1536, 1536)
        assert shapes[f"blocks.29.cross_attn.{name}.weight"] == (1536, 1536)
    assert shapes["blocks.0.self_attn.norm_q.weight"] == (1536,)  # RMSNorm across all heads
    assert shapes["blocks.0.norm3.weight"] == (1536,) and shapes["blocks.0.ffn.0.weight"] == (8960, 1536)
    assert shapes["blocks.0.modulation"] == (1, 6, 1536) and shapes["head.modulation"] == (1, 2, 1536)
    assert shapes["head.head.weight"] == (64, 1536)
    assert shapes["blocks.3.self_attn.attn_op.local_attn.proj_l.weight"] == (128, 128)
    dense = sum(v.numel() for k, v in model.state_dict().items() if "proj_l" not in k)
    assert 1.40e9 < dense < 1.45e9  # Wan2.1-T2V-1.3B: 1.419 B parameters


def test_forward_contract_t2v_and_i2v():
    latents, t, ctx, _ = _inputs()
    model = _model()
    with torch.no_grad():
        out = model(latents, t, ctx)
    assert out.shape == latents.shape and out.dtype == torch.float32 and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="cond was given to a T2V"):
        model(latents, t, ctx, torch.zeros(1, 20, 2, 4, 6))
    with pytest.raises(ValueError, match="not divisible by the patch"):
        model(torch.zeros(1, 16, 2, 5, 6), t, ctx)

    i2v_cfg = TINY.with_(in_dim=36)
    i2v = _model(i2v_cfg)
    latents, t, ctx, cond = _inputs(i2v_cfg)
    with torch.no_grad():
        out = i2v(latents, t, ctx, cond)
        other = i2v(latents, t, ctx, cond + 1.0)
    assert out.shape == latents.shape
    assert not torch.allclose(out, other)  # the condition reaches the output
    with pytest.raises(ValueError, match="needs cond with 20 channels"):
        i2v(latents, t, ctx)


def test_timestep_and_text_change_the_output():
    latents, t, ctx, _ = _inputs()
    model = _model()
    with torch.no_grad():
        base = model(latents, t, ctx)
        assert not torch.allclose(base, model(latents, t + 100, ctx))
        assert not torch.allclose(base, model(latents, t, ctx.flip(1)))


def test_sinusoidal_and_rope_math():
    emb = sinusoidal_embedding(torch.tensor([0.0, 1000.0]), 8)
    assert torch.allclose(emb[0], torch.tensor([1.0] * 4 + [0.0] * 4))
    assert torch.allclose(emb[1, 0], torch.cos(torch.tensor(1000.0, dtype=torch.float64)).float())
    cos, sin = rope_angles((2, 3, 4), (12, 10, 10), 10000.0, torch.device("cpu"))
    assert cos.shape == (24, 16)
    # token (t=1, h=0, w=0): frame pairs rotate by 1 rad at j=0, row/column pairs do not rotate
    assert torch.isclose(cos[12, 0], torch.cos(torch.tensor(1.0))) and cos[12, 6:].eq(1).all()
    x = torch.randn(1, 24, 2, 32)
    y = apply_rope(x, cos, sin)
    assert torch.allclose(y.norm(dim=-1), x.norm(dim=-1), atol=1e-5)  # rotation keeps the norm
    assert torch.equal(y[:, 0], x[:, 0])  # position (0, 0, 0) is not rotated


def test_dense_attention_is_softmax_attention():
    q, k, v = torch.randn(3, 1, 2, 10, 8).unbind(0)
    expected = torch.softmax(q @ k.transpose(-1, -2) / 8**0.5, dim=-1) @ v
    assert torch.allclose(attention(q, k, v, backend="dense"), expected, atol=1e-5)
    with pytest.raises(ValueError, match="unknown attention backend"):
        attention(q, k, v, backend="flash")


SLA_CFG = TINY.with_(sla_block_q=4, sla_block_k=4)  # 2·4·6 latents -> 12 tokens -> 3×3 blocks


def _sla_from_dense(dense: WanTransformer, cfg: WanConfig) -> WanTransformer:
    sla = WanTransformer(cfg, attention="sla").eval()
    missing, unexpected = sla.load_state_dict(dense.state_dict(), strict=False)
    assert all("proj_l" in k for k in missing) and not unexpected
    with torch.no_grad():
        for block in sla.blocks:
            block.self_attn.attn_op.local_attn.proj_l.weight.zero_()
            block.self_attn.attn_op.local_attn.proj_l.bias.zero_()
    return sla


def test_sla_matches_dense_at_full_topk_and_zero_proj_l():
    pytest.importorskip("kernels.sagesla")
    latents, t, ctx, _ = _inputs()
    dense = _model(SLA_CFG)
    with torch.no_grad():
        want = dense(latents, t, ctx)
        full = _sla_from_dense(dense, SLA_CFG.with_(sla_topk=1.0))(latents, t, ctx)
        sparse_model = _sla_from_dense(dense, SLA_CFG.with_(sla_topk=0.34))  # 1 of 3 key blocks
        sparse = sparse_model(latents, t, ctx)
        for block in sparse_model.blocks:
            torch.nn.init.normal_(block.self_attn.attn_op.local_attn.proj_l.weight, std=0.5)
        with_linear = sparse_model(latents, t, ctx)
    assert _cos(full, want) >= 0.99999
    assert _cos(sparse, want) < 0.9999  # Top-K really drops key blocks
    assert _cos(with_linear, sparse) < 0.9999  # proj_l feeds the linear branch


def test_override_backend_forces_each_path():
    pytest.importorskip("kernels.sagesla")
    latents, t, ctx, _ = _inputs()
    dense = _model(SLA_CFG.with_(sla_topk=0.34))
    sla = _sla_from_dense(dense, SLA_CFG.with_(sla_topk=0.34))
    with torch.no_grad():
        want = dense(latents, t, ctx)
        sparse = sla(latents, t, ctx)
        with override_backend("dense"):
            assert _cos(sla(latents, t, ctx), want) >= 0.99999
        with override_backend("sla"):  # a dense model under SLA: no linear branch, sparse softmax
            forced = dense(latents, t, ctx)
    assert _cos(forced, want) < 0.9999
    assert _cos(forced, sparse) >= 0.99999
    with pytest.raises(ValueError, match="unknown attention backend"), override_backend("nope"):
        pass


def test_sagesla_on_cpu_is_a_clear_error():
    q = torch.randn(1, 2, 16, 32)
    with pytest.raises(RuntimeError, match="CUDA"):
        attention(q, q, q, backend="sagesla")


def test_fused_kernel_path_matches_pytorch():
    """The Triton RMSNorm+RoPE / AdaLN / gated-residual path (CUDA at load), forced here with `override`
    and run under the Triton interpreter."""
    import os

    from models.ops import override

    if not (torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"):
        pytest.skip("needs CUDA or TRITON_INTERPRET=1")
    pytest.importorskip("triton")
    latents, t, ctx, _ = _inputs()
    model = _model()
    assert model.ops.kernels is False  # a model built by hand runs plain PyTorch
    with torch.no_grad():
        want = model(latents, t, ctx)
        with override(kernels=True):
            got = model(latents, t, ctx)
    assert not torch.equal(got, want)  # the kernels really ran (different rounding)
    assert _cos(got, want) >= 0.99999


@pytest.mark.parametrize("cross_attn_norm", [True, False])
def test_residual_adds_run_in_the_norm_passes_with_the_unfused_bits(monkeypatch, cross_attn_norm):
    """On the kernels each block's residual adds run inside the next norm's pass: the self-attention's in norm3
    (without norm3, an nn.Identity, it stays a pass of its own), the cross-attention's in norm2, the FFN's in the
    next block's norm1 or the head's norm. The forward's output is bit for bit the one of the separate
    gated_residual + layernorm_modulate passes."""
    import os

    from models.ops import override

    if not (torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"):
        pytest.skip("needs CUDA or TRITON_INTERPRET=1")
    adaln = pytest.importorskip("kernels.adaln")
    from kernels.gated_residual import gated_residual

    cfg = TINY.with_(cross_attn_norm=cross_attn_norm)
    latents, t, ctx, _ = _inputs(cfg)
    model = _model(cfg)
    fused = adaln.residual_layernorm_modulate
    calls = []

    def counted(x, *args, **kwargs):
        calls.append(tuple(x.shape))
        return fused(x, *args, **kwargs)

    def unfused(x, y, gate, shift, scale, eps=1e-6, out_int8=False, out_dtype=None):
        x = gated_residual(x, y, torch.ones_like(shift) if gate is None else gate)
        return x, adaln.layernorm_modulate(x, shift, scale, eps, out_int8=out_int8, out_dtype=out_dtype)

    with torch.no_grad(), override(kernels=True):
        monkeypatch.setattr(adaln, "residual_layernorm_modulate", counted)
        got = model(latents, t, ctx)
        monkeypatch.setattr(adaln, "residual_layernorm_modulate", unfused)
        want = model(latents, t, ctx)
    per_block = 3 if cross_attn_norm else 2  # norm1 (the previous FFN's add; the head's for the last), norm3, norm2
    assert calls == [(1, 12, cfg.dim)] * per_block * cfg.num_layers  # 2×4×6 latents: 12 tokens
    assert torch.equal(got, want)


def test_sla_topk_is_per_call_and_never_stored():
    pytest.importorskip("kernels.sagesla")
    latents, t, ctx, _ = _inputs()
    sla = _sla_from_dense(_model(SLA_CFG), SLA_CFG.with_(sla_topk=1.0))
    with torch.no_grad():
        full = sla(latents, t, ctx)
        sparse = sla(latents, t, ctx, sla_topk=0.34)  # 1 of 3 key blocks
        again = sla(latents, t, ctx)
    assert _cos(sparse, full) < 0.9999  # the per-call ratio reached the attention
    assert torch.equal(again, full)  # and did not outlive the call
    assert all(b.self_attn.attn_op.topk_ratio == 1.0 for b in sla.blocks)
    with pytest.raises(ValueError, match="dense attention"):
        _model()(latents, t, ctx, sla_topk=0.5)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        sla(latents, t, ctx, sla_topk=1.5)
