"""SageSLA's Gluon attention kernel (kernels/sagesla_gluon.py): which calls it takes and how the choice is made
(CPU), and on the GPU its output against the Triton kernel's on the same prepared operands and against the fp32
reference. Gluon has no interpreter; `kernels.compile_check sagesla_gluon` compiles it in CI."""

from __future__ import annotations

import logging
import math

import pytest
import torch
import torch.nn.functional as F

from kernels import sagesla as sg
from kernels import sagesla_gluon as sgg


def test_supported_calls() -> None:
    assert sgg.supported(128, 128, 64, 52, False, True)  # the Wan shapes: 1.3B 480p
    assert sgg.supported(128, 128, 64, 4, False, True) and sgg.supported(128, 128, 64, 5, False, True)
    assert not sgg.supported(128, 128, 64, 3, False, True)  # the peeled loop needs four blocks
    assert not sgg.supported(128, 128, 64, 52, True, True)  # dense (sage_attention)
    assert not sgg.supported(128, 128, 64, 52, False, False)  # fp16 P·V
    assert not sgg.supported(64, 128, 64, 52, False, True)  # head dim 64
    assert not sgg.supported(128, 64, 64, 52, False, True)  # 64-row query blocks
    assert not sgg.supported(128, 128, 128, 52, False, True)  # 128-row key blocks (spill, serialized wgmmas)


def test_launch_meta_peels_by_parity_and_caps_registers() -> None:
    even, odd = sgg.launch_meta(True, 8.8, 52), sgg.launch_meta(False, 8.8, 5, stages=3)
    assert even["EVEN"] is True and odd["EVEN"] is False and odd["NSLOT"] == 3 and even["NSLOT"] == sgg.STAGES
    assert even["num_warps"] == 4 and even["maxnreg"] == 168  # 12 warps: 4 + 4 + the loader's warpgroup


def _prepared(device: str, length: int = 300, ratio: float = 0.5):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, length, 128, generator=g).to(device) for _ in range(3))
    return sg._prepare(q, k, v, ratio, None, None, sg.BLOCK_Q, sg.BLOCK_K, False, False)


def test_cpu_calls_take_the_triton_kernel() -> None:
    assert not sg._gluon_runs(_prepared("cpu"))


def test_an_unknown_kernel_choice_is_warned_about_once_and_means_auto(monkeypatch, caplog) -> None:
    import kernels

    monkeypatch.setenv(sg.KERNEL_ENV, "fastest")
    kernels._WARNED.discard((sg.KERNEL_ENV, "fastest"))
    with caplog.at_level(logging.WARNING, logger="kernels"):
        assert sg._kernel_choice() == "auto" and sg._kernel_choice() == "auto"
    assert [r.getMessage() for r in caplog.records].count(
        f"{sg.KERNEL_ENV}='fastest' is not one of ('auto', 'gluon', 'triton'): using auto") == 1
    monkeypatch.setenv(sg.KERNEL_ENV, "Triton")
    assert sg._kernel_choice() == "triton"


def test_relative_distance_of_two_outputs() -> None:
    g = torch.Generator().manual_seed(1)
    want = torch.randn(1, 11, 40, 128, generator=g).to(torch.bfloat16)  # 11 heads: two chunks of 8 and a rest
    off = (torch.randn(1, 11, 40, 128, generator=g) * 0.03).to(torch.bfloat16)
    got = (want.float() + off.float()).to(torch.bfloat16)
    exact = ((got.float() - want.float()).norm() / want.float().norm()).item()
    assert sg._relative_distance(want, want) == 0.0
    assert sg._relative_distance(got, want) == pytest.approx(exact, rel=1e-5) and 0.02 < exact < 0.04
    got[0, 9, 3, 7] = float("nan")  # in the last chunk
    assert sg._relative_distance(got, want) == math.inf


@pytest.mark.parametrize(("offset", "raises", "expect"), [
    (0.002, False, True),    # as far apart as the two kernels measure: the Gluon kernel
    (0.08, False, False),    # too far: the Triton kernel, with a warning
    (0.0, True, False),      # the Gluon kernel fails to compile or launch: the Triton kernel
])
def test_the_first_call_check_compares_the_kernels_on_that_calls_operands(
        monkeypatch, caplog, offset, raises, expect) -> None:
    prep = _prepared("cpu", length=200)
    seen: list[int] = []
    triton_out = torch.randn(1, 2, 200, 128, generator=torch.Generator().manual_seed(2))

    def fake_gluon(p):  # noqa: ANN001, ANN202
        seen.append(id(p))
        if raises:
            raise RuntimeError("PassManager::run failed")
        return triton_out * (1 + offset)

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index: (9, 0))
    monkeypatch.setattr(sgg, "available", lambda: True)
    monkeypatch.setattr(sg, "_launch_gluon", fake_gluon)
    monkeypatch.setattr(sg, "_launch_triton", lambda p: seen.append(id(p)) or triton_out)
    with caplog.at_level(logging.WARNING, logger="kernels.sagesla"):
        assert sg._check_gluon(0, prep) is expect
    assert seen and set(seen) == {id(prep)}  # both kernels ran on the call's own prepared operands
    assert bool(caplog.records) is not expect
    if not expect:
        assert "using the Triton kernel" in caplog.records[0].getMessage()


# ---------------------------------------------------------------------------------------------------- GPU


def _gpu_inputs(b: int, h: int, length: int, seed: int = 0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    # the DiT's layout: [B, L, H, D] storage seen as [B, H, L, D]
    q, k, v = (torch.randn(b, length, h, 128, device="cuda", generator=g).to(torch.bfloat16).transpose(1, 2)
               for _ in range(3))
    w = torch.randn(128, 128, device="cuda", generator=g) / math.sqrt(128)
    bias = torch.randn(128, device="cuda", generator=g) * 0.01
    return q, k, v, w, bias


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return F.cosine_similarity(a.double().flatten(), b.double().flatten(), dim=0).item()


needs_hopper = pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.get_device_capability() != (9, 0) or not sgg.available(),
    reason="the Gluon kernel runs on sm90 with Triton's Gluon API")


@pytest.mark.gpu
@needs_hopper
@pytest.mark.parametrize(("b", "h", "length", "ratio", "linear"), [
    (1, 2, 1000, 0.4, True),    # 16 key blocks -> 6 selected (even), partial last key block
    (2, 3, 1300, 0.25, False),  # 21 -> 5 (odd); the last query block's second half lies past L
    (1, 1, 4100, 0.1, True),    # 65 -> 6; one head
    (1, 2, 32760, 0.1, True),   # the 1.3B 480p sequence: 512 -> 51 selected (odd)
    (1, 1, 75600, 0.1, False),  # the 14B 720p sequence: 1182 -> 118 (even)
])
def test_gluon_kernel_matches_the_triton_kernel(b, h, length, ratio, linear) -> None:
    q, k, v, w, bias = _gpu_inputs(b, h, length)
    w, bias = (w, bias) if linear else (None, None)
    prep = sg._prepare(q, k, v, ratio, w, bias, sg.BLOCK_Q, sg.BLOCK_K, False, True)
    assert sgg.supported(128, prep.block_q, prep.block_k, prep.topk, prep.dense, prep.pv_fp8)
    want = sg._launch_triton(prep).float()
    ref = sg.reference(q, k, v, topk_ratio=ratio, proj_l_weight=w, proj_l_bias=bias)[0].float()
    err_t = ((want - ref).norm() / ref.norm()).item()
    for stages in (2, 3):
        got = sgg.attention(prep.q8, prep.q_scale, prep.k8, prep.k_scale, prep.vt, prep.v_scale, prep.lut,
                            prep.olin if linear else None, q.new_empty(b, length, h, 128).transpose(1, 2), h,
                            prep.block_k, sg.P_OFF_FP8, stages=stages).float()
        assert torch.isfinite(got).all()
        err_g = ((got - ref).norm() / ref.norm()).item()
        diff = ((got - want).norm() / want.norm()).item()
        # as close to the fp32 reference as the Triton kernel (both round P to FP8 and o to bf16)
        assert err_g <= 1.5 * err_t + 1e-3 and _cos(got, want) > 0.9999, (stages, err_g, err_t, diff)


@pytest.mark.gpu
@needs_hopper
def test_public_call_runs_the_gluon_kernel_unless_told_not_to(monkeypatch) -> None:
    q, k, v, w, bias = _gpu_inputs(1, 2, 4100)
    prep = sg._prepare(q, k, v, 0.1, w, bias, sg.BLOCK_Q, sg.BLOCK_K, False, True)
    monkeypatch.setenv(sg.KERNEL_ENV, "auto")
    assert sg._gluon_runs(prep)
    o, _ = sg.sagesla_attention(q, k, v, topk_ratio=0.1, proj_l_weight=w, proj_l_bias=bias)
    assert torch.equal(o, sg._launch_gluon(prep))  # the same kernel on the same operands: bit-equal
    ref, _ = sg.reference(q, k, v, topk_ratio=0.1, proj_l_weight=w, proj_l_bias=bias)
    assert _cos(o, ref) >= 0.995
    monkeypatch.setenv(sg.KERNEL_ENV, "triton")
    assert not sg._gluon_runs(prep)
    o_t, _ = sg.sagesla_attention(q, k, v, topk_ratio=0.1, proj_l_weight=w, proj_l_bias=bias)
    assert torch.equal(o_t, sg._launch_triton(prep))


@pytest.mark.gpu
@needs_hopper
def test_calls_it_does_not_cover_take_the_triton_kernel() -> None:
    q, k, v, _, _ = _gpu_inputs(1, 1, 1000)
    prep = sg._prepare(q, k, v, 0.2, None, None, sg.BLOCK_Q, sg.BLOCK_K, False, True)  # 16 blocks -> 3
    assert prep.topk == 3 and not sg._gluon_runs(prep)
    o, _ = sg.sagesla_attention(q, k, v, topk_ratio=0.2)
    assert torch.equal(o, sg._launch_triton(prep))
