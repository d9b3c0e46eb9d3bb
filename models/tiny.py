"""The `wan-tiny` model: every component of a real Wan pipeline at tiny sizes, with random weights.

`ensure_tiny_checkpoints(folder)` writes (once; later calls reuse it) a folder of canonical checkpoints
that `load_pipeline("wan-tiny", [folder])` loads through the same code as real checkpoints:

    folder/transformer/   T2V DiT  (WanConfig "wan-tiny", in_dim 16)
    folder/i2v/           I2V DiT  (same dims, in_dim 36: latents + 4 mask + 16 image-latent channels)
    folder/text_encoder/  umT5 "tiny" + tokenizer/spiece.model (trained locally by sentencepiece)
    folder/vae/           Wan VAE "tiny" (z_dim 16)

Weights depend only on the seed, so every machine builds the same model. Building is atomic: the
folder is written under a temporary name and renamed into place, so concurrent processes (the dev
stack's worker, tests) never see a half-written model.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch

from contract.catalog import get_card
from models.checkpoint_io import Manifest, write_canonical
from models.config import WanConfig

COMPLETE_MARKER = "COMPLETE"


def _random_dit(cfg: WanConfig, seed: int) -> dict[str, torch.Tensor]:
    from models.dit import WanTransformer

    torch.manual_seed(seed)
    model = WanTransformer(cfg)
    # Default init leaves biases and the output head near zero; spread every tensor a little so the
    # tiny model produces visibly structured (if meaningless) videos.
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1 and name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
    return model.state_dict()


def build_tiny_checkpoints(folder: str | Path, *, seed: int = 0) -> Path:
    """Write the tiny model's canonical checkpoints into `folder` (must not exist yet)."""
    from models.t5 import UMT5Config, UMT5Encoder
    from models.text_encoder_loading import save_text_encoder_canonical
    from models.tiny_tokenizer import build_tiny_tokenizer
    from models.vae import VAEConfig, WanVAE
    from models.vae_loading import save_vae_canonical

    folder = Path(folder)
    folder.mkdir(parents=True)
    card = get_card("wan-tiny")  # the presets the catalog names for the tiny model
    t2v = WanConfig.from_name(card.architecture)
    i2v = t2v.with_(in_dim=t2v.out_dim + 20)
    for sub, cfg, s in (("transformer", t2v, seed), ("i2v", i2v, seed + 10)):
        write_canonical(folder / sub, _random_dit(cfg, s),
                        Manifest(component="transformer", architecture=cfg.to_dict(), source="wan-tiny random"))

    t5_cfg = UMT5Config.from_name(card.text_encoder)
    encoder = UMT5Encoder.random(t5_cfg, seed=seed + 20)
    with tempfile.TemporaryDirectory() as tmp:
        spiece = build_tiny_tokenizer(Path(tmp) / "tok", vocab_size=t5_cfg.vocab_size)
        save_text_encoder_canonical(folder / "text_encoder", encoder.state_dict(), t5_cfg,
                                    tokenizer=spiece, source="wan-tiny random")

    torch.manual_seed(seed + 30)
    vae = WanVAE(VAEConfig.from_name(card.vae))
    save_vae_canonical(vae, folder / "vae", source="wan-tiny random")
    (folder / COMPLETE_MARKER).write_text("wan-tiny\n")
    return folder


def ensure_tiny_checkpoints(folder: str | Path, *, seed: int = 0) -> Path:
    """The tiny model's folder, built on first use (atomically; safe across processes)."""
    folder = Path(folder)
    if (folder / COMPLETE_MARKER).is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        build_tiny_checkpoints(staging / "model", seed=seed)
        try:
            os.replace(staging / "model", folder)
        except OSError:
            # Another process finished first (the target exists and is not empty): use theirs.
            if not (folder / COMPLETE_MARKER).is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder
