"""Wan diffusion transformer architecture: one frozen dataclass and its named presets.

The presets follow the published Wan configs (wan/configs/ in Wan2.1 and Wan2.2): T5 text width 4096,
256-dim sinusoidal time features, 512 text tokens, 1×2×2 patches, q/k RMSNorm, affine LayerNorm before
cross-attention. Wan2.2 I2V A14B has no CLIP image branch: its image condition enters only through the
20 extra input channels (4 mask + 16 image latent), so in_dim is 36.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any


@dataclass(frozen=True)
class WanConfig:
    dim: int
    num_layers: int
    num_heads: int
    ffn_dim: int
    in_dim: int = 16
    out_dim: int = 16
    text_dim: int = 4096
    freq_dim: int = 256
    text_len: int = 512
    patch: tuple[int, int, int] = (1, 2, 2)
    eps: float = 1e-6
    qk_norm: bool = True
    cross_attn_norm: bool = True
    rope_theta: float = 10000.0
    rope_max_len: int = 1024
    # SLA defaults (TurboDiffusion: Top-K 10 % of key blocks, 128-row query blocks, 64-row key blocks).
    sla_topk: float = 0.1
    sla_block_q: int = 128
    sla_block_k: int = 64

    def __post_init__(self) -> None:
        if self.dim % self.num_heads:
            raise ValueError(f"dim {self.dim} is not divisible by num_heads {self.num_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim {self.head_dim} must be even for RoPE")
        if self.in_dim not in (self.out_dim, self.out_dim + 20):
            raise ValueError(f"in_dim {self.in_dim}: expected {self.out_dim} (T2V) or {self.out_dim + 20} (I2V)")

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def cond_dim(self) -> int:
        """Channels of the I2V condition concatenated onto the latents (0 for T2V)."""
        return self.in_dim - self.out_dim

    @property
    def rope_split(self) -> tuple[int, int, int]:
        """Head-dim channels rotated by frame, row and column position (Wan: t gets the remainder)."""
        hw = 2 * (self.head_dim // 6)
        return (self.head_dim - 2 * hw, hw, hw)

    @classmethod
    def from_name(cls, name: str) -> WanConfig:
        try:
            return PRESETS[name]
        except KeyError:
            raise ValueError(f"unknown Wan architecture {name!r}; known: {sorted(PRESETS)}") from None

    def with_(self, **changes: Any) -> WanConfig:
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["patch"] = list(self.patch)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WanConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown WanConfig fields: {sorted(unknown)}")
        data = dict(data)
        if "patch" in data:
            data["patch"] = tuple(data["patch"])
        return cls(**data)


PRESETS: dict[str, WanConfig] = {
    "wan2.1-t2v-1.3b": WanConfig(dim=1536, num_layers=30, num_heads=12, ffn_dim=8960),
    "wan2.1-t2v-14b": WanConfig(dim=5120, num_layers=40, num_heads=40, ffn_dim=13824),
    "wan2.2-i2v-a14b": WanConfig(dim=5120, num_layers=40, num_heads=40, ffn_dim=13824, in_dim=36),
    "wan-tiny": WanConfig(dim=64, num_layers=2, num_heads=2, ffn_dim=128, text_dim=32),
}
