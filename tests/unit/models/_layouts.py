"""Tiny stand-ins for published checkpoints: the file names, folders, dtypes and key names as the repos
publish them, at tiny dimensions, plus the diffusers / transformers references they must match.

Every weight is rounded to bf16 first, so files published in bf16 or fp16 hold exactly the reference's
values. Used by test_checkpoint_layouts.py and test_checkpoint_components.py.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from models.tiny_tokenizer import build_tiny_tokenizer
from models.tokenizer import UMT5Tokenizer
from models.transformer_loading import diffusers_to_wan

TEXT_DIM = 32
PROMPTS = ["A red fox runs across a snowy field at dawn while soft light spreads over the quiet hills.",
           "Two cats play."]
LATENT = (1, 16, 2, 4, 6)  # [B, C, T, H, W] -> 12 tokens
TOKENIZER_COMMIT = "0123456789abcdef0123456789abcdef01234567"

# HF UMT5 block names -> Wan's (written out here, independently of models/text_encoder_loading.py)
_WAN_T5 = {
    "layer.0.SelfAttention.q": "attn.q", "layer.0.SelfAttention.k": "attn.k",
    "layer.0.SelfAttention.v": "attn.v", "layer.0.SelfAttention.o": "attn.o",
    "layer.0.SelfAttention.relative_attention_bias": "pos_embedding.embedding",
    "layer.0.layer_norm": "norm1", "layer.1.DenseReluDense.wi_0": "ffn.gate.0",
    "layer.1.DenseReluDense.wi_1": "ffn.fc1", "layer.1.DenseReluDense.wo": "ffn.fc2",
    "layer.1.layer_norm": "norm2",
}


def cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.nn.functional.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0).item()


def _round_bf16(model: torch.nn.Module, seed: int, spread: float = 0.2, norm_mean: float = 0.0) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            mean = norm_mean if "norm" in name else 0.0
            p.copy_((mean + spread * torch.randn(p.shape, generator=gen)).to(torch.bfloat16).float())


# 1. DiT ---------------------------------------------------------------------------------------------
def diffusers_dit(in_dim: int, *, heads: int = 2, head_dim: int = 32, ffn: int = 128, seed: int = 0):
    import diffusers

    model = diffusers.WanTransformer3DModel(
        num_attention_heads=heads, attention_head_dim=head_dim, in_channels=in_dim, out_channels=16,
        text_dim=TEXT_DIM, freq_dim=256, ffn_dim=ffn, num_layers=2, image_dim=None, added_kv_proj_dim=None,
    ).eval()
    _round_bf16(model, seed + in_dim)
    return model


def wan_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in diffusers_to_wan(model.state_dict()).items()}


def set_wan_state(model: torch.nn.Module, wan: dict[str, torch.Tensor]) -> torch.nn.Module:
    """Load Wan-named weights into a diffusers model (names mapped through the model's own keys)."""
    to_diffusers = {next(iter(diffusers_to_wan({k: 0}))): k for k in model.state_dict()}
    model.load_state_dict({to_diffusers[k]: v.float().reshape(model.state_dict()[to_diffusers[k]].shape)
                           for k, v in wan.items()})
    return model


def dit_inputs(in_dim: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(7)
    latents = torch.randn(*LATENT, generator=g)
    ctx = torch.randn(1, 512, TEXT_DIM, generator=g)
    cond = torch.randn(1, in_dim - 16, *LATENT[2:], generator=g) if in_dim > 16 else None
    return latents, torch.tensor([731.0]), ctx, cond


def diffusers_out(model, in_dim: int) -> torch.Tensor:
    latents, t, ctx, cond = dit_inputs(in_dim)
    with torch.no_grad():
        x = latents if cond is None else torch.cat([latents, cond], dim=1)
        return model(x, t, ctx, return_dict=False)[0]


def ours_out(model, in_dim: int) -> torch.Tensor:
    latents, t, ctx, cond = dit_inputs(in_dim)
    with torch.no_grad():
        return model(latents, t, ctx, cond)


def turbo_state(wan: dict[str, torch.Tensor], *, quant: bool) -> dict[str, torch.Tensor]:
    """TurboDiffusion's .pth: bf16, Linear patch embedding, SLA proj_l; `-quant`: int8 block Linears."""
    from models.linear import quantize_state_dict

    sd = {k: v.to(torch.bfloat16) for k, v in wan.items()}
    pe = sd["patch_embedding.weight"]
    sd["patch_embedding.weight"] = pe.reshape(pe.shape[0], -1)
    head_dim = 32
    for i in range(2):
        sd[f"blocks.{i}.self_attn.attn_op.local_attn.proj_l.weight"] = torch.zeros(head_dim, head_dim)
        sd[f"blocks.{i}.self_attn.attn_op.local_attn.proj_l.bias"] = torch.zeros(head_dim)
    return quantize_state_dict(sd) if quant else sd


# 2. umT5 --------------------------------------------------------------------------------------------
def hf_umt5_config():
    import transformers

    return transformers.UMT5Config(
        vocab_size=1000, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=1, num_heads=4,
        relative_attention_num_buckets=32, relative_attention_max_distance=128, layer_norm_epsilon=1e-6,
        feed_forward_proj="gated-gelu", dropout_rate=0.0, tie_word_embeddings=False,
    )


def hf_umt5_full(seed: int = 0):
    """UMT5ForConditionalGeneration (google/umt5-xxl's class), bf16-rounded random weights."""
    import transformers

    model = transformers.UMT5ForConditionalGeneration(hf_umt5_config()).eval()
    _round_bf16(model, seed, spread=0.3, norm_mean=1.0)
    return model


def hf_encoder_state(full) -> dict[str, torch.Tensor]:
    """The encoder half in UMT5EncoderModel names (what HF encoder-only folders and ComfyUI hold)."""
    sd = full.state_dict()
    out = {"shared.weight": sd["shared.weight"].clone()}
    out.update({k: v.clone() for k, v in sd.items() if k.startswith("encoder.") and "embed_tokens" not in k})
    return out


def hf_to_wan(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {"token_embedding.weight": sd["shared.weight"], "norm.weight": sd["encoder.final_layer_norm.weight"]}
    for key, value in sd.items():
        m = re.match(r"encoder\.block\.(\d+)\.(.+)\.weight$", key)
        if m:
            out[f"blocks.{m.group(1)}.{_WAN_T5[m.group(2)]}.weight"] = value
    return out


def umt5_reference(full, spiece: Path) -> tuple[torch.Tensor, torch.Tensor]:
    tokens = UMT5Tokenizer(spiece)(PROMPTS)
    with torch.no_grad():
        hidden = full.get_encoder()(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask)
    out = hidden.last_hidden_state * tokens.attention_mask.unsqueeze(-1)
    return out, tokens.lengths


def assert_text_parity(ours: torch.Tensor, ref: torch.Tensor, lengths: torch.Tensor) -> float:
    worst = 1.0
    for i, n in enumerate(lengths.tolist()):
        c = torch.nn.functional.cosine_similarity(ours[i, :n].double(), ref[i, :n].double(), dim=-1).min().item()
        worst = min(worst, c)
        assert torch.equal(ours[i, n:], torch.zeros_like(ours[i, n:]))
    assert worst >= 0.99999, worst
    return worst


def tokenizer_json_folder(spiece: Path, folder: Path) -> Path:
    """What current transformers saves for google/umt5-xxl's tokenizer: tokenizer.json, no spiece.model."""
    import transformers

    tok = transformers.T5TokenizerFast.from_pretrained(str(spiece.parent))
    tok.save_pretrained(str(folder))
    (folder / "spiece.model").unlink(missing_ok=True)
    assert (folder / "tokenizer.json").is_file()
    return folder


def hub_cache_umt5(cache: Path, spiece: Path, full=None, *, json_only: bool = False) -> Path:
    """google/umt5-xxl in a huggingface_hub cache (refs/main -> snapshots/<commit>/): the tokenizer, and
    with `full` the model as the repo's main branch publishes it (sharded pytorch_model-*.bin + index)."""
    repo = cache / "models--google--umt5-xxl"
    snap = repo / "snapshots" / TOKENIZER_COMMIT
    snap.mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(TOKENIZER_COMMIT)
    if json_only:
        tokenizer_json_folder(spiece, snap)
    else:
        shutil.copy(spiece, snap / "spiece.model")
    (snap / "special_tokens_map.json").write_text(json.dumps({"eos_token": "</s>", "pad_token": "<pad>"}))
    if full is not None:
        write_sharded_bin(full.state_dict(), snap, "pytorch_model", shards=2)
        cfg = full.config.to_dict()
        cfg["architectures"] = ["UMT5ForConditionalGeneration"]
        (snap / "config.json").write_text(json.dumps(cfg, default=str))
    return snap


def write_sharded_bin(sd: dict[str, torch.Tensor], folder: Path, stem: str, shards: int) -> None:
    keys = sorted(sd)
    weight_map = {}
    for i in range(shards):
        name = f"{stem}-{i + 1:05d}-of-{shards:05d}.bin"
        part = keys[i::shards]
        torch.save({k: sd[k].contiguous() for k in part}, folder / name)
        weight_map.update(dict.fromkeys(part, name))
    (folder / f"{stem}.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def write_sharded_safetensors(sd: dict[str, torch.Tensor], folder: Path, stem: str, shards: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    keys = sorted(sd)
    weight_map = {}
    for i in range(shards):
        name = f"{stem}-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = keys[i::shards]
        save_file({k: sd[k].contiguous() for k in part}, str(folder / name))
        weight_map.update(dict.fromkeys(part, name))
    (folder / f"{stem}.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


# 3. VAE ---------------------------------------------------------------------------------------------
def diffusers_vae():
    from diffusers import AutoencoderKLWan

    torch.manual_seed(0)
    model = AutoencoderKLWan(base_dim=8, z_dim=16).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05 + 0.01)
    return model


def vae_wan_state(model) -> dict[str, torch.Tensor]:
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

    from models.vae import VAEConfig, WanVAE

    with torch.device("meta"):
        names = list(WanVAE(VAEConfig.from_name("tiny")).state_dict())
    ref = model.state_dict()
    return {k: ref[convert_wan_vae_to_diffusers({k: torch.empty(0)}).popitem()[0]].clone() for k in names}


def vae_reference(model) -> tuple[torch.Tensor, torch.Tensor]:
    """(video, normalised latents) from diffusers."""
    video = torch.rand(1, 3, 5, 16, 16, generator=torch.Generator().manual_seed(3)) * 2 - 1
    mean = torch.tensor(model.config.latents_mean).view(1, 16, 1, 1, 1)
    std = torch.tensor(model.config.latents_std).view(1, 16, 1, 1, 1)
    with torch.no_grad():
        mu = model.encode(video).latent_dist.mean
    return video, (mu - mean) / std


# 4. fp8 and GGUF --------------------------------------------------------------------------------------
def comfy_all_in_one(refs: Refs, folder: Path) -> Path:
    """A ComfyUI all-in-one checkpoint (fp16 DiT, VAE, umT5 with its embedded tokenizer) of the
    references, under its published-style file name."""
    sd = {"model.diffusion_model." + k: v.half() for k, v in wan_state(refs.t2v).items()}
    sd.update({"first_stage_model." + k: v for k, v in vae_wan_state(refs.vae).items()})
    sd.update({"text_encoders.umt5xxl.transformer." + k: v.half() for k, v in hf_encoder_state(refs.umt5).items()})
    sd["text_encoders.umt5xxl.spiece_model"] = torch.frombuffer(bytearray(refs.spiece.read_bytes()), dtype=torch.uint8)
    path = folder / "wan2.1_t2v_1.3B_aio.safetensors"
    save_file(sd, str(path))
    return path


def is_block_linear(key: str, value: torch.Tensor) -> bool:
    return key.startswith("blocks.") and key.endswith(".weight") and value.dim() == 2 and "proj_l" not in key


def fp8_plain(sd: dict[str, torch.Tensor], pick=is_block_linear) -> tuple[dict, dict]:
    """(file tensors, dequantized reference): picked weights in float8_e4m3fn, the rest bf16."""
    file, ref = {}, {}
    for k, v in sd.items():
        if pick(k, v):
            file[k] = v.to(torch.float8_e4m3fn)
            ref[k] = file[k].float()
        else:
            file[k] = v.to(torch.bfloat16)
            ref[k] = file[k].float()
    return file, ref


def fp8_scaled(sd: dict[str, torch.Tensor], pick=is_block_linear, *, scale_shape=()) -> tuple[dict, dict]:
    """ComfyUI / Kijai scaled fp8: weight / scale in e4m3fn + scale_weight (+ scale_input), marker."""
    file, ref = {"scaled_fp8": torch.empty(0, dtype=torch.float8_e4m3fn)}, {}
    for k, v in sd.items():
        if pick(k, v):
            s = (v.abs().max().float() / 448.0).reshape(scale_shape)
            q = (v.float() / s).to(torch.float8_e4m3fn)
            stem = k[: -len("weight")]
            file[k], file[stem + "scale_weight"], file[stem + "scale_input"] = q, s, torch.ones(scale_shape)
            ref[k] = q.float() * s
        else:
            file[k] = v.to(torch.bfloat16)
            ref[k] = file[k].float()
    return file, ref


def write_gguf(path: Path, wan: dict[str, torch.Tensor], quant: str, *, seed: int = 0) -> dict[str, torch.Tensor]:
    """A Wan GGUF file as city96 / QuantStack publish them: block Linears in `quant` (Q8_0 quantized
    from the weights; K-quants as random blocks with small scales, since gguf-py has no K-quantizer),
    small tensors F32, the rest F16, the 5-D patch embedding flattened with its shape in
    `comfy.gguf.orig_shape.*`. Returns the dequantized weights the file stands for."""
    import gguf

    rng = np.random.default_rng(seed)
    qt = gguf.GGMLQuantizationType
    writer = gguf.GGUFWriter(str(path), arch="wan")
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    ref: dict[str, torch.Tensor] = {}
    for name, value in wan.items():
        data = value.float().numpy()
        if is_block_linear(name, value) and quant in ("Q4_K", "Q5_K") and data.shape[1] % 256 == 0:
            qtype = getattr(qt, quant)
            block, size = gguf.GGML_QUANT_SIZES[qtype]
            blocks = rng.integers(0, 256, (data.size // block, size), dtype=np.uint8)
            for col in (0, 2):  # d and dmin (fp16) lead each K-quant super-block
                blocks[:, col:col + 2] = rng.uniform(1e-4, 4e-4, len(blocks)).astype(np.float16).view(np.uint8).reshape(-1, 2)
            raw = blocks.reshape(data.shape[0], -1)
            writer.add_tensor(name, raw, raw_dtype=qtype)
            ref[name] = torch.from_numpy(gguf.quants.dequantize(raw, qtype).reshape(data.shape).copy())
            continue
        if is_block_linear(name, value) and data.shape[1] % 32 == 0:
            qtype = qt.Q8_0
        elif data.ndim == 1:
            qtype = qt.F32
        else:
            qtype = qt.F16
        if data.ndim > 4:
            writer.add_array(f"comfy.gguf.orig_shape.{name}", list(data.shape))
            data = data.reshape(data.shape[0], -1)
        packed = gguf.quants.quantize(data, qtype)
        writer.add_tensor(name, packed, raw_dtype=qtype)
        ref[name] = torch.from_numpy(gguf.quants.dequantize(packed, qtype).reshape(value.shape).copy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return ref


@dataclass
class Refs:
    """The tiny components every layout is built from, with their reference outputs."""

    spiece: Path
    t2v: torch.nn.Module  # diffusers DiT, in_dim 16
    i2v_high: torch.nn.Module  # diffusers DiT, in_dim 36
    i2v_low: torch.nn.Module
    umt5: torch.nn.Module  # UMT5ForConditionalGeneration
    vae: torch.nn.Module  # AutoencoderKLWan


def build_refs(root: Path) -> Refs:
    spiece = build_tiny_tokenizer(root / "tok")
    return Refs(spiece, diffusers_dit(16), diffusers_dit(36, seed=1), diffusers_dit(36, seed=2),
                hf_umt5_full(), diffusers_vae())
