"""The one dispatch of the DiT's compute ops: attention, norms, gated residual add and linear.

An `Ops` (frozen) is chosen once, when a model is loaded (`select_ops`, called by
`models.transformer_loading.load_transformer`), and held by the model (`WanTransformer.ops`). Every
block calls through it:

    attend(q, k, v, ...)        "dense": SDPA | "sla": SLA in plain PyTorch (kernels.sagesla.reference,
                                slow) | "sagesla": the Triton SageSLA kernels (CUDA)
    rmsnorm_rope(x, ...)        q/k RMSNorm across all heads + Wan's RoPE
    qk_norm(x, ...)             the same RMSNorm without RoPE (cross-attention q/k)
    layer_norm(x, ...)          LayerNorm with affine (norm3), int8 out for a W8A8 q like `modulate`
    modulate(x, ...)            LayerNorm without affine + AdaLN ``x·(1+scale)+shift``; when the next
                                linear is a `W8A8Linear` run by the int8 GEMM, the Triton kernel emits
                                int8 codes + per-token scales (`Int8Activation`) that feed the GEMM
                                directly (no separate activation-quant pass)
    gated_add(x, y, gate)       ``x + gate·y`` in fp32; add(x, y): ``x + y`` (the cross-attention's residual)
    gated_add_modulate(...), gated_add_layer_norm(...)
                                a residual add (gate None: `add`), then `modulate` / `layer_norm` of the sum; on
                                the kernels one pass that writes the sum and the norm's output (the sum is not
                                read back), bit for bit the two ops' results
    apply_linear(module, x)     nn.Linear; `W8A8Linear` through the Triton int8 GEMM or its PyTorch path
    ffn(ffn, x)                 Linear → GELU → Linear; on the int8 GEMM the GELU runs in the FFN-down's
                                activation-quantization pass

`Ops.kernels` picks the Triton kernels (norms, gated add, int8 GEMM) or plain PyTorch for everything but
attention; `attention` and `linear` also fix the model's structure (SLA models own ``proj_l``, W8A8 models
hold `W8A8Linear`s). Tests force a backend for a block of code with `override(attention=..., kernels=...)`
(nanochat's override hook; a context variable, so nothing outlives the block), which `WanTransformer`
applies once per forward (`Ops.effective`). Under sequence parallel the forward's `Ops.sequence` (a
`models.parallel.SequenceShard`) wraps `attend` in Ulysses' two all-to-alls; None: one process.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from functools import partial
from types import ModuleType
from typing import TYPE_CHECKING, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from models.linear import LINEAR_BACKENDS, W8A8Linear

if TYPE_CHECKING:
    from models.parallel import SequenceShard

log = logging.getLogger(__name__)

ATTENTION_BACKENDS = ("dense", "sla", "sagesla")
BACKENDS = ATTENTION_BACKENDS  # the old name (models.attention.BACKENDS)
AUTO = "auto"
_LOW_PRECISION = (torch.bfloat16, torch.float16)

# Backends forced by `override` for the current context (tests): {"attention": ..., "kernels": ...}.
_OVERRIDE: contextvars.ContextVar[dict[str, object] | None] = contextvars.ContextVar("ops_override", default=None)


def _kernel(name: str) -> ModuleType:
    """kernels.<name> (imports triton; only reached when a Triton backend was chosen)."""
    try:
        return importlib.import_module(f"kernels.{name}")
    except ImportError as exc:
        raise RuntimeError(f"kernels.{name} (and triton) could not be imported: {exc}") from exc


# 1. plain-PyTorch math (the CPU path and the definition the kernels are tested against) ---------------
def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x / rms(x) · weight over the last dim in fp32; output in x.dtype."""
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * weight.float()).to(x.dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent channel pairs (2j, 2j+1) of x [B, L, H, D] by the angles of cos/sin [L, D/2]."""
    xf = x.float().unflatten(-1, (-1, 2))  # [B, L, H, D/2, 2]
    x0, x1 = xf[..., 0], xf[..., 1]
    c, s = cos[:, None, :], sin[:, None, :]  # [L, 1, D/2]
    out = torch.stack([x0 * c - x1 * s, x0 * s + x1 * c], dim=-1)  # [B, L, H, D/2, 2]
    return out.flatten(-2).to(x.dtype)


class Int8Activation(NamedTuple):
    """Per-token int8 activations for a W8A8 linear: q [B, L, K] int8, scale [B, L] fp32, x ≈ q·scale."""

    q: torch.Tensor
    scale: torch.Tensor
    dtype: torch.dtype  # the compute dtype the float activation would have had

    @property
    def shape(self) -> torch.Size:
        return self.q.shape

    def dequantize(self) -> torch.Tensor:
        return (self.q.float() * self.scale[..., None]).to(self.dtype)


class HeadChunks(NamedTuple):
    """An activation [B, L, K] held as column chunks: buf [G, N, B, L, W], K = N·G·W, column chunk j·G + g
    (W columns) in buf[g, j]. What the Ulysses way back receives (models/parallel.py: buf[g, j] = rank j's
    heads of head group g, for this rank's tokens); `Ops.apply_linear` hands it to the int8 GEMM as it is
    (its quantization pass gathers the chunks), other paths take `dense()`, a copy."""

    buf: torch.Tensor

    @property
    def shape(self) -> torch.Size:
        G, N, B, L, W = self.buf.shape
        return torch.Size((B, L, N * G * W))

    def dense(self) -> torch.Tensor:
        """[B, L, K] (contiguous)."""
        G, N, B, L, W = self.buf.shape
        return self.buf.permute(2, 3, 1, 0, 4).reshape(B, L, N * G * W)


# 2. attention ---------------------------------------------------------------------------------------
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
    SLA's linear-branch projection; None turns the linear branch off. ``topk_ratio``: the fraction of key
    blocks each query block attends to (SLA backends). Returns [B, H, Lq, D] in q.dtype.
    """
    if backend == "dense":
        return F.scaled_dot_product_attention(q, k, v)
    if backend not in ATTENTION_BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; known: {ATTENTION_BACKENDS}")
    if backend == "sagesla" and not q.is_cuda:
        raise RuntimeError("attention backend 'sagesla' runs Triton kernels on CUDA tensors only; "
                           "use 'sla' (PyTorch reference) or 'dense' on CPU")
    sagesla = _kernel("sagesla")
    fn = sagesla.reference if backend == "sla" else sagesla.sagesla_attention
    o, _density = fn(q, k, v, topk_ratio=topk_ratio, proj_l_weight=proj_l_weight, proj_l_bias=proj_l_bias,
                     block_q=block_q, block_k=block_k)
    return o


# 3. the dispatch object -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Ops:
    """Backends of one loaded model. attention: dense | sla | sagesla; linear: native | w8a8 (what the
    block Linears are); kernels: Triton norms / gated add / int8 GEMM (True) or plain PyTorch."""

    attention: str = "dense"
    linear: str = "native"
    kernels: bool = False
    # on the kernels: each block's residual adds run inside the next norm's pass (`gated_add_modulate`,
    # `gated_add_layer_norm`); False: two passes each, the same bits (a bench's before/after)
    fuse_residual_norms: bool = True
    # one forward's sequence-parallel split (set by WanTransformer.forward under `sp`); None: one process
    sequence: SequenceShard | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.attention not in ATTENTION_BACKENDS:
            raise ValueError(f"unknown attention backend {self.attention!r}; known: {ATTENTION_BACKENDS}")
        if self.linear not in LINEAR_BACKENDS:
            raise ValueError(f"unknown linear backend {self.linear!r}; known: {LINEAR_BACKENDS}")

    def effective(self) -> Ops:
        """These backends with a test's `override` applied (self when there is none)."""
        forced = _OVERRIDE.get()
        return replace(self, **forced) if forced else self  # type: ignore[arg-type]

    # attention ---------------------------------------------------------------------------------------
    def attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, topk_ratio: float,
        proj_l: nn.Linear | None, block_q: int, block_k: int,
    ) -> torch.Tensor:
        """q, k, v [B, H, L, D] -> [B, H, L, D]; proj_l None: no linear branch (a dense model forced to SLA).
        Under `sequence`, L is this rank's tokens and the attention runs over the full sequence (Ulysses)."""
        fn = partial(
            attention, backend=self.attention, topk_ratio=topk_ratio,
            proj_l_weight=None if proj_l is None else proj_l.weight,
            proj_l_bias=None if proj_l is None else proj_l.bias,
            block_q=block_q, block_k=block_k,
        )
        if self.sequence is not None:
            return self.sequence.attend(q, k, v, fn)
        return fn(q, k, v)

    # norms -------------------------------------------------------------------------------------------
    def rmsnorm_rope(
        self, x: torch.Tensor, weight: torch.Tensor | None, eps: float, cos: torch.Tensor, sin: torch.Tensor,
        num_heads: int, chunks: int = 1,
    ) -> torch.Tensor:
        """x [B, L, H·D] -> RMSNorm over all H·D channels (skipped when weight is None), RoPE: [B, L, H, D];
        chunks > 1: split by heads, [chunks, B, L, H/chunks, D] (Ulysses' send layout; the kernel writes it
        directly)."""
        B, L, C = x.shape
        x = x.view(B, L, num_heads, C // num_heads)  # [B, L, H, D]
        if weight is not None and self.kernels:
            return _kernel("rmsnorm_rope").rmsnorm_rope(x, weight, cos, sin, eps, chunks)
        y = apply_rope(x if weight is None else rms_norm(x.flatten(2), weight, eps).view(x.shape), cos, sin)
        return y if chunks == 1 else _split_heads(y, chunks)

    def qk_norm(self, x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
        """RMSNorm over the last dim of x [..., C] (the cross-attention's q/k norm; None: no norm) in x.dtype."""
        if weight is None:
            return x
        if self.kernels:
            return _kernel("rmsnorm_rope").rmsnorm(x, weight, eps)
        return rms_norm(x, weight, eps)

    def wants_int8(self, next_linear: nn.Module | None, dtype: torch.dtype) -> bool:
        """True when `modulate` hands `next_linear` int8 activations (the Triton int8 GEMM path)."""
        return (self.kernels and self.linear == "w8a8" and isinstance(next_linear, W8A8Linear)
                and dtype in _LOW_PRECISION)

    def modulate(
        self, x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float, dtype: torch.dtype,
        next_linear: nn.Module | None = None,
    ) -> torch.Tensor | Int8Activation:
        """LayerNorm (no affine, fp32 stats) of x [B, L, C] fp32, then ``·(1+scale)+shift`` (shift, scale
        [B, 1, C] fp32) -> [B, L, C] in `dtype`, or an `Int8Activation` when `next_linear` takes one."""
        if not self.kernels:
            y = F.layer_norm(x.float(), (x.shape[-1],), None, None, eps) * (1 + scale) + shift
            return y.to(dtype)
        adaln = _kernel("adaln")
        if self.wants_int8(next_linear, dtype):
            q, s = adaln.layernorm_modulate(x, shift[:, 0], scale[:, 0], eps, out_int8=True)
            return Int8Activation(q, s, dtype)
        return adaln.layernorm_modulate(x, shift[:, 0], scale[:, 0], eps, out_dtype=dtype)

    def layer_norm(
        self, x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float,
        dtype: torch.dtype, next_linear: nn.Module | None = None,
    ) -> torch.Tensor | Int8Activation:
        """LayerNorm (fp32 stats) of x [B, L, C] fp32 with its own affine (weight, bias [C]; None: none) ->
        [B, L, C] in `dtype`, or an `Int8Activation` when `next_linear` takes one (Wan's norm3 before the
        cross-attention's q). On the kernels it is `modulate` with scale = weight - 1 and shift = bias."""
        if not self.kernels:
            w = None if weight is None else weight.float()
            b = None if bias is None else bias.float()
            return F.layer_norm(x.float(), (x.shape[-1],), w, b, eps).to(dtype)
        shift, scale = _affine_as_modulation(x, weight, bias)
        return self.modulate(x, shift, scale, eps, dtype, next_linear)

    def gated_add_modulate(
        self, x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor | None, shift: torch.Tensor,
        scale: torch.Tensor, eps: float, dtype: torch.dtype, next_linear: nn.Module | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | Int8Activation]:
        """`gated_add(x, y, gate)` (gate None: `add(x, y)`) then `modulate` of the sum -> (the sum [B, L, C]
        fp32, the norm's output). On the kernels one pass (kernels/adaln.residual_layernorm_modulate) with the
        same bits: the sum is written once and normalized from registers, never read back."""
        if not (self.kernels and self.fuse_residual_norms):
            x = self.add(x, y) if gate is None else self.gated_add(x, y, gate)
            return x, self.modulate(x, shift, scale, eps, dtype, next_linear)
        adaln = _kernel("adaln")
        g = None if gate is None else gate[:, 0]
        if self.wants_int8(next_linear, dtype):
            x, (q, s) = adaln.residual_layernorm_modulate(x, y, g, shift[:, 0], scale[:, 0], eps, out_int8=True)
            return x, Int8Activation(q, s, dtype)
        return adaln.residual_layernorm_modulate(x, y, g, shift[:, 0], scale[:, 0], eps, out_dtype=dtype)

    def gated_add_layer_norm(
        self, x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor | None, weight: torch.Tensor | None,
        bias: torch.Tensor | None, eps: float, dtype: torch.dtype, next_linear: nn.Module | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | Int8Activation]:
        """`gated_add(x, y, gate)` (gate None: `add(x, y)`) then `layer_norm` of the sum -> (the sum, the
        norm's output); one pass on the kernels, as `gated_add_modulate`."""
        if not (self.kernels and self.fuse_residual_norms):
            x = self.add(x, y) if gate is None else self.gated_add(x, y, gate)
            return x, self.layer_norm(x, weight, bias, eps, dtype, next_linear)
        shift, scale = _affine_as_modulation(x, weight, bias)
        return self.gated_add_modulate(x, y, gate, shift, scale, eps, dtype, next_linear)

    # residual ----------------------------------------------------------------------------------------
    def add(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x [B, L, C] fp32 + y [B, L, C] (any float dtype) -> fp32, one pass on the kernels."""
        if self.kernels:
            B, _, C = x.shape
            return _kernel("gated_residual").gated_residual(x, y, x.new_ones(C, dtype=torch.float32).expand(B, C))
        return x + y.float()

    def gated_add(self, x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        """x [B, L, C] fp32 + gate [B, 1, C] fp32 · y [B, L, C] -> fp32 (a new tensor)."""
        if self.kernels:
            return _kernel("gated_residual").gated_residual(x, y, gate[:, 0])
        return x + y.float() * gate

    # linear ------------------------------------------------------------------------------------------
    def ffn(self, ffn: nn.Sequential, x: torch.Tensor | Int8Activation) -> torch.Tensor:
        """Wan's FFN ``Linear → GELU(tanh) → Linear`` on x [B, L, C]. On Hopper with both Linears W8A8 it is two
        kernels, the GELU and the int8 codes out of the first one's epilogue (`_blockq_ffn`). Otherwise, when the
        second Linear runs on the int8 GEMM, the GELU is applied inside its input's quantization pass (no GELU
        pass of its own)."""
        up, act, down = ffn
        if self._blockq_ffn(up, act, down, x):
            blockq = _kernel("w8a8_blockq")
            if not isinstance(x, Int8Activation):
                q, scale = _kernel("int8_quant").quantize_activation(x.reshape(-1, x.shape[-1]))
                x = Int8Activation(q.view(x.shape), scale.view(x.shape[:-1]), x.dtype)
            (uq, us), (dq, ds) = up.kernel_weight(), down.kernel_weight()
            return blockq.ffn_int8(x.q, x.scale, uq, us, up.bias, dq, ds, down.bias, x.dtype)
        h = self.apply_linear(up, x)
        if isinstance(act, nn.GELU) and act.approximate == "tanh" and self._int8_gemm_quantizes(down, h):
            return self.apply_linear(down, h, input_act="gelu_tanh")
        return self.apply_linear(down, act(h))

    def _blockq_ffn(self, up: nn.Module, act: nn.Module, down: nn.Module, x: torch.Tensor | Int8Activation) -> bool:
        """True when the FFN runs as the two block-scaled int8 kernels (kernels/w8a8_blockq.py: GELU and int8
        codes out of ffn_up's epilogue, no quantization pass): both Linears W8A8, the GELU Wan's tanh one, and
        `w8a8_blockq.usable` on x's device (sm90 with the Gluon GEMM; not TURBOVID_WORKER__W8A8_FFN=rowq)."""
        if not (self.kernels and isinstance(up, W8A8Linear) and isinstance(down, W8A8Linear)
                and isinstance(act, nn.GELU) and act.approximate == "tanh"):
            return False
        device = x.q.device if isinstance(x, Int8Activation) else x.device
        if not isinstance(x, Int8Activation) and x.dtype not in _LOW_PRECISION:
            return False
        f, c = up.int8_weight.shape
        return _kernel("w8a8_blockq").usable(device, f, c, down.int8_weight.shape[0])

    def _int8_gemm_quantizes(self, module: nn.Module, x: torch.Tensor | Int8Activation) -> bool:
        """True when `apply_linear(module, x)` quantizes x in the Triton int8 GEMM path (its own quant pass)."""
        return (self.kernels and isinstance(module, W8A8Linear) and not isinstance(x, Int8Activation)
                and x.dtype in _LOW_PRECISION)

    def linear_heads(self, module: nn.Module, x: torch.Tensor | Int8Activation, chunks: int) -> torch.Tensor:
        """module(x) for x [B, L, K] split by output columns: [chunks, B, L, N/chunks] (out[j]: columns
        j·N/chunks ...; Ulysses' send layout of a projection). On the int8 GEMM with x already int8 (the
        norm's output) each part is one GEMM over the weight's rows of that part, written in place; other
        paths split the output with a copy."""
        if chunks > 1 and isinstance(module, W8A8Linear) and self.kernels and isinstance(x, Int8Activation):
            w8a8 = _kernel("w8a8")
            qweight, wscale = module.kernel_weight()
            B, L, K = x.q.shape
            c = qweight.shape[0] // chunks
            out = torch.empty(chunks, B * L, c, dtype=x.dtype, device=x.q.device)
            xq, sx = x.q.reshape(B * L, K), x.scale.reshape(B * L)
            for j in range(chunks):
                rows = slice(j * c, (j + 1) * c)
                bias = None if module.bias is None else module.bias[rows]
                w8a8.w8a8_gemm(xq, sx, w8a8.W8A8Weight(qweight[rows], wscale[rows]), bias, x.dtype, out=out[j])
            return out.view(chunks, B, L, c)
        y = self.apply_linear(module, x)
        return y if chunks == 1 else _split_heads(y.unsqueeze(-1), chunks).squeeze(-1)

    def apply_linear(self, module: nn.Module, x: torch.Tensor | Int8Activation | HeadChunks,
                     input_act: str = "none") -> torch.Tensor:
        """module(x) for x [..., K] (or pre-quantized int8, or `HeadChunks`) -> [..., N]. input_act
        "gelu_tanh" (only where `_int8_gemm_quantizes`): module(GELU(x)), the GELU inside the
        activation-quantization pass."""
        if isinstance(x, HeadChunks):
            if (isinstance(module, W8A8Linear) and self.kernels and x.buf.dtype in _LOW_PRECISION
                    and input_act == "none"):
                w8a8 = _kernel("w8a8")
                qweight, wscale = module.kernel_weight()
                G, N, B, L, W = x.buf.shape
                y = w8a8.w8a8_linear_chunked(x.buf.view(G, N, B * L, W), w8a8.W8A8Weight(qweight, wscale),
                                             module.bias, x.buf.dtype)
                return y.view(B, L, -1)
            x = x.dense()
        if isinstance(module, W8A8Linear) and self.kernels:
            w8a8 = _kernel("w8a8")
            qweight, wscale = module.kernel_weight()
            weight = w8a8.W8A8Weight(qweight, wscale)
            if isinstance(x, Int8Activation):
                return w8a8.w8a8_linear_int8(x.q, x.scale, weight, module.bias, x.dtype)
            if x.dtype in _LOW_PRECISION:
                return w8a8.w8a8_linear(x, weight, module.bias, input_act=input_act)
        if input_act != "none":
            raise ValueError(f"input_act {input_act!r} needs the Triton int8 GEMM path")
        if isinstance(x, Int8Activation):
            x = x.dequantize()
        return module(x)


def _affine_as_modulation(
    x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """A LayerNorm's affine (weight, bias [C]; None: none) as AdaLN's (shift, scale) = (bias, weight - 1) for
    x [B, L, C]: fp32 [B, 1, C] views, last dim contiguous."""
    B, _, C = x.shape

    def vector(v: torch.Tensor | None, offset: float) -> torch.Tensor:
        return (v.float() + offset if v is not None else x.new_zeros(C, dtype=torch.float32)).expand(B, 1, C)

    return vector(bias, 0.0), vector(weight, -1.0)


def _split_heads(y: torch.Tensor, chunks: int) -> torch.Tensor:
    """y [B, L, H, D] -> [chunks, B, L, H/chunks, D] (contiguous): part j holds heads j·H/chunks ..."""
    B, L, H, D = y.shape
    if H % chunks:
        raise ValueError(f"chunks must divide the heads ({H}), got {chunks}")
    return y.view(B, L, chunks, H // chunks, D).permute(2, 0, 1, 3, 4).contiguous()


def overridden() -> bool:
    """Whether an `override` block is active (a forward then reads backends its inputs do not show)."""
    return _OVERRIDE.get() is not None


@contextlib.contextmanager
def override(*, attention: str | None = None, kernels: bool | None = None) -> Iterator[None]:
    """Within the block every model forward uses these backends (None: the model's own choice)."""
    if attention is not None and attention not in ATTENTION_BACKENDS:
        raise ValueError(f"unknown attention backend {attention!r}; known: {ATTENTION_BACKENDS}")
    forced = dict(_OVERRIDE.get() or {})
    if attention is not None:
        forced["attention"] = attention
    if kernels is not None:
        forced["kernels"] = kernels
    token = _OVERRIDE.set(forced or None)
    try:
        yield
    finally:
        _OVERRIDE.reset(token)


# 4. choice at load ----------------------------------------------------------------------------------
def triton_available() -> tuple[bool, str]:
    """(True, "") when triton and the Triton kernels import, else (False, why)."""
    try:
        importlib.import_module("triton")
        importlib.import_module("kernels.sagesla")
    except ImportError as exc:
        return False, f"triton is not importable ({exc})"
    return True, ""


def select_ops(
    device: str | torch.device, *, attention: str = AUTO, linear: str = AUTO, sla_checkpoint: bool,
    quantized: bool,
) -> Ops:
    """The backends a checkpoint runs with on `device`; "auto" picks the fastest that applies.

    attention auto: "sagesla" for an SLA checkpoint (it carries proj_l) on CUDA with triton, "sla" (the
    slow PyTorch reference) for an SLA checkpoint otherwise, else "dense". linear auto: "w8a8" for a
    quantized checkpoint, else "native". Explicit values force (a quantized checkpoint run "native" is
    dequantized at load, a float one run "w8a8" quantized). The Triton norm/GEMM kernels run on CUDA
    when triton imports. Each choice and the reason for a fallback are logged.
    """
    device = torch.device(device)
    cuda = device.type == "cuda"
    has_triton, why_not = triton_available() if cuda else (False, f"device is {device.type}, not CUDA")
    quant = "quantized" if quantized else "not quantized"
    if attention == AUTO:
        if not sla_checkpoint:
            attention = "dense"
            log.info("attention backend auto -> dense (the checkpoint has no SLA proj_l)")
        elif has_triton:
            attention = "sagesla"
            log.info("attention backend auto -> sagesla (SLA checkpoint on CUDA with triton)")
        else:
            attention = "sla"
            log.warning("attention backend auto -> sla: SLA checkpoint but %s; falling back to the PyTorch SLA "
                        "reference (slow)", why_not)
    else:
        if attention not in ATTENTION_BACKENDS:
            raise ValueError(f"unknown attention backend {attention!r}; known: {ATTENTION_BACKENDS} or 'auto'")
        if attention == "sagesla" and not has_triton:
            raise ValueError(f"attention 'sagesla' needs CUDA and triton: {why_not}")
        no_proj_l = attention != "dense" and not sla_checkpoint
        log.info("attention backend %s (forced)%s", attention,
                 "; the checkpoint has no proj_l: linear branch off" if no_proj_l else "")
    if linear == AUTO:
        linear = "w8a8" if quantized else "native"
        log.info("linear backend auto -> %s (checkpoint %s)", linear, quant)
    else:
        if linear not in LINEAR_BACKENDS:
            raise ValueError(f"unknown linear backend {linear!r}; known: {LINEAR_BACKENDS} or 'auto'")
        log.info("linear backend %s (forced; checkpoint %s)", linear, quant)
    if cuda and not has_triton:
        log.warning("Triton kernels off (%s): norms and W8A8 linears run in plain PyTorch", why_not)
    return Ops(attention=attention, linear=linear, kernels=has_triton)
