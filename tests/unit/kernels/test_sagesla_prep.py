"""SageSLA's fused preparation (`kernels.sagesla_prep`: the K pass with the linear branch's reductions, the Q pass
looping over blocks) against the split form and the torch math (the interpreter on CPU; model shapes under
@pytest.mark.gpu)."""

from __future__ import annotations

import math

import pytest
import torch

from kernels import sagesla_prep
from kernels.sagesla import _prepare, linear_branch_reference

BQ, BK = 32, 16


def _qkv(B: int, H: int, L: int, D: int, seed: int, device: str = "cpu", dtype=torch.float32):
    """q, k, v as the DiT hands them over: [B, L, H, D] storage viewed [B, H, L, D]; v with a non-zero mean so the
    linear branch is not ~0."""
    g = torch.Generator(device=device).manual_seed(seed)
    q, k, v = (torch.randn(B, L, H, D, generator=g, device=device).to(dtype).transpose(1, 2) for _ in range(3))
    w = torch.randn(D, D, generator=g, device=device) / math.sqrt(D)
    b = torch.randn(D, generator=g, device=device) * 0.1
    return q, k, v + 1.0, w, b


def _both(monkeypatch, *args):  # noqa: ANN001, ANN202
    monkeypatch.setenv(sagesla_prep.PREP_ENV, "split")
    split = _prepare(*args)
    monkeypatch.setenv(sagesla_prep.PREP_ENV, "fused")
    fused = _prepare(*args)
    return split, fused


@pytest.mark.parametrize(("B", "H", "L", "D", "pv_fp8", "bias"), [(1, 3, 83, 64, False, True),
                                                                 (2, 2, 100, 32, True, True),
                                                                 (1, 2, 16, 64, False, False)])
def test_the_fused_preparation_gives_the_split_forms_operands(monkeypatch, B, H, L, D, pv_fp8, bias) -> None:
    """Same int8 Q and K, scales, block map (from the pooled rows) and FP8 V; the linear branch within fp16 rounding
    of the split form (the fused one sums phi(K)^T V in fp32 where the split GEMM rounded it to V's dtype)."""
    q, k, v, w, b = _qkv(B, H, L, D, seed=L + D)
    b = b if bias else None
    split, fused = _both(monkeypatch, q, k, v, 0.5, w, b, BQ, BK, False, pv_fp8)
    assert fused.has_linear and split.has_linear
    for name in ("k8", "k_scale", "q8", "q_scale", "lut"):
        torch.testing.assert_close(getattr(fused, name), getattr(split, name), rtol=0, atol=0, msg=name)
    if pv_fp8:
        torch.testing.assert_close(fused.vt.float(), split.vt.float(), rtol=0, atol=0)
        torch.testing.assert_close(fused.v_scale, split.v_scale, rtol=0, atol=0)
    torch.testing.assert_close(fused.olin.float(), split.olin.float(), atol=2e-3, rtol=2e-3)
    expect = linear_branch_reference(q.contiguous(), k.contiguous(), v.contiguous(), w, b).flatten(0, 1)
    torch.testing.assert_close(fused.olin.float(), expect, atol=2e-3, rtol=2e-3)


def test_the_programs_partials_add_up_whatever_the_split(monkeypatch) -> None:
    """One program per head, two, and as many as blocks (an uneven split with 6 blocks over 4 programs among them):
    the same reductions, the same codes."""
    B, H, L, D = 1, 2, 90, 32  # 6 key blocks of 16, the last partial
    _, k, v, _, _ = _qkv(B, H, L, D, seed=3)
    kf = k.float()
    mean = kf.mean(2).flatten(0, 1).contiguous()
    phi = torch.softmax(kf, -1)
    want_kv = (phi.transpose(-1, -2) @ v.float()).flatten(0, 1)
    want_fk = (phi.sum(2) / L).flatten(0, 1)
    codes = []
    for n_prog in (1, 2, 4, 6):
        monkeypatch.setattr(sagesla_prep, "programs_per_head", lambda nk, bh, dev, n=n_prog: n)
        nk = math.ceil(L / BK)
        k8 = torch.empty(B * H, L, D, dtype=torch.int8)
        k_scale, k_pool = torch.empty(B * H, nk), torch.empty(B * H, nk, D)
        kv, fk = sagesla_prep.k_pass(k, v, mean, None, BK, k8, k_scale, k_pool, None)
        torch.testing.assert_close(kv, want_kv, atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(fk, want_fk, atol=1e-6, rtol=1e-5)
        codes.append((k8, k_scale, k_pool))
    for k8, k_scale, k_pool in codes[1:]:
        assert torch.equal(k8, codes[0][0]) and torch.equal(k_scale, codes[0][1])
        torch.testing.assert_close(k_pool, codes[0][2], rtol=0, atol=0)
    # the pooled rows are the smoothed block means (the last block over its 10 real rows)
    smooth = (kf - kf.mean(2, keepdim=True)).flatten(0, 1)
    torch.testing.assert_close(codes[0][2][:, -1], smooth[:, 80:].mean(1), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("pv_fp8", [False, True])
def test_the_fused_preparation_in_bf16_gives_the_split_forms_operands(monkeypatch, pv_fp8) -> None:
    """bf16 operands, as the DiT runs them, with the kernels' default blocks: the interpreter's bf16 `tl.dot` sums
    wrongly, so the K pass multiplies in fp32 there; the result must still be the split form's."""
    from kernels.sagesla import BLOCK_K, BLOCK_Q

    q, k, v, w, b = _qkv(1, 2, 200, 128, seed=4, dtype=torch.bfloat16)
    split, fused = _both(monkeypatch, q, k, v, 0.3, w, b, BLOCK_Q, BLOCK_K, False, pv_fp8)
    for name in ("k8", "k_scale", "q8", "q_scale", "lut"):
        torch.testing.assert_close(getattr(fused, name), getattr(split, name), rtol=0, atol=0, msg=name)
    assert torch.isfinite(fused.olin).all()
    torch.testing.assert_close(fused.olin.float(), split.olin.float(), atol=2e-3, rtol=2e-3)


def test_the_q_pass_gives_the_same_rows_whatever_the_split(monkeypatch) -> None:
    """One program per head, two, and one per block (7 query blocks, the last partial): the same codes, scales,
    pooled rows and linear-branch rows, and those equal the torch math."""
    B, H, L, D, bq = 1, 2, 100, 32, 16
    q, k, v, w, b = _qkv(B, H, L, D, seed=5)
    nq = math.ceil(L / bq)
    qf, kf = q.float(), k.float()
    fk = (torch.softmax(kf, -1).sum(2) / L).flatten(0, 1).contiguous()
    lin_m = (torch.randn(B * H, D, D, generator=torch.Generator().manual_seed(1)) / D).half()
    outs = []
    for n_prog in (1, 2, 7):
        monkeypatch.setattr(sagesla_prep, "programs_per_head", lambda n, bh, dev, per_sm=None, k=n_prog: k)
        q8 = torch.empty(B * H, L, D, dtype=torch.int8)
        q_scale, q_pool = torch.empty(B * H, nq), torch.empty(B * H, nq, D)
        olin = torch.empty(B * H, L, D, dtype=torch.float16)
        sagesla_prep.q_pass(q, lin_m, fk, b, bq, 0.5, 1e-5 / L, q8, q_scale, q_pool, olin)
        outs.append((q8, q_scale, q_pool, olin))
    for got in outs[1:]:
        for a, want in zip(got, outs[0], strict=True):
            torch.testing.assert_close(a, want, rtol=0, atol=0)
    q8, q_scale, q_pool, olin = outs[0]
    rows = qf.flatten(0, 1)  # [BH, L, D]
    torch.testing.assert_close(q_pool[:, -1], rows[:, 96:].mean(1), atol=1e-6, rtol=1e-5)  # the 4 real rows
    blocks = torch.nn.functional.pad(rows, (0, 0, 0, nq * bq - L)).view(B * H, nq, bq, D)
    torch.testing.assert_close(q_scale, blocks.abs().amax((-1, -2)) / 127 * 0.5, atol=0, rtol=1e-6)
    phi = torch.softmax(rows, -1)
    want = (phi.half().float() @ lin_m.float()) / (1e-5 / L + phi @ fk.unsqueeze(-1)) + b
    torch.testing.assert_close(olin.float(), want, atol=2e-3, rtol=2e-3)


def test_split_is_chosen_by_the_environment(monkeypatch) -> None:
    monkeypatch.delenv(sagesla_prep.PREP_ENV, raising=False)
    assert sagesla_prep.use_fused()
    monkeypatch.setenv(sagesla_prep.PREP_ENV, "SPLIT")
    assert not sagesla_prep.use_fused()
    monkeypatch.setenv(sagesla_prep.PREP_ENV, "bogus")  # unknown: the default, with a warning
    assert sagesla_prep.use_fused()


def test_programs_per_head_on_the_cpu_splits_in_two_when_it_can() -> None:
    assert sagesla_prep.programs_per_head(6, 4, torch.device("cpu")) == 2
    assert sagesla_prep.programs_per_head(1, 4, torch.device("cpu")) == 1


@pytest.mark.gpu
@pytest.mark.parametrize(("H", "L", "pv_fp8"), [(40, 75600, True), (12, 32760, True), (12, 32760, False),
                                                (5, 4100, True)])
def test_gpu_fused_preparation_matches_the_split_form(monkeypatch, H: int, L: int, pv_fp8: bool) -> None:
    """Model shapes (14B and 1.3B heads at 720p / 480p, bf16, the default blocks): identical codes and block map, the
    linear branch within fp16 rounding of the split form's."""
    from kernels.sagesla import BLOCK_K, BLOCK_Q

    q, k, v, w, b = _qkv(1, H, L, 128, seed=7, device="cuda", dtype=torch.bfloat16)
    split, fused = _both(monkeypatch, q, k, v, 0.1, w, b, BLOCK_Q, BLOCK_K, False, pv_fp8)
    for name in ("k8", "k_scale", "q8", "q_scale", "lut"):
        assert torch.equal(getattr(fused, name), getattr(split, name)), name
    if pv_fp8:
        assert torch.equal(fused.vt.view(torch.uint8), split.vt.view(torch.uint8))
    # split: phi(K) stored in bf16 and phi(K)^T V rounded to bf16; fused: the same bf16 phi, summed in fp32
    diff = (fused.olin.float() - split.olin.float()).norm() / split.olin.float().norm()
    assert diff.item() < 5e-3, diff.item()
