"""Wan diffusion transformer (Wan2.1 T2V 1.3B/14B, Wan2.2 I2V A14B experts), with Wan's own parameter names.

Math follows Wan's `wan/modules/model.py`: Conv3d 1×2×2 patch embedding, sinusoidal time features
(cos first, 10000^(-i/half)), text embedding Linear → tanh-GELU → Linear, 3-D RoPE whose head-dim pairs
are split over (frame, row, column) as (D - 4·(D//6), 2·(D//6), 2·(D//6)) channels, q/k RMSNorm across all
heads, AdaLN with 6 modulation vectors per block and 2 in the head, tanh-GELU FFN. As in Wan, the
modulation math, the norms and the residual stream stay in fp32 while the Linears run in the weights' dtype.

State-dict keys equal Wan's: ``patch_embedding``, ``text_embedding.{0,2}``, ``time_embedding.{0,2}``,
``time_projection.1``, ``blocks.N.{self_attn,cross_attn}.{q,k,v,o,norm_q,norm_k}``, ``blocks.N.norm3``,
``blocks.N.ffn.{0,2}``, ``blocks.N.modulation``, ``head.head``, ``head.modulation``; with SLA also
``blocks.N.self_attn.attn_op.local_attn.proj_l`` (TurboDiffusion's path).
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import TYPE_CHECKING, NamedTuple, cast

import torch
import torch.nn.functional as F
from torch import nn

from models.attention import AttentionOp
from models.config import WanConfig
from models.ops import HeadChunks, Int8Activation, Ops, apply_rope, rms_norm

if TYPE_CHECKING:
    from models.parallel import SequenceParallel

__all__ = ["WanTransformer", "apply_rope", "keeps_fp32", "rope_angles", "sinusoidal_embedding"]

# Parameters kept in fp32 whatever the model dtype (Wan runs them under fp32 autocast).
FP32_PARAM_PATTERNS = ("time_embedding.", "time_projection.", "modulation", "norm")


def keeps_fp32(name: str) -> bool:
    return any(p in name for p in FP32_PARAM_PATTERNS)


def sinusoidal_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """t [B] (0–1000) -> [B, dim] fp32: [cos(t·f_i), sin(t·f_i)], f_i = 10000^(-i/(dim/2))."""
    half = dim // 2
    freqs = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=t.device) / half)
    angles = torch.outer(t.to(torch.float64), freqs)  # [B, half]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1).float()


def rope_angles(
    grid: tuple[int, int, int], split: tuple[int, int, int], theta: float, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [L, D/2] fp32 for tokens in (frame, row, column) order; pair j of axis a rotates by
    pos_a / theta^(2j/d_a)."""
    per_axis = []
    for n, d in zip(grid, split, strict=True):
        inv = 1.0 / torch.pow(theta, torch.arange(0, d, 2, dtype=torch.float64, device=device) / d)
        per_axis.append(torch.outer(torch.arange(n, dtype=torch.float64, device=device), inv))  # [n, d/2]
    f, h, w = grid
    angles = torch.cat(
        [
            per_axis[0][:, None, None, :].expand(f, h, w, -1),
            per_axis[1][None, :, None, :].expand(f, h, w, -1),
            per_axis[2][None, None, :, :].expand(f, h, w, -1),
        ],
        dim=-1,
    ).reshape(f * h * w, -1)  # [L, D/2]
    return torch.cos(angles).float(), torch.sin(angles).float()


class RMSNorm(nn.Module):
    """x / rms(x) · weight over the last dim, in fp32; output in `out_dtype`."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


class LayerNorm32(nn.LayerNorm):
    """LayerNorm computed in fp32 (input and output fp32)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = None if self.weight is None else self.weight.float()
        b = None if self.bias is None else self.bias.float()
        return F.layer_norm(x.float(), self.normalized_shape, w, b, self.eps)


class WanSelfAttention(nn.Module):
    def __init__(self, cfg: WanConfig, sla: bool):
        super().__init__()
        dim = cfg.dim
        self.num_heads, self.head_dim = cfg.num_heads, cfg.head_dim
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_q = RMSNorm(dim, cfg.eps) if cfg.qk_norm else nn.Identity()
        self.norm_k = RMSNorm(dim, cfg.eps) if cfg.qk_norm else nn.Identity()
        self.attn_op = AttentionOp(cfg.head_dim, sla=sla, topk_ratio=cfg.sla_topk,
                                   block_q=cfg.sla_block_q, block_k=cfg.sla_block_k)

    def forward(self, x: torch.Tensor | Int8Activation, cos: torch.Tensor, sin: torch.Tensor, ops: Ops,
                sla_topk: float | None = None) -> torch.Tensor:
        """x [B, L, C] (compute dtype, or int8 for W8A8: quantized once for q, k and v), cos/sin [L, D/2]
        -> [B, L, C]."""
        B, L, _ = x.shape
        H, D = self.num_heads, self.head_dim
        if ops.sequence is not None:
            return self._forward_ulysses(x, cos, sin, ops, sla_topk)
        # 1. projections, q/k RMSNorm across all heads, RoPE
        q = ops.rmsnorm_rope(ops.apply_linear(self.q, x), _norm_weight(self.norm_q), self.eps, cos, sin, H)
        k = ops.rmsnorm_rope(ops.apply_linear(self.k, x), _norm_weight(self.norm_k), self.eps, cos, sin, H)
        v = ops.apply_linear(self.v, x).view(B, L, H, D)  # q, k, v: [B, L, H, D]
        # 2. attention (dense / sla / sagesla), this call's Top-K
        o = self.attn_op(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), ops, sla_topk)  # [B, H, L, D]
        # 3. output projection
        return ops.apply_linear(self.o, o.transpose(1, 2).reshape(B, L, -1))  # [B, L, C]

    def _forward_ulysses(self, x: torch.Tensor | Int8Activation, cos: torch.Tensor, sin: torch.Tensor, ops: Ops,
                         sla_topk: float | None) -> torch.Tensor:
        """`forward` under sequence parallel (x: this rank's tokens): each projection's all-to-all starts as
        soon as it is computed, so it runs under the next projection (models/parallel.py)."""
        seq = ops.sequence
        assert seq is not None
        sp = seq.sp
        B, L, _ = x.shape
        H, D = self.num_heads, self.head_dim
        # bf16 on the wire: the projections write the send layout [N, B, L, H/N, D] themselves (no packing)
        N = sp.world_size if sp.exchange == "bf16" else 1
        start = sp.start_packed if N > 1 else sp.start_heads
        v = ops.linear_heads(self.v, x, N)  # [N, B, L, C/N] or [B, L, C]
        v = start(v.view(N, B, L, H // N, D) if N > 1 else v.view(B, L, H, D))
        q = start(ops.rmsnorm_rope(ops.apply_linear(self.q, x), _norm_weight(self.norm_q), self.eps, cos, sin, H,
                                   chunks=N))
        k = start(ops.rmsnorm_rope(ops.apply_linear(self.k, x), _norm_weight(self.norm_k), self.eps, cos, sin, H,
                                   chunks=N))
        local = replace(ops, sequence=None)  # the attention itself runs over the full sequence of H/N heads
        o = seq.attend_started(q, k, v, lambda q_, k_, v_: self.attn_op(q_, k_, v_, local, sla_topk))
        if not isinstance(o, HeadChunks):  # [B, H, L/N, D]
            o = o.transpose(1, 2).reshape(B, L, -1)
        return ops.apply_linear(self.o, o)  # [B, L/N, C]

    @property
    def eps(self) -> float:
        return getattr(self.norm_q, "eps", 0.0)


def _norm_weight(norm: nn.Module) -> torch.Tensor | None:
    """The q/k RMSNorm weight, None without q/k norm (cfg.qk_norm False)."""
    return norm.weight if isinstance(norm, RMSNorm) else None


class WanCrossAttention(nn.Module):
    """Attention from the video tokens to the text tokens (always dense: 512 keys)."""

    def __init__(self, cfg: WanConfig):
        super().__init__()
        dim = cfg.dim
        self.num_heads, self.head_dim = cfg.num_heads, cfg.head_dim
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_q = RMSNorm(dim, cfg.eps) if cfg.qk_norm else nn.Identity()
        self.norm_k = RMSNorm(dim, cfg.eps) if cfg.qk_norm else nn.Identity()

    def forward(self, x: torch.Tensor | Int8Activation, context: torch.Tensor, ops: Ops) -> torch.Tensor:
        """x [B, L, C] (or its int8 form from norm3), context [B, Lt, C] -> [B, L, C]."""
        B, L, _ = x.shape
        H, D = self.num_heads, self.head_dim
        q = ops.qk_norm(ops.apply_linear(self.q, x), _norm_weight(self.norm_q), getattr(self.norm_q, "eps", 0.0))
        k = ops.qk_norm(ops.apply_linear(self.k, context), _norm_weight(self.norm_k), getattr(self.norm_k, "eps", 0.0))
        q = q.view(B, L, H, D).transpose(1, 2)  # [B, H, L, D]
        k = k.view(B, -1, H, D).transpose(1, 2)  # [B, H, Lt, D]
        v = ops.apply_linear(self.v, context).view(B, -1, H, D).transpose(1, 2)  # [B, H, Lt, D]
        o = F.scaled_dot_product_attention(q, k, v)  # [B, H, L, D]
        return ops.apply_linear(self.o, o.transpose(1, 2).reshape(B, L, -1))  # [B, L, C]


class Pending(NamedTuple):
    """A block's FFN output y [B, L, C] and its gate [B, 1, C] fp32, not yet added to the residual stream: the
    next norm (`Ops.gated_add_modulate`) adds ``x + gate·y`` in its own pass."""

    y: torch.Tensor
    gate: torch.Tensor


class WanBlock(nn.Module):
    def __init__(self, cfg: WanConfig, sla: bool):
        super().__init__()
        dim = cfg.dim
        self.norm1 = LayerNorm32(dim, cfg.eps, elementwise_affine=False)
        self.self_attn = WanSelfAttention(cfg, sla)
        self.norm3 = LayerNorm32(dim, cfg.eps, elementwise_affine=True) if cfg.cross_attn_norm else nn.Identity()
        self.cross_attn = WanCrossAttention(cfg)
        self.norm2 = LayerNorm32(dim, cfg.eps, elementwise_affine=False)
        self.ffn = nn.Sequential(nn.Linear(dim, cfg.ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(cfg.ffn_dim, dim))
        self.modulation = nn.Parameter(torch.randn(1, 6, dim) / dim**0.5)

    def forward(self, x: torch.Tensor, e: torch.Tensor, context: torch.Tensor, cos: torch.Tensor,
                sin: torch.Tensor, ops: Ops, sla_topk: float | None = None, *,
                pending: Pending | None = None, defer: bool = False) -> torch.Tensor | tuple[torch.Tensor, Pending]:
        """x [B, L, C] fp32 residual stream, e [B, 6, C] fp32, context [B, Lt, C] compute dtype -> the stream
        after this block. pending: the previous block's FFN output and gate, not yet added to x (added here, in
        norm1's pass). defer: return (x, this block's own pending FFN residual) instead, for the next block's
        norm1 or the head's norm to add (`WanTransformer.forward`: one pass fewer per block boundary)."""
        dtype = context.dtype
        shift1, scale1, gate1, shift2, scale2, gate2 = (self.modulation.float() + e).chunk(6, dim=1)  # [B, 1, C]
        # 1. self-attention with AdaLN (int8 out when q/k/v are W8A8 on the kernels: one quantization), after the
        #    previous block's FFN residual when it was left to this norm
        if pending is None:
            h = ops.modulate(x, shift1, scale1, self.norm1.eps, dtype, next_linear=self.self_attn.q)
        else:
            x, h = ops.gated_add_modulate(x, pending.y, pending.gate, shift1, scale1, self.norm1.eps, dtype,
                                          next_linear=self.self_attn.q)
        # 2. cross-attention to the text. A residual add and the norm after it are one pass on the kernels
        #    (the branch outputs are passed inline: nothing holds them through the next branch)
        if isinstance(self.norm3, LayerNorm32):  # int8 out for a W8A8 q
            x, h = ops.gated_add_layer_norm(x, self.self_attn(h, cos, sin, ops, sla_topk), gate1, self.norm3.weight,
                                            self.norm3.bias, self.norm3.eps, dtype, next_linear=self.cross_attn.q)
        else:
            x = ops.gated_add(x, self.self_attn(h, cos, sin, ops, sla_topk), gate1)
            h = self.norm3(x).to(dtype)
        # 3. FFN with AdaLN, after the cross-attention's residual add (gate 1)
        x, h = ops.gated_add_modulate(x, self.cross_attn(h, context, ops), None, shift2, scale2, self.norm2.eps,
                                      dtype, next_linear=self.ffn[0])
        y = ops.ffn(self.ffn, h)  # [B, L, C]
        if defer:
            return x, Pending(y, gate2)
        return ops.gated_add(x, y, gate2)


class Head(nn.Module):
    def __init__(self, cfg: WanConfig):
        super().__init__()
        self.norm = LayerNorm32(cfg.dim, cfg.eps, elementwise_affine=False)
        self.head = nn.Linear(cfg.dim, cfg.out_dim * math.prod(cfg.patch))
        self.modulation = nn.Parameter(torch.randn(1, 2, cfg.dim) / cfg.dim**0.5)

    def forward(self, x: torch.Tensor, e: torch.Tensor, dtype: torch.dtype, ops: Ops,
                pending: Pending | None = None) -> torch.Tensor:
        """x [B, L, C] fp32, e [B, C] fp32 -> [B, L, pt·ph·pw·C_out] (patch-major, channel last). pending: the
        last block's FFN residual, added to x inside this norm's pass."""
        shift, scale = (self.modulation.float() + e.unsqueeze(1)).chunk(2, dim=1)  # [B, 1, C]
        if pending is None:
            h = ops.modulate(x, shift, scale, self.norm.eps, dtype)
        else:
            _, h = ops.gated_add_modulate(x, pending.y, pending.gate, shift, scale, self.norm.eps, dtype)
        return ops.apply_linear(self.head, h)


class WanTransformer(nn.Module):
    """Wan DiT predicting the flow velocity.

    ``module(latents, timestep, context, cond=None, *, sla_topk=None)``:
      latents [B, 16, T, H, W] (T latent frames, H/W divisible by the 2×2 patch), timestep [B] on 0–1000,
      context [B, Lt, text_dim] umT5 states (Lt = 512, zero-padded as Wan does), cond [B, 20, T, H, W]
      for I2V (4 mask + 16 image-latent channels, concatenated after the latents) else None, sla_topk:
      this call's SLA Top-K ratio (None: ``cfg.sla_topk``; SLA attention only), sp: a
      `models.parallel.SequenceParallel` to split this forward over its ranks (every rank passes the same
      inputs and gets the whole output; None: this process alone).
      Returns velocity [B, 16, T, H, W] in latents' dtype.

    ``ops`` (`models.ops.Ops`) holds the backends, chosen once at load; ``attention`` alone (for a model
    built by hand) means ``Ops(attention=attention)``: plain PyTorch norms and linears.
    """

    def __init__(self, cfg: WanConfig, *, attention: str | None = None, ops: Ops | None = None):
        super().__init__()
        if ops is None:
            ops = Ops(attention=attention or "dense")
        elif attention is not None and attention != ops.attention:
            raise ValueError(f"attention={attention!r} contradicts ops.attention={ops.attention!r}")
        self.cfg = cfg
        self.ops = ops
        sla = ops.attention != "dense"
        dim = cfg.dim
        self.patch_embedding = nn.Conv3d(cfg.in_dim, dim, kernel_size=cfg.patch, stride=cfg.patch)
        self.text_embedding = nn.Sequential(nn.Linear(cfg.text_dim, dim), nn.GELU(approximate="tanh"),
                                            nn.Linear(dim, dim))
        self.time_embedding = nn.Sequential(nn.Linear(cfg.freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(dim, dim * 6))
        self.blocks = nn.ModuleList(WanBlock(cfg, sla) for _ in range(cfg.num_layers))
        self.head = Head(cfg)

    @property
    def dtype(self) -> torch.dtype:
        """Compute dtype of the Linears (the patch embedding's weight dtype)."""
        return self.patch_embedding.weight.dtype

    def to_dtype(self, dtype: torch.dtype) -> WanTransformer:
        """Cast floating parameters to `dtype`, keeping time embedding, modulation and norms in fp32."""
        for name, p in self.named_parameters():
            if p.is_floating_point():
                p.data = p.data.to(torch.float32 if keeps_fp32(name) else dtype)
        return self

    def forward(self, latents: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor,
                cond: torch.Tensor | None = None, *, sla_topk: float | None = None,
                sp: SequenceParallel | None = None) -> torch.Tensor:
        cfg, dtype = self.cfg, self.dtype
        ops = self.ops.effective()  # a test's override applies to this whole call
        if sla_topk is not None:
            if ops.attention == "dense":
                raise ValueError("sla_topk was given but this model runs dense attention (no SLA)")
            if not 0.0 < sla_topk <= 1.0:
                raise ValueError(f"sla_topk must be in (0, 1], got {sla_topk}")
        pt, ph, pw = cfg.patch
        # 0. inputs: [B, C_in, T, H, W]
        if cfg.cond_dim:
            if cond is None or cond.shape[1] != cfg.cond_dim:
                raise ValueError(f"this I2V model needs cond with {cfg.cond_dim} channels, "
                                 f"got {None if cond is None else tuple(cond.shape)}")
            x = torch.cat([latents, cond.to(latents.dtype)], dim=1)  # [B, in_dim, T, H, W]
        else:
            if cond is not None:
                raise ValueError("cond was given to a T2V model (in_dim == out_dim)")
            x = latents
        B, C, T, H, W = x.shape
        if T % pt or H % ph or W % pw:
            raise ValueError(f"latent size {(T, H, W)} is not divisible by the patch {cfg.patch}")
        grid = (T // pt, H // ph, W // pw)

        # 1. patch embedding: Conv3d with stride = kernel, as one matmul over flattened patches
        x = x.to(dtype).view(B, C, grid[0], pt, grid[1], ph, grid[2], pw)
        x = x.permute(0, 2, 4, 6, 1, 3, 5, 7).reshape(B, math.prod(grid), C * pt * ph * pw)  # [B, L, C·pt·ph·pw]
        x = F.linear(x, self.patch_embedding.weight.flatten(1), self.patch_embedding.bias).float()  # [B, L, dim]

        # 2. time embedding (fp32): e [B, dim], e6 [B, 6, dim]
        e = self.time_embedding(sinusoidal_embedding(timestep, cfg.freq_dim).to(self.time_embedding[0].weight.dtype))
        e = e.float()
        e6 = self.time_projection(e.to(self.time_projection[1].weight.dtype)).float().unflatten(1, (6, cfg.dim))

        # 3. text embedding: [B, Lt, text_dim] -> [B, Lt, dim]
        ctx = self.text_embedding(context.to(dtype))

        # 4. blocks with 3-D RoPE
        cos, sin = rope_angles(grid, cfg.rope_split, cfg.rope_theta, x.device)  # [L, D/2]
        if sp is not None:  # sequence parallel: this rank's tokens (padded), Ulysses self-attention
            L = x.shape[1]
            x, cos, sin = sp.shard(x, 1), sp.shard(cos, 0), sp.shard(sin, 0)  # [B, L/N, dim], [L/N, D/2]
            ops = replace(ops, sequence=sp.for_length(L))
        #    each block's FFN residual is added inside the next norm's pass (the next block's norm1, the head's
        #    norm): on the kernels one row pass fewer per block boundary, the same sums
        pending: Pending | None = None
        for block in self.blocks:
            x, pending = cast(tuple[torch.Tensor, Pending],
                              block(x, e6, ctx, cos, sin, ops, sla_topk, pending=pending, defer=True))

        # 5. head and unpatchify: [B, L, pt·ph·pw·C_out] -> [B, C_out, T, H, W]
        out = self.head(x, e, dtype, ops, pending)
        if sp is not None:
            out = sp.gather(out, 1, L)  # [B, L, pt·ph·pw·C_out] on every rank
        out = out.view(B, *grid, pt, ph, pw, cfg.out_dim).permute(0, 7, 1, 4, 2, 5, 3, 6)
        return out.reshape(B, cfg.out_dim, T, H, W).to(latents.dtype)
