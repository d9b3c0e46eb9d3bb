"""Loading the umT5 text encoder from any published layout, and the `TextEncoder` the pipeline uses.

Layouts read by `load_text_encoder(path)`:

- Wan's `models_t5_umt5-xxl-enc-bf16.pth`: our own parameter names, no renaming;
- an HF folder (`config.json` + `model.safetensors` / sharded index / `pytorch_model.bin`) of
  `UMT5EncoderModel` (also the diffusers `text_encoder/` folder, and the encoder half of a full
  UMT5 model): `encoder.block.N.layer.0.SelfAttention.q.weight` ... mapped to ours;
- our canonical folder (`turbovid.json` manifest with component "text_encoder").

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
    read_state_dict,
    strip_prefix,
    write_canonical,
)
from models.t5 import AttnBackend, UMT5Config, UMT5Encoder
from models.tokenizer import SPIECE_NAME, UMT5Tokenizer, find_spiece

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


def read_text_encoder_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], UMT5Config, str]:
    """(state dict in our names, config, layout name) of any supported layout; tensors stay mmapped."""
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
        return read_state_dict(path), UMT5Config.from_dict(manifest.architecture), "canonical"
    sd = read_state_dict(path)
    for prefix in ("module.", "model.", "text_encoder."):
        sd = strip_prefix(sd, prefix)
    if is_hf_layout(set(sd)):
        folder = path if path.is_dir() else path.parent
        base = _hf_config_overrides(folder)
        sd = map_hf_state_dict(sd)
        return sd, infer_config(sd, where=str(path), base=base), "hf"
    return sd, infer_config(sd, where=str(path)), "wan"


def build_encoder(
    sd: Mapping[str, torch.Tensor], cfg: UMT5Config, *, where: str, device="cpu", dtype=torch.float32
) -> UMT5Encoder:
    """Build on the meta device and take the tensors with load_state_dict(assign=True)."""
    with torch.device("meta"):
        model = UMT5Encoder(cfg)
    assign_state_dict(model, sd, what=f"{where} (umT5 encoder)", device=device, dtype=dtype)
    return model.eval().requires_grad_(False)


def _default_tokenizer(weights: Path) -> Path:
    """Where the tokenizer lives next to the weights: Wan, HF, diffusers and canonical layouts."""
    folder = weights if weights.is_dir() else weights.parent
    candidates = [
        folder / SPIECE_NAME,
        folder / "tokenizer",
        folder / "google" / "umt5-xxl",  # Wan release folders
        folder.parent / "tokenizer",  # diffusers: text_encoder/ and tokenizer/ are siblings
    ]
    for candidate in candidates:
        try:
            return find_spiece(candidate)
        except FileNotFoundError:
            continue
    raise FileNotFoundError(
        f"no tokenizer found next to {weights} (looked for {SPIECE_NAME} in: "
        + ", ".join(str(c) for c in candidates)
        + "); pass tokenizer=<path to spiece.model or its folder>"
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
        input_ids = input_ids.to(self.device)
        attention_mask = attention_mask.to(self.device)
        B, L = input_ids.shape
        if B == 0:
            return torch.zeros(0, L, self.config.d_model, device=self.device, dtype=self.dtype)
        keep = max(int(attention_mask.sum(dim=1).max()), 1)
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
    """Load a umT5 encoder (Wan .pth, HF folder, or canonical folder) and its tokenizer.

    `tokenizer` is a spiece.model file or a folder holding one; by default it is looked for next
    to the weights (see `_default_tokenizer`). Raises CheckpointError for weights that are not a
    umT5 encoder (naming the missing / unexpected keys) and FileNotFoundError without a tokenizer.
    """
    path = Path(path)
    sd, cfg, _layout = read_text_encoder_checkpoint(path)
    model = build_encoder(sd, cfg, where=str(path), device=device, dtype=dtype)
    tok_path = find_spiece(tokenizer) if tokenizer is not None else _default_tokenizer(path)
    return TextEncoder(model, UMT5Tokenizer(tok_path))


def save_text_encoder_canonical(
    folder: str | Path,
    state_dict: Mapping[str, torch.Tensor],
    config: UMT5Config,
    *,
    tokenizer: str | Path | None = None,
    source: str | None = None,
) -> Path:
    """Write our canonical folder (state dict in our names); copy the tokenizer to `tokenizer/`."""
    folder = Path(folder)
    if tokenizer is not None:
        (folder / "tokenizer").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(find_spiece(tokenizer), folder / "tokenizer" / SPIECE_NAME)
    return write_canonical(
        folder, state_dict, Manifest(component=COMPONENT, architecture=config.to_dict(), source=source)
    )


def convert_text_encoder(
    src: str | Path, dst: str | Path, *, tokenizer: str | Path | None = None, dtype: torch.dtype | None = None
) -> Path:
    """Any supported layout -> canonical folder at `dst` (weights renamed, tokenizer copied along)."""
    src = Path(src)
    sd, cfg, layout = read_text_encoder_checkpoint(src)
    build_encoder(sd, cfg, where=str(src), device="meta")  # validate keys and shapes before writing
    if dtype is not None:
        sd = {k: v.to(dtype) for k, v in sd.items()}
    tok = find_spiece(tokenizer) if tokenizer is not None else _default_tokenizer(src)
    return save_text_encoder_canonical(dst, sd, cfg, tokenizer=tok, source=f"{layout}:{src.name}")
