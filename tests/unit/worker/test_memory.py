"""worker/memory.py: what the worker offloads under a GPU memory budget, and load_model_pipeline's use of it."""

from __future__ import annotations

import pytest

from contract.catalog import get_card
from contract.settings import Settings
from worker.memory import VAE_MAX_GIB, VAE_MIN_GIB, estimate_gib, plan_memory

A14B = get_card("wan2.2-i2v-a14b")
T2V_13B = get_card("wan2.1-t2v-1.3b")
H200_GIB = 139.8


def _plan(card, budget, linear="w8a8", device=H200_GIB):
    return plan_memory(card, budget_gib=budget, device_gib=device, linear=linear, dtype_bytes=2)


def test_estimates_follow_the_architectures():
    est = estimate_gib(A14B, linear="w8a8", dtype_bytes=2)
    assert 12 < est["dit"] < 16  # 14 B parameters, block linears in int8
    assert 10 < est["text_encoder"] < 12  # umT5-XXL encoder, 5.7 B parameters in bf16
    native = estimate_gib(A14B, linear="native", dtype_bytes=2)
    assert 1.8 < native["dit"] / est["dit"] < 2.0
    assert estimate_gib(get_card("wan2.1-t2v-14b"), linear="w8a8", dtype_bytes=2)["dit"] == pytest.approx(est["dit"], rel=1e-3)
    assert estimate_gib(T2V_13B, linear="w8a8", dtype_bytes=2)["activations"] < est["activations"] / 4  # 480p


def test_a14b_offloads_the_experts_then_the_text_encoder_as_the_budget_shrinks():
    resident = _plan(A14B, None).resident_gib
    roomy, experts, both = _plan(A14B, resident + 1), _plan(A14B, resident - 1), _plan(A14B, 32)
    assert (roomy.offload_experts, roomy.offload_text_encoder) == (False, False)
    assert (experts.offload_experts, experts.offload_text_encoder) == (True, False)
    assert (both.offload_experts, both.offload_text_encoder) == (True, True)
    assert both.need_gib < experts.need_gib < roomy.need_gib == resident
    assert both.need_gib <= 32 < experts.need_gib  # the 32 GB A14B budget fits only with both
    assert both.fraction == pytest.approx(32 / H200_GIB)  # a set budget is enforced


def test_no_budget_uses_the_device_and_enforces_nothing():
    assert _plan(A14B, None).offload_experts is False and _plan(A14B, None).fraction is None  # H200: all resident
    small = _plan(A14B, None, device=31.4)  # a 32 GB card
    assert small.offload_experts and small.offload_text_encoder and small.fraction is None
    cpu = plan_memory(A14B, budget_gib=None, device_gib=None, linear="w8a8", dtype_bytes=2)
    assert (cpu.offload_experts, cpu.offload_text_encoder, cpu.fraction) == (False, False, None)


def test_one_dit_models_never_offload_experts_and_auto_linear_counts_unquantized():
    plan = _plan(T2V_13B, 12)
    assert not plan.offload_experts and plan.offload_text_encoder
    budget = _plan(A14B, None, linear="w8a8").resident_gib + 1  # w8a8 fits resident, bf16 weights do not
    assert not _plan(A14B, budget, linear="w8a8").offload_experts
    assert _plan(A14B, budget, linear="native").offload_experts
    assert _plan(A14B, budget, linear="auto").offload_experts  # the checkpoint is not read yet: the larger
    assert "over the budget" in _plan(A14B, 10).describe()


def test_load_model_pipeline_offloads_what_the_budget_wants(tmp_path):
    from worker.main import load_model_pipeline

    def load(budget):
        settings = Settings(dev_mode=True, auth={"enabled": False},
                            worker={"model": "wan-tiny", "cache_dir": tmp_path, "gpu_memory_gb": budget})
        return load_model_pipeline(settings, "cpu", "float32")

    resident, small = load(None), load(0.5)
    assert resident.text_encoder_offload is None  # CPU without a budget: everything resident
    assert small.text_encoder_offload is not None  # below the estimate: the encoder only while encoding
    from models.vae import DEFAULT_MEMORY_BUDGET

    assert resident.vae.memory_budget == DEFAULT_MEMORY_BUDGET  # no budget: the VAE's own chunk budget
    assert small.vae.memory_budget == int(VAE_MIN_GIB * 2**30)  # a tiny budget: the smallest chunks
    assert load(40.0).vae.memory_budget == int(VAE_MAX_GIB * 2**30)  # room to spare: capped at the default
    assert resident.vae.conv_impl == "igemm"  # worker.vae_conv's default


def test_worker_vae_conv_setting_reaches_the_vae(tmp_path):
    from pydantic import ValidationError

    from worker.main import load_model_pipeline

    settings = Settings(dev_mode=True, auth={"enabled": False},
                        worker={"model": "wan-tiny", "cache_dir": tmp_path, "vae_conv": "taps2d"})
    assert load_model_pipeline(settings, "cpu", "float32").vae.conv_impl == "taps2d"
    with pytest.raises(ValidationError, match="vae_conv"):
        Settings(dev_mode=True, auth={"enabled": False}, worker={"vae_conv": "winograd"})


def test_the_vae_chunk_budget_is_what_the_budget_leaves():
    assert _plan(A14B, None).vae_budget_gib is None  # the device's own memory: the VAE keeps its default
    at = {b: _plan(A14B, b).vae_budget_gib for b in (16, 24, 28, 32, 200)}
    assert at[16] == VAE_MIN_GIB and at[200] == VAE_MAX_GIB
    assert VAE_MIN_GIB < at[24] < at[28] < at[32] <= VAE_MAX_GIB  # grows with the budget
    plan = _plan(A14B, 32)
    assert plan.need_gib - 6.0 + plan.vae_budget_gib + 1.0 <= 32 + 1e-9  # the rest's estimate + chunks fit
