"""The DiT's self-attention operator and the SLA module that owns `proj_l`.

The backend dispatch itself (dense SDPA / "sla" PyTorch reference / "sagesla" Triton kernels) lives in
`models.ops` (`attention`, `Ops.attend`); this module holds the parameters and per-model settings:

- `AttentionOp`: ``attn_op`` of a Wan self-attention; ``local_attn`` is the SLA module for SLA models
  (TurboDiffusion's parameter path ``…self_attn.attn_op.local_attn.proj_l``), None for dense ones.
- `override_backend(name)`: tests force one attention backend for every model forward in the block
  (kept under its old name; `models.ops.override` also forces the norm/GEMM kernels).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from models.ops import BACKENDS, Ops, attention, override

__all__ = ["BACKENDS", "AttentionOp", "SparseLinearAttention", "attention", "override_backend"]


@contextlib.contextmanager
def override_backend(backend: str | None) -> Iterator[None]:
    """Within the block every model forward uses attention `backend` (None: each model's own choice)."""
    with override(attention=backend):
        yield


class SparseLinearAttention(nn.Module):
    """SLA's learned linear-branch projection ``proj_l`` (Linear(D, D), shared by heads).

    A fresh module has proj_l zeroed, which turns the linear branch into a no-op (plain sparse attention).
    """

    def __init__(self, head_dim: int):
        super().__init__()
        self.proj_l = nn.Linear(head_dim, head_dim)
        if not self.proj_l.weight.is_meta:
            nn.init.zeros_(self.proj_l.weight)
            nn.init.zeros_(self.proj_l.bias)


class AttentionOp(nn.Module):
    """Self-attention operator: SLA settings (Top-K ratio, block sizes) plus ``local_attn`` (proj_l) for
    SLA models. The backend comes from the model's `Ops` at each call."""

    def __init__(self, head_dim: int, *, sla: bool, topk_ratio: float = 0.1, block_q: int = 128,
                 block_k: int = 64):
        super().__init__()
        # Kept for a dense op too, so that a forced SLA backend runs with the model's settings.
        self.topk_ratio, self.block_q, self.block_k = topk_ratio, block_q, block_k
        self.local_attn = SparseLinearAttention(head_dim) if sla else None

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ops: Ops,
                topk_ratio: float | None = None) -> torch.Tensor:
        """q, k, v: [B, H, L, D] -> [B, H, L, D]. topk_ratio: this call's SLA Top-K (None: the model's)."""
        return ops.attend(
            q, k, v, topk_ratio=self.topk_ratio if topk_ratio is None else topk_ratio,
            proj_l=None if self.local_attn is None else self.local_attn.proj_l,
            block_q=self.block_q, block_k=self.block_k,
        )
