"""Load a Wan DiT from any published layout: `load_transformer(path, ...)`.

Layouts read (the file or folder is given; the layout is told by its keys, never by its name):

- TurboDiffusion ``.pth``: Wan key names, ``patch_embedding.weight`` stored as a Linear
  [dim, in_dim·1·2·2] (patch flattened in (c, kt, kh, kw) order — exactly Conv3d's weight layout, so a
  reshape), optional SLA ``…self_attn.attn_op.local_attn.proj_l.{weight,bias}``, and for ``-quant``
  files ``int8_weight`` + ``scale`` in place of each block Linear's ``weight``; training checkpoints
  may prefix every key with ``net.``.
- official Wan: Wan key names, sharded safetensors with ``*.index.json`` or a single ``.pth``.
- diffusers: a pipeline folder with ``transformer/`` or the transformer folder itself (diffusers names,
  mapped to Wan's; ``config.json`` gives the head count).
- ComfyUI single file: Wan names under ``model.diffusion_model.`` (other components' keys ignored).
- our canonical folder (``model.safetensors`` + ``turbovid.json`` manifest).
- fp8 files, plain ``float8_e4m3fn`` or ComfyUI/Kijai "scaled" fp8 (``scale_weight`` per Linear, a
  ``scaled_fp8`` marker): dequantized at load (`models.fp8_scaled`).
- GGUF files (``general.architecture = "wan"``; Q8_0, Q5_K, Q4_K, ... mixed with F16/F32): dequantized
  at load (`models.gguf_loading`).

Layouts that are recognised but not supported raise a CheckpointError naming the layout and what is
missing (`unsupported_layout`): Wan2.1 I2V/FLF2V with the CLIP image branch, VACE, Fun control, Wan2.2
TI2V-5B (48-channel latents).

The architecture comes from the tensor shapes (dim, layers, ffn, in/out/text/freq dims, norms); the
head count from the manifest or a ``config.json`` when present, else from a preset of the same width,
else Wan's head_dim-128 convention. The model is built on the meta device and takes the (memory-mapped)
tensors with ``load_state_dict(assign=True)``: no second full copy when no dtype conversion is needed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path

import torch

from models.checkpoint_io import (
    CheckpointError,
    Manifest,
    check_keys,
    read_manifest,
    read_shapes,
    read_state_dict,
)
from models.config import PRESETS, WanConfig
from models.dit import WanTransformer, keeps_fp32
from models.fp8_scaled import dequantize_fp8, is_marker
from models.linear import (
    LINEAR_BACKENDS,
    convert_for_runtime,
    dequantize_state_dict,
    is_quantized,
    prepare_for_kernels,
    quantize_state_dict,
)
from models.ops import BACKENDS, Ops, select_ops

COMFY_PREFIX = "model.diffusion_model."
WRAPPER_PREFIXES = ("net.", "module.", "model.", "diffusion_model.")
PROJ_L = "attn_op.local_attn.proj_l"

# diffusers name -> Wan name, applied in order (see diffusers' convert_wan_transformer_to_diffusers).
_DIFFUSERS_TO_WAN: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"^condition_embedder\.time_embedder\.linear_1\."), "time_embedding.0."),
    (re.compile(r"^condition_embedder\.time_embedder\.linear_2\."), "time_embedding.2."),
    (re.compile(r"^condition_embedder\.text_embedder\.linear_1\."), "text_embedding.0."),
    (re.compile(r"^condition_embedder\.text_embedder\.linear_2\."), "text_embedding.2."),
    (re.compile(r"^condition_embedder\.time_proj\."), "time_projection.1."),
    (re.compile(r"^scale_shift_table$"), "head.modulation"),
    (re.compile(r"^proj_out\."), "head.head."),
    (re.compile(r"\.scale_shift_table$"), ".modulation"),
    (re.compile(r"\.attn1\."), ".self_attn."),
    (re.compile(r"\.attn2\."), ".cross_attn."),
    (re.compile(r"\.to_q\."), ".q."),
    (re.compile(r"\.to_k\."), ".k."),
    (re.compile(r"\.to_v\."), ".v."),
    (re.compile(r"\.to_out\.0\."), ".o."),
    (re.compile(r"\.ffn\.net\.0\.proj\."), ".ffn.0."),
    (re.compile(r"\.ffn\.net\.2\."), ".ffn.2."),
    (re.compile(r"^(blocks\.\d+)\.norm2\."), r"\1.norm3."),
]
def diffusers_to_wan(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state_dict.items():
        for pattern, repl in _DIFFUSERS_TO_WAN:
            key = pattern.sub(repl, key)
        out[key] = value
    return out


def to_wan_names(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Any supported layout's keys -> Wan's names (prefixes stripped, diffusers mapped)."""
    sd = dict(state_dict)
    if any(k.startswith(COMFY_PREFIX) for k in sd):
        sd = {k[len(COMFY_PREFIX):]: v for k, v in sd.items() if k.startswith(COMFY_PREFIX)}
    for prefix in WRAPPER_PREFIXES:
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    if any(k.startswith("condition_embedder.") or ".attn1." in k for k in sd):
        sd = diffusers_to_wan(sd)
    return sd


# (what the keys show, the layout's name and what TurboVid's DiT lacks for it); keys in Wan names.
_UNSUPPORTED: list[tuple[tuple[str, ...], str]] = [
    (("img_emb.", ".k_img.", ".v_img.", "image_embedder.", ".add_k_proj."),
     "Wan2.1 I2V/FLF2V with the CLIP image branch (img_emb.*, cross_attn.k_img/v_img): TurboVid's DiT has "
     "no CLIP image encoder or image cross-attention; use Wan2.2 I2V A14B"),
    (("vace_",), "Wan VACE (vace_blocks.*, vace_patch_embedding): the VACE control branch is missing"),
    (("control_adapter.", "ref_conv."), "Wan Fun control/reference: the control adapter is missing"),
    (("casual_audio_encoder.", "audio_injector.", "cond_encoder."), "Wan2.2 S2V: the audio branch is missing"),
]


def unsupported_layout(shapes: Mapping[str, tuple[int, ...] | torch.Tensor]) -> str | None:
    """Why a Wan-named DiT state dict (or its shapes) cannot be served, or None when it can."""
    for markers, why in _UNSUPPORTED:
        if any(m in k or k.startswith(m) for k in shapes for m in markers):
            return why
    head = shapes.get("head.head.weight")
    if head is not None and tuple(head.shape if isinstance(head, torch.Tensor) else head)[0] == 48 * 4:
        return ("Wan2.2 TI2V-5B (48-channel latents): needs the Wan2.2 VAE (z=48) and its DiT, which TurboVid "
                "does not have")
    return None


def in_out_dims(shapes: Mapping[str, tuple[int, ...] | torch.Tensor], patch=(1, 2, 2)) -> tuple[int, int]:
    """(in_dim, out_dim) of a Wan-named DiT from the patch embedding and head shapes."""
    def shape(stem: str) -> tuple[int, ...]:
        for suffix in ("weight", "int8_weight"):
            v = shapes.get(stem + suffix)
            if v is not None:
                return tuple(v.shape) if isinstance(v, torch.Tensor) else tuple(v)
        raise CheckpointError(f"checkpoint has no {stem}weight: not a Wan transformer?")

    cells = patch[0] * patch[1] * patch[2]
    pe = shape("patch_embedding.")
    numel = 1
    for d in pe:
        numel *= d
    return numel // (pe[0] * cells), shape("head.head.")[0] // cells


def _weight(sd: Mapping[str, torch.Tensor], stem: str) -> torch.Tensor:
    for suffix in ("weight", "int8_weight"):
        if stem + suffix in sd:
            return sd[stem + suffix]
    raise CheckpointError(f"checkpoint has no {stem}weight: not a Wan transformer?")


def infer_config(sd: Mapping[str, torch.Tensor], *, num_heads: int | None = None,
                 patch: tuple[int, int, int] = (1, 2, 2)) -> WanConfig:
    """Architecture of a Wan-named state dict (num_heads: see the module docstring)."""
    dim = _weight(sd, "patch_embedding.").shape[0]
    in_dim, out_dim = in_out_dims(sd, patch)
    layers = {int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))}
    if not layers:
        raise CheckpointError("checkpoint has no blocks.N.* tensors: not a Wan transformer?")
    text = _weight(sd, "text_embedding.0.")
    fields = dict(
        dim=dim, num_layers=max(layers) + 1, ffn_dim=_weight(sd, "blocks.0.ffn.0.").shape[0],
        in_dim=in_dim, out_dim=out_dim,
        text_dim=text.shape[1], freq_dim=_weight(sd, "time_embedding.0.").shape[1], patch=patch,
        qk_norm="blocks.0.self_attn.norm_q.weight" in sd, cross_attn_norm="blocks.0.norm3.weight" in sd,
    )
    if num_heads is None:
        same = [p for p in PRESETS.values() if p.dim == dim]
        num_heads = same[0].num_heads if same else max(1, dim // 128)
    try:
        return WanConfig(num_heads=num_heads, **fields)
    except ValueError as exc:
        raise CheckpointError(f"checkpoint shapes do not make a Wan transformer: {exc}") from exc


def _heads_from_config_json(folder: Path) -> int | None:
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        return None
    try:
        data = json.loads(cfg_path.read_text())
    except json.JSONDecodeError:
        return None
    for key in ("num_heads", "num_attention_heads"):
        if isinstance(data.get(key), int):
            return data[key]
    return None


def _resolve(path: Path) -> Path:
    if path.is_dir() and (path / "transformer").is_dir() and not any(path.glob("*.safetensors")):
        return path / "transformer"  # diffusers pipeline folder
    return path


def read_transformer_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Tensor names (as stored) -> shapes of a DiT checkpoint in any supported layout (a diffusers pipeline
    folder: its transformer/), from the headers: no tensor data is read."""
    return read_shapes(_resolve(Path(path)))


def build_transformer(
    sd: Mapping[str, torch.Tensor], cfg: WanConfig, *, dtype: torch.dtype = torch.float32,
    attention: str = "dense", linear: str = "native", ops: Ops | None = None,
) -> WanTransformer:
    """A model holding the tensors of a Wan-named state dict (taken, not copied, where dtypes match).
    ops: the model's backends (default: `Ops(attention, linear)`, plain PyTorch norms and linears)."""
    if ops is not None:
        attention, linear = ops.attention, ops.linear
    if attention not in BACKENDS:
        raise ValueError(f"unknown attention backend {attention!r}; known: {BACKENDS}")
    if linear not in LINEAR_BACKENDS:
        raise ValueError(f"unknown linear backend {linear!r}; known: {LINEAR_BACKENDS}")
    sd = dict(sd)

    # 1. layout fixes: Linear patch embedding -> Conv3d shape; SLA proj_l present or zero
    pe = sd.get("patch_embedding.weight")
    if pe is not None and pe.dim() != 5:  # Linear [dim, in·1·2·2] (TurboDiffusion) or GGUF-flattened
        sd["patch_embedding.weight"] = pe.reshape(cfg.dim, cfg.in_dim, *cfg.patch)
    has_proj_l = any(PROJ_L in k for k in sd)
    if attention == "dense":
        sd = {k: v for k, v in sd.items() if PROJ_L not in k}
    elif not has_proj_l:
        for i in range(cfg.num_layers):
            stem = f"blocks.{i}.self_attn.{PROJ_L}."
            sd[stem + "weight"] = torch.zeros(cfg.head_dim, cfg.head_dim)
            sd[stem + "bias"] = torch.zeros(cfg.head_dim)

    # 2. quantization: match the checkpoint to the requested linear backend
    if is_quantized(sd) and linear == "native":
        sd = dequantize_state_dict(sd, dtype)
    elif not is_quantized(sd) and linear == "w8a8":
        sd = quantize_state_dict(sd)

    # 3. dtypes: fp32 for time embedding / modulation / norms, `dtype` for other floats, int8 untouched
    for k, v in sd.items():
        if v.is_floating_point() and not k.endswith(".scale"):
            target = torch.float32 if keeps_fp32(k) else dtype
            if v.dtype != target:
                sd[k] = v.to(target)

    # 4. meta model, key check, assign
    with torch.device("meta"):
        model = WanTransformer(cfg, ops=ops or Ops(attention=attention, linear=linear))
        convert_for_runtime(model, linear)
    check_keys(set(model.state_dict()), set(sd), what="Wan transformer")
    try:
        model.load_state_dict(sd, assign=True, strict=True)
    except RuntimeError as exc:  # shape mismatches
        raise CheckpointError(f"Wan transformer: checkpoint does not fit: {exc}") from exc
    return model.eval().requires_grad_(False)


def read_transformer_checkpoint(
    path: str | Path, *, dtype: torch.dtype = torch.float32
) -> tuple[dict[str, torch.Tensor], WanConfig]:
    """(Wan-named state dict, architecture) of a transformer checkpoint in any supported layout.
    fp8 and quantized GGUF weights are dequantized to `dtype`; other tensors keep their stored dtype."""
    path = _resolve(Path(path))
    manifest = read_manifest(path)
    raw = read_state_dict(path, dequant_dtype=dtype)
    sd = dequantize_fp8(to_wan_names({k: v for k, v in raw.items() if not is_marker(k)}), dtype)
    why = unsupported_layout(sd)
    if why is not None:
        raise CheckpointError(f"{path}: unsupported DiT layout: {why}")
    if manifest is not None:
        if manifest.component != "transformer":
            raise CheckpointError(f"{path}: manifest says component {manifest.component!r}, not a transformer")
        return sd, WanConfig.from_dict(manifest.architecture)
    folder = path if path.is_dir() else path.parent
    return sd, infer_config(sd, num_heads=_heads_from_config_json(folder))


def checkpoint_features(sd: Mapping[str, torch.Tensor], manifest: Manifest | None) -> tuple[bool, bool]:
    """(SLA, quantized) of a Wan-named state dict: as its canonical manifest records them (checked against
    the tensors), else as TurboDiffusion's keys show (``proj_l`` => SLA, ``int8_weight`` => quantized)."""
    sla, quantized = any(PROJ_L in k for k in sd), is_quantized(sd)
    if manifest is None:
        return sla, quantized
    if manifest.quantization is not None and manifest.quantization.get("method") != "w8a8":
        raise CheckpointError(f"manifest quantization {manifest.quantization!r} is not one TurboVid runs (w8a8)")
    if (manifest.quantization is not None) != quantized:
        raise CheckpointError(f"manifest says quantization {manifest.quantization!r} but the tensors are "
                              f"{'int8' if quantized else 'not quantized'}")
    if bool(manifest.attention.get("sla", sla)) != sla:
        raise CheckpointError(f"manifest says attention {manifest.attention!r} but the tensors "
                              f"{'carry' if sla else 'lack'} SLA proj_l")
    return sla, quantized


def load_transformer(
    path: str | Path, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
    attention: str = "auto", linear: str = "auto",
) -> WanTransformer:
    """Load a Wan DiT from a file or folder of any supported layout (see the module docstring).

    attention: "auto" | "dense" | "sla" | "sagesla" (self-attention backend; SLA's proj_l comes from the
    checkpoint or is zero). linear: "auto" | "native" | "w8a8" (a quantized checkpoint with "native" is
    dequantized; a dense one with "w8a8" is quantized while loading). "auto" follows the manifest (or the
    TurboDiffusion keys) and the device: `models.ops.select_ops`. On CUDA with triton the W8A8 weights are
    converted once to the Triton GEMM's layout. Returns a `WanTransformer` in eval mode on `device`; its
    backends are ``model.ops``.
    """
    sd, cfg = read_transformer_checkpoint(path, dtype=dtype)
    sla, quantized = checkpoint_features(sd, read_manifest(_resolve(Path(path))))
    ops = select_ops(device, attention=attention, linear=linear, sla_checkpoint=sla, quantized=quantized)
    model = build_transformer(sd, cfg, dtype=dtype, ops=ops).to(device)
    if ops.kernels:
        prepare_for_kernels(model)
    return model
