"""What each model id accepts: sizes, clip lengths, kind (T2V/I2V). Pure python, the one table.

The OpenAI-style `seconds` and `size` fields map to frames and a resolution here:
`num_frames = 4·round(seconds·FPS / 4) + 1` (Wan's VAE compresses time 4×, so frames are 4k+1),
and `size` ("WIDTHxHEIGHT") must be one of the model's sizes. For I2V models without an explicit
size, the size whose aspect ratio is closest to the input image is picked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from service.contract import FPS


@dataclass(frozen=True)
class ModelInfo:
    id: str
    kind: Literal["t2v", "i2v"]
    sizes: tuple[tuple[int, int], ...]  # (width, height); the first is the default
    max_frames: int  # 4k + 1
    default_frames: int  # 4k + 1
    max_steps: int = 4

    @property
    def size_names(self) -> list[str]:
        return [f"{w}x{h}" for w, h in self.sizes]

    @property
    def max_seconds(self) -> float:
        return (self.max_frames - 1) / FPS


_480P = ((832, 480), (480, 832), (624, 624))
_720P = ((1280, 720), (720, 1280), (960, 960))

MODELS: dict[str, ModelInfo] = {
    m.id: m
    for m in (
        ModelInfo("wan-tiny", "t2v", ((64, 64), (96, 64), (64, 96), (128, 128)), max_frames=33,
                  default_frames=9),
        ModelInfo("wan-tiny-i2v", "i2v", ((64, 64), (96, 64), (64, 96)), max_frames=33, default_frames=9),
        ModelInfo("wan2.1-t2v-1.3b", "t2v", _480P, max_frames=81, default_frames=81),
        ModelInfo("wan2.1-t2v-14b", "t2v", _480P + _720P, max_frames=81, default_frames=81),
        ModelInfo("wan2.2-i2v-a14b", "i2v", _720P + _480P, max_frames=81, default_frames=81),
    )
}


class CatalogError(ValueError):
    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param
        self.message = message


def get_model(model_id: str, served: list[str]) -> ModelInfo:
    if model_id not in served or model_id not in MODELS:
        raise CatalogError("model", f"model {model_id!r} is not served here; allowed: {', '.join(served)}")
    return MODELS[model_id]


def parse_size(info: ModelInfo, size: str | None, image_wh: tuple[int, int] | None = None) -> tuple[int, int]:
    """(width, height) for an API `size`; None picks the default (I2V: closest aspect to the image)."""
    if size is None:
        if info.kind == "i2v" and image_wh is not None:
            aspect = image_wh[0] / image_wh[1]
            return min(info.sizes, key=lambda wh: abs(wh[0] / wh[1] - aspect))
        return info.sizes[0]
    try:
        w_s, h_s = size.lower().split("x")
        wh = (int(w_s), int(h_s))
    except ValueError:
        wh = (0, 0)
    if wh not in info.sizes:
        raise CatalogError(
            "size", f"size {size!r} is not supported by {info.id}; allowed: {', '.join(info.size_names)}"
        )
    return wh


def frames_for(info: ModelInfo, seconds: str | float | None, num_frames: int | None) -> int:
    """Frame count (4k+1) for the API's `seconds` or our `num_frames` extension."""
    if num_frames is not None:
        if num_frames < 1 or (num_frames - 1) % 4 or num_frames > info.max_frames:
            raise CatalogError(
                "num_frames", f"num_frames must be 4k+1 between 1 and {info.max_frames} for {info.id}"
            )
        return num_frames
    if seconds is None:
        return info.default_frames
    try:
        s = float(seconds)
    except ValueError:
        s = -1.0
    if not (0 < s <= info.max_seconds):
        raise CatalogError(
            "seconds", f"seconds must be a number in (0, {info.max_seconds:g}] for {info.id} ({FPS} fps)"
        )
    return max(1, 4 * round(s * FPS / 4) + 1)


def seconds_of(num_frames: int, fps: int = FPS) -> str:
    """The API `seconds` string for a frame count, e.g. 81 frames at 16 fps -> "5"."""
    return f"{(num_frames - 1) / fps:g}"
