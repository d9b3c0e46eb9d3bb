"""The one attention dispatch of the DiT, and the SLA module that owns `proj_l`.

Backends (q, k, v are [B, H, L, D]; the output has q's layout and dtype):

- ``"dense"``: `torch.nn.functional.scaled_dot_product_attention` (cuDNN/flash on GPU).
- ``"sla"``: SparseLinear attention in plain PyTorch fp32 — `kernels.sagesla.reference`, the definition
  of SLA (block map from pooled Q and smoothed-K blocks, Top-K key blocks per query block, block-sparse
  softmax plus the linear branch through ``proj_l``). Slow; for correctness checks and CPU.
- ``"sagesla"``: the Triton SageSLA kernels (`kernels.sagesla.sagesla_attention`), CUDA only.

Tests force a backend for every call with `override_backend("dense")` (nanochat's override hook), so one
model can be compared against itself under each path.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

BACKENDS = ("dense", "sla", "sagesla")

_override: str | None = None


@contextlib.contextmanager
def override_backend(backend: str | None) -> Iterator[None]:
    """Within the block every `attention` call uses `backend` (None: each caller's own choice)."""
    global _override
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; known: {BACKENDS}")
    previous, _override = _override, backend
    try:
        yield
    finally:
        _override = previous


def _sagesla_module():  # noqa: ANN202 - the module object
    try:
        from kernels import sagesla
    except ImportError as exc:
        raise RuntimeError(
            "attention backend 'sla'/'sagesla' needs kernels/sagesla.py (and triton); "
            f"it could not be imported: {exc}"
        ) from exc
    return sagesla


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    backend: str = "dense",
    topk_ratio: float = 0.1,
    proj_l_weight: torch.Tensor | None = None,
    proj_l_bias: torch.Tensor | None = None,
    block_q: int = 128,
    block_k: int = 64,
) -> torch.Tensor:
    """Multi-head attention, softmax scale 1/sqrt(D), no mask.

    q: [B, H, Lq, D], k and v: [B, H, Lk, D] (SLA backends need Lq == Lk). ``proj_l_*`` ([D, D], [D]) is
    SLA's linear-branch projection; None turns the linear branch off. Returns [B, H, Lq, D] in q.dtype.
    """
    backend = _override or backend
    if backend == "dense":
        return F.scaled_dot_product_attention(q, k, v)
    if backend == "sla":
        o, _density = _sagesla_module().reference(
            q, k, v, topk_ratio=topk_ratio, proj_l_weight=proj_l_weight, proj_l_bias=proj_l_bias,
            block_q=block_q, block_k=block_k,
        )
        return o
    if backend == "sagesla":
        if not q.is_cuda:
            raise RuntimeError("attention backend 'sagesla' runs Triton kernels on CUDA tensors only; "
                               "use 'sla' (PyTorch reference) or 'dense' on CPU")
        module = _sagesla_module()
        if not hasattr(module, "sagesla_attention"):
            raise RuntimeError("kernels.sagesla has no sagesla_attention kernel yet; use 'sla' or 'dense'")
        o, _density = module.sagesla_attention(
            q, k, v, topk_ratio=topk_ratio, proj_l_weight=proj_l_weight, proj_l_bias=proj_l_bias,
            block_q=block_q, block_k=block_k,
        )
        return o
    raise ValueError(f"unknown attention backend {backend!r}; known: {BACKENDS}")


class SparseLinearAttention(nn.Module):
    """SLA settings plus the learned linear-branch projection ``proj_l`` (Linear(D, D), shared by heads).

    The parameter path in a TurboDiffusion checkpoint is ``…self_attn.attn_op.local_attn.proj_l``; a
    fresh module has proj_l zeroed, which turns the linear branch into a no-op (plain sparse attention).
    """

    def __init__(self, head_dim: int, *, backend: str, topk_ratio: float, block_q: int, block_k: int):
        super().__init__()
        self.backend = backend
        self.topk_ratio = topk_ratio
        self.block_q = block_q
        self.block_k = block_k
        self.proj_l = nn.Linear(head_dim, head_dim)
        if not self.proj_l.weight.is_meta:
            nn.init.zeros_(self.proj_l.weight)
            nn.init.zeros_(self.proj_l.bias)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q, k, v: [B, H, L, D] -> [B, H, L, D]."""
        return attention(
            q, k, v, backend=self.backend, topk_ratio=self.topk_ratio,
            proj_l_weight=self.proj_l.weight, proj_l_bias=self.proj_l.bias,
            block_q=self.block_q, block_k=self.block_k,
        )


class AttentionOp(nn.Module):
    """Self-attention operator: dense SDPA, or SLA through ``local_attn`` (TurboDiffusion's layout)."""

    def __init__(self, head_dim: int, *, backend: str = "dense", topk_ratio: float = 0.1,
                 block_q: int = 128, block_k: int = 64):
        super().__init__()
        if backend not in BACKENDS:
            raise ValueError(f"unknown attention backend {backend!r}; known: {BACKENDS}")
        self.backend = backend
        # Kept for a dense op too, so that override_backend("sla") runs SLA with the model's settings.
        self.topk_ratio, self.block_q, self.block_k = topk_ratio, block_q, block_k
        self.local_attn = (
            SparseLinearAttention(head_dim, backend=backend, topk_ratio=topk_ratio,
                                  block_q=block_q, block_k=block_k)
            if backend != "dense" else None
        )

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q, k, v: [B, H, L, D] -> [B, H, L, D]."""
        if self.local_attn is None:  # no proj_l: the linear branch is off under a forced SLA backend
            return attention(q, k, v, backend="dense", topk_ratio=self.topk_ratio,
                             block_q=self.block_q, block_k=self.block_k)
        return self.local_attn(q, k, v)
