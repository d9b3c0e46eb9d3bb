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
    from worker.main import offloads

    assert offloads(resident) == [] and offloads(small) == ["text_encoder"]  # what /v1/models shows
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


# the weights sized from the checkpoint files ----------------------------------------------------------
def _device_bytes(module) -> int:
    """What a loaded model's tensors (parameters and persistent buffers) take."""
    return sum(t.numel() * t.element_size() for t in module.state_dict().values())


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from models.tiny import ensure_tiny_checkpoints

    return ensure_tiny_checkpoints(tmp_path_factory.mktemp("ckpt") / "wan-tiny")


def _quantized_dit(dest, *, in_dim_extra: int = 0, seed: int = 0):
    """A W8A8 (int8 + block scales) canonical DiT in `dest`, TurboDiffusion-style, of the tiny config."""
    import torch

    from models.checkpoint_io import Manifest, write_canonical
    from models.config import WanConfig
    from models.linear import BLOCK, quantize_state_dict
    from models.tiny import _random_dit

    cfg = WanConfig.from_name(get_card("wan-tiny").architecture)
    cfg = cfg.with_(in_dim=cfg.out_dim + in_dim_extra) if in_dim_extra else cfg
    sd = quantize_state_dict({k: v.to(torch.bfloat16) for k, v in _random_dit(cfg, seed).items()})
    write_canonical(dest, sd, Manifest(component="transformer", architecture=cfg.to_dict(),
                                       quantization={"method": "w8a8", "block": BLOCK}, source="test"))
    return dest


@pytest.mark.parametrize("linear", ["native", "w8a8"])
def test_dit_bytes_equal_what_the_loader_holds(tiny_dir, tmp_path, linear):
    import torch

    from models.transformer_loading import load_transformer, read_transformer_shapes
    from worker.memory import dit_bytes

    quant = _quantized_dit(tmp_path / "q")
    for path in (tiny_dir / "transformer", quant):  # an fp32 file and an int8 one, each loaded both ways
        model = load_transformer(path, dtype=torch.bfloat16, attention="dense", linear=linear)
        assert dit_bytes(read_transformer_shapes(path), linear=linear, dtype_bytes=2) == pytest.approx(
            _device_bytes(model), rel=0.01), (path, linear)
    # "auto" is W8A8 exactly when the file is quantized
    auto_q = dit_bytes(read_transformer_shapes(quant), linear="auto", dtype_bytes=2)
    assert auto_q == dit_bytes(read_transformer_shapes(quant), linear="w8a8", dtype_bytes=2)
    dense = read_transformer_shapes(tiny_dir / "transformer")
    assert dit_bytes(dense, linear="auto", dtype_bytes=2) == dit_bytes(dense, linear="native", dtype_bytes=2)
    assert auto_q < dit_bytes(dense, linear="auto", dtype_bytes=2)


def test_dit_bytes_read_diffusers_names_like_wan_names(tiny_dir):
    from models.transformer_loading import read_transformer_shapes
    from worker.memory import dit_bytes

    wan = read_transformer_shapes(tiny_dir / "transformer")
    to_diffusers = [(".self_attn.", ".attn1."), (".cross_attn.", ".attn2."), (".q.", ".to_q."),
                    (".k.", ".to_k."), (".v.", ".to_v."), (".o.", ".to_out.0."), (".ffn.0.", ".ffn.net.0.proj."),
                    (".ffn.2.", ".ffn.net.2."), (".modulation", ".scale_shift_table")]
    renamed = {}
    for key, shape in wan.items():
        if key.startswith("blocks."):
            for old, new in to_diffusers:
                key = key.replace(old, new)
        renamed[key] = shape
    assert any(".attn1." in k for k in renamed)
    for linear in ("native", "w8a8"):  # the fp32 modulation tables are found under either name
        assert dit_bytes(renamed, linear=linear, dtype_bytes=2) == dit_bytes(wan, linear=linear, dtype_bytes=2)


def test_text_encoder_bytes_equal_what_the_loader_holds(tiny_dir):
    # (which tensors of an HF or all-in-one file the loader keeps: tests/unit/models/test_checkpoint_layouts.py)
    import torch

    from models.text_encoder_loading import load_text_encoder, read_text_encoder_shapes
    from worker.memory import text_encoder_bytes

    path = tiny_dir / "text_encoder"
    encoder = load_text_encoder(path, dtype=torch.bfloat16)
    assert text_encoder_bytes(read_text_encoder_shapes(path), dtype_bytes=2) == _device_bytes(encoder.model)


def test_checkpoint_gib_sizes_each_expert_and_the_text_encoder(tiny_dir, tmp_path):
    import shutil

    from worker.memory import checkpoint_gib

    root = tmp_path / "a14b"  # diffusers' A14B layout: transformer/ high-noise, transformer_2/ low-noise
    _quantized_dit(root / "transformer", in_dim_extra=20, seed=1)
    _quantized_dit(root / "transformer_2", in_dim_extra=20, seed=2)
    for sub in ("text_encoder", "vae"):
        shutil.copytree(tiny_dir / sub, root / sub)
    sizes = checkpoint_gib(A14B, [str(root)], linear="auto", dtype_bytes=2)
    assert sizes is not None and set(sizes.dits) == {"high", "low"}
    assert sizes.dits["high"] == pytest.approx(sizes.dits["low"]) and 0 < sizes.dits["high"] < 0.01
    native = checkpoint_gib(A14B, [str(root)], linear="native", dtype_bytes=2)
    assert native is not None and native.dits["high"] > 1.2 * sizes.dits["high"]  # dequantized: bf16
    from models.transformer_loading import read_transformer_shapes
    from worker.memory import GIB, dit_bytes

    high = read_transformer_shapes(root / "transformer")  # transformer/ is the high-noise expert
    assert sizes.dits["high"] == dit_bytes(high, linear="w8a8", dtype_bytes=2) / GIB
    assert sizes.text_encoder is not None and 0 < sizes.text_encoder < 0.01
    # nothing to read, or files that do not make the model: the presets stand in (the loader reports it)
    assert checkpoint_gib(A14B, [], linear="auto", dtype_bytes=2) is None
    assert checkpoint_gib(A14B, [str(tiny_dir / "vae")], linear="auto", dtype_bytes=2) is None


def test_the_plan_takes_the_measured_weights():
    from worker.memory import CheckpointSizes

    # the A14B as turbovid bench lays it out on the H200 (int8 experts, 2-layer umT5): 41.9 GiB measured
    # resident, 22.2 GiB within 32 GiB (docs/multi_gpu.md)
    bench = CheckpointSizes({"high": 13.9, "low": 13.9}, text_encoder=2.7)
    resident = plan_memory(A14B, budget_gib=None, device_gib=H200_GIB, linear="auto", dtype_bytes=2, weights=bench)
    assert resident.weights_from == "checkpoint" and 40 < resident.resident_gib < 44
    assert "checkpoint files" in resident.describe() and "catalog presets" in _plan(A14B, 32).describe()
    fit = plan_memory(A14B, budget_gib=32, device_gib=H200_GIB, linear="auto", dtype_bytes=2, weights=bench)
    assert (fit.offload_experts, fit.offload_text_encoder) == (True, False)  # the small encoder stays
    assert fit.need_gib <= 32 and "over the budget" not in fit.describe()
    xxl = CheckpointSizes({"high": 13.9, "low": 13.9}, text_encoder=10.6)  # the real umT5-XXL encoder
    both = plan_memory(A14B, budget_gib=32, device_gib=H200_GIB, linear="auto", dtype_bytes=2, weights=xxl)
    assert (both.offload_experts, both.offload_text_encoder) == (True, True) and both.need_gib <= 32
    uneven = CheckpointSizes({"high": 13.2, "low": 20.0}, text_encoder=None)  # one slot: the larger expert
    plan = plan_memory(A14B, budget_gib=50, device_gib=H200_GIB, linear="auto", dtype_bytes=2, weights=uneven)
    assert plan.resident_gib > 50 and not plan.offload_text_encoder  # no encoder file: the preset umT5-XXL
    assert plan.offload_experts and plan.need_gib == pytest.approx(plan.resident_gib - 13.2)


def test_load_model_pipeline_sizes_the_checkpoint_it_loads(tiny_dir, tmp_path, caplog):
    import logging

    from worker.main import load_model_pipeline

    settings = Settings(dev_mode=True, auth={"enabled": False},
                        worker={"model": "wan-tiny", "cache_dir": tmp_path, "checkpoint": [str(tiny_dir)],
                                "gpu_memory_gb": 0.5})
    with caplog.at_level(logging.INFO, logger="turbovid.worker"):
        pipe = load_model_pipeline(settings, "cpu", "float32")
    assert "weights from the checkpoint files" in caplog.text
    assert pipe.text_encoder_offload is not None  # 0.5 GiB is below even the tiny model's allowances


def test_memory_plan_command_prints_the_plan_and_says_if_it_fits(tiny_dir, tmp_path, capsys):
    from cli.main import main

    # the tiny model's files, sized from their headers: both DiTs, the text encoder; it fits 100 GiB
    assert main(["memory-plan", "--model", "wan-tiny", "--checkpoint", str(tiny_dir),
                 "--device-memory-gb", "100"]) == 0
    out = capsys.readouterr().out
    assert "weights from the checkpoint files" in out and "offload: nothing" in out
    assert "DiT t2v" in out and "DiT i2v" in out and "text encoder" in out
    # a budget below even its allowances: exit 1, the plan says so
    assert main(["memory-plan", "--model", "wan-tiny", "--checkpoint", str(tiny_dir), "--gpu-memory-gb", "0.5",
                 "--device-memory-gb", "100"]) == 1
    out = capsys.readouterr().out
    assert "offload: text encoder" in out and "over the budget" in out and "VAE chunk budget: 1.0 GiB" in out
    # the A14B on an RTX 5090's 31.4 GiB from the presets: int8 experts share one slot, umT5 off the device
    assert main(["memory-plan", "--model", "wan2.2-i2v-a14b", "--linear", "w8a8", "--device-memory-gb", "31.4"]) == 0
    out = capsys.readouterr().out
    assert "catalog presets" in out and "offload: experts, text encoder" in out and "over the budget" not in out
    # files that are not there are an error (exit 2), not a silent fallback to the presets
    assert main(["memory-plan", "--model", "wan-tiny", "--checkpoint", str(tmp_path / "nope"),
                 "--device-memory-gb", "100"]) == 2
    assert "no such file or folder" in capsys.readouterr().err


def test_the_worker_hands_its_kernel_choices_to_the_kernels(tmp_path, monkeypatch):
    # the kernels read TURBOVID_WORKER__<NAME> at each call (so the ranks a worker starts follow it too): loading
    # the pipeline sets each from the worker's settings
    from kernels.adaln import KERNEL_ENV as NORM_ENV
    from kernels.conv3d_igemm import KERNEL_ENV as CONV_ENV
    from kernels.int8_quant import KERNEL_ENV as QUANT_ENV
    from kernels.sagesla import KERNEL_ENV as ATTN_ENV
    from kernels.w8a8 import BACKEND_ENV
    from kernels.w8a8_blockq import FFN_ENV
    from worker.main import load_model_pipeline

    envs = (QUANT_ENV, ATTN_ENV, BACKEND_ENV, FFN_ENV, CONV_ENV, NORM_ENV)
    for env in envs:
        monkeypatch.delenv(env, raising=False)
    settings = Settings(dev_mode=True, auth={"enabled": False},
                        worker={"model": "wan-tiny", "cache_dir": tmp_path, "quant_kernel": "triton",
                                "sagesla_kernel": "gluon", "w8a8_backend": "triton", "w8a8_ffn": "blockq",
                                "conv_kernel": "triton", "norm_kernel": "triton"})
    load_model_pipeline(settings, "cpu", "float32")
    import os

    assert [os.environ[e] for e in envs] == ["triton", "gluon", "triton", "blockq", "triton", "triton"]


def test_kernels_in_use_reports_each_fast_path_ops_kernel(monkeypatch):
    # what /v1/models shows per worker pool: the kernels' own answers after the warm-up's first calls
    from types import SimpleNamespace

    import torch

    from kernels import adaln, conv3d_igemm, int8_quant, sagesla, w8a8
    from worker.main import kernels_in_use

    assert kernels_in_use(SimpleNamespace(linear="w8a8", attention="sagesla"), "cpu") == {}
    monkeypatch.setattr(int8_quant, "_GLUON_CHECKED", {(0, True, 8960): True, (0, False, 5120): True,
                                                       (1, True, 8960): False})
    monkeypatch.setattr(sagesla, "_GLUON_CHECKED", {0: True, 1: False})
    # the fused residual norms: per (device, C, gated, out dtype)
    monkeypatch.setattr(adaln, "_GLUON_CHECKED", {(0, 5120, True, torch.int8): True, (0, 5120, False, torch.bfloat16): True,
                                                  (1, 1536, True, torch.int8): True, (1, 1536, False, torch.bfloat16): False})
    assert adaln.kernel_in_use(0) == "gluon" and adaln.kernel_in_use(1) == "mixed" and adaln.kernel_in_use(2) == "triton"
    monkeypatch.setattr(w8a8, "gemm_kernel", lambda device: f"gluon on {device}")
    assert int8_quant.kernel_in_use(0) == "gluon" and int8_quant.kernel_in_use(1) == "triton"
    assert int8_quant.kernel_in_use(2) == "triton"  # never checked there: the Triton kernel ran
    int8_quant._GLUON_CHECKED[(0, True, 13824)] = False  # one row length fell back
    assert int8_quant.kernel_in_use(0) == "mixed"
    assert sagesla.kernel_in_use(0) == "gluon" and sagesla.kernel_in_use(1) == "triton"
    assert sagesla.kernel_in_use(5) == "triton"
    # the VAE's 96- and 192-channel convs: per (device, channels, epilogue, bias); reported where the implicit-GEMM
    # conv runs (sm90+)
    monkeypatch.setattr(conv3d_igemm, "_GLUON_CHECKED", {(0, 96, 1, True): True, (0, 192, 2, True): True,
                                                         (1, 96, 1, True): True, (1, 192, 2, True): False})
    assert conv3d_igemm.kernel_in_use(0) == "gluon" and conv3d_igemm.kernel_in_use(1) == "mixed"
    assert conv3d_igemm.kernel_in_use(3) == "triton"
    monkeypatch.setattr(conv3d_igemm, "available", lambda device: False)  # a pre-Hopper GPU: cuDNN convs
    fast = SimpleNamespace(linear="w8a8", attention="sagesla")
    assert kernels_in_use(fast, "cuda:1") == {"gemm": "gluon on cuda:1", "quant": "triton", "norm": "mixed",
                                              "attention": "triton"}
    assert kernels_in_use(SimpleNamespace(linear="native", attention="dense"), "cuda:0") == {}
    monkeypatch.setattr(conv3d_igemm, "available", lambda device: str(device) == "cuda:1")
    igemm = SimpleNamespace(conv_impl="igemm")
    assert "conv" not in kernels_in_use(fast, "cuda:1")  # no VAE (a test double)
    assert kernels_in_use(SimpleNamespace(linear="w8a8", attention="sagesla", vae=igemm), "cuda:1")["conv"] == "mixed"
    assert kernels_in_use(SimpleNamespace(linear="native", attention="dense", vae=igemm), "cuda:1") == {"conv": "mixed"}
    # the VAE on cuDNN's convs (worker.vae_conv taps2d): nothing of ours to report
    taps = SimpleNamespace(linear="native", attention="dense", vae=SimpleNamespace(conv_impl="taps2d"))
    assert kernels_in_use(taps, "cuda:1") == {}
