"""layernorm_modulate (bf16/fp16/fp32 out and int8 out) vs the fp32 reference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _kernel_helpers import assert_fa_rule

from kernels.adaln import layernorm_modulate, reference, reference_int8
from kernels.int8_quant import quantize_activation

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# atol relative to the output's magnitude: Triton's CPU interpreter rounds fp32 -> bf16 toward zero
# (one bf16 ulp, 2^-7 relative, instead of half an ulp on the GPU), so bf16 needs a full ulp of slack.
ATOL = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 1e-2}


def _assert_fa_rule(out: torch.Tensor, truth: torch.Tensor, torch_lowp: torch.Tensor) -> None:
    assert_fa_rule(out, truth, torch_lowp, ATOL)

def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _inputs(B: int, L: int, C: int, dtype: torch.dtype, device: str):
    x = (torch.randn(B, L, C, device=device) * 2 + 0.7).to(dtype)  # non-zero mean: LN must remove it
    mod = torch.randn(B, 6, C, device=device) * 0.5  # Wan's fp32 [B, 6, C]; shift/scale are strided views
    return x, mod[:, 0], mod[:, 1]


def test_reference_is_layernorm_without_affine_then_modulation():
    x, shift, scale = _inputs(2, 5, 24, torch.float64, "cpu")
    expected = F.layer_norm(x, (24,), eps=1e-6) * (1 + scale[:, None]) + shift[:, None]
    torch.testing.assert_close(reference(x, shift, scale, compute_dtype=torch.float64), expected)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,L,C", [(1, 7, 64), (2, 5, 96), (3, 2, 37), (1, 1, 1536)])
def test_layernorm_modulate_matches_reference(dtype, B, L, C):
    x, shift, scale = _inputs(B, L, C, dtype, _device())
    out = layernorm_modulate(x, shift, scale)
    assert out.shape == x.shape and out.dtype == dtype
    truth = reference(x, shift, scale, compute_dtype=torch.float64)
    _assert_fa_rule(out, truth, reference(x, shift, scale).to(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,L,C", [(1, 7, 64), (2, 3, 40)])
def test_layernorm_modulate_int8_matches_reference(dtype, B, L, C):
    x, shift, scale = _inputs(B, L, C, dtype, _device())
    q, s = layernorm_modulate(x, shift, scale, out_int8=True)
    assert q.dtype == torch.int8 and q.shape == (B, L, C)
    assert s.dtype == torch.float32 and s.shape == (B, L)
    q_ref, s_ref = reference_int8(x, shift, scale)
    torch.testing.assert_close(s, s_ref, rtol=1e-5, atol=1e-7)
    # Rounding may flip one code where the fp32 value sits on a .5 boundary; never more.
    assert (q.int() - q_ref.int()).abs().max().item() <= 1
    assert (q != q_ref).float().mean().item() < 0.01
    assert q.abs().max().item() == 127  # each row's absmax maps to the full range
    truth = reference(x, shift, scale, compute_dtype=torch.float64)
    deq = q.double() * s.double()[..., None]
    assert ((deq - truth).abs() <= 0.5 * s.double()[..., None] + 1e-6).all()


def test_int8_layout_feeds_the_w8a8_quantizer_layout():
    # Same per-token convention as kernels/int8_quant.quantize_activation on the fp32 output.
    x, shift, scale = _inputs(2, 3, 48, torch.float32, _device())
    q, s = layernorm_modulate(x, shift, scale, out_int8=True)
    q2, s2 = quantize_activation(reference(x, shift, scale).reshape(6, 48))
    torch.testing.assert_close(s.reshape(6), s2, rtol=1e-5, atol=1e-7)
    assert (q.reshape(6, 48).int() - q2.int()).abs().max().item() <= 1


@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float16])
def test_fp32_in_low_precision_out(out_dtype):
    # Wan's residual stream is fp32 and the next Linear runs in bf16: one pass, no separate cast.
    x, shift, scale = _inputs(2, 5, 40, torch.float32, _device())
    out = layernorm_modulate(x, shift, scale, out_dtype=out_dtype)
    assert out.dtype == out_dtype and out.shape == x.shape
    truth = reference(x, shift, scale, compute_dtype=torch.float64)
    _assert_fa_rule(out, truth, reference(x, shift, scale).to(out_dtype))
    with pytest.raises(TypeError, match="out_dtype"):
        layernorm_modulate(x, shift, scale, out_dtype=torch.int32)


def test_int8_zero_row_gives_zero_scale():
    x = torch.zeros(1, 2, 32, device=_device())
    zero = torch.zeros(1, 32, device=_device())
    q, s = layernorm_modulate(x, zero, zero, out_int8=True)
    assert (s == 0).all() and (q == 0).all()


def test_batch_rows_use_their_own_modulation():
    dev = _device()
    x = torch.randn(1, 4, 32, device=dev).expand(2, 4, 32).contiguous()
    shift = torch.stack((torch.zeros(32, device=dev), torch.full((32,), 3.0, device=dev)))
    scale = torch.zeros(2, 32, device=dev)
    out = layernorm_modulate(x, shift, scale)
    torch.testing.assert_close(out[1] - out[0], torch.full((4, 32), 3.0, device=dev), rtol=0, atol=1e-5)


def test_rejects_bad_shapes():
    x = torch.randn(2, 3, 16)
    with pytest.raises(ValueError):
        layernorm_modulate(x, torch.zeros(1, 16), torch.zeros(2, 16))
    with pytest.raises(ValueError):
        layernorm_modulate(x[0], torch.zeros(2, 16), torch.zeros(2, 16))


def test_fake_impls_trace_shapes():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        x = torch.empty(2, 9, 64, dtype=torch.bfloat16)
        out = torch.ops.turbovid.layernorm_modulate(x, torch.empty(2, 64), torch.empty(2, 64), 1e-6, None)
        q, s = torch.ops.turbovid.layernorm_modulate_int8(x, torch.empty(2, 64), torch.empty(2, 64), 1e-6)
        half = torch.ops.turbovid.layernorm_modulate(x.float(), torch.empty(2, 64), torch.empty(2, 64), 1e-6,
                                                     torch.float16)
    assert out.shape == (2, 9, 64) and out.dtype == torch.bfloat16
    assert half.shape == (2, 9, 64) and half.dtype == torch.float16
    assert q.shape == (2, 9, 64) and q.dtype == torch.int8 and s.shape == (2, 9)


@pytest.mark.gpu
@pytest.mark.parametrize("C", [1536, 5120])
def test_layernorm_modulate_wan_shapes_gpu(C):
    x, shift, scale = _inputs(1, 32760, C, torch.bfloat16, "cuda")
    out = layernorm_modulate(x, shift, scale)
    truth = reference(x, shift, scale, compute_dtype=torch.float64)
    _assert_fa_rule(out, truth, reference(x, shift, scale).to(x.dtype))
    q, s = layernorm_modulate(x, shift, scale, out_int8=True)
    q_ref, s_ref = reference_int8(x, shift, scale)
    torch.testing.assert_close(s, s_ref, rtol=1e-5, atol=1e-7)
    assert (q.int() - q_ref.int()).abs().max().item() <= 1


@pytest.mark.parametrize(
    "config",
    [
        {"BLOCK_L": 2, "SPLIT": 0, "PROGS_PER_SM": 4, "num_warps": 4},  # persistent: 1 program per batch
        {"BLOCK_L": 4, "SPLIT": 0, "PROGS_PER_SM": 0, "num_warps": 4},  # straight-line: tiles straddle batches
        {"BLOCK_L": 1, "SPLIT": 1, "PROGS_PER_SM": 1, "num_warps": 4},  # row as 32 + 8 columns
        {"BLOCK_L": 1, "SPLIT": 1, "PROGS_PER_SM": 4, "num_warps": 4},  # split and persistent
    ],
)
@pytest.mark.parametrize("out_int8", [False, True])
def test_explicit_configs_cover_every_row_of_every_batch(config, out_int8):
    # The autotuner only runs one config on CPU; launch the others directly. L = 7 rows per batch
    # element (odd, so tiles end mid-batch) and C = 40 (masked tail); poisoned outputs catch gaps.
    from kernels.adaln import _launch

    dev = _device()
    x, shift, scale = _inputs(3, 7, 40, torch.float32, dev)
    truth = reference(x, shift, scale, compute_dtype=torch.float64)
    if out_int8:
        q = torch.full((3, 7, 40), -128, dtype=torch.int8, device=dev)
        s = torch.full((3, 7), float("nan"), device=dev)
        _launch(x, shift, scale, 1e-6, q, s, config=config)
        q_ref, s_ref = reference_int8(x, shift, scale)
        torch.testing.assert_close(s, s_ref, rtol=1e-5, atol=1e-7)
        assert (q.int() - q_ref.int()).abs().max().item() <= 1
    else:
        out = torch.full_like(x, float("nan"))
        _launch(x, shift, scale, 1e-6, out, out, config=config)
        torch.testing.assert_close(out.double(), truth, rtol=1e-5, atol=1e-5)
