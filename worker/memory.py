"""The GPU memory budget (`worker.gpu_memory_gb`): what the worker offloads to stay under it.

`plan_memory` is a pure function of the model card, the budget, the linear backend and the dtype:

    resident = experts × DiT + umT5 + VAE + activations     (everything on the device)
    budget < resident, two experts  → offload_experts       (one expert's slot; models/offload.py)
    budget < what is left           → offload_text_encoder  (on the device only while it encodes)

The budget is `worker.gpu_memory_gb` (GiB), else the device's own memory; a set budget is also
enforced with `torch.cuda.set_per_process_memory_fraction(budget / device)`, so a job over it fails
with `out_of_memory` instead of taking memory another process was promised.

The weights are sized from the checkpoint files the worker will load (`checkpoint_gib`: the tensor
shapes in their headers, no tensor data read), as the loader will hold them on the device: int8 block
linears 1 byte per weight under W8A8 (`linear="auto"` is W8A8 exactly when the DiT file is quantized),
a dense DiT quantized at load likewise, fp32 norms and modulation 4 bytes, everything else the compute
dtype; a text encoder's decoder half and an embedded tokenizer are not counted. Without checkpoint files
(the tiny models) or when they cannot be read, the catalog's presets stand in (`estimate_gib`, with
`linear="auto"` counted unquantized, the larger). The rest are estimates: the DiT's activations at the
largest size the card serves (tokens × (ffn + 4·dim) × dtype bytes × 1.5) and a fixed allowance for the
VAE's weights and decode chunks. For the A14B in bf16 + W8A8 with umT5-XXL they put the offload of the
experts below ~51 GiB and of the text encoder below ~37 GiB; measured on an H200 through real processes
(`turbovid bench`, 2-layer umT5): 41.9 GiB peak resident against 43.7 estimated, 22.2 GiB within a 32 GiB
budget (docs/multi_gpu.md).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from contract.catalog import ModelCard, latent_frames

log = logging.getLogger("turbovid.worker")

GIB = 2**30
VAE_GIB = 6.0  # estimate: VAE weights (~0.25 GiB) + its decode chunks at 720p
# The VAE's chunk budget under gpu_memory_gb: the budget less everything else's estimate and a margin,
# within [1, 12] GiB (12: WanVAE's own default). Measured (H200, models.bench_a14b, A14B I2V 720p, 32 GiB,
# VAE budget 12 GiB): peak 24.8 GiB allocated, 28.1 reserved; this rule gives that job ~10 GiB.
VAE_MIN_GIB, VAE_MAX_GIB, VAE_MARGIN_GIB = 1.0, 12.0, 1.0
ACTIVATION_FACTOR = 1.5  # live tensors of one block's forward, in units of tokens × (ffn + 4·dim) values


@dataclass(frozen=True)
class MemoryPlan:
    budget_gib: float | None  # None: no budget known (CPU without gpu_memory_gb): nothing offloaded
    resident_gib: float  # estimated peak with everything resident
    need_gib: float  # estimated peak with this plan's offloads
    offload_experts: bool = False
    offload_text_encoder: bool = False
    fraction: float | None = None  # torch.cuda.set_per_process_memory_fraction, when a budget is set
    vae_budget_gib: float | None = None  # the VAE's chunk budget (WanVAE.memory_budget) under gpu_memory_gb
    weights_from: str = "presets"  # "checkpoint": the weights were sized from the files to load
    parts: dict[str, float] = field(default_factory=dict)  # GiB of each part the estimate adds up

    def describe(self) -> str:
        offloads = [n for n, on in (("experts", self.offload_experts), ("text encoder", self.offload_text_encoder))
                    if on]
        budget = "no budget" if self.budget_gib is None else f"budget {self.budget_gib:.1f} GiB"
        fits = "" if self.budget_gib is None or self.need_gib <= self.budget_gib else " (over the budget: jobs may run out of memory)"
        return (f"memory: {budget}, estimated {self.resident_gib:.1f} GiB resident (weights from the "
                f"{'checkpoint files' if self.weights_from == 'checkpoint' else 'catalog presets'}); offload: "
                f"{', '.join(offloads) or 'nothing'} → ~{self.need_gib:.1f} GiB{fits}")


def estimate_gib(card: ModelCard, *, linear: str, dtype_bytes: int) -> dict[str, float]:
    """GiB of one DiT (expert), the text encoder, the VAE allowance and the activations of `card`."""
    from models.config import WanConfig
    from models.t5 import UMT5Config

    cfg = WanConfig.from_name(card.architecture)
    d, f, L = cfg.dim, cfg.ffn_dim, cfg.num_layers
    block_linears = L * (8 * d * d + 2 * d * f)  # self- and cross-attention q/k/v/o, FFN in and out
    rest = (cfg.text_dim + cfg.freq_dim + 8 * d) * d + 4 * (cfg.in_dim + cfg.out_dim) * d + 6 * L * d
    weight_bytes = 1 if linear == "w8a8" else dtype_bytes
    t5 = UMT5Config.from_name(card.text_encoder)
    t5_params = t5.vocab_size * t5.d_model + t5.num_layers * (4 * t5.d_model * t5.inner_dim + 3 * t5.d_model * t5.d_ff)
    p_t, p_h, p_w = cfg.patch
    tokens = max((latent_frames(card.max_frames) // p_t) * (h // 8 // p_h) * (w // 8 // p_w) for w, h in card.sizes)
    return {
        "dit": (block_linears * weight_bytes + rest * dtype_bytes) / GIB,
        "text_encoder": t5_params * dtype_bytes / GIB,
        "vae": VAE_GIB,
        "activations": ACTIVATION_FACTOR * tokens * (f + 4 * d) * dtype_bytes / GIB,
    }


def plan_memory(card: ModelCard, *, budget_gib: float | None, device_gib: float | None, linear: str,
                dtype_bytes: int, weights: CheckpointSizes | None = None) -> MemoryPlan:
    """What to offload so that `card` fits `budget_gib` (else `device_gib`, the device's memory).
    weights: the sizes of the checkpoint files to load (`checkpoint_gib`); None: the catalog's presets."""
    from models.checkpoint_components import EXPERTS

    est = estimate_gib(card, linear=linear, dtype_bytes=dtype_bytes)
    dit_gib = dict.fromkeys(EXPERTS if card.experts else ("",), est["dit"])
    if weights is not None:
        dit_gib = weights.dits or dit_gib
        if weights.text_encoder is not None:
            est["text_encoder"] = weights.text_encoder
    dits = list(dit_gib.values())
    parts = {**{f"DiT {role}".strip(): gib for role, gib in dit_gib.items()}, "text encoder": est["text_encoder"],
             "VAE (allowance)": est["vae"], f"activations (largest size, {card.max_frames} frames)": est["activations"]}
    source = "presets" if weights is None else "checkpoint"
    resident = sum(parts.values())
    budget = budget_gib if budget_gib is not None else device_gib
    if budget is None:
        return MemoryPlan(None, resident, resident, weights_from=source, parts=parts)
    need = resident
    offload_experts = bool(card.experts) and len(dits) > 1 and budget < need
    if offload_experts:  # one device slot, the size of the largest expert
        need -= sum(dits) - max(dits)
    offload_text = budget < need
    if offload_text:
        need -= est["text_encoder"]
    fraction = budget_gib / device_gib if budget_gib is not None and device_gib and budget_gib < device_gib else None
    vae_budget = None
    if budget_gib is not None:  # the VAE chunks get what the rest leaves, within [VAE_MIN_GIB, VAE_MAX_GIB]
        headroom = budget_gib - (need - est["vae"]) - VAE_MARGIN_GIB
        vae_budget = min(VAE_MAX_GIB, max(VAE_MIN_GIB, headroom))
    return MemoryPlan(budget, resident, need, offload_experts, offload_text, fraction, vae_budget, source, parts)


# the weights of the checkpoint files to load ---------------------------------------------------------
@dataclass(frozen=True)
class CheckpointSizes:
    """GiB each component's weights take on the device, as the loader holds them."""

    dits: dict[str, float]  # per DiT role ("t2v", "i2v", "high", "low")
    text_encoder: float | None  # None: no text encoder file resolved (its loader finds one)


def _numel(shape: tuple[int, ...]) -> int:
    return math.prod(shape) if shape else 1


def dit_bytes(shapes: Mapping[str, tuple[int, ...]], *, linear: str, dtype_bytes: int) -> int:
    """Bytes a DiT checkpoint's tensors (any layout's names, shapes only) take once loaded with `linear`
    ("auto": W8A8 exactly when the file holds int8 weights) in a `dtype_bytes` compute dtype."""
    from models.dit import keeps_fp32
    from models.fp8_scaled import is_marker
    from models.linear import is_quantized, is_quantized_linear_key
    from models.transformer_loading import to_wan_names

    named: dict[str, tuple[int, ...]] = to_wan_names(shapes)  # type: ignore[arg-type]  # names only
    quantized = is_quantized(named)  # type: ignore[arg-type]  # names only
    w8a8 = linear == "w8a8" or (linear == "auto" and quantized)
    total = 0
    for key, shape in named.items():
        if is_marker(key):
            continue
        if key.endswith(".int8_weight"):  # kept int8 under W8A8, dequantized otherwise
            size = 1 if w8a8 else dtype_bytes
        elif quantized and key.endswith(".scale"):  # its fp32 scales, dropped when dequantized
            size = 4 if w8a8 else 0
        elif w8a8 and is_quantized_linear_key(key) and len(shape) == 2:  # a dense file quantized at load
            size = 1
        elif keeps_fp32(key):
            size = 4
        else:
            size = dtype_bytes
        total += _numel(shape) * size
    return total


def text_encoder_bytes(shapes: Mapping[str, tuple[int, ...]], *, dtype_bytes: int) -> int:
    """Bytes of a text encoder's tensors (`models.text_encoder_loading.read_text_encoder_shapes`: what its loader
    keeps) once loaded in a `dtype_bytes` dtype."""
    return sum(_numel(shape) for shape in shapes.values()) * dtype_bytes


def checkpoint_gib(card: ModelCard, checkpoints: list[str] | list[Path], *, linear: str, dtype_bytes: int,
                   solver: str | None = None, strict: bool = False) -> CheckpointSizes | None:
    """The on-device GiB of the DiT(s) and text encoder the worker will load for `card` from
    `checkpoints` (headers only); None when there are none to read or they cannot be sized (the caller
    falls back to the presets, and the loader reports any real problem with the files). strict: raise
    instead (`turbovid memory-plan`, where the files are the question)."""
    if not checkpoints:
        return None
    from models.checkpoint_components import resolve_components
    from models.text_encoder_loading import read_text_encoder_shapes
    from models.transformer_loading import read_transformer_shapes

    try:
        parts = resolve_components([Path(str(c)) for c in checkpoints], card,
                                   linear="native" if linear == "native" else "w8a8",
                                   sampler=solver if solver not in (None, "auto") else card.solver)
        dits = {role: dit_bytes(read_transformer_shapes(path), linear=linear, dtype_bytes=dtype_bytes) / GIB
                for role, path in parts.transformers.items()}
        text = None
        if parts.text_encoder is not None:
            text = text_encoder_bytes(read_text_encoder_shapes(parts.text_encoder), dtype_bytes=dtype_bytes) / GIB
    except Exception as exc:  # noqa: BLE001 - sizing is advisory: the loader gives the real error
        if strict:
            raise
        log.warning("memory plan: could not size the checkpoint files (%s); using the catalog's presets", exc)
        return None
    return CheckpointSizes(dits, text)

