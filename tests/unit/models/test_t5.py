"""umT5 encoder: our code loaded from every layout vs transformers' UMT5EncoderModel (tiny, CPU, fp32)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from models.checkpoint_io import CheckpointError, Manifest, write_canonical
from models.t5 import PRESETS, UMT5Config, UMT5Encoder, relative_position_buckets
from models.text_encoder_loading import convert_text_encoder, load_text_encoder
from models.tiny_tokenizer import build_tiny_tokenizer
from models.tokenizer import UMT5Tokenizer

transformers = pytest.importorskip("transformers")

PROMPTS = [
    "A red fox runs across a snowy field at dawn while soft light spreads over the quiet hills, "
    "the camera slowly pans from left to right following a small boat on a calm blue lake.",
    "Two cats play.",
]

# Written out independently of models/text_encoder_loading.py: HF block names -> Wan's.
WAN_NAMES = {
    "layer.0.SelfAttention.q": "attn.q",
    "layer.0.SelfAttention.k": "attn.k",
    "layer.0.SelfAttention.v": "attn.v",
    "layer.0.SelfAttention.o": "attn.o",
    "layer.0.SelfAttention.relative_attention_bias": "pos_embedding.embedding",
    "layer.0.layer_norm": "norm1",
    "layer.1.DenseReluDense.wi_0": "ffn.gate.0",
    "layer.1.DenseReluDense.wi_1": "ffn.fc1",
    "layer.1.DenseReluDense.wo": "ffn.fc2",
    "layer.1.layer_norm": "norm2",
}


def hf_to_wan(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {
        "token_embedding.weight": sd["shared.weight"],
        "norm.weight": sd["encoder.final_layer_norm.weight"],
    }
    for key, value in sd.items():
        m = re.match(r"encoder\.block\.(\d+)\.(.+)\.weight$", key)
        if m:
            out[f"blocks.{m.group(1)}.{WAN_NAMES[m.group(2)]}.weight"] = value
    return out


def make_hf(max_distance: int = 128, eps: float = 1e-6, seed: int = 0):
    cfg = transformers.UMT5Config(
        vocab_size=1000, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
        relative_attention_num_buckets=32, relative_attention_max_distance=max_distance,
        layer_norm_epsilon=eps, feed_forward_proj="gated-gelu", dropout_rate=0.0,
    )  # fmt: skip
    model = transformers.UMT5EncoderModel(cfg).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # random everything, norms too, so a swapped name cannot go unnoticed
        for name, p in model.named_parameters():
            mean = 1.0 if "layer_norm" in name else 0.0
            p.copy_(mean + 0.3 * torch.randn(p.shape, generator=gen))
    return model


@pytest.fixture(scope="module")
def spiece(tmp_path_factory) -> Path:
    return build_tiny_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def hf_model():
    return make_hf()


def hf_reference(model, spiece: Path) -> tuple[torch.Tensor, torch.Tensor]:
    tokens = UMT5Tokenizer(spiece)(PROMPTS)
    with torch.no_grad():
        ref = model(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask).last_hidden_state
    return ref, tokens.lengths


def assert_matches(ours: torch.Tensor, ref: torch.Tensor, lengths: torch.Tensor) -> None:
    assert ours.shape == (2, 512, 32)
    assert lengths[0] > 40 and lengths[1] < 20  # long enough for the logarithmic buckets
    for i, n in enumerate(lengths.tolist()):
        cos = F.cosine_similarity(ours[i, :n], ref[i, :n], dim=-1)
        assert cos.min() >= 0.99999, (i, cos.min())
        assert torch.equal(ours[i, n:], torch.zeros_like(ours[i, n:]))
        assert ours[i, :n].abs().sum(-1).min() > 0


@pytest.mark.parametrize("layout", ["hf", "hf_sharded", "diffusers", "wan", "canonical"])
def test_matches_transformers_from_every_layout(layout, hf_model, spiece, tmp_path):
    ref, lengths = hf_reference(hf_model, spiece)
    tokenizer = spiece
    if layout == "hf":
        hf_model.save_pretrained(tmp_path / "hf")
        path = tmp_path / "hf"
    elif layout == "hf_sharded":
        hf_model.save_pretrained(tmp_path / "hf", max_shard_size="20KB")
        assert len(list((tmp_path / "hf").glob("*.safetensors"))) > 1
        path = tmp_path / "hf"
    elif layout == "diffusers":  # text_encoder/ and tokenizer/ side by side; tokenizer found by itself
        hf_model.save_pretrained(tmp_path / "text_encoder")
        (tmp_path / "tokenizer").mkdir()
        shutil.copy(spiece, tmp_path / "tokenizer" / "spiece.model")
        path, tokenizer = tmp_path / "text_encoder", None
    elif layout == "wan":  # Wan release: .pth beside google/umt5-xxl/spiece.model
        path = tmp_path / "models_t5_umt5-xxl-enc-bf16.pth"
        torch.save(hf_to_wan(hf_model.state_dict()), path)
        (tmp_path / "google" / "umt5-xxl").mkdir(parents=True)
        shutil.copy(spiece, tmp_path / "google" / "umt5-xxl" / "spiece.model")
        tokenizer = None
    else:
        hf_model.save_pretrained(tmp_path / "hf")
        path = convert_text_encoder(tmp_path / "hf", tmp_path / "canonical", tokenizer=spiece)
        assert (path / "tokenizer" / "spiece.model").is_file()
        tokenizer = None

    encoder = load_text_encoder(path, tokenizer=tokenizer)
    assert encoder.config == UMT5Config(
        vocab_size=1000, d_model=32, num_layers=2, num_heads=4, d_kv=8, d_ff=64
    )
    ours = encoder.encode(PROMPTS)
    assert not ours.requires_grad and ours.dtype == torch.float32
    assert_matches(ours, ref, lengths)


def test_hf_config_eps_and_max_distance_are_used(spiece, tmp_path):
    model = make_hf(max_distance=16, eps=1e-2, seed=1)
    ref, lengths = hf_reference(model, spiece)
    model.save_pretrained(tmp_path)
    encoder = load_text_encoder(tmp_path, tokenizer=spiece)
    assert (encoder.config.max_distance, encoder.config.eps) == (16, 1e-2)
    assert_matches(encoder.encode(PROMPTS), ref, lengths)


def test_relative_buckets_match_transformers():
    attn = transformers.models.umt5.modeling_umt5.UMT5Attention
    pos = torch.arange(300)
    rel = pos[None, :] - pos[:, None]
    hf = attn._relative_position_bucket(
        type("A", (), {"is_decoder": False, "relative_attention_num_buckets": 32,
                       "relative_attention_max_distance": 128})(), rel
    )  # fmt: skip
    ours = relative_position_buckets(300, 32, 128)
    assert torch.equal(ours, hf)
    assert ours.min() == 0 and ours.max() == 31


def test_encode_ids_trims_padding_and_backends_agree(hf_model, spiece, tmp_path):
    hf_model.save_pretrained(tmp_path)
    encoder = load_text_encoder(tmp_path, tokenizer=spiece)
    tokens = encoder.tokenizer(PROMPTS)
    trimmed = encoder.encode_ids(tokens.input_ids, tokens.attention_mask)
    # Running the model over all 512 positions gives the same valid rows as the trimmed run.
    full = encoder.model(tokens.input_ids, tokens.attention_mask)
    n = int(tokens.lengths[1])
    torch.testing.assert_close(trimmed[1, :n], full[1, :n], rtol=1e-5, atol=1e-5)
    assert encoder.encode([]).shape == (0, 512, 32)
    encoder.attn_backend = "sdpa"
    torch.testing.assert_close(encoder.encode_ids(tokens.input_ids, tokens.attention_mask), trimmed)


def test_bf16_load(hf_model, spiece, tmp_path):
    ref, lengths = hf_reference(hf_model, spiece)
    hf_model.save_pretrained(tmp_path)
    encoder = load_text_encoder(tmp_path, tokenizer=spiece, dtype=torch.bfloat16)
    out = encoder.encode(PROMPTS)
    assert out.dtype == torch.bfloat16 and encoder.model.blocks[0].attn.q.weight.dtype == torch.bfloat16
    cos = F.cosine_similarity(out[0, : lengths[0]].float(), ref[0, : lengths[0]], dim=-1)
    assert cos.mean() > 0.995 and cos.min() > 0.95  # bf16 rounding through 2 random layers
    assert torch.all(out[1, lengths[1] :] == 0)


def test_random_tiny_preset_round_trips_through_canonical(spiece, tmp_path):
    cfg = UMT5Config.from_name("tiny")
    model = UMT5Encoder.random(cfg, seed=3)
    from models.text_encoder_loading import save_text_encoder_canonical

    save_text_encoder_canonical(tmp_path, model.state_dict(), cfg, tokenizer=spiece.parent)
    encoder = load_text_encoder(tmp_path)
    tokens = encoder.tokenizer(PROMPTS)
    direct = model(tokens.input_ids, tokens.attention_mask)
    n = int(tokens.lengths[0])
    torch.testing.assert_close(encoder.encode(PROMPTS)[0, :n], direct[0, :n])
    assert PRESETS["umt5-xxl"].inner_dim == 4096 and PRESETS["umt5-xxl"].vocab_size == 256384


# --- wrong checkpoints --------------------------------------------------------------------------


def test_error_not_a_t5_checkpoint(tmp_path):
    torch.save({"patch_embedding.weight": torch.zeros(4, 4)}, tmp_path / "dit.pth")
    with pytest.raises(CheckpointError, match="not a umT5 encoder"):
        load_text_encoder(tmp_path / "dit.pth", tokenizer=tmp_path)


def test_error_names_missing_and_unexpected_keys(hf_model, spiece, tmp_path):
    sd = hf_to_wan(hf_model.state_dict())
    del sd["blocks.1.ffn.fc2.weight"]
    sd["blocks.1.ffn.extra.weight"] = torch.zeros(2)
    torch.save(sd, tmp_path / "t5.pth")
    with pytest.raises(CheckpointError, match=r"1 missing.*blocks\.1\.ffn\.fc2\.weight.*1 unexpected.*extra"):
        load_text_encoder(tmp_path / "t5.pth", tokenizer=spiece)


def test_error_plain_t5_without_per_layer_bias(hf_model, spiece, tmp_path):
    sd = hf_to_wan(hf_model.state_dict())
    del sd["blocks.1.pos_embedding.embedding.weight"]  # T5 v1.1: bias in layer 0 only
    torch.save(sd, tmp_path / "t5.pth")
    with pytest.raises(CheckpointError, match=r"blocks\.1\.pos_embedding\.embedding\.weight"):
        load_text_encoder(tmp_path / "t5.pth", tokenizer=spiece)


def test_error_shape_mismatch_and_wrong_component(spiece, tmp_path):
    cfg = UMT5Config.from_name("tiny")
    sd = UMT5Encoder.random(cfg).state_dict()
    write_canonical(tmp_path / "bad", sd, Manifest("text_encoder", {**cfg.to_dict(), "d_ff": 48}))
    with pytest.raises(CheckpointError, match="shape mismatches"):
        load_text_encoder(tmp_path / "bad", tokenizer=spiece)
    write_canonical(tmp_path / "vae", sd, Manifest("vae", cfg.to_dict()))
    with pytest.raises(CheckpointError, match="component 'vae'"):
        load_text_encoder(tmp_path / "vae", tokenizer=spiece)


def test_error_no_tokenizer(hf_model, tmp_path):
    hf_model.save_pretrained(tmp_path / "te")
    with pytest.raises(FileNotFoundError, match="no tokenizer found"):
        load_text_encoder(tmp_path / "te")
