"""The model catalog: one `ModelCard` per API model id. Pure Python, the one table.

A card says everything both processes need to know about a model: what it does (T2V or I2V), the
sizes and clip lengths it accepts and their defaults, which sampler (solver) its checkpoints are
made for and that sampler's step range, sigma_max per kind, whether it has two experts, which
DiT / text-encoder / VAE presets build it (`models/config.py`, `models/t5.py`, `models/vae.py`), and
the published checkpoint files `turbovid download` fetches. Adding a model is one row in `MODELS`.

The OpenAI-style `seconds` and `size` fields map to frames and a resolution here:
`num_frames = 4·round(seconds·FPS / 4) + 1` (Wan's VAE compresses time 4×, so frames are 4k+1),
and `size` ("WIDTHxHEIGHT") must be one of the model's sizes. For I2V models without an explicit
size, the size whose aspect ratio is closest to the input image is picked.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

Kind = Literal["t2v", "i2v"]
Solver = Literal["rcm", "flow"]

FPS = 16
SIZE_MULTIPLE = 16  # VAE 8× · patch 2×


@dataclass(frozen=True)
class StepRange:
    min: int
    max: int
    default: int


# rCM: the 1–4-step distilled sampler (TurboDiffusion checkpoints). flow: Wan's flow-matching solver
# with classifier-free guidance, for original (non-distilled) checkpoints.
SOLVER_STEPS: dict[str, StepRange] = {"rcm": StepRange(1, 4, 4), "flow": StepRange(1, 100, 50)}
FLOW_GUIDANCE_DEFAULT = 5.0
FLOW_SHIFT = 5.0

# (width, height) per resolution class and aspect ratio.
RESOLUTIONS: dict[str, dict[str, tuple[int, int]]] = {
    "480p": {"16:9": (832, 480), "9:16": (480, 832), "1:1": (624, 624)},
    "720p": {"16:9": (1280, 720), "9:16": (720, 1280), "1:1": (960, 960)},
}

# Published files: (Hugging Face repo, file patterns); "{q}" is "-quant" for the int8 DiT or "".
# The Wan2.1 base repo supplies the shared VAE, umT5 encoder and tokenizer for every model.
Download = tuple[str, tuple[str, ...]]
WAN_SHARED: Download = (
    "Wan-AI/Wan2.1-T2V-1.3B", ("Wan2.1_VAE.pth", "models_t5_umt5-xxl-enc-bf16.pth", "google/umt5-xxl/*"),
)


@dataclass(frozen=True)
class ModelCard:
    id: str
    kind: Kind  # what this API id does
    architecture: str  # WanConfig preset of the DiT
    sizes: tuple[tuple[int, int], ...]  # (width, height) the API accepts; `default_size` among them
    default_size: tuple[int, int]
    default_frames: int  # 4k + 1
    max_frames: int  # 4k + 1
    text_encoder: str = "umt5-xxl"  # UMT5Config preset
    vae: str = "wan2.1"  # VAEConfig preset
    solver: Solver = "rcm"  # the sampler its published checkpoints are made for
    sigma_max_t2v: float = 80.0
    sigma_max_i2v: float = 200.0
    experts: bool = False  # Wan2.2 A14B: high-noise and low-noise experts
    # Other API ids whose jobs this model's pipeline also runs (one worker serves both queues).
    also_serves: tuple[str, ...] = ()
    downloads: tuple[Download, ...] = ()
    tiny: bool = False  # random tiny weights are built locally when no checkpoint is given

    @property
    def model_id(self) -> str:
        return self.id

    @property
    def kinds(self) -> tuple[Kind, ...]:
        """Every kind the loaded pipeline runs: its own and those of the ids it also serves."""
        kinds: list[Kind] = [self.kind]
        for other in self.also_serves:
            if MODELS[other].kind not in kinds:
                kinds.append(MODELS[other].kind)
        return tuple(kinds)

    def sigma_max(self, kind: str) -> float:
        return self.sigma_max_i2v if kind == "i2v" else self.sigma_max_t2v

    @property
    def size_names(self) -> list[str]:
        return [f"{w}x{h}" for w, h in self.sizes]

    @property
    def max_seconds(self) -> float:
        return (self.max_frames - 1) / FPS


def _sizes(*classes: str) -> tuple[tuple[int, int], ...]:
    return tuple(size for c in classes for size in RESOLUTIONS[c].values())


_TURBO = "TurboDiffusion/TurboWan"
MODELS: dict[str, ModelCard] = {
    card.id: card
    for card in (
        ModelCard(
            "wan2.1-t2v-1.3b", "t2v", "wan2.1-t2v-1.3b", sizes=_sizes("480p"), default_size=(832, 480),
            default_frames=81, max_frames=81,
            downloads=((f"{_TURBO}2.1-T2V-1.3B-480P", ("TurboWan2.1-T2V-1.3B-480P{q}.pth",)), WAN_SHARED),
        ),
        ModelCard(
            "wan2.1-t2v-14b", "t2v", "wan2.1-t2v-14b", sizes=_sizes("480p", "720p"), default_size=(832, 480),
            default_frames=81, max_frames=81,
            downloads=((f"{_TURBO}2.1-T2V-14B-720P", ("TurboWan2.1-T2V-14B-720P{q}.pth",)), WAN_SHARED),
        ),
        ModelCard(
            "wan2.2-i2v-a14b", "i2v", "wan2.2-i2v-a14b", sizes=_sizes("720p", "480p"), default_size=(1280, 720),
            default_frames=81, max_frames=81, experts=True,
            downloads=(
                (f"{_TURBO}2.2-I2V-A14B-720P",
                 ("TurboWan2.2-I2V-A14B-high-720P{q}.pth", "TurboWan2.2-I2V-A14B-low-720P{q}.pth")),
                WAN_SHARED,
            ),
        ),
        # Random weights, tiny dims: the dev stack and CI. The pipeline holds a T2V and an I2V tiny DiT,
        # so one worker also serves the wan-tiny-i2v queue and every code path runs on a laptop.
        ModelCard(
            "wan-tiny", "t2v", "wan-tiny", text_encoder="tiny", vae="tiny",
            sizes=((64, 64), (96, 64), (64, 96), (128, 128)), default_size=(64, 64),
            default_frames=9, max_frames=33, also_serves=("wan-tiny-i2v",), tiny=True,
        ),
        ModelCard(
            "wan-tiny-i2v", "i2v", "wan-tiny", text_encoder="tiny", vae="tiny",
            sizes=((64, 64), (96, 64), (64, 96)), default_size=(64, 64), default_frames=9, max_frames=33,
            tiny=True,
        ),
    )
}


class CatalogError(ValueError):
    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param
        self.message = message


def get_card(model_id: str) -> ModelCard:
    """The card of a known model id; ValueError (a CatalogError on `model`) otherwise."""
    try:
        return MODELS[model_id]
    except KeyError:
        raise CatalogError("model", f"unknown model {model_id!r}; known: {', '.join(sorted(MODELS))}") from None


def served_card(model_id: str, served: list[str]) -> ModelCard:
    """The card of a model this gateway serves; CatalogError on `model` otherwise."""
    if model_id not in served or model_id not in MODELS:
        raise CatalogError("model", f"model {model_id!r} is not served here; allowed: {', '.join(served)}")
    return MODELS[model_id]


def counterpart(card: ModelCard, kind: Kind, served: list[str]) -> ModelCard | None:
    """A served model of the other `kind` built on the same DiT (wan-tiny <-> wan-tiny-i2v): what an error
    points to when a request sends an image to a T2V model, or none to an I2V one."""
    for model_id in served:
        other = MODELS.get(model_id)
        if other is not None and other.kind == kind and other.architecture == card.architecture:
            return other
    return None


def parse_size(card: ModelCard, size: str | None, image_wh: tuple[int, int] | None = None) -> tuple[int, int]:
    """(width, height) for an API `size`; None picks the default (I2V: closest aspect to the image)."""
    if size is None:
        if card.kind == "i2v" and image_wh is not None:
            aspect = image_wh[0] / image_wh[1]
            return min(card.sizes, key=lambda wh: abs(wh[0] / wh[1] - aspect))
        return card.default_size
    try:
        w_s, h_s = size.lower().split("x")
        wh = (int(w_s), int(h_s))
    except ValueError:
        wh = (0, 0)
    if wh not in card.sizes:
        raise CatalogError(
            "size", f"size {size!r} is not supported by {card.id}; allowed: {', '.join(card.size_names)}"
        )
    return wh


def check_frames(num_frames: int, max_frames: int | None = None) -> None:
    """ValueError unless num_frames is 4k+1 (and at most max_frames)."""
    if num_frames < 1 or (num_frames - 1) % 4 or (max_frames is not None and num_frames > max_frames):
        upper = f" up to {max_frames}" if max_frames is not None else ""
        raise CatalogError("num_frames", f"num_frames must be 4k+1 (1, 5, 9, ...){upper}, got {num_frames}")


def latent_frames(num_frames: int) -> int:
    check_frames(num_frames)
    return (num_frames - 1) // 4 + 1


def frames_for(card: ModelCard, seconds: str | float | None, num_frames: int | None) -> int:
    """Frame count (4k+1) for the API's `seconds` or our `num_frames` extension."""
    if num_frames is not None:
        if num_frames < 1 or (num_frames - 1) % 4 or num_frames > card.max_frames:
            raise CatalogError(
                "num_frames", f"num_frames must be 4k+1 between 1 and {card.max_frames} for {card.id}"
            )
        return num_frames
    if seconds is None:
        return card.default_frames
    try:
        s = float(seconds)
    except ValueError:
        s = -1.0
    if not (0 < s <= card.max_seconds):
        raise CatalogError(
            "seconds", f"seconds must be a number in (0, {card.max_seconds:g}] for {card.id} ({FPS} fps)"
        )
    return max(1, 4 * round(s * FPS / 4) + 1)


def seconds_of(num_frames: int, fps: int = FPS) -> str:
    """The API `seconds` string for a frame count, e.g. 81 frames at 16 fps -> "5"."""
    return f"{(num_frames - 1) / fps:g}"


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
