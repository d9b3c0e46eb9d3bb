"""The Gluon residual add + LayerNorm + modulation (`kernels.adaln_gluon`): its row pieces and launch shapes, the
dispatch (CPU: the Triton kernel), and on a Hopper GPU its outputs against the reference and the Triton kernel."""

from __future__ import annotations

import pytest
import torch

from kernels import adaln
from kernels import adaln_gluon as ag

needs_hopper = pytest.mark.skipif(
    not (torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0) and ag.available()),
    reason="the Gluon kernel runs on sm90 with Triton's Gluon API")


def test_rows_are_cut_into_power_of_two_pieces() -> None:
    assert ag.pieces(5120) == (4096, 1024) and ag.pieces(1536) == (1024, 512) and ag.pieces(300) == (256, 256)
    assert ag.supported(5120) and ag.supported(1536) and not ag.supported(8192) and not ag.supported(0)
    assert not ag.supported(256 + 512 + 1024 + 4096)  # four pieces


def test_launch_meta_holds_one_5120_row_or_two_1536_rows_per_program() -> None:
    for c, rows in ((5120, 1), (1536, 2), (3072, 1), (300, 8)):
        meta = ag.launch_meta(c)
        assert meta["BLOCK_M"] == rows and meta["num_warps"] == ag.NUM_WARPS, c
        assert sum(meta[p] for p in ("P0", "P1", "P2")) >= c
    assert ag.launch_meta(5120, 8, 2)["BLOCK_M"] == 2 and ag.launch_meta(5120, 8, 2)["num_warps"] == 8


def test_cpu_calls_take_the_triton_kernel(monkeypatch) -> None:
    """No Gluon off the GPU: the public op runs (and matches the reference) with the choice set to "gluon"."""
    monkeypatch.setenv(adaln.KERNEL_ENV, "gluon")
    x, y = torch.randn(1, 5, 96), torch.randn(1, 5, 96)
    gate, shift, scale = torch.randn(1, 96), torch.randn(1, 96), torch.randn(1, 96)
    assert not adaln._gluon_runs(x, y, gate, shift, scale, 1e-6, x)
    x_new, out = adaln.residual_layernorm_modulate(x, y, gate, shift, scale)
    want_x, want = adaln.reference_residual(x, y, gate, shift, scale)
    torch.testing.assert_close(x_new, want_x)
    torch.testing.assert_close(out, want.to(out.dtype), atol=1e-5, rtol=1e-5)


def _inputs(B: int, L: int, C: int, seed: int):  # noqa: ANN202
    g = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(B, L, C, device="cuda", generator=g) * 4
    x[:, :, 7] += 40.0  # an outlier channel, as Wan's residual stream has
    y = torch.randn(B, L, C, device="cuda", generator=g).to(torch.bfloat16)
    gate, shift, scale = (torch.randn(B, C, device="cuda", generator=g) * 0.3 for _ in range(3))
    return x, y, gate, shift, scale


@pytest.mark.gpu
@needs_hopper
@pytest.mark.parametrize(("B", "L", "C"), [(1, 1031, 5120), (2, 333, 1536), (1, 77, 300)])
@pytest.mark.parametrize("gated", [True, False])
@pytest.mark.parametrize("out_int8", [True, False])
def test_gluon_matches_the_triton_kernel_and_the_reference(B, L, C, gated, out_int8) -> None:
    """x' bit for bit the Triton kernel's (the same fp32 FFMA); int8 codes within one of it (ties round to even here,
    away from zero there; sums in another order), scales within 1e-5; bf16 out within a rounding; both close to the
    fp32 reference. L is not a multiple of the rows per program; B = 2 takes each element's own gate and modulation."""
    x, y, gate, shift, scale = _inputs(B, L, C, seed=C + L)
    g = gate if gated else None
    dtype = torch.int8 if out_int8 else torch.bfloat16
    got = [torch.empty_like(x), torch.empty(B, L, C, device="cuda", dtype=dtype), torch.empty(B * L, device="cuda")]
    want = [torch.empty_like(t) for t in got]
    ag.residual_ln_modulate(x, y, g, shift, scale, 1e-6, *got)
    adaln._launch_residual_triton(x, y, g, shift, scale, 1e-6, *want)
    assert torch.equal(got[0], want[0])
    ref_x, ref = adaln.reference_residual(x, y, g, shift, scale)
    torch.testing.assert_close(got[0], ref_x)
    if out_int8:
        torch.testing.assert_close(got[2], want[2], rtol=1e-5, atol=0)
        diff = (got[1].int() - want[1].int()).abs()
        assert diff.max() <= 1 and (diff > 0).float().mean() < 0.01
        deq = got[1].float() * got[2].view(B, L, 1)
        assert (deq - ref).abs().max() <= got[2].max() * 0.51  # within half a step of the reference
        assert got[1].abs().max() == 127
    else:
        torch.testing.assert_close(got[1].float(), want[1].float(), atol=2e-2, rtol=1e-2)
        torch.testing.assert_close(got[1].float(), ref, atol=3e-2, rtol=1e-2)


@pytest.mark.gpu
@needs_hopper
def test_public_op_takes_the_gluon_kernel_unless_told_not_to(monkeypatch) -> None:
    x, y, gate, shift, scale = _inputs(1, 500, 5120, seed=3)
    monkeypatch.setenv(adaln.KERNEL_ENV, "auto")
    q_out = torch.empty(1, 500, 5120, device="cuda", dtype=torch.int8)
    assert adaln._gluon_runs(x, y, gate, shift, scale, 1e-6, q_out)
    assert adaln.kernel_in_use(torch.cuda.current_device()) == "gluon"
    x_new, (q, s) = adaln.residual_layernorm_modulate(x, y, gate, shift, scale, out_int8=True)
    got = [torch.empty_like(x), torch.empty_like(q), torch.empty_like(s.view(-1))]
    ag.residual_ln_modulate(x, y, gate, shift, scale, 1e-6, *got)
    assert torch.equal(x_new, got[0]) and torch.equal(q, got[1]) and torch.equal(s.view(-1), got[2])
    monkeypatch.setenv(adaln.KERNEL_ENV, "triton")
    _, (q_t, _) = adaln.residual_layernorm_modulate(x, y, gate, shift, scale, out_int8=True)
    want = [torch.empty_like(t) for t in got]
    adaln._launch_residual_triton(x, y, gate, shift, scale, 1e-6, *want)
    assert torch.equal(q_t, want[1])
