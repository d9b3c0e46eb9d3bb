"""Convert any supported Wan transformer checkpoint into TurboVid's canonical folder.

`convert_checkpoint(src, dst, quantize=None | "w8a8")` reads `src` in any layout `load_transformer`
reads (TurboDiffusion .pth, official Wan, diffusers, ComfyUI, canonical), renames to Wan's keys, stores
the patch embedding in Conv3d shape, optionally quantizes the block Linears to int8 with 128×128 block
scales, and writes ``model.safetensors`` + ``turbovid.json`` (architecture, quantization, attention).
Tensors keep their source dtype. The `turbovid convert` CLI calls this function.
"""

from __future__ import annotations

from pathlib import Path

from models.checkpoint_io import Manifest, write_canonical
from models.linear import BLOCK, is_quantized, quantize_state_dict
from models.transformer_loading import PROJ_L, read_transformer_checkpoint

QUANTIZE_METHODS = (None, "w8a8")


def convert_checkpoint(src: str | Path, dst: str | Path, *, quantize: str | None = None) -> Path:
    """Write `src` as a canonical transformer folder at `dst`; returns `dst`.

    quantize: None keeps the weights as stored (an already-quantized source stays quantized);
    "w8a8" quantizes every block Linear weight (int8_weight [N, K] + scale [ceil(N/128), ceil(K/128)]).
    """
    if quantize not in QUANTIZE_METHODS:
        raise ValueError(f"unknown quantization {quantize!r}; known: {QUANTIZE_METHODS}")
    sd, cfg = read_transformer_checkpoint(src)

    pe = sd.get("patch_embedding.weight")
    if pe is not None and pe.dim() == 2:  # TurboDiffusion's Linear patch embedding -> Conv3d layout
        sd["patch_embedding.weight"] = pe.reshape(cfg.dim, cfg.in_dim, *cfg.patch)
    if quantize == "w8a8" and not is_quantized(sd):
        sd = quantize_state_dict(sd)

    sla = any(PROJ_L in k for k in sd)
    manifest = Manifest(
        component="transformer",
        architecture=cfg.to_dict(),
        quantization={"method": "w8a8", "block": BLOCK} if is_quantized(sd) else None,
        attention={"sla": sla, "topk": cfg.sla_topk, "block_q": cfg.sla_block_q, "block_k": cfg.sla_block_k},
        source=str(src),
    )
    return write_canonical(dst, sd, manifest)
