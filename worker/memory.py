"""The GPU memory budget (`worker.gpu_memory_gb`): what the worker offloads to stay under it.

`plan_memory` is a pure function of the model card, the budget, the linear backend and the dtype:

    resident = experts × DiT + umT5 + VAE + activations     (everything on the device)
    budget < resident, two experts  → offload_experts       (one expert's slot; models/offload.py)
    budget < what is left           → offload_text_encoder  (on the device only while it encodes)

The budget is `worker.gpu_memory_gb` (GiB), else the device's own memory; a set budget is also
enforced with `torch.cuda.set_per_process_memory_fraction(budget / device)`, so a job over it fails
with `out_of_memory` instead of taking memory another process was promised.

The sizes are estimates from the architecture presets, not measurements: DiT and umT5 weights from
their parameter counts (block linears 1 byte each under W8A8; `linear="auto"` is counted unquantized,
the conservative choice, since the checkpoint is not read yet), the DiT's activations at the largest
size the card serves (tokens × (ffn + 4·dim) × dtype bytes × 1.5) and a fixed allowance for the
VAE's weights and decode chunks. For the A14B in bf16 + W8A8 they put the offload of the experts
below ~51 GiB and of the text encoder below ~37 GiB. Calibrate them with `turbovid bench` and
`python -m models.offload` on the GPU (docs/multi_gpu.md).
"""

from __future__ import annotations

from dataclasses import dataclass

from contract.catalog import ModelCard, latent_frames

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

    def describe(self) -> str:
        offloads = [n for n, on in (("experts", self.offload_experts), ("text encoder", self.offload_text_encoder))
                    if on]
        budget = "no budget" if self.budget_gib is None else f"budget {self.budget_gib:.1f} GiB"
        fits = "" if self.budget_gib is None or self.need_gib <= self.budget_gib else " (over the budget: jobs may run out of memory)"
        return (f"memory: {budget}, estimated {self.resident_gib:.1f} GiB resident; offload: "
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
                dtype_bytes: int) -> MemoryPlan:
    """What to offload so that `card` fits `budget_gib` (else `device_gib`, the device's memory)."""
    est = estimate_gib(card, linear=linear, dtype_bytes=dtype_bytes)
    experts = 2 if card.experts else 1
    resident = experts * est["dit"] + est["text_encoder"] + est["vae"] + est["activations"]
    budget = budget_gib if budget_gib is not None else device_gib
    if budget is None:
        return MemoryPlan(None, resident, resident)
    need = resident
    offload_experts = experts > 1 and budget < need
    if offload_experts:
        need -= (experts - 1) * est["dit"]
    offload_text = budget < need
    if offload_text:
        need -= est["text_encoder"]
    fraction = budget_gib / device_gib if budget_gib is not None and device_gib and budget_gib < device_gib else None
    vae_budget = None
    if budget_gib is not None:  # the VAE chunks get what the rest leaves, within [VAE_MIN_GIB, VAE_MAX_GIB]
        headroom = budget_gib - (need - est["vae"]) - VAE_MARGIN_GIB
        vae_budget = min(VAE_MAX_GIB, max(VAE_MIN_GIB, headroom))
    return MemoryPlan(budget, resident, need, offload_experts, offload_text, fraction, vae_budget)
