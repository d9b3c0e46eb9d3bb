"""Triton SageSLA vs the fp32 reference (interpreter on CPU; full shapes under @pytest.mark.gpu)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from kernels.sagesla import (
    BLOCK_K,
    BLOCK_Q,
    _prepare,
    _sagesla_op,
    block_map_reference,
    linear_branch_reference,
    reference,
    sage_attention,
    sagesla_attention,
    topk_count,
)

BQ, BK = 32, 16  # small test blocks: several blocks even at tiny L


def _inputs(L: int, D: int, H: int = 2, seed: int = 0, device: str = "cpu", dtype=torch.float32):
    g = torch.Generator(device=device).manual_seed(seed)
    q, k, v = (torch.randn(1, H, L, D, generator=g, device=device).to(dtype) for _ in range(3))
    w = torch.randn(D, D, generator=g, device=device) / math.sqrt(D)
    b = torch.randn(D, generator=g, device=device) * 0.1
    return q, k, v, w, b


def _quant_int8_blocks(x: torch.Tensor, blk: int) -> torch.Tensor:
    """Per-block symmetric int8 round trip of x [B, H, L, D] (the kernel's Q / K quantization)."""
    B, H, L, D = x.shape
    nb = math.ceil(L / blk)
    xp = F.pad(x, (0, 0, 0, nb * blk - L)).view(B, H, nb, blk, D)
    scale = xp.abs().amax(dim=(-1, -2), keepdim=True).clamp_min(1e-8) / 127
    return (torch.round(xp / scale).clamp(-127, 127) * scale).view(B, H, nb * blk, D)[:, :, :L]


def _emulate(q, k, v, w, b, topk_ratio: float, pv_fp8: bool, bq: int = BQ, bk: int = BK) -> torch.Tensor:
    """The kernel's math in torch at its precision: int8 Q / smoothed K, fp16 or fp8 P and V."""
    q, k, v = q.float(), k.float(), v.float()
    lut = block_map_reference(q, k, topk_ratio, bq, bk)
    L, D = q.shape[2], q.shape[3]
    sel = torch.zeros(*lut.shape[:3], math.ceil(L / bk), dtype=torch.bool).scatter_(-1, lut, True)
    mask = sel.repeat_interleave(bk, -1)[..., :L].repeat_interleave(bq, -2)[..., :L, :]
    s = _quant_int8_blocks(q, bq) @ _quant_int8_blocks(k - k.mean(2, keepdim=True), bk).transpose(-1, -2)
    s = (s / math.sqrt(D)).masked_fill(~mask, float("-inf"))
    p = torch.exp(s - s.amax(-1, keepdim=True))
    den = p.sum(-1, keepdim=True)
    if pv_fp8:
        vs = v.abs().amax(2, keepdim=True) / 448
        o = ((p * 448).to(torch.float8_e4m3fn).float() @ (v / vs).to(torch.float8_e4m3fn).float()) * vs / 448
    else:
        o = p.half().float() @ v.half().float()
    o = o / den
    if w is not None:
        fq, fk = torch.softmax(q, -1), torch.softmax(k, -1)
        o = o + F.linear((fq @ (fk.transpose(-1, -2) @ v)) / (1e-5 + fq @ fk.sum(2).unsqueeze(-1)), w, b)
    return o


@pytest.mark.parametrize(
    ("L", "D", "topk_ratio", "linear", "pv_fp8"),
    [
        (100, 64, 0.25, True, False),
        (75, 128, 0.6, True, False),
        (100, 64, 1.0, False, False),
        (90, 64, 0.5, True, True),
        (64, 128, 0.3, False, True),
    ],
)
def test_sagesla_matches_reference(L: int, D: int, topk_ratio: float, linear: bool, pv_fp8: bool) -> None:
    q, k, v, w, b = _inputs(L, D, seed=L + D)
    w, b = (w, b) if linear else (None, None)
    o, density = sagesla_attention(q, k, v, topk_ratio=topk_ratio, proj_l_weight=w, proj_l_bias=b,
                                   block_q=BQ, block_k=BK, pv_fp8=pv_fp8)
    ref, ref_density = reference(q, k, v, topk_ratio=topk_ratio, proj_l_weight=w, proj_l_bias=b, block_q=BQ, block_k=BK)
    # stored token-major: the output projection (and a Ulysses way back) reads [B, L, H·D] without a copy
    assert o.shape == q.shape and o.transpose(1, 2).is_contiguous()
    assert density.item() == pytest.approx(ref_density.item())
    assert density.item() == pytest.approx(topk_count(topk_ratio, math.ceil(L / BK)) / math.ceil(L / BK))
    cos = F.cosine_similarity(o.flatten(), ref.flatten(), dim=0).item()
    if pv_fp8:  # the interpreter's e4m3 cast truncates, so only a cosine bound holds here (GPU: flash rule)
        assert cos >= 0.995
        return
    emu = _emulate(q, k, v, w, b, topk_ratio, pv_fp8)
    err, emu_err = (o - ref).abs().max().item(), (emu - ref).abs().max().item()
    assert err <= 2 * emu_err + 1e-3, (err, emu_err)
    assert cos >= 0.9995


def test_sagesla_one_block_per_tile() -> None:
    """block_k=32 runs the unpaired key-tile path under the interpreter (block_k=16 runs the paired one)."""
    q, k, v, w, b = _inputs(150, 64, seed=11)
    o, _ = sagesla_attention(q, k, v, topk_ratio=0.5, proj_l_weight=w, proj_l_bias=b, block_q=64, block_k=32,
                             pv_fp8=False)
    ref, _ = reference(q, k, v, topk_ratio=0.5, proj_l_weight=w, proj_l_bias=b, block_q=64, block_k=32)
    emu = _emulate(q, k, v, w, b, 0.5, False, 64, 32)
    assert (o - ref).abs().max().item() <= 2 * (emu - ref).abs().max().item() + 1e-3
    assert F.cosine_similarity(o.flatten(), ref.flatten(), dim=0).item() >= 0.9995


def test_block_map_matches_reference_on_partial_blocks() -> None:
    q, k, v, _, _ = _inputs(83, 64, H=3, seed=5)
    p = _prepare(q, k, v, 0.4, None, None, BQ, BK, False, False)
    expect = block_map_reference(q, k, 0.4, BQ, BK).flatten(0, 1)  # [BH, NQ, topk]
    assert torch.equal(p.lut.long(), expect)


def test_linear_branch_is_precomputed_by_the_q_pass() -> None:
    """The Q pass writes proj_l(phi(Q)(phi(K)^T V) / (eps + phi(Q).sum phi(K))) per row (fp16 LIN_M: ~1e-3)."""
    L, D, H = 83, 64, 3
    q, k, v, w, b = _inputs(L, D, H=H, seed=21)
    v = v + 1.0  # a non-zero mean, so the linear branch is not ~0
    p = _prepare(q, k, v, 0.5, w, b, BQ, BK, False, False)
    assert p.has_linear and p.olin.shape == (H, L, D) and p.olin.dtype == torch.float16
    expect = linear_branch_reference(q, k, v, w, b)[0]  # [H, L, D]
    torch.testing.assert_close(p.olin.float(), expect, atol=2e-3, rtol=2e-3)
    o_nolin = _prepare(q, k, v, 0.5, None, None, BQ, BK, False, False)
    assert not o_nolin.has_linear


@pytest.mark.parametrize("B", [1, 2])
def test_linear_branch_reads_the_models_strided_v_as_it_is(B: int) -> None:
    """The DiT hands q/k/v over as [B, L, H, D] storage viewed [B, H, L, D]; the linear branch's phi(K)^T V
    GEMM takes such a v directly for B = 1 (reshaped for B > 1): the same result as contiguous inputs."""
    L, D, H = 83, 64, 3
    g = torch.Generator().manual_seed(31)
    q, k, v = (torch.randn(B, L, H, D, generator=g).transpose(1, 2) for _ in range(3))  # strided views
    v = v + 1.0  # keep the linear branch away from ~0
    w, b = torch.randn(D, D, generator=g) / math.sqrt(D), torch.randn(D, generator=g) * 0.1
    strided = _prepare(q, k, v, 0.5, w, b, BQ, BK, False, False)
    plain = _prepare(*(t.contiguous() for t in (q, k, v)), 0.5, w, b, BQ, BK, False, False)
    assert not v.is_contiguous() and strided.has_linear
    torch.testing.assert_close(strided.olin, plain.olin, rtol=0, atol=0)
    expect = linear_branch_reference(q.contiguous(), k.contiguous(), v.contiguous(), w, b)  # [B, H, L, D]
    torch.testing.assert_close(strided.olin.float(), expect.flatten(0, 1), atol=2e-3, rtol=2e-3)


def test_dense_mode_matches_sdpa_and_handles_strides() -> None:
    L, D = 70, 64
    q, k, v, _, _ = _inputs(L, D, seed=9)
    ref = F.scaled_dot_product_attention(q, k, v)
    o = sage_attention(q, k, v, block_q=BQ, block_k=BK, pv_fp8=False)
    assert F.cosine_similarity(o.flatten(), ref.flatten(), dim=0).item() >= 0.9995
    # [B, L, H, D] storage viewed as [B, H, L, D]: strided, last dim contiguous
    qs, ks, vs = (t.transpose(1, 2).contiguous().transpose(1, 2) for t in (q, k, v))
    torch.testing.assert_close(sage_attention(qs, ks, vs, block_q=BQ, block_k=BK, pv_fp8=False), o)


def test_fake_impl_gives_shapes() -> None:
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        q = torch.empty(1, 2, 50, 64, dtype=torch.bfloat16)
        o, d = _sagesla_op(q, q, q, 0.5, None, None, BQ, BK, False, False)
        assert o.shape == q.shape and o.dtype == torch.bfloat16 and d.shape == ()


@pytest.mark.gpu
@pytest.mark.parametrize(("L", "D", "H"), [(32760, 128, 2), (75600, 64, 1), (4100, 128, 4)])
@pytest.mark.parametrize("pv_fp8", [False, True])
def test_gpu_full_shapes(L: int, D: int, H: int, pv_fp8: bool) -> None:
    q, k, v, w, b = _inputs(L, D, H=H, device="cuda", dtype=torch.bfloat16)
    o, density = sagesla_attention(q, k, v, topk_ratio=0.1, proj_l_weight=w, proj_l_bias=b, pv_fp8=pv_fp8)
    ref, ref_density = reference(q, k, v, topk_ratio=0.1, proj_l_weight=w, proj_l_bias=b)
    assert density.item() == pytest.approx(ref_density.item())
    assert F.cosine_similarity(o.double().flatten(), ref.double().flatten(), dim=0).item() >= 0.995
    if H * L <= 16400:  # the torch emulation materializes [H, L, L]
        emu = _emulate(q.cpu(), k.cpu(), v.cpu(), w.cpu(), b.cpu(), 0.1, pv_fp8, BLOCK_Q, BLOCK_K).cuda()
        err, emu_err = (o.float() - ref.float()).abs().max().item(), (emu - ref.float()).abs().max().item()
        assert err <= 2 * emu_err + 1e-2, (err, emu_err)
    od = sage_attention(q, k, v, pv_fp8=pv_fp8)
    refd = F.scaled_dot_product_attention(q.float(), k.float(), v.float())
    assert F.cosine_similarity(od.double().flatten(), refd.double().flatten(), dim=0).item() >= 0.995
