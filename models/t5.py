"""umT5 encoder (the text encoder of every Wan model), in our own code.

umT5 is T5 v1.1 with one change that matters here: every layer has its own relative-position
attention bias (T5 shares the bias of layer 0). Per layer, pre-norm:

    x = x + o(softmax(q kᵀ + bias_layer + mask) v)      # no 1/sqrt(d) scaling (T5), fp32 softmax
    x = x + fc2(fc1(n) * gelu_tanh(gate(n)))            # n = rms_norm(x), gated-GELU FFN
    out = rms_norm(x)                                   # T5 LayerNorm: no mean subtraction, no bias

Parameter names equal the keys of Wan's `models_t5_umt5-xxl-enc-bf16.pth`
(`token_embedding`, `blocks.N.{norm1,attn.{q,k,v,o},norm2,ffn.{gate.0,fc1,fc2},pos_embedding.embedding}`,
`norm`), so that file loads without renaming; other layouts are mapped in `text_encoder_loading.py`.

Layouts: token ids [B, L] int64, attention mask [B, L] (1 = token, 0 = padding), hidden [B, L, C].
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

AttnBackend = Literal["math", "sdpa"]


@dataclass(frozen=True)
class UMT5Config:
    vocab_size: int = 256384
    d_model: int = 4096
    num_layers: int = 24
    num_heads: int = 64
    d_kv: int = 64
    d_ff: int = 10240
    num_buckets: int = 32  # relative-position buckets (half per direction)
    max_distance: int = 128  # distances beyond this share the last bucket
    eps: float = 1e-6

    @property
    def inner_dim(self) -> int:
        return self.num_heads * self.d_kv

    @classmethod
    def from_name(cls, name: str) -> UMT5Config:
        if name not in PRESETS:
            raise KeyError(f"unknown umT5 preset {name!r}; known: {sorted(PRESETS)}")
        return PRESETS[name]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> UMT5Config:
        return cls(**data)


PRESETS: dict[str, UMT5Config] = {
    "umt5-xxl": UMT5Config(),
    "tiny": UMT5Config(vocab_size=1000, d_model=32, num_layers=2, num_heads=4, d_kv=8, d_ff=64),
}


def relative_position_buckets(length: int, num_buckets: int, max_distance: int, device=None) -> torch.Tensor:
    """Bidirectional T5 buckets of (key position - query position): [L, L] int64 in [0, num_buckets).

    Half the buckets per direction; within a direction the first half are exact distances, the
    rest grow logarithmically up to `max_distance`.
    """
    pos = torch.arange(length, dtype=torch.long, device=device)
    rel = pos[None, :] - pos[:, None]  # [Lq, Lk]
    half = num_buckets // 2
    buckets = (rel > 0).long() * half
    rel = rel.abs()
    max_exact = half // 2
    # Same operation order as the reference implementations, so float rounding picks the same bucket.
    large = (
        max_exact
        + (
            torch.log(rel.float() / max_exact) / math.log(max_distance / max_exact) * (half - max_exact)
        ).long()
    )
    large = torch.clamp(large, max=half - 1)
    return buckets + torch.where(rel < max_exact, rel, large)


def _fp16_clamp(x: torch.Tensor) -> torch.Tensor:
    # umT5-XXL activations overflow fp16 in a few channels; bf16/fp32 need nothing.
    if x.dtype == torch.float16:
        limit = torch.finfo(torch.float16).max - 1000
        x = torch.clamp(x, -limit, limit)
    return x


class T5LayerNorm(nn.Module):
    """RMS norm in fp32 (no mean subtraction, no bias); output in the weight's dtype if half."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        var = x.float().pow(2).mean(dim=-1, keepdim=True)
        x = x.float() * torch.rsqrt(var + self.eps)
        if self.weight.dtype in (torch.float16, torch.bfloat16):
            x = x.to(self.weight.dtype)
        return self.weight * x


class RelativePositionBias(nn.Module):
    """Learned bias per (bucket, head); `forward(buckets [L, L]) -> [1, H, L, L]` float32."""

    def __init__(self, num_buckets: int, num_heads: int):
        super().__init__()
        self.embedding = nn.Embedding(num_buckets, num_heads)

    def forward(self, buckets: torch.Tensor) -> torch.Tensor:
        return self.embedding(buckets).float().permute(2, 0, 1).unsqueeze(0)  # [1, H, Lq, Lk]


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, backend: AttnBackend = "math"
) -> torch.Tensor:
    """Unscaled softmax attention with an additive fp32 bias; q, k, v [B, H, L, D] -> [B, H, L, D].

    bias [B or 1, H, L, L] float32 already holds the relative-position bias and the key mask.
    "math" does the softmax in fp32 explicitly (the reference); "sdpa" hands it to PyTorch's fused
    kernels (bias cast to the compute dtype).
    """
    if backend == "sdpa":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), scale=1.0)
    if backend != "math":
        raise ValueError(f"unknown attention backend {backend!r}")
    scores = torch.matmul(q, k.transpose(-1, -2)).float() + bias  # [B, H, Lq, Lk]
    probs = torch.softmax(scores, dim=-1).to(v.dtype)
    return torch.matmul(probs, v)


class UMT5Attention(nn.Module):
    def __init__(self, cfg: UMT5Config):
        super().__init__()
        self.num_heads, self.d_kv = cfg.num_heads, cfg.d_kv
        self.q = nn.Linear(cfg.d_model, cfg.inner_dim, bias=False)
        self.k = nn.Linear(cfg.d_model, cfg.inner_dim, bias=False)
        self.v = nn.Linear(cfg.d_model, cfg.inner_dim, bias=False)
        self.o = nn.Linear(cfg.inner_dim, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor, bias: torch.Tensor, backend: AttnBackend = "math") -> torch.Tensor:
        B, L, _ = x.shape
        q = self.q(x).view(B, L, self.num_heads, self.d_kv).transpose(1, 2)  # [B, H, L, D]
        k = self.k(x).view(B, L, self.num_heads, self.d_kv).transpose(1, 2)  # [B, H, L, D]
        v = self.v(x).view(B, L, self.num_heads, self.d_kv).transpose(1, 2)  # [B, H, L, D]
        out = attention(q, k, v, bias, backend)
        return self.o(out.transpose(1, 2).reshape(B, L, -1))  # [B, L, H*D] -> [B, L, C]


class GatedGeluFFN(nn.Module):
    def __init__(self, cfg: UMT5Config):
        super().__init__()
        self.gate = nn.Sequential(nn.Linear(cfg.d_model, cfg.d_ff, bias=False), nn.GELU(approximate="tanh"))
        self.fc1 = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.fc2 = nn.Linear(cfg.d_ff, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.fc1(x) * self.gate(x))


class UMT5Block(nn.Module):
    def __init__(self, cfg: UMT5Config):
        super().__init__()
        self.norm1 = T5LayerNorm(cfg.d_model, cfg.eps)
        self.attn = UMT5Attention(cfg)
        self.norm2 = T5LayerNorm(cfg.d_model, cfg.eps)
        self.ffn = GatedGeluFFN(cfg)
        self.pos_embedding = RelativePositionBias(cfg.num_buckets, cfg.num_heads)

    def forward(
        self, x: torch.Tensor, buckets: torch.Tensor, key_mask_bias: torch.Tensor, backend: AttnBackend
    ) -> torch.Tensor:
        bias = self.pos_embedding(buckets) + key_mask_bias  # [B, H, L, L] float32
        x = _fp16_clamp(x + self.attn(self.norm1(x), bias, backend))
        return _fp16_clamp(x + self.ffn(self.norm2(x)))


class UMT5Encoder(nn.Module):
    """umT5 encoder stack: `forward(input_ids [B, L], attention_mask [B, L]) -> [B, L, d_model]`.

    Outputs at padded positions are whatever the math gives (not zeroed); `TextEncoder` zeroes them.
    """

    def __init__(self, cfg: UMT5Config):
        super().__init__()
        self.config = cfg
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList(UMT5Block(cfg) for _ in range(cfg.num_layers))
        self.norm = T5LayerNorm(cfg.d_model, cfg.eps)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        attn_backend: AttnBackend = "math",
    ) -> torch.Tensor:
        cfg = self.config
        B, L = input_ids.shape

        # 1. token embeddings (T5: no scaling, no absolute positions)
        x = self.token_embedding(input_ids)  # [B, L, C]

        # 2. what every layer shares: position buckets and the key-padding bias
        buckets = relative_position_buckets(L, cfg.num_buckets, cfg.max_distance, device=input_ids.device)
        if attention_mask is None:
            key_mask_bias = torch.zeros(B, 1, 1, L, device=x.device)
        else:
            key_mask_bias = torch.zeros(B, 1, 1, L, device=x.device).masked_fill(
                attention_mask.view(B, 1, 1, L) == 0, torch.finfo(torch.float32).min
            )  # [B, 1, 1, Lk]

        # 3. layers, each with its own relative-position bias
        for block in self.blocks:
            x = block(x, buckets, key_mask_bias, attn_backend)

        # 4. final norm
        return self.norm(x)  # [B, L, C]

    @classmethod
    def random(
        cls, cfg: UMT5Config, *, seed: int = 0, dtype: torch.dtype = torch.float32, device="cpu"
    ) -> UMT5Encoder:
        """A randomly initialised encoder (tests, the wan-tiny dev model, benches); T5's init scales.

        Built on the meta device and materialised directly on `device` (full size: ~23 GB fp32).
        """
        gen = torch.Generator(device=device).manual_seed(seed)
        with torch.device("meta"):
            model = cls(cfg)
        model = model.to_empty(device=device)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith(("norm1.weight", "norm2.weight")) or name == "norm.weight":
                    p.fill_(1.0)
                elif name == "token_embedding.weight":
                    p.normal_(0.0, 1.0, generator=gen)
                elif name.endswith("pos_embedding.embedding.weight"):
                    p.normal_(0.0, (2 * cfg.num_buckets * cfg.num_heads) ** -0.5, generator=gen)
                elif name.endswith("attn.q.weight"):  # T5 folds the missing 1/sqrt(d) into q's init
                    p.normal_(0.0, (cfg.d_model * cfg.inner_dim) ** -0.5, generator=gen)
                elif name.endswith("attn.o.weight"):
                    p.normal_(0.0, (cfg.num_heads * cfg.inner_dim) ** -0.5, generator=gen)
                else:
                    p.normal_(0.0, p.shape[1] ** -0.5, generator=gen)  # Linear [out, in]
        return model.to(dtype).eval().requires_grad_(False)
