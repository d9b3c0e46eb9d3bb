"""The models TurboVid serves and their generation presets (pure Python: no torch import).

A model id names a complete pipeline: which DiT architecture (and how many experts), which text encoder
and VAE, the sampler defaults and the sizes it was trained for.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

# (width, height) per resolution class and aspect ratio; all multiples of 16 (VAE 8× · patch 2×).
RESOLUTIONS: dict[str, dict[str, tuple[int, int]]] = {
    "480p": {"16:9": (832, 480), "9:16": (480, 832), "1:1": (624, 624)},
    "720p": {"16:9": (1280, 720), "9:16": (720, 1280), "1:1": (960, 960)},
}
SIZE_MULTIPLE = 16


@dataclass(frozen=True)
class ModelSpec:
    model_id: str
    kinds: tuple[Literal["t2v", "i2v"], ...]
    architecture: str  # WanConfig preset of the DiT (models/config.py)
    text_encoder: str  # UMT5Config preset
    vae: str  # VAEConfig preset
    sizes: tuple[tuple[int, int], ...]  # (width, height) accepted
    default_size: tuple[int, int]
    default_frames: int
    max_frames: int
    sigma_max_t2v: float = 80.0
    sigma_max_i2v: float = 200.0
    experts: bool = False  # Wan2.2 A14B: high-noise and low-noise experts

    def sigma_max(self, kind: str) -> float:
        return self.sigma_max_i2v if kind == "i2v" else self.sigma_max_t2v


def _sizes(*classes: str) -> tuple[tuple[int, int], ...]:
    return tuple(size for c in classes for size in RESOLUTIONS[c].values())


MODELS: dict[str, ModelSpec] = {
    "wan2.1-t2v-1.3b": ModelSpec(
        "wan2.1-t2v-1.3b", ("t2v",), "wan2.1-t2v-1.3b", "umt5-xxl", "wan2.1",
        sizes=_sizes("480p"), default_size=(832, 480), default_frames=81, max_frames=81,
    ),
    "wan2.1-t2v-14b": ModelSpec(
        "wan2.1-t2v-14b", ("t2v",), "wan2.1-t2v-14b", "umt5-xxl", "wan2.1",
        sizes=_sizes("480p", "720p"), default_size=(832, 480), default_frames=81, max_frames=81,
    ),
    "wan2.2-i2v-a14b": ModelSpec(
        "wan2.2-i2v-a14b", ("i2v",), "wan2.2-i2v-a14b", "umt5-xxl", "wan2.1",
        sizes=_sizes("480p", "720p"), default_size=(1280, 720), default_frames=81, max_frames=81,
        experts=True,
    ),
    # Random weights, tiny dims: the dev stack and CI. Serves both kinds (a second tiny DiT with the
    # I2V input channels) so that every code path runs on a laptop.
    "wan-tiny": ModelSpec(
        "wan-tiny", ("t2v", "i2v"), "wan-tiny", "tiny", "tiny",
        sizes=((64, 64), (96, 64), (64, 96), (128, 128)), default_size=(64, 64),
        default_frames=9, max_frames=33,
    ),
    # The I2V half of wan-tiny under its own id, as the gateway lists it (one kind per API model id).
    "wan-tiny-i2v": ModelSpec(
        "wan-tiny-i2v", ("i2v",), "wan-tiny", "tiny", "tiny",
        sizes=((64, 64), (96, 64), (64, 96)), default_size=(64, 64), default_frames=9, max_frames=33,
    ),
}


def tiny_model(model_id: str) -> bool:
    """Models whose random weights are built locally when no checkpoint is given."""
    return model_id in ("wan-tiny", "wan-tiny-i2v")


def get_model(model_id: str) -> ModelSpec:
    try:
        return MODELS[model_id]
    except KeyError:
        raise ValueError(f"unknown model {model_id!r}; known: {sorted(MODELS)}") from None


def check_frames(num_frames: int) -> None:
    if num_frames < 1 or (num_frames - 1) % 4:
        raise ValueError(f"num_frames must be 4k+1 (1, 5, 9, ..., 81), got {num_frames}")


def latent_frames(num_frames: int) -> int:
    check_frames(num_frames)
    return (num_frames - 1) // 4 + 1


def preset_size(resolution: str, aspect: str) -> tuple[int, int]:
    try:
        return RESOLUTIONS[resolution][aspect]
    except KeyError:
        raise ValueError(
            f"unknown preset {resolution}/{aspect}; resolutions {sorted(RESOLUTIONS)}, "
            f"aspects {sorted(RESOLUTIONS['480p'])}"
        ) from None


def adaptive_size(image_width: int, image_height: int, area: int) -> tuple[int, int]:
    """I2V: the size with about `area` pixels and the image's aspect ratio, in multiples of 16."""
    if image_width <= 0 or image_height <= 0:
        raise ValueError("image dimensions must be positive")
    aspect = image_width / image_height
    height = math.sqrt(area / aspect)
    width = height * aspect
    w = max(SIZE_MULTIPLE, int(round(width / SIZE_MULTIPLE)) * SIZE_MULTIPLE)
    h = max(SIZE_MULTIPLE, int(round(height / SIZE_MULTIPLE)) * SIZE_MULTIPLE)
    return w, h
