"""Loading the umT5 text encoder from any published layout, and the `TextEncoder` the pipeline uses.

Layouts read by `load_text_encoder(path)`:

- Wan's `models_t5_umt5-xxl-enc-bf16.pth`: our own parameter names, no renaming;
- an HF folder (`config.json` + `model.safetensors` / sharded index / `pytorch_model.bin`) of
  `UMT5EncoderModel` (also the diffusers `text_encoder/` folder, and the encoder half of a full
  UMT5 model): `encoder.block.N.layer.0.SelfAttention.q.weight` ... mapped to ours;
- our canonical folder (`turbovid.json` manifest with component "text_encoder");
- google/umt5-xxl's own repo (full UMT5 model, sharded `pytorch_model-*.bin` + index; decoder dropped);
- ComfyUI's `umt5_xxl_fp16.safetensors` / `umt5_xxl_fp8_e4m3fn_scaled.safetensors` (HF names, the
  tokenizer embedded as the uint8 tensor `spiece_model`, fp8 dequantized: `models.fp8_scaled`), and the
  text encoder inside a ComfyUI all-in-one checkpoint (under `text_encoders.umt5xxl.transformer.`);
- a GGUF umT5 encoder (city96's `umt5-xxl-encoder-*.gguf`, llama.cpp names `enc.blk.N.attn_q`, ...).

The weights are found under any key prefix: the prefix is read off an anchor tensor (the embedding or
the final norm), so files holding other components too (all-in-one checkpoints) load their encoder.

The tokenizer, unless given: the one embedded in the weights file, else one next to the weights
(`spiece.model` or `tokenizer.json`, HF/diffusers/Wan folder layouts), else google/umt5-xxl in the
huggingface_hub cache (where TurboDiffusion's scripts leave it).

The architecture is read off the weights: vocab and d_model from the embedding, layers from the
block count, heads from the relative-bias table [buckets, heads], d_kv = q rows / heads, d_ff from
the FFN. eps and max distance come from an HF `config.json` or the manifest when there is one.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import torch

from models.checkpoint_io import (
    CANONICAL_WEIGHTS,
    CheckpointError,
    Manifest,
    assign_state_dict,
    read_manifest,
    read_shapes,
    read_state_dict,
    strip_prefix,
    write_canonical,
)
from models.fp8_scaled import dequantize_fp8, is_marker
from models.t5 import AttnBackend, UMT5Config, UMT5Encoder
from models.tokenizer import SPIECE_NAME, UMT5Tokenizer, find_tokenizer

COMPONENT = "text_encoder"

# HF T5/UMT5 encoder names -> ours (Wan's). Applied to keys with the "encoder." prefix removed.
_HF_BLOCK_RENAMES = {
    "layer.0.SelfAttention.q.weight": "attn.q.weight",
    "layer.0.SelfAttention.k.weight": "attn.k.weight",
    "layer.0.SelfAttention.v.weight": "attn.v.weight",
    "layer.0.SelfAttention.o.weight": "attn.o.weight",
    "layer.0.SelfAttention.relative_attention_bias.weight": "pos_embedding.embedding.weight",
    "layer.0.layer_norm.weight": "norm1.weight",
    "layer.1.DenseReluDense.wi_0.weight": "ffn.gate.0.weight",  # the GELU branch
    "layer.1.DenseReluDense.wi_1.weight": "ffn.fc1.weight",  # the linear branch
    "layer.1.DenseReluDense.wo.weight": "ffn.fc2.weight",
    "layer.1.layer_norm.weight": "norm2.weight",
}
_HF_BLOCK_KEY = re.compile(r"^encoder\.block\.(\d+)\.(.+)$")
SPIECE_KEY = "spiece_model"  # ComfyUI: the sentencepiece model's bytes as a uint8 tensor
# Tensors whose name ends the encoder's key set, in each naming: what precedes them is the prefix.
_ANCHORS = ("encoder.final_layer_norm.weight", "enc.output_norm.weight", "token_embedding.weight")
# llama.cpp T5 names (GGUF) -> HF names
_GGUF_T5 = [
    ("enc.blk.", "encoder.block."), ("enc.output_norm.", "encoder.final_layer_norm."),
    ("token_embd.", "shared."), ("attn_rel_b.", "layer.0.SelfAttention.relative_attention_bias."),
    ("attn_q.", "layer.0.SelfAttention.q."), ("attn_k.", "layer.0.SelfAttention.k."),
    ("attn_v.", "layer.0.SelfAttention.v."), ("attn_o.", "layer.0.SelfAttention.o."),
    ("attn_norm.", "layer.0.layer_norm."), ("ffn_gate.", "layer.1.DenseReluDense.wi_0."),
    ("ffn_up.", "layer.1.DenseReluDense.wi_1."), ("ffn_down.", "layer.1.DenseReluDense.wo."),
    ("ffn_norm.", "layer.1.layer_norm."),
]


def _select_encoder(sd: Mapping[str, torch.Tensor], where: str) -> tuple[dict[str, torch.Tensor], bytes | None]:
    """The encoder's tensors with their prefix removed, and the embedded tokenizer's bytes (or None)."""
    spiece = next((v for k, v in sd.items() if k == SPIECE_KEY or k.endswith("." + SPIECE_KEY)), None)
    prefixes = {k[: -len(a)] for k in sd for a in _ANCHORS if k.endswith(a) and (k == a or k[-len(a) - 1] == ".")}
    if len(prefixes) > 1:
        raise CheckpointError(f"{where}: several text encoders in one file (prefixes {sorted(prefixes)})")
    prefix = prefixes.pop() if prefixes else ""
    out = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    out = {k: v for k, v in out.items() if k != SPIECE_KEY and not k.endswith("." + SPIECE_KEY) and not is_marker(k)}
    for wrapper in ("module.", "model.", "text_encoder."):
        out = strip_prefix(out, wrapper)
    if any(k.startswith("enc.blk.") for k in out):
        renamed = {}
        for key, value in out.items():
            for old, new in _GGUF_T5:
                key = key.replace(old, new)
            renamed[key] = value
        out = renamed
    raw = None if spiece is None else spiece.contiguous().cpu().numpy().tobytes()
    return out, raw


def is_hf_layout(keys: set[str]) -> bool:
    return any(k.startswith("encoder.block.") for k in keys) or "shared.weight" in keys


def map_hf_state_dict(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF UMT5EncoderModel / UMT5Model keys -> ours. Decoder and LM head are dropped; names that
    have no counterpart are kept as they are so that key checking reports them."""
    out: dict[str, torch.Tensor] = {}
    for key, tensor in sd.items():
        if key.startswith(("decoder.", "lm_head.")):
            continue
        if key in ("shared.weight", "encoder.embed_tokens.weight"):
            out["token_embedding.weight"] = tensor  # tied: either copy will do
            continue
        if key == "encoder.final_layer_norm.weight":
            out["norm.weight"] = tensor
            continue
        m = _HF_BLOCK_KEY.match(key)
        if m and m.group(2) in _HF_BLOCK_RENAMES:
            out[f"blocks.{m.group(1)}.{_HF_BLOCK_RENAMES[m.group(2)]}"] = tensor
        else:
            out[key] = tensor
    return out


def _shape(sd: Mapping[str, torch.Tensor], key: str, where: str) -> tuple[int, ...]:
    if key not in sd:
        raise CheckpointError(f"{where}: not a umT5 encoder checkpoint: no {key!r} (keys: {sorted(sd)[:6]})")
    return tuple(sd[key].shape)


def infer_config(sd: Mapping[str, torch.Tensor], *, where: str, base: UMT5Config | None = None) -> UMT5Config:
    """The architecture a state dict (our names) holds; eps/max_distance from `base` (default umT5)."""
    vocab, d_model = _shape(sd, "token_embedding.weight", where)
    num_buckets, num_heads = _shape(sd, "blocks.0.pos_embedding.embedding.weight", where)
    inner, _ = _shape(sd, "blocks.0.attn.q.weight", where)
    d_ff, _ = _shape(sd, "blocks.0.ffn.fc1.weight", where)
    layers = {int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))}
    if inner % num_heads:
        raise CheckpointError(f"{where}: q has {inner} rows, not a multiple of {num_heads} heads")
    return replace(
        base or UMT5Config(),
        vocab_size=vocab,
        d_model=d_model,
        num_layers=max(layers) + 1,
        num_heads=num_heads,
        d_kv=inner // num_heads,
        d_ff=d_ff,
        num_buckets=num_buckets,
    )


def _hf_config_overrides(folder: Path) -> UMT5Config:
    """eps and max distance from an HF config.json next to the weights (defaults if absent)."""
    cfg_path = folder / "config.json"
    base = UMT5Config()
    if not cfg_path.is_file():
        return base
    data = json.loads(cfg_path.read_text())
    proj = data.get("feed_forward_proj", "gated-gelu")
    if proj not in ("gated-gelu", "gated-gelu_new"):
        raise CheckpointError(f"{cfg_path}: feed_forward_proj {proj!r}; umT5 needs a gated-GELU FFN")
    return replace(
        base,
        eps=float(data.get("layer_norm_epsilon", base.eps)),
        max_distance=int(data.get("relative_attention_max_distance", base.max_distance)),
    )


def read_text_encoder_checkpoint(
    path: str | Path, *, dtype: torch.dtype = torch.float32
) -> tuple[dict[str, torch.Tensor], UMT5Config, str]:
    """(state dict in our names, config, layout name) of any supported layout; tensors stay mmapped
    (fp8 weights are dequantized to `dtype`). See `read_text_encoder` for the embedded tokenizer."""
    sd, cfg, layout, _ = read_text_encoder(path, dtype=dtype)
    return sd, cfg, layout


def read_text_encoder(
    path: str | Path, *, dtype: torch.dtype = torch.float32
) -> tuple[dict[str, torch.Tensor], UMT5Config, str, bytes | None]:
    """`read_text_encoder_checkpoint` plus the embedded sentencepiece model's bytes (or None)."""
    path = Path(path)
    # A manifest counts for a canonical folder (or its weights file), not for any file beside one.
    canonical = path.is_dir() or path.name == CANONICAL_WEIGHTS
    manifest = read_manifest(path) if canonical and path.exists() else None
    if manifest is not None:
        if manifest.component != COMPONENT:
            raise CheckpointError(
                f"{path}: canonical checkpoint of component {manifest.component!r}, not {COMPONENT!r}"
            )
        if manifest.quantization:
            raise CheckpointError(
                f"{path}: quantized text encoders are not supported ({manifest.quantization})"
            )
        return read_state_dict(path), UMT5Config.from_dict(manifest.architecture), "canonical", None
    sd, spiece = _select_encoder(read_state_dict(path, dequant_dtype=dtype), str(path))
    sd = dequantize_fp8(sd, dtype)
    if is_hf_layout(set(sd)):
        folder = path if path.is_dir() else path.parent
        base = _hf_config_overrides(folder)
        sd = map_hf_state_dict(sd)
        return sd, infer_config(sd, where=str(path), base=base), "hf", spiece
    return sd, infer_config(sd, where=str(path)), "wan", spiece


def read_text_encoder_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Names -> shapes of the tensors `read_text_encoder` would keep from `path` (our names; another text
    encoder in the same file, a T5 decoder and LM head, the second name of HF's tied embedding and an embedded
    tokenizer left out), from the headers: no tensor data is read."""
    path = Path(path)
    canonical = path.is_dir() or path.name == CANONICAL_WEIGHTS
    if canonical and path.exists() and read_manifest(path) is not None:
        return read_shapes(path)
    shapes = {k: v for k, v in read_shapes(path).items() if k != SPIECE_KEY and not k.endswith("." + SPIECE_KEY)}
    sd, _ = _select_encoder(shapes, str(path))  # type: ignore[arg-type]  # keys only: no tensor is touched
    return map_hf_state_dict(sd) if is_hf_layout(set(sd)) else sd  # type: ignore[arg-type, return-value]


def build_encoder(
    sd: Mapping[str, torch.Tensor], cfg: UMT5Config, *, where: str, device="cpu", dtype=torch.float32
) -> UMT5Encoder:
    """Build on the meta device and take the tensors with load_state_dict(assign=True)."""
    with torch.device("meta"):
        model = UMT5Encoder(cfg)
    assign_state_dict(model, sd, what=f"{where} (umT5 encoder)", device=device, dtype=dtype)
    return model.eval().requires_grad_(False)


def _default_tokenizer(weights: Path, *, hub_cache: str | Path | None = None) -> Path:
    """Where the tokenizer lives next to the weights (Wan, HF, diffusers and canonical layouts), else
    google/umt5-xxl in the huggingface_hub cache."""
    from models.hub import cached_tokenizer

    folder = weights if weights.is_dir() else weights.parent
    candidates = [
        folder,  # spiece.model / tokenizer.json, or tokenizer/ inside
        folder / "google" / "umt5-xxl",  # Wan release folders
        folder.parent / "tokenizer",  # diffusers: text_encoder/ and tokenizer/ are siblings
    ]
    for candidate in candidates:
        try:
            return find_tokenizer(candidate)
        except FileNotFoundError:
            continue
    cached = cached_tokenizer(cache_dir=hub_cache)
    if cached is not None:
        return cached
    raise FileNotFoundError(
        f"no tokenizer found for {weights} (looked for {SPIECE_NAME} / tokenizer.json in: "
        + ", ".join(str(c) for c in candidates)
        + ", and google/umt5-xxl in the Hugging Face cache); pass tokenizer=<path to spiece.model, "
        "tokenizer.json or their folder>"
    )


class TextEncoder:
    """Prompts -> umT5 embeddings the way Wan feeds its DiT.

    `encode(prompts) -> [B, max_length, d_model]` (max_length 512): rows past each prompt's token
    count (EOS included) are exactly zero, as Wan's `u[:seq_len]` then zero-padding gives.
    """

    def __init__(self, model: UMT5Encoder, tokenizer: UMT5Tokenizer, *, attn_backend: AttnBackend = "math"):
        self.model = model
        self.tokenizer = tokenizer
        self.attn_backend: AttnBackend = attn_backend

    @property
    def config(self) -> UMT5Config:
        return self.model.config

    @property
    def device(self) -> torch.device:
        return self.model.token_embedding.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.token_embedding.weight.dtype

    @torch.inference_mode()
    def encode_ids(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """input_ids, attention_mask [B, L] (valid tokens first) -> [B, L, d_model], zero past lengths.

        Only the first max(lengths) positions are computed: keys past a prompt's length are masked
        and relative-position bias depends only on distances, so trimming changes nothing else.
        """
        B, L = input_ids.shape
        if B == 0:
            return torch.zeros(0, L, self.config.d_model, device=self.device, dtype=self.dtype)
        keep = max(int(attention_mask.sum(dim=1).max()), 1)  # before the copies: no device sync for it
        input_ids = input_ids.to(self.device)
        attention_mask = attention_mask.to(self.device)
        mask = attention_mask[:, :keep]
        hidden = self.model(input_ids[:, :keep], mask, attn_backend=self.attn_backend)  # [B, keep, C]
        hidden = hidden * mask.unsqueeze(-1).to(hidden.dtype)
        out = hidden.new_zeros(B, L, hidden.shape[-1])
        out[:, :keep] = hidden
        return out  # [B, L, C]

    def encode(self, prompts: list[str]) -> torch.Tensor:
        """Prompts -> [B, tokenizer.max_length, d_model] in the model's dtype, zero past each length."""
        tokens = self.tokenizer(list(prompts))
        return self.encode_ids(tokens.input_ids, tokens.attention_mask)


def load_text_encoder(
    path: str | Path,
    *,
    tokenizer: str | Path | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> TextEncoder:
    """Load a umT5 encoder (any layout of the module docstring) and its tokenizer.

    `tokenizer` is a spiece.model or tokenizer.json file or a folder holding one; by default the
    tokenizer embedded in the weights file is used, else one next to the weights, else google/umt5-xxl
    from the huggingface_hub cache. Raises CheckpointError for weights that are not a umT5 encoder
    (naming the missing / unexpected keys) and FileNotFoundError without a tokenizer.
    """
    path = Path(path)
    sd, cfg, _layout, spiece = read_text_encoder(path, dtype=dtype)
    model = build_encoder(sd, cfg, where=str(path), device=device, dtype=dtype)
    if tokenizer is not None:
        tok = UMT5Tokenizer(tokenizer)
    elif spiece is not None:
        tok = UMT5Tokenizer(spiece)
    else:
        tok = UMT5Tokenizer(_default_tokenizer(path))
    return TextEncoder(model, tok)


def save_text_encoder_canonical(
    folder: str | Path,
    state_dict: Mapping[str, torch.Tensor],
    config: UMT5Config,
    *,
    tokenizer: str | Path | bytes | None = None,
    source: str | None = None,
) -> Path:
    """Write our canonical folder (state dict in our names); copy the tokenizer (a file, a folder or
    a sentencepiece model's bytes) to `tokenizer/`."""
    folder = Path(folder)
    if isinstance(tokenizer, bytes):
        (folder / "tokenizer").mkdir(parents=True, exist_ok=True)
        (folder / "tokenizer" / SPIECE_NAME).write_bytes(tokenizer)
    elif tokenizer is not None:
        (folder / "tokenizer").mkdir(parents=True, exist_ok=True)
        src = find_tokenizer(tokenizer)
        shutil.copyfile(src, folder / "tokenizer" / (src.name if src.suffix == ".json" else SPIECE_NAME))
    return write_canonical(
        folder, state_dict, Manifest(component=COMPONENT, architecture=config.to_dict(), source=source)
    )


def convert_text_encoder(
    src: str | Path, dst: str | Path, *, tokenizer: str | Path | None = None, dtype: torch.dtype | None = None
) -> Path:
    """Any supported layout -> canonical folder at `dst` (weights renamed, tokenizer copied along)."""
    src = Path(src)
    sd, cfg, layout, spiece = read_text_encoder(src, dtype=dtype or torch.float32)
    build_encoder(sd, cfg, where=str(src), device="meta")  # validate keys and shapes before writing
    if dtype is not None:
        sd = {k: v.to(dtype) for k, v in sd.items()}
    tok: Path | bytes
    if tokenizer is not None:
        tok = find_tokenizer(tokenizer)
    else:
        tok = spiece if spiece is not None else _default_tokenizer(src)
    return save_text_encoder_canonical(dst, sd, cfg, tokenizer=tok, source=f"{layout}:{src.name}")
