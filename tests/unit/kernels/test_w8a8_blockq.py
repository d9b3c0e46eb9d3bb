"""kernels/w8a8_blockq.py: Wan's FFN as two int8 kernels with one activation scale per (row, 128 columns).

CPU: the reference forms (the definitions the kernels are held to) and their accuracy against the row-scaled
path, the checks before a launch, and the wiring's fallbacks. The kernels are Gluon (no interpreter): CPU CI
compiles them for sm_90 (test_compile_check.py, case w8a8_blockq); the GPU tests below run them."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kernels import w8a8_blockq as bq
from kernels.int8_quant import quantize_activation, quantize_weight_blockwise, reference_quantize_activation
from models.linear import W8A8Linear

GELU = nn.GELU(approximate="tanh")


def _err(y: torch.Tensor, ref: torch.Tensor) -> float:
    return ((y.float() - ref.float()).norm() / ref.float().norm()).item()


def _weights(n: int, k: int, g: torch.Generator, device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """A per-channel int8 weight [n, k] (the kernels' layout) and its fp32 scales [n]."""
    w = torch.randn(n, k, generator=g) * 0.02
    s = w.abs().amax(dim=1) / 127
    q = torch.round(w / s[:, None]).clamp(-127, 127).to(torch.int8)
    return q.to(device), s.to(device)


def _activations(m: int, c: int, g: torch.Generator) -> torch.Tensor:
    x = torch.randn(m, c, generator=g)
    x[:, :8] *= 20  # a few outlier channels, as in Wan's hidden states
    return x


def test_block_quantization_round_trips_within_half_a_step_per_block():
    g = torch.Generator().manual_seed(0)
    h = torch.randn(37, 512, generator=g) * torch.logspace(-2, 2, 512)  # blocks of very different ranges
    h[5, 128:256] = 0  # an all-zero block
    q, s = bq.quantize_blocks(h)
    assert q.dtype == torch.int8 and q.shape == h.shape
    assert s.dtype == torch.float32 and s.shape == (4, 37)  # [F/128, M]: one block's scales contiguous
    assert s[1, 5] == 0 and (q[5, 128:256] == 0).all()
    back = q.float().reshape(37, 4, 128) * s.t()[:, :, None]
    step = s.t()[:, :, None]
    assert ((back - h.reshape(37, 4, 128)).abs() <= step / 2 + 1e-6 * h.abs().max()).all()
    # each nonzero block uses the whole int8 range
    used = q.reshape(37, 4, 128).abs().amax(dim=2)
    assert (used[s.t() > 0] == 127).all()


def test_the_block_scaled_ffn_is_no_less_accurate_than_the_row_scaled_one():
    g = torch.Generator().manual_seed(1)
    m, c, f, n = 256, 512, 1024, 384
    x = _activations(m, c, g)
    uq, us = _weights(f, c, g)
    dq, ds = _weights(n, f, g)
    ub, db = torch.randn(f, generator=g) * 0.1, torch.randn(n, generator=g) * 0.1
    exact = GELU(x @ (uq.float() * us[:, None]).t() + ub) @ (dq.float() * ds[:, None]).t() + db

    xq, sx = reference_quantize_activation(x)
    # row-scaled: ffn_up in fp32, one scale per row of the GELU'd hidden activation, ffn_down
    h = (xq.float() @ uq.float().t()) * sx[:, None] * us[None, :] + ub
    hq, hs = reference_quantize_activation(h, gelu=True)
    row = (hq.float() @ dq.float().t()) * hs[:, None] * ds[None, :] + db
    # block-scaled
    q, s = bq.reference_ffn_up_gelu_q(xq, sx, uq, us, ub)
    block = bq.reference_ffn_down_blockq(q, s, dq, ds, db, torch.float32)

    print(f"error against fp32: row-scaled {_err(row, exact):.4f}, block-scaled {_err(block, exact):.4f}")
    assert _err(block, exact) <= _err(row, exact)
    assert _err(block, exact) < 0.05


def test_the_reference_down_projection_is_the_dequantized_product():
    g = torch.Generator().manual_seed(2)
    h = GELU(torch.randn(64, 256, generator=g))
    q, s = bq.quantize_blocks(h)
    dq, ds = _weights(96, 256, g)
    bias = torch.randn(96, generator=g)
    deq = (q.float().reshape(64, 2, 128) * s.t()[:, :, None]).reshape(64, 256)
    want = deq.double() @ (dq.double() * ds.double()[:, None]).t() + bias.double()
    got = bq.reference_ffn_down_blockq(q, s, dq, ds, bias, torch.float32)
    assert torch.allclose(got.double(), want, rtol=1e-5, atol=1e-5)


def test_sizes_and_arguments_are_checked_before_any_launch():
    assert bq.supported(8960, 1536, 1536) and bq.supported(13824, 5120, 5120)
    assert not bq.supported(1000, 1536, 1536)  # the hidden width is not whole scale blocks
    assert not bq.supported(1024, 1530, 1536)  # rows not 16-byte aligned for TMA
    q = torch.zeros(10, 256, dtype=torch.int8)
    w = torch.zeros(32, 256, dtype=torch.int8)
    with pytest.raises(ValueError, match=r"s must be a contiguous fp32 \[2, 10\]"):
        bq.ffn_down_blockq(q, torch.zeros(10, 2), w, torch.ones(32), None, torch.bfloat16)
    with pytest.raises(ValueError, match="not a multiple of 128"):
        bq.ffn_up_gelu_q(q, torch.ones(10), torch.zeros(200, 256, dtype=torch.int8), torch.ones(200), None)
    with pytest.raises(ValueError, match="xq must be int8"):
        bq.ffn_int8(q.float(), torch.ones(10), w, torch.ones(32), None, w.t().contiguous(), torch.ones(256), None,
                    torch.bfloat16)


def test_it_runs_only_when_asked_for_and_on_the_gpu(monkeypatch, caplog):
    import kernels

    monkeypatch.delenv(bq.FFN_ENV, raising=False)
    assert not bq.usable(torch.device("cuda", 0), 8960, 1536, 1536)  # not asked for: no device is even asked
    monkeypatch.setenv(bq.FFN_ENV, "rowq")
    assert not bq.usable(torch.device("cuda", 0), 8960, 1536, 1536)
    monkeypatch.setenv(bq.FFN_ENV, "blockwise")  # unknown: rowq, said once
    kernels._WARNED.discard((bq.FFN_ENV, "blockwise"))
    with caplog.at_level("WARNING", logger="kernels"):
        assert not bq.usable(torch.device("cuda", 0), 8960, 1536, 1536)
        assert not bq.usable(torch.device("cuda", 0), 8960, 1536, 1536)
    assert [r.getMessage() for r in caplog.records].count(
        f"{bq.FFN_ENV}='blockwise' is not one of ('rowq', 'blockq'): using rowq") == 1
    monkeypatch.setenv(bq.FFN_ENV, "blockq")
    assert not bq.usable(torch.device("cpu"), 8960, 1536, 1536)
    assert not bq.usable(torch.device("cuda", 0), 1000, 1536, 1536)  # the hidden width is not whole blocks


# ---------------------------------------------------------------------------------------------------------
# on the GPU (sm90: the Gluon kernels)
# ---------------------------------------------------------------------------------------------------------

SHAPES = [("1.3B", 4099, 1536, 8960, 1536), ("14B", 1000, 5120, 13824, 5120)]  # name, M (ragged), C, F, N


def _hopper() -> None:
    if torch.cuda.get_device_capability() != (9, 0) or not bq.available():
        pytest.skip("the Gluon kernels need sm90 and a Triton with Gluon's Hopper API")


@pytest.mark.gpu
@pytest.mark.parametrize("shape", SHAPES, ids=[s[0] for s in SHAPES])
@pytest.mark.parametrize("pingpong", [False, True], ids=["one-tile", "ping-pong"])
def test_ffn_up_writes_the_reference_codes_and_scales(shape, pingpong):
    _hopper()
    _, m, c, f, _ = shape
    g = torch.Generator().manual_seed(3)
    xq, sx = reference_quantize_activation(_activations(m, c, g))
    uq, us = _weights(f, c, g)
    ub = (torch.randn(f, generator=g) * 0.1).to(torch.bfloat16)
    want_q, want_s = bq.reference_ffn_up_gelu_q(xq, sx, uq, us, ub)
    q, s = bq.ffn_up_gelu_q(xq.cuda(), sx.cuda(), uq.cuda(), us.cuda(), ub.cuda(), pingpong=pingpong)
    torch.cuda.synchronize()
    assert q.shape == (m, f) and s.shape == (f // 128, m)
    # the kernel's tanh is `tanh.approx.f32`: a code may land one step off at a rounding boundary
    diff = (q.cpu().int() - want_q.int()).abs()
    assert diff.max() <= 1 and (diff == 0).float().mean() > 0.995
    assert torch.allclose(s.cpu(), want_s, rtol=2e-3, atol=1e-12)


@pytest.mark.gpu
@pytest.mark.parametrize("shape", SHAPES, ids=[s[0] for s in SHAPES])
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16])
def test_ffn_down_sums_the_blocks_with_their_scales(shape, out_dtype):
    _hopper()
    _, m, _, f, n = shape
    g = torch.Generator().manual_seed(4)
    h = GELU(torch.randn(m, f, generator=g)) * torch.logspace(-1, 1, f // 128).repeat_interleave(128)
    q, s = bq.quantize_blocks(h)
    dq, ds = _weights(n, f, g)
    db = (torch.randn(n, generator=g) * 0.1).to(torch.bfloat16)
    want = bq.reference_ffn_down_blockq(q, s, dq, ds, db, torch.float32)
    y = bq.ffn_down_blockq(q.cuda(), s.cuda(), dq.cuda(), ds.cuda(), db.cuda(), out_dtype)
    assert y.dtype == out_dtype and y.shape == (m, n)
    assert _err(y.cpu(), want) < (1e-5 if out_dtype == torch.float32 else 4e-3)


def _w8a8_ffn(c: int, f: int, n: int, g: torch.Generator) -> nn.Sequential:
    layers = []
    for k, out in ((c, f), (f, n)):
        lin = W8A8Linear(k, out)
        lin.int8_weight, lin.scale = quantize_weight_blockwise(torch.randn(out, k, generator=g) * 0.02)
        lin.bias = nn.Parameter(torch.randn(out, generator=g) * 0.1, requires_grad=False)
        lin.to_kernel_layout()
        layers.append(lin)
    return nn.Sequential(layers[0], nn.GELU(approximate="tanh"), layers[1]).cuda().to(torch.bfloat16)


@pytest.mark.gpu
def test_the_dit_ffn_runs_the_block_scaled_kernels_on_hopper_and_matches_the_row_scaled_path(monkeypatch):
    _hopper()
    monkeypatch.setenv(bq.FFN_ENV, "blockq")
    from models.ops import Int8Activation, Ops

    g = torch.Generator().manual_seed(5)
    ffn = _w8a8_ffn(1536, 8960, 1536, g)
    x = _activations(2 * 1000, 1536, g).view(2, 1000, 1536).cuda().to(torch.bfloat16)
    ops = Ops(attention="dense", linear="w8a8", kernels=True)
    up, _, down = ffn
    assert ops._blockq_ffn(up, ffn[1], down, x)
    exact = down(ffn[1](up(x.float())))  # the modules' own fp32 path (dequantized weights)
    block = ops.ffn(ffn, x)
    xq, sx = quantize_activation(x.view(-1, 1536))  # the pass the path runs on bf16 x: the torch reference's
    # 127 / absmax need not be the kernel's to the last bit, so a code may land one step off (s30d)
    from_int8 = ops.ffn(ffn, Int8Activation(xq.view(2, 1000, 1536), sx.view(2, 1000), torch.bfloat16))
    monkeypatch.setenv(bq.FFN_ENV, "rowq")
    assert not ops._blockq_ffn(up, ffn[1], down, x)
    row = ops.ffn(ffn, x)
    assert block.shape == row.shape == (2, 1000, 1536) and block.dtype == torch.bfloat16
    # both errors come mostly from x's per-row int8 codes (its outlier channels): the hidden activation's finer
    # scales make the block-scaled path no worse
    assert _err(block, exact) <= 1.05 * _err(row, exact) and _err(block, exact) < 0.08
    assert torch.equal(block, from_int8)  # the same codes whether the norm or the path quantized x


@pytest.mark.gpu
def test_the_block_scaled_ffn_replays_in_a_cuda_graph():
    _hopper()
    g = torch.Generator().manual_seed(6)
    m, c, f, n = 2000, 1536, 8960, 1536
    xq, sx = reference_quantize_activation(_activations(m, c, g))
    xq, sx = xq.cuda(), sx.cuda()
    (uq, us), (dq, ds) = _weights(f, c, g, "cuda"), _weights(n, f, g, "cuda")

    def run() -> torch.Tensor:
        return bq.ffn_int8(xq, sx, uq, us, None, dq, ds, None, torch.bfloat16)

    eager = run()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = run()
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(captured, eager)
