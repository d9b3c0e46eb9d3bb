"""Expert and text-encoder offload (models.offload) on CPU with the tiny I2V two-expert setup.

What CPU proves: the offloaded pipeline's frames are identical to the resident one's; at every DiT call
the running expert's tensors are the one device slot's and the other expert's are its host copies (no
tensor of it in the slot); the slot is allocated once and reused by every swap; swapping back restores
the weights exactly; the text encoder is swapped in only to encode and released after. What it cannot
prove (no CUDA): the async copies' overlap with compute and the device memory peak (docs/multi_gpu.md).
"""

from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np
import pytest
import torch

from contract.catalog import get_card
from contract.jobs import GenerationParams
from models.offload import ExpertOffloader
from models.pipeline import WanPipeline, load_pipeline

IMAGE = np.random.default_rng(0).integers(0, 256, (48, 48, 3), dtype=np.uint8)


def _params(seed: int = 4) -> GenerationParams:
    # sigma_max 200: t = 0.995, 0.934 (high-noise expert), 0.853, 0.609 (low-noise expert)
    return GenerationParams(kind="i2v", prompt="a lighthouse at dusk", width=48, height=48, num_frames=5,
                            seed=seed, num_steps=4, sigma_max=200.0)


def _experts(pipe) -> dict[str, torch.nn.Module]:
    """Two experts of the tiny I2V architecture with different weights (the A14B shape at tiny size)."""
    high = copy.deepcopy(pipe.transformers["i2v"])
    low = copy.deepcopy(high)
    gen = torch.Generator().manual_seed(9)
    with torch.no_grad():
        for p in low.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    return {"high": high, "low": low}


def _a14b(pipe, experts, offload=None) -> WanPipeline:
    card = replace(get_card("wan-tiny"), kind="i2v", also_serves=(), experts=True)
    return WanPipeline(card, experts, pipe.text_encoder, pipe.vae, pipe.device, pipe.dtype, expert_offload=offload)


def _pointers(module: torch.nn.Module) -> set[int]:
    return {t.data_ptr() for t in [*module.parameters(), *module.buffers()]}


def test_offloaded_experts_give_the_same_video_with_one_expert_in_the_slot_at_each_call(pipe):
    resident = _experts(pipe)
    want = _a14b(pipe, resident).generate(_params(), image=IMAGE).frames

    experts = {k: copy.deepcopy(v) for k, v in resident.items()}
    off = ExpertOffloader("cpu")
    for name, module in experts.items():
        off.add(name, module)
    calls: list[str] = []

    def check(name: str):
        def hook(module, _args):
            slot = off.slot_pointers()
            other = experts["low" if name == "high" else "high"]
            assert _pointers(module) <= slot  # the running expert reads the slot
            assert not (_pointers(other) & slot)  # the other one holds none of it
            calls.append(name)
        return hook

    for name, module in experts.items():
        module.register_forward_pre_hook(check(name))
    a14b = _a14b(pipe, experts, off)
    got = a14b.generate(_params(), image=IMAGE).frames
    assert np.array_equal(got, want)
    assert calls == ["high", "high", "low", "low"] and off.swaps == 2
    slot = off.slot_pointers()
    assert off.device_bytes() == sum(t.numel() * t.element_size() for t in resident["high"].state_dict().values())

    # a second job swaps back to high and on to low in the same slot, with the weights intact
    again = a14b.generate(_params(), image=IMAGE).frames
    assert np.array_equal(again, want) and off.swaps == 4 and off.slot_pointers() == slot
    off.activate("high")
    for (name, a), b in zip(experts["high"].state_dict().items(), resident["high"].state_dict().values(),
                            strict=True):
        assert torch.equal(a, b), name


def test_experts_that_differ_in_shape_are_refused(pipe):
    off = ExpertOffloader("cpu")
    off.add("high", copy.deepcopy(pipe.transformers["i2v"]))
    with pytest.raises(ValueError, match="same tensors"):
        off.add("low", copy.deepcopy(pipe.transformers["t2v"]))  # in_dim 16, not 36
    with pytest.raises(KeyError):
        off.activate("middle")


def test_text_encoder_on_the_device_only_while_encoding_and_embeddings_cached(tiny_dir, pipe):
    want = pipe.generate(_params(seed=6).model_copy(update={"kind": "t2v"})).frames
    lean = load_pipeline("wan-tiny", [tiny_dir], offload_text_encoder=True)
    off = lean.text_encoder_offload
    assert off is not None and off.active is None and off.device_bytes() == 0
    got = lean.generate(_params(seed=6).model_copy(update={"kind": "t2v"})).frames
    assert np.array_equal(got, want)
    assert off.swaps == 1 and off.active is None and off.device_bytes() == 0  # released after the encode
    lean.generate(_params(seed=7).model_copy(update={"kind": "t2v"}))
    assert off.swaps == 1  # the same prompt: its cached embedding, no swap


def test_worker_gpu_memory_budget_setting():
    from contract.settings import ConfigError, load_settings

    dev = {"TURBOVID_DEV_MODE": "true"}
    assert load_settings(dev).worker.gpu_memory_gb is None  # the device's own
    assert load_settings({**dev, "TURBOVID_WORKER__GPU_MEMORY_GB": "32"}).worker.gpu_memory_gb == 32.0
    with pytest.raises(ConfigError, match="GPU_MEMORY_GB"):
        load_settings({**dev, "TURBOVID_WORKER__GPU_MEMORY_GB": "0"})
