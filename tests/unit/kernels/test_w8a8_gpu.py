"""W8A8 on the GPU at full Wan linear shapes (run on the device; skipped without CUDA)."""

from __future__ import annotations

import re

import pytest
import torch
from _kernel_helpers import emulate_w8a8 as emulate

from kernels.int8_quant import quantize_activation, quantize_weight_blockwise
from kernels.w8a8 import (
    WAN_SHAPES,
    inspect_sass,
    prepare_weight,
    reference,
    w8a8_gemm,
    w8a8_linear,
    w8a8_linear_int8,
)

pytestmark = pytest.mark.gpu

TMA_CFG = {"BLOCK_M": 128, "BLOCK_N": 256, "BLOCK_K": 128, "GROUP_M": 8, "num_warps": 8, "num_stages": 3}
PORTABLE_CFG = {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8, "num_warps": 8, "num_stages": 4}


def _err(y, ref):
    return ((y.float() - ref.float()).norm() / ref.float().norm()).item()


@pytest.fixture(scope="module", params=WAN_SHAPES, ids=[s[0].replace(" ", "_") for s in WAN_SHAPES])
def layer(request):
    _, k, n = request.param
    g = torch.Generator(device="cuda").manual_seed(0)
    iw, sc = quantize_weight_blockwise(torch.randn(n, k, device="cuda", generator=g) * 0.02)
    bias = torch.randn(n, device="cuda", generator=g).to(torch.bfloat16)
    return iw, sc, prepare_weight(iw, sc), bias


@pytest.mark.parametrize("backend,cfg", [("tma", TMA_CFG), ("portable", PORTABLE_CFG)])
def test_wan_shapes_both_kernels(layer, backend, cfg):
    iw, sc, weight, bias = layer
    m = 4099  # not a multiple of any tile
    x = torch.randn(m, iw.shape[1], device="cuda", dtype=torch.bfloat16)
    xq, sx = quantize_activation(x)
    y = w8a8_gemm(xq, sx, weight, bias, torch.bfloat16, backend=backend, config=cfg)
    assert torch.isfinite(y).all()
    ref = reference(x, iw, sc, bias)
    same_math = emulate(x, weight, bias)
    assert _err(y, ref) <= 2 * _err(same_math, ref) + 1e-3
    assert _err(y, same_math) < 4e-3  # only the final bf16 rounding differs


def test_public_path_480p_tokens_3d_fp16():
    _, k, n = WAN_SHAPES[1]
    iw, sc = quantize_weight_blockwise(torch.randn(n, k, device="cuda") * 0.02)
    weight = prepare_weight(iw, sc)
    x = torch.randn(1, 32760, k, device="cuda", dtype=torch.float16)
    y = w8a8_linear(x, weight)
    assert y.shape == (1, 32760, n) and y.dtype == torch.float16
    assert _err(y, reference(x, iw, sc)) <= 2 * _err(emulate(x, weight), reference(x, iw, sc)) + 1e-3


@pytest.mark.parametrize("name", ["1.3B ffn_down", "14B ffn_down"])
def test_ffn_down_with_the_gelu_in_its_quant_pass_at_wan_shapes(name):
    """Wan's FFN-down fed the FFN-up output with input_act="gelu_tanh" (the GELU in the quantization
    pass, at K = 8960 / 13824 one row in registers): as close to the fp32 layer on GELU(h) as the
    unfused path (a bf16 GELU pass, then w8a8_linear)."""
    _, k, n = next(s for s in WAN_SHAPES if s[0] == name)
    iw, sc = quantize_weight_blockwise(torch.randn(n, k, device="cuda") * 0.02)
    weight = prepare_weight(iw, sc)
    h = torch.randn(1, 4099, k, device="cuda", dtype=torch.bfloat16) * 2
    fused = w8a8_linear(h, weight, input_act="gelu_tanh")
    gelu = torch.nn.functional.gelu(h.float(), approximate="tanh")
    unfused = w8a8_linear(gelu.to(torch.bfloat16), weight)
    ref = reference(gelu, iw, sc)
    assert torch.isfinite(fused).all() and fused.shape == (1, 4099, n)
    assert _err(fused, ref) <= 1.1 * _err(unfused, ref) + 1e-4


@pytest.mark.parametrize("shape", [WAN_SHAPES[0], WAN_SHAPES[1], WAN_SHAPES[4]], ids=lambda s: s[0])
def test_norm_int8_output_feeds_the_gemm_at_wan_shapes(shape):
    """The DiT's fused path: LayerNorm+AdaLN emits int8 + per-token scales from the fp32 residual stream,
    and the GEMM takes them as they are (no activation-quant pass). Against the fp32 layer it is at least
    as good as the unfused path (bf16 norm output, then w8a8_linear's own quantization)."""
    from kernels.adaln import layernorm_modulate

    _, k, n = shape
    g = torch.Generator(device="cuda").manual_seed(1)
    iw, sc = quantize_weight_blockwise(torch.randn(n, k, device="cuda", generator=g) * 0.02)
    weight = prepare_weight(iw, sc)
    bias = torch.randn(n, device="cuda", generator=g).to(torch.bfloat16)
    x = torch.randn(1, 4099, k, device="cuda", generator=g) * 2 + 0.5  # fp32 residual stream
    mod = torch.randn(1, 6, k, device="cuda", generator=g) * 0.3
    q, s = layernorm_modulate(x, mod[:, 0], mod[:, 1], out_int8=True)
    y = w8a8_linear_int8(q, s, weight, bias, torch.bfloat16)
    assert y.shape == (1, 4099, n) and y.dtype == torch.bfloat16 and torch.isfinite(y).all()
    h32 = layernorm_modulate(x, mod[:, 0], mod[:, 1])  # fp32
    ref = reference(h32, iw, sc, bias).float()
    unfused = w8a8_linear(h32.to(torch.bfloat16), weight, bias)
    assert _err(y, ref) <= 1.1 * _err(unfused, ref) + 1e-3


def test_cuda_graph_and_compile_capture():
    _, k, n = WAN_SHAPES[0]
    iw, sc = quantize_weight_blockwise(torch.randn(n, k, device="cuda") * 0.02)
    weight = prepare_weight(iw, sc)
    bias = torch.randn(n, device="cuda", dtype=torch.bfloat16)
    x = torch.randn(2, 1000, k, device="cuda", dtype=torch.bfloat16)
    eager = w8a8_linear(x, weight, bias)  # warm: autotune outside capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = w8a8_linear(x, weight, bias)
    x.copy_(torch.randn_like(x))
    graph.replay()
    assert torch.equal(captured, w8a8_linear(x, weight, bias))
    compiled = torch.compile(lambda t: w8a8_linear(t, weight, bias), fullgraph=True)
    assert torch.equal(compiled(x), w8a8_linear(x, weight, bias))
    assert not torch.equal(eager, captured)


@pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] != 9, reason="Hopper only"
)
def test_sm90_kernel_uses_wgmma():
    report = inspect_sass(TMA_CFG)
    print(report)
    assert int(re.search(r"PTX: (\d+) wgmma", report).group(1)) > 0


@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float16])
def test_gluon_kernel_is_bit_equal_to_the_triton_kernel_at_wan_shapes(layer, out_dtype):
    """kernels.w8a8_gluon (the int8 MMAs asynchronous) computes what the Triton TMA kernel computes, every
    config, at an M that is no multiple of any tile, with and without bias, into a given `out` too."""
    from kernels import w8a8_gluon

    if torch.cuda.get_device_capability() != (9, 0) or not w8a8_gluon.available():
        pytest.skip("the Gluon kernel runs on sm90 with a Triton that has Gluon")
    iw, sc, weight, bias = layer
    x = torch.randn(4099, iw.shape[1], device="cuda", dtype=torch.bfloat16)
    xq, sx = quantize_activation(x)
    for b in (bias, None):
        want = w8a8_gemm(xq, sx, weight, b, out_dtype, backend="tma", config=TMA_CFG)
        for cfg in w8a8_gluon.CONFIGS:
            got = w8a8_gluon.w8a8_gemm_gluon(xq, sx, weight.qweight, weight.scale, b, out_dtype, config=cfg)
            assert torch.equal(got, want), cfg
        out = torch.full_like(want, float("nan"))
        w8a8_gemm(xq, sx, weight, b, out_dtype, backend="gluon", out=out)
        assert torch.equal(out, want)


def test_auto_backend_runs_the_gluon_kernel_on_hopper_and_the_env_var_turns_it_off(monkeypatch):
    import subprocess
    import sys

    from kernels import w8a8, w8a8_gluon

    if torch.cuda.get_device_capability() != (9, 0) or not w8a8_gluon.available():
        pytest.skip("the Gluon kernel runs on sm90 with a Triton that has Gluon")
    calls = []
    real = w8a8_gluon.w8a8_gemm_gluon
    monkeypatch.setattr(w8a8_gluon, "w8a8_gemm_gluon", lambda *a, **k: calls.append(1) or real(*a, **k))
    _, k, n = WAN_SHAPES[0]
    iw, sc = quantize_weight_blockwise(torch.randn(n, k, device="cuda") * 0.02)
    y = w8a8_linear(torch.randn(1000, k, device="cuda", dtype=torch.bfloat16), prepare_weight(iw, sc))
    assert torch.isfinite(y).all() and calls  # the self-check launch and the call itself
    # a fresh process with TURBOVID_WORKER__W8A8_BACKEND=triton never builds the Gluon kernel
    code = ("import torch; from kernels import w8a8; print(w8a8._gluon_usable(torch.cuda.current_device()))")
    env = {**__import__("os").environ, w8a8.BACKEND_ENV: "triton"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip().splitlines()[-1] == "False", out.stderr[-500:]


def test_a_first_int8_gemm_inside_a_cuda_graph_capture_runs_the_triton_kernel_without_checking():
    """The Gluon kernel's one-time check launches and compares (a sync), which a capture forbids: a process whose
    first w8a8 call is captured gets the Triton kernel in that graph, and the check runs at the next eager call."""
    import subprocess
    import sys

    code = """
import torch
from kernels import w8a8
from kernels.int8_quant import quantize_weight_blockwise
iw, sc = quantize_weight_blockwise(torch.randn(256, 256, device="cuda") * 0.02)
weight = w8a8.prepare_weight(iw, sc)
x = torch.randn(512, 256, device="cuda", dtype=torch.bfloat16)
xq, sx = w8a8.quantize_activation(x)  # compiled, and the Triton GEMM tuned, before the capture
w8a8.w8a8_gemm(xq, sx, weight, None, torch.bfloat16, backend="tma")
torch.cuda.synchronize()
s = torch.cuda.Stream()
with torch.cuda.stream(s):
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        y = w8a8.w8a8_linear(x, weight)
g.replay(); torch.cuda.synchronize()
print("checked in capture:", dict(w8a8._GLUON_CHECKED))
eager = w8a8.w8a8_linear(x, weight)
print("equal:", torch.equal(y, eager), "checked after:", sorted(w8a8._GLUON_CHECKED))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    assert lines[-2] == "checked in capture: {}"
    assert lines[-1].startswith("equal: True checked after: [")
