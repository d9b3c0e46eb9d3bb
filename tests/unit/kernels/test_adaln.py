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


# the fused residual form: gated_residual + layernorm_modulate in one pass -------------------------------
RESIDUAL_CONFIGS = [
    None,  # the autotuner's (on CPU: the first pruned config)
    {"BLOCK_L": 2, "SPLIT": 0, "PROGS_PER_SM": 4, "num_warps": 4},  # persistent, tiles end mid-batch for odd L
    {"BLOCK_L": 4, "SPLIT": 0, "PROGS_PER_SM": 0, "num_warps": 4},  # straight-line: tiles straddle batches
    {"BLOCK_L": 1, "SPLIT": 1, "PROGS_PER_SM": 1, "num_warps": 4},  # rows as two power-of-two parts
    {"BLOCK_L": 1, "SPLIT": 1, "PROGS_PER_SM": 4, "num_warps": 4},
]


def _residual_inputs(B: int, L: int, C: int, device: str, x_dtype: torch.dtype = torch.float32):
    g = torch.Generator().manual_seed(B * 1000 + L * 10 + C)
    x = (torch.randn(B, L, C, generator=g) * 2 + 0.7).to(device, x_dtype)  # the residual stream
    y = (torch.randn(B, L, C, generator=g) * 3).to(device, torch.bfloat16)  # a branch output
    mod = torch.randn(B, 6, C, generator=g).to(device) * 0.5  # gate, shift, scale: strided [B, C] views
    return x, y, mod[:, 2], mod[:, 0], mod[:, 1]


def _unfused(x, y, gate, shift, scale, out, qscale, config):
    """gated_residual then layernorm_modulate's launch with `config` (None: autotuned) -> x'."""
    from kernels.adaln import _launch
    from kernels.gated_residual import gated_residual

    ones = torch.ones(x.shape[0], x.shape[2], device=x.device)
    x_new = gated_residual(x, y, ones if gate is None else gate)
    _launch(x_new, shift, scale, 1e-6, out, qscale, config=config)
    return x_new


@pytest.mark.parametrize("config", RESIDUAL_CONFIGS)
@pytest.mark.parametrize("out_int8", [False, True])
@pytest.mark.parametrize("gate_kind", ["gate", "none"])
@pytest.mark.parametrize("C", [96, 48, 40])  # 96 = 64 + 32 and 48 = 32 + 16 split like 1536 = 1024 + 512
def test_residual_form_equals_gated_residual_then_layernorm_modulate_bit_for_bit(C, gate_kind, out_int8, config):
    from kernels.adaln import _launch_residual

    dev = _device()
    B, L = 2, 7  # L = 7: tiles of 2 or 4 rows end mid-batch
    x, y, gate, shift, scale = _residual_inputs(B, L, C, dev)
    gate = gate if gate_kind == "gate" else None

    def outputs():  # poisoned: a row or lane left unwritten shows
        if out_int8:
            return torch.full((B, L, C), -128, dtype=torch.int8, device=dev), torch.full((B, L), float("nan"), device=dev)
        out = torch.full((B, L, C), float("nan"), dtype=torch.bfloat16, device=dev)
        return out, out

    want, want_s = outputs()
    x_want = _unfused(x, y, gate, shift, scale, want, want_s, config)
    got, got_s = outputs()
    x_got = torch.full_like(x, float("nan"))
    _launch_residual(x, y, gate, shift, scale, 1e-6, x_got, got, got_s, config=config)
    assert torch.equal(x_got, x_want)
    assert torch.equal(got, want) and torch.equal(got_s, want_s)
    assert not (got == -128).any() if out_int8 else torch.isfinite(got).all()


@pytest.mark.parametrize("out_int8", [False, True])
@pytest.mark.parametrize("B,L,C", [(2, 1, 96), (2, 5, 192), (1, 9, 48)])
def test_residual_layernorm_modulate_public_op_bit_for_bit(B, L, C, out_int8):
    from kernels.adaln import residual_layernorm_modulate
    from kernels.gated_residual import gated_residual

    x, y, gate, shift, scale = _residual_inputs(B, L, C, _device())
    x_new, out = residual_layernorm_modulate(x, y, gate, shift, scale, out_int8=out_int8, out_dtype=torch.bfloat16)
    x_want = gated_residual(x, y, gate)
    assert x_new.dtype == torch.float32 and torch.equal(x_new, x_want)
    want = layernorm_modulate(x_want, shift, scale, out_int8=out_int8, out_dtype=torch.bfloat16)
    if out_int8:
        assert torch.equal(out[0], want[0]) and torch.equal(out[1], want[1])
    else:
        assert out.dtype == torch.bfloat16 and torch.equal(out, want)
    # gate None is the ungated add: the same bits as a gate of ones
    x_add, out_add = residual_layernorm_modulate(x, y, None, shift, scale, out_int8=out_int8, out_dtype=torch.bfloat16)
    x_ones, out_ones = residual_layernorm_modulate(x, y, torch.ones_like(gate), shift, scale, out_int8=out_int8,
                                                   out_dtype=torch.bfloat16)
    assert torch.equal(x_add, x_ones) and torch.equal(x_add, x + y.float())
    for a, b in zip(out_add if out_int8 else (out_add,), out_ones if out_int8 else (out_ones,), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16])
def test_residual_form_matches_reference(x_dtype):
    from kernels.adaln import reference_residual, residual_layernorm_modulate

    x, y, gate, shift, scale = _residual_inputs(2, 5, 40, _device(), x_dtype)
    x_new, out = residual_layernorm_modulate(x, y, gate, shift, scale)
    x_ref, out_ref = reference_residual(x, y, gate, shift, scale)
    assert x_new.dtype == x_dtype and out.dtype == x_dtype
    if x_dtype == torch.float32:
        torch.testing.assert_close(x_new, x_ref, rtol=1e-6, atol=1e-6)  # an FMA on the GPU: one rounding less
    else:  # the interpreter rounds to bf16 toward zero: one ulp
        torch.testing.assert_close(x_new.float(), x_ref.float(), rtol=2**-7, atol=1e-6)
    # the norm is of the stored x' (in x's dtype), whatever the rounding of x' itself
    truth = reference(x_new, shift, scale, compute_dtype=torch.float64)
    _assert_fa_rule(out, truth, reference(x_new, shift, scale).to(x_dtype))


def test_residual_form_rejects_bad_shapes_and_traces():
    from torch._subclasses.fake_tensor import FakeTensorMode

    from kernels.adaln import residual_layernorm_modulate

    x, vec = torch.randn(2, 3, 16), torch.zeros(2, 16)
    with pytest.raises(ValueError, match="y must be"):
        residual_layernorm_modulate(x, x[:, :2], vec, vec, vec)
    with pytest.raises(ValueError, match="gate must be"):
        residual_layernorm_modulate(x, x, torch.zeros(1, 16), vec, vec)
    with pytest.raises(ValueError, match="shift must be"):
        residual_layernorm_modulate(x, x, None, torch.zeros(2, 8), vec)
    with FakeTensorMode():
        x, y = torch.empty(2, 9, 64), torch.empty(2, 9, 64, dtype=torch.bfloat16)
        v = torch.empty(2, 64)
        x_new, out = torch.ops.turbovid.residual_layernorm_modulate(x, y, v, v, v, 1e-6, torch.bfloat16)
        x_q, q, s = torch.ops.turbovid.residual_layernorm_modulate_int8(x, y, None, v, v, 1e-6)
    assert x_new.shape == x_q.shape == (2, 9, 64) and x_new.dtype == x_q.dtype == torch.float32
    assert out.shape == (2, 9, 64) and out.dtype == torch.bfloat16
    assert q.shape == (2, 9, 64) and q.dtype == torch.int8 and s.shape == (2, 9) and s.dtype == torch.float32


def test_bench_residual_rows_run_and_check_the_bits_on_cpu():
    # kernels/bench_norms.py --residual's rows (timed on the GPU only) compare the two paths' outputs too.
    from kernels.bench_norms import residual_rows

    rows = residual_rows((5,), (48,), device="cpu")
    assert [(r["C"], r["L"], r["bit_equal"], r["codes_apart"]) for r in rows] == [(48, 5, True, 0)]


@pytest.mark.gpu
@pytest.mark.parametrize("C", [1536, 5120])
def test_residual_form_wan_shapes_every_config_bit_for_bit_gpu(C):
    # Every config the GPU autotuner may pick, each against the unfused pair run with the same config.
    import triton

    from kernels.adaln import _launch_residual, _ln_modulate
    from kernels.row_configs import prune_row_configs, split_tail

    class _Cuda:
        is_cuda = True

    configs = prune_row_configs(_ln_modulate.configs, {"x_ptr": _Cuda(), "C": C},
                                BLOCK_C=triton.next_power_of_2(C), BLOCK_TAIL=split_tail(C))
    x, y, gate, shift, scale = _residual_inputs(1, 4099, C, "cuda")
    for cfg in configs:
        config = {**cfg.kwargs, "num_warps": cfg.num_warps, "num_stages": cfg.num_stages}
        for out_int8 in (False, True):
            for g in (gate, None):
                shape = (1, 4099, C)
                want = torch.empty(shape, dtype=torch.int8 if out_int8 else torch.bfloat16, device="cuda")
                got = torch.empty_like(want)
                want_s, got_s = torch.empty(1, 4099, device="cuda"), torch.empty(1, 4099, device="cuda")
                x_want = _unfused(x, y, g, shift, scale, want, want_s if out_int8 else want, config)
                x_got = torch.empty_like(x)
                _launch_residual(x, y, g, shift, scale, 1e-6, x_got, got, got_s if out_int8 else got, config=config)
                assert torch.equal(x_got, x_want), config
                assert torch.equal(got, want), (config, out_int8)
                if out_int8:
                    assert torch.equal(got_s, want_s), config
