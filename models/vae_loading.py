"""Loading the Wan2.1 VAE from any of its published layouts, and writing our canonical one.

`load_vae(path)` accepts:
- Wan's `Wan2.1_VAE.pth` (or any .pth/.safetensors with Wan's names: `encoder.conv1.weight`, ...);
- a diffusers `AutoencoderKLWan` folder (`config.json` + `diffusion_pytorch_model.safetensors`), or a
  diffusers pipeline folder holding it as `vae/`; diffusers names are mapped to Wan's;
- our canonical folder (`models.checkpoint_io`, component "vae"), whose manifest holds the config;
- the VAE inside a ComfyUI all-in-one checkpoint (Wan names under `first_stage_model.`).

Without a manifest the architecture is read off the weights: base_dim from `encoder.conv1`, z_dim from
`conv2`, channel multipliers, residual blocks per level and temporal downsampling from the encoder's
block list. The model is built on the meta device and takes the (memory-mapped) tensors with
`load_state_dict(assign=True)`: no second copy when device and dtype already match.
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
    assign_state_dict,
    read_manifest,
    read_state_dict,
    strip_prefix,
    write_canonical,
)
from models.vae import VAEConfig, WanVAE

DIFFUSERS_CONFIG = "config.json"

# diffusers resnet part -> Wan's position in ResidualBlock.residual (or the shortcut)
_RESNET_PARTS = {
    "norm1": "residual.0",
    "conv1": "residual.2",
    "norm2": "residual.3",
    "conv2": "residual.6",
    "conv_shortcut": "shortcut",
}


def _resnet_key(rest: str) -> str:
    part, _, tail = rest.partition(".")
    return f"{_RESNET_PARTS.get(part, part)}.{tail}"


def diffusers_to_wan(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an `AutoencoderKLWan` (Wan2.1 layout) state dict to Wan's names; unknown keys are kept
    as they are (so that the key check reports them)."""
    up_resnets = {
        int(m.group(1))
        for k in state
        if (m := re.match(r"decoder\.up_blocks\.0\.resnets\.(\d+)\.", k))
    }
    per_up_block = len(up_resnets) + 1  # resnets + one upsampler, flattened in Wan's list
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        out[_diffusers_key_to_wan(key, per_up_block)] = value
    return out


def _diffusers_key_to_wan(key: str, per_up_block: int) -> str:
    simple = {
        "quant_conv.": "conv1.",
        "post_quant_conv.": "conv2.",
        "encoder.conv_in.": "encoder.conv1.",
        "decoder.conv_in.": "decoder.conv1.",
        "encoder.norm_out.": "encoder.head.0.",
        "decoder.norm_out.": "decoder.head.0.",
        "encoder.conv_out.": "encoder.head.2.",
        "decoder.conv_out.": "decoder.head.2.",
    }
    for old, new in simple.items():
        if key.startswith(old):
            return new + key[len(old) :]
    if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)", key):
        return f"{m.group(1)}.middle.{2 * int(m.group(2))}.{_resnet_key(m.group(3))}"
    if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.(\d+)\.(.+)", key):
        return f"{m.group(1)}.middle.{2 * int(m.group(2)) + 1}.{m.group(3)}"
    if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.(.+)", key):
        return f"encoder.downsamples.{m.group(1)}.{_resnet_key(m.group(2))}"
    if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        index = int(m.group(1)) * per_up_block + int(m.group(2))
        return f"decoder.upsamples.{index}.{_resnet_key(m.group(3))}"
    if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.(.+)", key):
        index = int(m.group(1)) * per_up_block + per_up_block - 1
        return f"decoder.upsamples.{index}.{m.group(2)}"
    return key


def infer_config(state: Mapping[str, torch.Tensor], **overrides: object) -> VAEConfig:
    """The VAEConfig a Wan-named state dict was built with (latent mean/std: Wan2.1's unless given)."""
    for key in ("encoder.conv1.weight", "conv2.weight"):
        if key not in state:
            raise CheckpointError(f"not a Wan VAE state dict: no {key!r}")
    base_dim = state["encoder.conv1.weight"].shape[0]
    z_dim = state["conv2.weight"].shape[0]
    indices = sorted(
        {int(k.split(".")[2]) for k in state if k.startswith("encoder.downsamples.")}
    )
    levels: list[list[int]] = [[]]  # per level: output channels of its residual blocks
    temporal: list[bool] = []
    for i in indices:
        prefix = f"encoder.downsamples.{i}."
        if prefix + "residual.2.weight" in state:
            levels[-1].append(state[prefix + "residual.2.weight"].shape[0])
        elif prefix + "resample.1.weight" in state:
            temporal.append(prefix + "time_conv.weight" in state)
            levels.append([])
        else:
            raise CheckpointError(f"encoder.downsamples.{i} is neither a residual block nor a resampler")
    num_res_blocks = len(levels[0])
    if num_res_blocks == 0 or any(len(level) != num_res_blocks for level in levels):
        raise CheckpointError(f"uneven residual blocks per encoder level: {[len(lv) for lv in levels]}")
    if z_dim != 16 and "latents_mean" not in overrides:
        raise CheckpointError(f"z_dim {z_dim}: only the Wan2.1 VAE (z_dim 16) is supported")
    try:
        return VAEConfig(
            base_dim=base_dim,
            z_dim=z_dim,
            dim_mult=tuple(level[0] // base_dim for level in levels),
            num_res_blocks=num_res_blocks,
            temporal_downsample=tuple(temporal),
            **overrides,  # type: ignore[arg-type]
        )
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"VAE config does not fit: {exc}") from exc


def _diffusers_stats(folder: Path) -> dict[str, object]:
    """latents_mean/std from a diffusers config.json (empty when absent); rejects non-Wan2.1 VAEs."""
    config_path = folder / DIFFUSERS_CONFIG
    if not config_path.is_file():
        return {}
    config = json.loads(config_path.read_text())
    if config.get("is_residual") or config.get("patch_size"):
        raise CheckpointError(f"{folder}: a Wan2.2-style VAE (residual/patchified); only Wan2.1's is supported")
    return {k: tuple(config[k]) for k in ("latents_mean", "latents_std") if k in config}


# Prefixes under which other files hold the VAE: ComfyUI all-in-one checkpoints, and "vae." wrappers.
VAE_PREFIXES = ("first_stage_model.", "vae.")


def _select_vae(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The VAE's tensors of a file that may hold other components too, prefix removed."""
    for prefix in VAE_PREFIXES:
        if any(k.startswith(prefix) for k in state):
            return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    return strip_prefix(state, "vae.")


def _read(path: Path) -> tuple[dict[str, torch.Tensor], VAEConfig]:
    """Wan-named state dict and config, from any supported layout."""
    if path.is_dir() and not (path / DIFFUSERS_CONFIG).is_file() and (path / "vae").is_dir():
        path = path / "vae"  # diffusers pipeline folder
    manifest = read_manifest(path) if path.is_dir() else None
    if manifest is not None:
        if manifest.component != "vae":
            raise CheckpointError(f"{path}: canonical checkpoint of a {manifest.component!r}, not a VAE")
        try:
            config = VAEConfig.from_dict(manifest.architecture)
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"{path}: manifest architecture is not a VAEConfig: {exc}") from exc
        return read_state_dict(path), config

    state = _select_vae(read_state_dict(path))
    overrides: dict[str, object] = {}
    if "encoder.conv_in.weight" in state:  # diffusers names
        state = diffusers_to_wan(state)
        overrides = _diffusers_stats(path if path.is_dir() else path.parent)
    return state, infer_config(state, **overrides)


def load_vae(
    path: str | Path, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> WanVAE:
    """Load the Wan2.1 VAE from `Wan2.1_VAE.pth`, a diffusers folder or our canonical folder.

    Returns a `WanVAE` in eval mode without gradients: `.encode(video [B, 3, F, H, W] in [-1, 1])`
    -> normalised latents [B, 16, (F-1)/4+1, H/8, W/8]; `.decode(latents)` -> video in [-1, 1].
    Raises CheckpointError naming missing/unexpected keys or mismatched shapes.
    """
    path = Path(path)
    state, config = _read(path)
    with torch.device("meta"):
        model = WanVAE(config)
    assign_state_dict(model, state, what=f"Wan VAE ({path})", device=device, dtype=dtype)
    return model.eval().requires_grad_(False)


def save_vae_canonical(model: WanVAE, folder: str | Path, *, source: str | None = None) -> Path:
    """Write `model` as our canonical checkpoint (Wan names + manifest with the config)."""
    manifest = Manifest(component="vae", architecture=model.config.to_dict(), source=source)
    return write_canonical(folder, model.state_dict(), manifest)
