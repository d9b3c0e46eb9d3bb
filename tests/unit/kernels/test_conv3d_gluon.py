"""kernels.conv3d_gluon (the VAE's 96-channel conv in Gluon: each loaded input box serves three row taps) and how
`conv3d_igemm.causal_conv3x3x3` chooses it.

CPU: the fp32 reference the first-call check compares with (against the Triton kernel under the interpreter), the
check's decisions, the kernel setting; the kernel itself compiles for sm_90 in `kernels.compile_check conv3d_gluon`
(tests/unit/kernels/test_compile_check.py). GPU (sm90): the kernel against the fp32 conv and the Triton kernel.
"""

from __future__ import annotations

import logging

import pytest
import torch

from kernels import conv3d_gluon, conv3d_igemm
from kernels.conv3d_igemm import causal_conv3x3x3, reference_out, weight_matrix

CL3D = torch.channels_last_3d


def _inputs(b: int, c: int, t: int, h: int, w: int, device: str, dtype: torch.dtype, seed: int = 0):
    g = torch.Generator().manual_seed(seed)

    def cl(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g).to(device, dtype).contiguous(memory_format=CL3D)

    weight = (torch.randn(c, c, 3, 3, 3, generator=g) / (27 * c) ** 0.5).to(device, dtype)
    return {"x": cl(b, c, t + 2, h, w), "wmat": weight_matrix(weight), "bias": (0.1 * torch.randn(c, generator=g)).to(device, dtype),
            "gamma": (1 + 0.2 * torch.randn(c, generator=g)).to(device, dtype), "res": cl(b, c, t, h, w)}


def _epilogue(inp: dict, epi: int) -> dict:
    return {"bias": inp["bias"], "norm_gamma": inp["gamma"] if epi == 1 else None,
            "residual": inp["res"] if epi == 2 else None}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


@pytest.mark.parametrize("epi", [0, 1, 2])
def test_the_reference_is_the_convs_output(epi):
    # the first-call check trusts reference_out: it must equal what the (interpreted) Triton kernel computes, every
    # epilogue, all frames and the first only
    inp = _inputs(1, 32, 2, 3, 8, "cpu", torch.float32, seed=epi)
    kw = _epilogue(inp, epi)
    want = causal_conv3x3x3(inp["x"], inp["wmat"], 32, **kw)
    got = reference_out(inp["x"], inp["wmat"], 32, **kw)
    assert got.shape == want.shape and _rel(got, want) < 1e-5
    first = reference_out(inp["x"], inp["wmat"], 32, frames=1, **kw)
    assert first.shape[2] == 1 and _rel(first, want[:, :, :1]) < 1e-5


def test_supported_channels():
    assert conv3d_gluon.supported(96, 96) and conv3d_gluon.supported(192, 192)
    assert not conv3d_gluon.supported(384, 384) and not conv3d_gluon.supported(96, 192)
    assert not conv3d_gluon.supported(96, 3) and not conv3d_gluon.supported(32, 32)
    assert all(c in conv3d_gluon.SHAPES for c in conv3d_gluon.USED)


@pytest.fixture
def hopper(monkeypatch):
    """A CPU stand-in for an sm90 device with Gluon: the check's capability and availability answers."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setattr(conv3d_gluon, "available", lambda: True)


@pytest.mark.parametrize("epi", [0, 1, 2])
def test_the_check_passes_a_kernel_that_computes_the_conv(hopper, monkeypatch, epi):
    inp = _inputs(1, 96, 3, 4, 6, "cpu", torch.float32, seed=10 + epi)
    calls = []

    def right(x, wmat, out, *, bias, norm_gamma, residual, eps):
        calls.append((tuple(x.shape), tuple(out.shape), residual is not None and tuple(residual.shape)))
        out.copy_(reference_out(x, wmat, 96, bias, norm_gamma, residual, eps))
        return out

    monkeypatch.setattr(conv3d_gluon, "conv", right)
    assert conv3d_igemm._check_gluon(inp["x"], inp["wmat"], 96, eps=1e-12, **_epilogue(inp, epi))
    # the check runs the first output frame only: 3 input frames, the residual's first frame
    assert calls == [((1, 96, 3, 4, 6), (1, 96, 1, 4, 6), (1, 96, 1, 4, 6) if epi == 2 else False)]


def test_the_check_refuses_a_wrong_or_failing_kernel(hopper, monkeypatch, caplog):
    inp = _inputs(1, 96, 2, 4, 6, "cpu", torch.float32, seed=3)

    def shifted(x, wmat, out, *, bias, norm_gamma, residual, eps):  # e.g. a row tap read one row off
        out.copy_(reference_out(x, wmat, 96, bias, norm_gamma, residual, eps).roll(1, dims=3))
        return out

    monkeypatch.setattr(conv3d_gluon, "conv", shifted)
    with caplog.at_level(logging.WARNING, logger="kernels.conv3d_igemm"):
        assert not conv3d_igemm._check_gluon(inp["x"], inp["wmat"], 96, eps=1e-12, **_epilogue(inp, 0))
    assert "from the fp32 conv" in caplog.text

    def broken(*args, **kwargs):
        raise RuntimeError("PassManager::run failed")

    monkeypatch.setattr(conv3d_gluon, "conv", broken)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="kernels.conv3d_igemm"):
        assert not conv3d_igemm._check_gluon(inp["x"], inp["wmat"], 96, eps=1e-12, **_epilogue(inp, 1))
    assert "does not run" in caplog.text and "PassManager" in caplog.text


def test_the_check_needs_hopper(monkeypatch):
    inp = _inputs(1, 96, 1, 2, 4, "cpu", torch.float32)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (10, 0))
    monkeypatch.setattr(conv3d_gluon, "conv", lambda *a, **k: pytest.fail("no Gluon launch off sm90"))
    assert not conv3d_igemm._check_gluon(inp["x"], inp["wmat"], 96, eps=1e-12, **_epilogue(inp, 0))


def _bf16(c: int = 96) -> dict:
    """Inputs the Gluon kernel would take: bf16, frames of at least one tile's box (8 rows × 64 pixels)."""
    return _inputs(1, c, 1, 8, 64, "cpu", torch.bfloat16)


def test_the_setting_the_channels_dtype_and_size_decide_before_any_check(monkeypatch):
    inp = _bf16()
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setattr(conv3d_igemm, "_GLUON_CHECKED", {})
    monkeypatch.setattr(conv3d_igemm, "_check_gluon", lambda *a: pytest.fail("not checked"))
    monkeypatch.setenv(conv3d_igemm.KERNEL_ENV, "triton")
    assert not conv3d_igemm._gluon_runs(inp["x"], inp["wmat"], 96, None, None, None, 1e-12)
    monkeypatch.setenv(conv3d_igemm.KERNEL_ENV, "auto")
    other = _inputs(1, 32, 1, 8, 64, "cpu", torch.bfloat16)
    assert not conv3d_igemm._gluon_runs(other["x"], other["wmat"], 32, None, None, None, 1e-12)
    for small in (_inputs(1, 96, 1, 7, 64, "cpu", torch.bfloat16), _inputs(1, 96, 1, 8, 63, "cpu", torch.bfloat16),
                  _inputs(1, 96, 1, 8, 64, "cpu", torch.float16)):  # a frame smaller than the box; not bf16
        assert not conv3d_igemm._gluon_runs(small["x"], small["wmat"], 96, None, None, None, 1e-12)
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # the interpreter has no Gluon
    assert not conv3d_igemm._gluon_runs(inp["x"], inp["wmat"], 96, None, None, None, 1e-12)
    assert conv3d_igemm._GLUON_CHECKED == {}


def test_the_check_runs_once_per_device_channels_and_epilogue(monkeypatch):
    inp = _bf16()
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setenv(conv3d_igemm.KERNEL_ENV, "auto")
    monkeypatch.setattr(conv3d_igemm, "_GLUON_CHECKED", {})
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    answers = iter([True, False])
    monkeypatch.setattr(conv3d_igemm, "_check_gluon", lambda *a: next(answers))
    gamma = inp["gamma"]
    assert conv3d_igemm._gluon_runs(inp["x"], inp["wmat"], 96, inp["bias"], gamma, None, 1e-12)
    assert conv3d_igemm._gluon_runs(inp["x"], inp["wmat"], 96, inp["bias"], gamma, None, 1e-12)  # remembered
    assert not conv3d_igemm._gluon_runs(inp["x"], inp["wmat"], 96, inp["bias"], None, inp["res"], 1e-12)
    assert conv3d_igemm._GLUON_CHECKED == {(0, 96, 1, True): True, (0, 96, 2, True): False}
    assert conv3d_igemm.kernel_in_use(0) == "mixed"
    # another channel count is checked on its own first call
    wide = _bf16(192)
    answers = iter([True])
    assert conv3d_igemm._gluon_runs(wide["x"], wide["wmat"], 192, wide["bias"], wide["gamma"], None, 1e-12)
    assert (0, 192, 1, True) in conv3d_igemm._GLUON_CHECKED


def test_a_failing_launch_after_the_check_falls_back_for_good(monkeypatch, caplog):
    # e.g. a shape the first call's check did not see: the conv still runs (on the Triton kernel), and the
    # specialization stays there, with the reason logged
    inp = _bf16()
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(conv3d_igemm, "_GLUON_CHECKED", {(0, 96, 2, True): True, (0, 96, 1, True): True})

    def broken(*args, **kwargs):
        raise RuntimeError("CUDA_ERROR_INVALID_VALUE")

    monkeypatch.setattr(conv3d_gluon, "conv", broken)
    out = torch.empty_like(inp["res"])
    with caplog.at_level(logging.WARNING, logger="kernels.conv3d_igemm"):
        assert not conv3d_igemm._run_gluon(inp["x"], inp["wmat"], out, 96, inp["bias"], None, inp["res"], 1e-12)
    assert conv3d_igemm._GLUON_CHECKED == {(0, 96, 2, True): False, (0, 96, 1, True): True}
    assert "failed on (1, 96, 3, 8, 64)" in caplog.text and "CUDA_ERROR_INVALID_VALUE" in caplog.text
    monkeypatch.setattr(conv3d_gluon, "conv", lambda x, wmat, out, **kw: out.fill_(1.0))
    assert conv3d_igemm._run_gluon(inp["x"], inp["wmat"], out, 96, inp["bias"], inp["gamma"], None, 1e-12)
    assert bool((out == 1).all())  # a working launch writes the caller's output


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() != (9, 0)
                    or not conv3d_gluon.available(), reason="needs an sm90 GPU and Gluon")
@pytest.mark.parametrize(("b", "t", "h", "w"), [(1, 1, 8, 128), (1, 2, 13, 200), (2, 3, 20, 70), (1, 2, 480, 832)])
@pytest.mark.parametrize("epi", [0, 1, 2])
def test_the_gluon_kernel_on_the_gpu(b, t, h, w, epi):
    # against the fp32 conv with the same epilogue, no worse than the Triton kernel (both: bf16 operands and
    # output); written into frames 2.. of a larger buffer, whose context frames stay untouched
    inp = _inputs(b, 96, t, h, w, "cuda", torch.bfloat16, seed=epi)
    kw = _epilogue(inp, epi)
    want = reference_out(inp["x"], inp["wmat"], 96, **kw)
    big = torch.empty(b, 96, t + 2, h, w, device="cuda", dtype=torch.bfloat16, memory_format=CL3D).zero_()
    got = conv3d_gluon.conv(inp["x"], inp["wmat"], big[:, :, 2:], eps=1e-12, **kw)
    tri = causal_conv3x3x3(inp["x"], inp["wmat"], 96, config={"BLOCK_M": 64, "BLOCK_N0": 64, "BLOCK_N1": 32,
                                                               "BLOCK_K": 32, "num_warps": 4, "num_stages": 3}, **kw)
    assert _rel(got, want) < 1.5 * _rel(tri, want) + 1e-3
    assert bool((big[:, :, :2] == 0).all())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() != (9, 0)
                    or not conv3d_gluon.available(), reason="needs an sm90 GPU and Gluon")
def test_the_public_call_takes_the_gluon_kernel(monkeypatch):
    monkeypatch.setattr(conv3d_igemm, "_GLUON_CHECKED", {})
    monkeypatch.setenv(conv3d_igemm.KERNEL_ENV, "auto")
    inp = _inputs(1, 96, 2, 12, 128, "cuda", torch.bfloat16)
    got = causal_conv3x3x3(inp["x"], inp["wmat"], 96, bias=inp["bias"], norm_gamma=inp["gamma"])
    assert conv3d_igemm.kernel_in_use(torch.cuda.current_device()) == "gluon"
    assert _rel(got, reference_out(inp["x"], inp["wmat"], 96, bias=inp["bias"], norm_gamma=inp["gamma"])) < 1e-2
