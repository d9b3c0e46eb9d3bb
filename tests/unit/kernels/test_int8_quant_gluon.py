"""The Gluon activation quantization (kernels/int8_quant_gluon.py): how rows are cut into pieces and which calls
take it (CPU); on a Hopper GPU its codes and scales against the fp32 reference and the Triton kernel. Gluon has
no interpreter; `kernels.compile_check int8_quant_gluon` compiles it for sm_90 in CI (and checks that its GELU
runs once per element and that it rounds without a float-to-int conversion)."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch

from kernels import int8_quant as iq
from kernels import int8_quant_gluon as iqg


@pytest.mark.parametrize(("k", "want"), [
    (8960, (8192, 512, 256)),          # 1.3B FFN: no padded lane
    (13824, (8192, 4096, 1024, 512)),  # 14B FFN: four pieces, no padded lane (the Triton kernel pads to 16384)
    (1536, (1024, 512)),
    (5120, (4096, 1024)),
    (4096, (4096,)),
    (300, (256, 256)),                 # a rest below 256 is padded into one more piece
    (100, (256,)),
])
def test_pieces_are_the_binary_digits_of_k_from_256_up(k, want) -> None:
    got = iqg.pieces(k)
    assert got == want and sum(got) >= k and sum(got) - k < iqg.LANES


def test_supported_row_lengths_and_rows_per_program() -> None:
    assert iqg.supported(8960) and iqg.supported(13824) and iqg.supported(iqg.MAX_K)
    assert not iqg.supported(iqg.MAX_K + 256)  # more than a thread's registers hold
    assert not iqg.supported(15 * 256 + 1)  # 2048 + 1024 + 512 + 256 + a padded rest: five pieces
    assert not iqg.supported(0)
    assert iqg.supported(1536, gelu=True) and not iqg.supported(1536, gelu=False) and iqg.supported(5120, gelu=False)
    assert iqg.rows_per_program(8960) == 1 and iqg.rows_per_program(1536) == 4 and iqg.rows_per_program(300) == 8
    meta = iqg.launch_meta(13824)
    assert (meta["P0"], meta["P1"], meta["P2"], meta["P3"], meta["BLOCK_M"]) == (8192, 4096, 1024, 512, 1)
    assert meta["num_warps"] == meta["NW"] == 8 and iqg.launch_meta(8960)["num_warps"] == 4  # measured (notes)
    assert iqg.launch_meta(8960, num_warps=16)["NW"] == 16


def test_cpu_and_interpreter_calls_take_the_triton_kernel(monkeypatch) -> None:
    x = torch.randn(5, 300)
    monkeypatch.setattr(iq, "_check_gluon", lambda *a: pytest.fail("no check on CPU"))
    assert not iq._gluon_runs(x, True)
    q, s = iq.quantize_activation(x, gelu=True)  # the interpreter's (or CPU's) Triton kernel
    q_ref, s_ref = iq.reference_quantize_activation(x, gelu=True)
    assert (q.int() - q_ref.int()).abs().max() <= 1 and torch.allclose(s, s_ref, rtol=1e-5)


def _fake_cuda_rows(monkeypatch, gluon_q_offset: int, raises: bool = False, rows: int = 16):
    """CPU rows standing in for a first CUDA call: the capability says sm90, the Gluon launch is replaced by one
    that writes the Triton kernel's codes moved by `gluon_q_offset` (or raises) and records how many rows it got."""
    x = (torch.randn(rows, 300, generator=torch.Generator().manual_seed(3)) * 2).to(torch.bfloat16)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setattr(iqg, "available", lambda: True)
    launched: list[bool] = []

    def fake_quantize_rows(xx, q, s, gelu):  # noqa: ANN001, ANN202
        launched.append(gelu)
        seen_rows.append(xx.shape[0])
        if raises:
            raise RuntimeError("PassManager::run failed")
        q_t, s_t = iq._quantize(xx, *xx.shape, xx.stride(0), None, None, None, gelu, gluon=False)
        q.copy_((q_t.int() + gluon_q_offset).clamp(-127, 127).to(torch.int8))
        s.copy_(s_t)

    seen_rows: list[int] = []
    monkeypatch.setattr(iqg, "quantize_rows", fake_quantize_rows)
    return x, launched, seen_rows


@pytest.mark.parametrize(("offset", "raises", "expect"), [
    (0, False, True),   # same codes: the Gluon kernel
    (2, False, False),  # codes two apart: the Triton kernel, with a warning
    (0, True, False),   # it fails to compile or launch: the Triton kernel, with a warning
])
def test_the_first_call_check_compares_both_kernels_on_that_calls_rows(
        monkeypatch, caplog, offset, raises, expect) -> None:
    x, launched, _ = _fake_cuda_rows(monkeypatch, offset, raises)
    with caplog.at_level(logging.WARNING, logger="kernels.int8_quant"):
        assert iq._check_gluon(x, True) is expect
    assert launched == [True]  # the Gluon kernel ran on these rows, with the GELU asked for
    assert bool(caplog.records) is not expect
    if not expect:
        assert "using the Triton kernel" in caplog.records[0].getMessage()


@pytest.mark.parametrize(("rows", "checked"), [(16, 16), (50, 31), (48, 32)])
def test_the_check_reads_at_most_check_rows_keeping_the_counts_divisibility(monkeypatch, rows, checked) -> None:
    # a 14B call's rows are 2 GB: the check takes the first CHECK_ROWS (or one fewer, so that a row count not
    # divisible by 16 stays so and both kernels run the specialization the call itself will)
    monkeypatch.setattr(iq, "CHECK_ROWS", 32)  # 4096 on the GPU; fewer rows keep the interpreter quick
    x, _, seen_rows = _fake_cuda_rows(monkeypatch, 0, rows=rows)
    assert iq._check_gluon(x, True) and seen_rows == [checked] and (checked % 16 == 0) == (rows % 16 == 0)


def test_the_check_is_kept_per_gelu_and_row_length_and_the_env_turns_it_off(monkeypatch) -> None:
    checks: list[tuple[bool, int]] = []
    monkeypatch.setattr(iq, "_GLUON_CHECKED", {})
    monkeypatch.setattr(iq, "_check_gluon", lambda x, gelu: checks.append((gelu, x.shape[-1])) or gelu)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.delenv(iq.KERNEL_ENV, raising=False)
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # read at each call; nothing is compiled here

    def rows(k: int) -> SimpleNamespace:  # what `_gluon_runs` reads of a CUDA tensor of rows of k
        return SimpleNamespace(device=torch.device("cuda", 0), shape=(4, k))

    x = rows(8960)
    assert iq._gluon_runs(x, True) and iq._gluon_runs(x, True)  # checked once
    assert not iq._gluon_runs(x, False)  # another specialization: a check of its own
    assert not iq._gluon_runs(rows(1536), False)  # short plain rows: the Triton kernel is faster, no check
    assert iq._gluon_runs(rows(1536), True)
    assert checks == [(True, 8960), (False, 8960), (True, 1536)]
    assert not iq._gluon_runs(rows(15 * 256 + 1), True)  # not held: no check
    monkeypatch.setenv(iq.KERNEL_ENV, "triton")
    assert not iq._gluon_runs(x, True) and len(checks) == 3


# ---------------------------------------------------------------------------------------------------- GPU

needs_hopper = pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.get_device_capability() != (9, 0) or not iqg.available(),
    reason="the Gluon kernel runs on sm90 with Triton's Gluon API")


@pytest.mark.gpu
@needs_hopper
@pytest.mark.parametrize(("m", "k", "gelu"), [
    (257, 8960, True),    # the 1.3B FFN width, three pieces
    (33, 13824, True),    # the 14B FFN width, four pieces
    (1001, 1536, False),  # 4 rows per program, a partial last program
    (19, 300, True),      # a padded last piece
    (64, 5120, False),
])
def test_gluon_codes_and_scales_match_the_reference_and_the_triton_kernel(m, k, gelu) -> None:
    g = torch.Generator(device="cuda").manual_seed(k)
    base = (torch.randn(m, k + 64, device="cuda", generator=g) * 3).to(torch.bfloat16)
    x = base[:, :k]  # rows 64 elements further apart than K
    x[3] = 0  # a zero row: scale 0, codes 0
    x[5, :] = -(torch.rand(k, device="cuda", generator=g) * 4).to(torch.bfloat16)  # all negative (GELU ≤ 0.17)
    q = torch.empty(m, k, device="cuda", dtype=torch.int8)
    s = torch.empty(m, device="cuda")
    iqg.quantize_rows(x, q, s, gelu)
    q_ref, s_ref = iq.reference_quantize_activation(x, gelu=gelu)
    torch.testing.assert_close(s, s_ref, rtol=2e-5, atol=0)  # tanh.approx: ~2^-11 relative in the GELU
    diff = (q.int() - q_ref.int()).abs()
    assert diff.max() <= 1 and (diff > 0).float().mean() < 0.01
    assert s[3].item() == 0.0 and (q[3] == 0).all() and q.abs().max() == 127
    q_t, s_t = iq._quantize(x, m, k, x.stride(0), None, None, None, gelu, gluon=False)
    assert (q.int() - q_t.int()).abs().max() <= 1 and torch.allclose(s, s_t, rtol=1e-5, atol=0)


@pytest.mark.gpu
@needs_hopper
def test_public_call_takes_the_gluon_kernel_unless_told_not_to(monkeypatch) -> None:
    x = (torch.randn(300, 8960, device="cuda") * 2).to(torch.bfloat16)
    monkeypatch.setenv(iq.KERNEL_ENV, "auto")
    assert iq._gluon_runs(x, True)
    q, s = iq.quantize_activation(x, gelu=True)
    q_g, s_g = torch.empty_like(q), torch.empty_like(s)
    iqg.quantize_rows(x, q_g, s_g, True)
    assert torch.equal(q, q_g) and torch.equal(s, s_g)
    monkeypatch.setenv(iq.KERNEL_ENV, "triton")
    q_t, _ = iq.quantize_activation(x, gelu=True)
    assert torch.equal(q_t, iq._quantize(x, 300, 8960, 8960, None, None, None, True, gluon=False)[0])
