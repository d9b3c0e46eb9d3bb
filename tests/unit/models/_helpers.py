"""Test-only helpers for the model tests (moved out of models/: nothing in the package uses them)."""

from __future__ import annotations

from collections.abc import Mapping

import torch

# Wan name -> diffusers `WanTransformer3DModel` name, applied in order (the inverse of
# models.transformer_loading.diffusers_to_wan): tests write diffusers-layout checkpoints with it.
_WAN_TO_DIFFUSERS: list[tuple[str, str]] = [
    ("time_embedding.0.", "condition_embedder.time_embedder.linear_1."),
    ("time_embedding.2.", "condition_embedder.time_embedder.linear_2."),
    ("text_embedding.0.", "condition_embedder.text_embedder.linear_1."),
    ("text_embedding.2.", "condition_embedder.text_embedder.linear_2."),
    ("time_projection.1.", "condition_embedder.time_proj."),
    ("head.modulation", "scale_shift_table"),
    ("head.head.", "proj_out."),
    (".modulation", ".scale_shift_table"),
    (".self_attn.", ".attn1."),
    (".cross_attn.", ".attn2."),
    (".q.", ".to_q."),
    (".k.", ".to_k."),
    (".v.", ".to_v."),
    (".o.", ".to_out.0."),
    (".ffn.0.", ".ffn.net.0.proj."),
    (".ffn.2.", ".ffn.net.2."),
    (".norm3.", ".norm2."),
]


def wan_to_diffusers(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Wan names -> diffusers `WanTransformer3DModel` names."""
    out = {}
    for key, value in state_dict.items():
        for old, new in _WAN_TO_DIFFUSERS:
            key = key.replace(old, new)
        out[key] = value
    return out
