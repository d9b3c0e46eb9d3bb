"""TurboVid models: Wan DiT, umT5 encoder, Wan VAE, checkpoints, samplers, the op dispatch
(`models.ops`) and the pipeline (`contract.jobs.GenerationParams` → frames).

The model catalog (which ids exist, their sizes, frames, solver) is `contract.catalog`, shared with the
torch-free gateway. The public loaders below are imported lazily (PEP 562): `import models` alone does
not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "rcm_timesteps": "models.samplers",
    "load_pipeline": "models.pipeline",
    "load_transformer": "models.transformer_loading",
    "WanTransformer": "models.dit",
    "WanConfig": "models.config",
    "convert_checkpoint": "models.convert",
    "load_text_encoder": "models.text_encoder_loading",
    "load_vae": "models.vae_loading",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'models' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
