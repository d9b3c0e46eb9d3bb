"""W8A8 linear against its fp32 reference (TRITON_INTERPRET=1 on CPU; tiny tiles)."""

from __future__ import annotations

import pytest
import torch
from _kernel_helpers import emulate_w8a8 as emulate
from torch._subclasses.fake_tensor import FakeTensorMode

from kernels.int8_quant import quantize_activation, quantize_weight_blockwise
from kernels.w8a8 import W8A8Weight, prepare_weight, reference, w8a8_gemm, w8a8_linear, w8a8_linear_int8


def _layer(n: int, k: int, bias: bool, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g) * 0.05 * torch.logspace(-0.5, 0.5, k)  # uneven K blocks
    iw, sc = quantize_weight_blockwise(w)
    b = torch.randn(n, generator=g) if bias else None
    return iw, sc, b


def _err(y: torch.Tensor, ref: torch.Tensor) -> float:
    return ((y.float() - ref.float()).norm() / ref.float().norm()).item()


@pytest.mark.parametrize("backend", ["portable", "tma"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("has_bias", [True, False])
def test_gemm_matches_reference(backend, dtype, has_bias):
    # M, N, K are not multiples of the 16x16x32 test tiles; N % 8 == 0 and K % 16 == 0 for TMA strides
    m, n, k = 37, 40, 80
    iw, sc, b = _layer(n, k, has_bias)
    weight = prepare_weight(iw, sc)
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(1)).to(dtype)
    bias = b.to(dtype) if b is not None else None
    xq, sx = quantize_activation(x)
    y = w8a8_gemm(xq, sx, weight, bias, dtype, backend=backend)
    assert y.dtype == dtype and y.shape == (m, n)
    ref = reference(x, iw, sc, bias)
    same_math = emulate(x, weight, bias)  # the kernel's math in torch, at the kernel's precision
    assert _err(y, ref) <= 2 * _err(same_math, ref) + 1e-3
    # and it is that math: only the final rounding to the output dtype may differ
    tol = 2 * torch.finfo(dtype).eps * same_math.float().abs() + 1e-3
    assert ((y.float() - same_math.float()).abs() <= tol).all()


@pytest.mark.parametrize("shape", [(2, 19, 72), (1, 72)])
def test_w8a8_linear_public_api(shape):
    n, k = 50, 72  # N not a multiple of 8: the portable kernel serves any N
    iw, sc, b = _layer(n, k, True, seed=2)
    weight = prepare_weight(iw, sc)
    assert isinstance(weight, W8A8Weight)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(3)).to(torch.bfloat16)
    y = w8a8_linear(x, weight, b.to(torch.bfloat16))
    assert y.shape == (*shape[:-1], n) and y.dtype == torch.bfloat16
    ref = reference(x, iw, sc, b.to(torch.bfloat16))
    same_math = emulate(x, weight, b.to(torch.bfloat16))
    assert _err(y, ref) <= 2 * _err(same_math, ref) + 1e-3


def test_w8a8_error_is_small_against_checkpoint_layer():
    # end to end the quantized layer stays close to the checkpoint's fp32 definition
    iw, sc, b = _layer(48, 96, True, seed=4)
    x = torch.randn(33, 96, generator=torch.Generator().manual_seed(5)).to(torch.bfloat16)
    y = w8a8_linear(x, prepare_weight(iw, sc), b.to(torch.bfloat16))
    assert _err(y, reference(x, iw, sc, b.to(torch.bfloat16))) < 0.02


def test_rejects_bad_inputs():
    iw, sc, _ = _layer(16, 32, False)
    weight = prepare_weight(iw, sc)
    with pytest.raises(TypeError):
        w8a8_linear(torch.randn(4, 32), weight)  # fp32 x
    with pytest.raises(ValueError):
        w8a8_linear(torch.randn(4, 31, dtype=torch.bfloat16), weight)
    with pytest.raises(ValueError):
        w8a8_linear(torch.randn(4, 32, dtype=torch.bfloat16), weight, torch.zeros(15))


@pytest.mark.parametrize("shape", [(2, 19, 72), (1, 72)])
def test_input_gelu_is_the_same_as_gelu_first(shape):
    # Wan's FFN-down: w8a8_linear(h, input_act="gelu_tanh") = w8a8_linear(GELU(h)), the GELU done in
    # the quantization pass (fp32) instead of a pass of its own (which rounds to bf16 in between).
    n, k = 40, 72
    iw, sc, b = _layer(n, k, True, seed=6)
    weight = prepare_weight(iw, sc)
    h = (torch.randn(*shape, generator=torch.Generator().manual_seed(7)) * 2).to(torch.bfloat16)
    y = w8a8_linear(h, weight, b.to(torch.bfloat16), input_act="gelu_tanh")
    gelu = torch.nn.functional.gelu(h.float(), approximate="tanh")
    want = w8a8_linear(gelu.to(torch.bfloat16), weight, b.to(torch.bfloat16))
    assert y.shape == want.shape == (*shape[:-1], n) and y.dtype == torch.bfloat16
    assert _err(y, want) < 0.01
    assert _err(y, reference(gelu, iw, sc, b)) < 0.02  # the checkpoint layer on GELU(h), fp32
    assert _err(y, w8a8_linear(h, weight, b.to(torch.bfloat16))) > 0.1  # not the plain input
    with pytest.raises(ValueError, match="unknown input_act"):
        w8a8_linear(h, weight, input_act="relu")


def test_custom_op_fake_impl_gives_shape_and_dtype():
    iw, sc, _ = _layer(24, 32, False)
    weight = prepare_weight(iw, sc)
    with FakeTensorMode() as mode:
        x = mode.from_tensor(torch.randn(2, 5, 32, dtype=torch.float16))
        qw, ws = mode.from_tensor(weight.qweight), mode.from_tensor(weight.scale)
        y = torch.ops.turbovid.w8a8_linear(x, qw, ws, None)
    assert y.shape == (2, 5, 24) and y.dtype == torch.float16


def test_pre_quantized_entry_equals_the_float_entry():
    # What the norm kernel's int8 output feeds: [B, L, K] int8 + [B, L] scales, no quant pass.
    n, k = 40, 72
    iw, sc, b = _layer(n, k, True, seed=4)
    weight = prepare_weight(iw, sc)
    x = torch.randn(2, 9, k, generator=torch.Generator().manual_seed(5)).to(torch.bfloat16)
    xq, sx = quantize_activation(x.reshape(-1, k))
    y = w8a8_linear_int8(xq.view(2, 9, k), sx.view(2, 9), weight, b.to(torch.bfloat16), torch.bfloat16)
    assert y.shape == (2, 9, n) and y.dtype == torch.bfloat16
    torch.testing.assert_close(y, w8a8_linear(x, weight, b.to(torch.bfloat16)), rtol=0, atol=0)
    with pytest.raises(ValueError, match="sx must be fp32"):
        w8a8_linear_int8(xq.view(2, 9, k), sx, weight, None, torch.bfloat16)
    with pytest.raises(ValueError, match="xq must be int8"):
        w8a8_linear_int8(x, sx.view(2, 9), weight, None, torch.bfloat16)
    with FakeTensorMode():
        fq = torch.empty(3, 5, k, dtype=torch.int8)
        out = torch.ops.turbovid.w8a8_linear_int8(fq, torch.empty(3, 5), torch.empty(n, k, dtype=torch.int8),
                                                  torch.empty(n), None, torch.float16)
    assert out.shape == (3, 5, n) and out.dtype == torch.float16


def test_package_import_is_light():
    import subprocess
    import sys

    code = "import sys, kernels; assert 'triton' not in sys.modules; kernels.w8a8_linear; assert 'triton' in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_fused_quant_variant_matches_separate_quant():
    from kernels.int8_quant import activation_scales, reference_quantize_activation

    iw, sc, b = _layer(40, 80, True, seed=6)
    weight = prepare_weight(iw, sc)
    x = torch.randn(21, 80, generator=torch.Generator().manual_seed(7)).to(torch.bfloat16)
    s, inv = activation_scales(x)
    torch.testing.assert_close(s, reference_quantize_activation(x)[1], rtol=1e-6, atol=0)
    y = w8a8_gemm(x, s, weight, b.to(torch.bfloat16), torch.bfloat16, backend="tma", inv=inv)
    same_math = emulate(x, weight, b.to(torch.bfloat16))
    assert ((y.float() - same_math.float()).abs() <= 0.01 * same_math.float().abs() + 1e-2).all()


def test_the_gluon_check_runs_once_per_device_and_never_inside_a_graph_capture(monkeypatch):
    """`_gluon_usable`: inside a CUDA graph capture it answers False without checking or remembering (the check
    launches and compares); outside it checks once per device and keeps the answer."""
    from kernels import w8a8

    checks = []
    monkeypatch.setattr(w8a8, "_GLUON_CHECKED", {})
    monkeypatch.setattr(w8a8, "_check_gluon", lambda index: checks.append(index) or index == 0)
    capturing = [True]
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: capturing[0])
    assert w8a8._gluon_usable(0) is False and checks == [] and w8a8._GLUON_CHECKED == {}
    capturing[0] = False
    assert w8a8._gluon_usable(0) is True and w8a8._gluon_usable(0) is True and checks == [0]
    assert w8a8._gluon_usable(1) is False and checks == [0, 1]
    capturing[0] = True  # once checked, a capture reuses the answer
    assert w8a8._gluon_usable(0) is True and checks == [0, 1]
