"""Wan VAE behaviour without diffusers: chunking/cache correctness, bounded decode memory, input
validation, config, and loader errors."""

from __future__ import annotations

import dataclasses
import weakref
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from models.checkpoint_io import CheckpointError, Manifest, write_canonical
from models.vae import (
    AttentionBlock,
    CausalCache,
    Resample,
    ResidualBlock,
    VAEConfig,
    WanVAE,
    _frame_attention,
    _head,
    _nearest2x,
    _run_head,
    _subpixel_weights,
    _upsample2x_conv3x3,
    chunk_plan,
)
from models.vae_loading import infer_config, load_vae, save_vae_canonical


@pytest.fixture(scope="module")
def vae() -> WanVAE:
    torch.manual_seed(0)
    model = WanVAE(VAEConfig.from_name("tiny")).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05 + 0.01)
        model.decoder.head[2].weight.mul_(0.25)
    return model


class LiveTensorBytes(TorchDispatchMode):
    """Bytes of CPU tensor storages created inside the mode and still referenced; tracks the peak."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes: dict[int, int] = {}
        self.refs: dict[int, int] = {}
        self.current = 0
        self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self._track(t)
        return out

    def _track(self, t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if key == 0:
            return
        if key not in self.sizes:
            self.sizes[key], self.refs[key] = storage.nbytes(), 0
            self.current += storage.nbytes()
            self.peak = max(self.peak, self.current)
        self.refs[key] += 1
        weakref.finalize(t, self._release, key)

    def _release(self, key: int) -> None:
        self.refs[key] -= 1
        if self.refs[key] == 0:
            self.current -= self.sizes.pop(key)
            del self.refs[key]


def _decode_whole(vae: WanVAE, latents: torch.Tensor) -> torch.Tensor:
    """All latent frames through the decoder at once (no chunking): the unbounded reference."""
    cfg = vae.config
    mean = torch.tensor(cfg.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(cfg.latents_std).view(1, -1, 1, 1, 1)
    cache = CausalCache()
    with torch.no_grad():
        return vae.decoder(vae.conv2(latents * std + mean, cache), cache).clamp(-1, 1)


def test_chunked_decode_equals_whole_sequence(vae: WanVAE) -> None:
    latents = torch.randn(1, 16, 4, 2, 3)
    chunked = vae.decode(latents)
    assert chunked.shape == (1, 3, 13, 16, 24)
    torch.testing.assert_close(chunked, _decode_whole(vae, latents), atol=2e-5, rtol=1e-5)
    # decode_iter yields 1 frame, then 4 per latent frame, concatenating to decode's output.
    chunks = list(vae.decode_iter(latents))
    assert [c.shape[2] for c in chunks] == [1, 4, 4, 4]
    torch.testing.assert_close(torch.cat(chunks, dim=2), chunked)


def test_decode_iter_any_chunking_concatenates_to_decode(vae: WanVAE) -> None:
    latents = torch.randn(1, 16, 5, 2, 3)
    whole = vae.decode(latents)
    for chunk, prefix, sizes in ((2, 1, [1, 8, 8]), (3, 5, [1, 12, 4]), (4, 2, [1, 16])):
        chunks = list(vae.decode_iter(latents, chunk_latents=chunk, prefix_latents=prefix))
        assert [c.shape[2] for c in chunks] == sizes
        torch.testing.assert_close(torch.cat(chunks, dim=2), whole, atol=2e-5, rtol=1e-5)


def test_chunk_plan_ends_on_one_latent_frame() -> None:
    assert chunk_plan(20, 7, taper=False) == [7, 7, 6]
    assert chunk_plan(20, 7, taper=True) == [7, 6, 4, 2, 1]
    assert chunk_plan(20, 4, taper=True) == [4, 4, 3, 3, 3, 2, 1]
    assert chunk_plan(20, 1, taper=True) == [1] * 20
    for t_rest in range(0, 30):
        for chunk in range(1, 9):
            plan = chunk_plan(t_rest, chunk, taper=True)
            assert sum(plan) == t_rest and max(plan, default=1) <= chunk
            assert not plan or plan[-1] == 1


def test_default_fast_decode_plan_tapers_at_480p() -> None:
    # The plan decode_iter follows on the GPU (full-size VAE, bf16, the default 12 GiB budget): chunks
    # sized to the budget, then halving to one latent frame (4 video frames) for the MP4 encoder's tail.
    with torch.device("meta"):
        full = WanVAE(VAEConfig.from_name("wan2.1")).to(torch.bfloat16)
    prefix, plan = full.decode_plan((1, 16, 21, 60, 104), fused=True)
    assert prefix == 21 and plan[0] == 1 and sum(plan) == 21
    assert plan[-3:] == [4, 2, 1] or plan[-2:] == [2, 1]
    assert max(plan) == max(full.decode_plan((1, 16, 21, 60, 104), fused=True, taper=False)[1]) > 2
    # an explicit chunk size is kept as given (no taper unless asked for)
    assert full.decode_plan((1, 16, 21, 60, 104), fused=True, chunk_latents=5)[1] == [1, 5, 5, 5, 5]


def test_tapered_chunks_give_the_same_frames(vae: WanVAE) -> None:
    # The causal cache makes the chunking exact: the tapered plan, the old even plan and one latent frame
    # at a time give the same frames up to fp32 rounding (a conv over 1 frame may take another GEMM path
    # than over 3: bit-equal at some sizes, ~2e-7 apart at others).
    latents = torch.randn(1, 16, 6, 2, 3)
    even = list(vae.decode_iter(latents, chunk_latents=3, taper=False))
    tapered = list(vae.decode_iter(latents, chunk_latents=3, taper=True))
    assert [c.shape[2] for c in even] == [1, 12, 8]
    assert [c.shape[2] for c in tapered] == [1, 8, 8, 4]
    whole = torch.cat(even, dim=2)
    torch.testing.assert_close(torch.cat(tapered, dim=2), whole, atol=1e-6, rtol=0)
    torch.testing.assert_close(torch.cat(list(vae.decode_iter(latents, chunk_latents=1)), dim=2), whole,
                               atol=1e-6, rtol=0)


def test_chunk_size_follows_the_memory_budget() -> None:
    vae = WanVAE(VAEConfig.from_name("tiny"), memory_budget=7_500)
    # 20 latent frames after the first, 1000 bytes each: as many as fit, then evened out (7, 7, 6).
    assert vae._latents_per_chunk(1000, 0, 20, None) == 7
    assert vae._latents_per_chunk(1000, 5_000, 20, None) == 2
    assert vae._latents_per_chunk(1000, 0, 20, 100_000) == 20
    assert vae._latents_per_chunk(1000, 20_000, 20, None) == 1  # over budget: one at a time


def test_fast_path_helpers_match_eager_ops() -> None:
    x = torch.randn(2, 8, 5, 7).contiguous(memory_format=torch.channels_last)
    up = torch.nn.functional.interpolate(x, scale_factor=2.0, mode="nearest-exact")
    assert torch.equal(_nearest2x(x), up)
    w, b = torch.randn(6, 8, 3, 3), torch.randn(6)
    torch.testing.assert_close(
        _upsample2x_conv3x3(x, w, b), torch.nn.functional.conv2d(up, w, b, padding=1), atol=1e-4, rtol=1e-4
    )
    with pytest.raises(ValueError, match="conv_impl"):
        CausalCache(fused=True, conv_impl="winograd")


def test_upsampler_keeps_its_merged_subpixel_weights_until_the_weight_changes() -> None:
    up = Resample(8, "upsample2d")
    weight = up.resample[1].weight
    first = up._subpixel(weight)
    assert up._subpixel(weight) is first  # computed once
    assert first.shape == (4 * 4, 8, 2, 2)
    with torch.no_grad():
        weight.mul_(2.0)  # an in-place change (load_state_dict copies in place too)
    second = up._subpixel(weight)
    assert second is not first
    torch.testing.assert_close(second, _subpixel_weights(weight))
    torch.testing.assert_close(second, 2 * first)


class CopiedElements(TorchDispatchMode):
    """Elements written by copying ops (cat, stack, clone, copy_, layout changes)."""

    OPS = ("aten.cat", "aten.stack", "aten.clone", "aten.copy_", "aten._to_copy", "aten.constant_pad_nd")

    def __init__(self) -> None:
        super().__init__()
        self.elements = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        if str(func.overloadpacket) in self.OPS:
            self.elements += sum(t.numel() for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor))
        return out


# CPU's conv3d returns NCDHW whatever its input's layout (cuDNN keeps channels-last), hence GPU only.
@pytest.mark.parametrize("conv_impl", ["taps2d", pytest.param("cudnn3d", marks=pytest.mark.gpu)])
def test_fused_residual_block_copies_only_the_causal_context(conv_impl: str) -> None:
    # The fast path moves activations only through the norm kernel: besides it, each causal conv copies
    # just the 2 context frames it keeps for the next chunk (a stack of the tap partials once copied all).
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    block = ResidualBlock(8, 8).eval().to(device)
    for m in block.modules():
        if isinstance(m, nn.Conv3d):
            m.weight.data = m.weight.data.contiguous(memory_format=torch.channels_last_3d)
    x = torch.randn(1, 8, 8, 6, 7, device=device).contiguous(memory_format=torch.channels_last_3d)
    with torch.no_grad():
        expected = block(x, CausalCache())
        with CopiedElements() as meter:
            got = block(x, CausalCache(fused=True, conv_impl=conv_impl))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    frame = 8 * 6 * 7
    assert meter.elements <= 2 * 2 * frame, meter.elements / frame


class ConvBiases(TorchDispatchMode):
    """Convolutions run, and how many of them were handed a bias."""

    def __init__(self) -> None:
        super().__init__()
        self.convs = self.with_bias = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        if str(func.overloadpacket) in ("aten.convolution", "aten.conv2d", "aten.conv3d"):
            self.convs += 1
            self.with_bias += args[2] is not None
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("conv_impl", ["taps2d", "cudnn3d"])
@pytest.mark.parametrize("dims", [(8, 8), (6, 8)])  # (6, 8): conv1 changes the width, a 1×1×1 shortcut
def test_fused_residual_block_adds_the_conv_biases_in_its_norm_passes(conv_impl: str, dims: tuple[int, int]) -> None:
    # cuDNN adds a conv's bias in a separate pass over the output (~110 ms of a 480p decode on an H200):
    # the fast path hands every conv of a residual block no bias and adds them in the norm / sum passes.
    torch.manual_seed(0)
    block = ResidualBlock(*dims).eval()
    for m in block.modules():
        if isinstance(m, nn.Conv3d):
            nn.init.normal_(m.bias, std=1.0)  # large biases: leaving one out would show in the output
    x = torch.randn(1, dims[0], 5, 6, 7).contiguous(memory_format=torch.channels_last_3d)
    with torch.no_grad():
        expected = block(x, CausalCache())
        with ConvBiases() as meter:
            got = block(x, CausalCache(fused=True, conv_impl=conv_impl))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert meter.convs >= 2 and meter.with_bias == 0, (meter.convs, meter.with_bias)


def test_igemm_residual_block_runs_no_convolution_and_matches_eager_across_chunks() -> None:
    # conv_impl "igemm": a square block of a listed width runs both convs in kernels.conv3d_igemm (the first's
    # epilogue writing the next norm + SiLU, the second's adding bias and residual): no aten convolution,
    # the eager result over chunks of 3 and 2 frames (the causal context carried in the cache).
    torch.manual_seed(0)
    block = ResidualBlock(32, 32).eval()
    for m in block.modules():
        if isinstance(m, nn.Conv3d):
            nn.init.normal_(m.bias, std=1.0)
    x = torch.randn(1, 32, 5, 4, 6).contiguous(memory_format=torch.channels_last_3d)
    eager, fused = CausalCache(), CausalCache(fused=True, conv_impl="igemm", igemm_channels=(32,))
    other = CausalCache(fused=True, conv_impl="igemm", igemm_channels=(96,))  # width not listed: taps2d
    with torch.no_grad():
        for t0, n in ((0, 3), (3, 2)):
            chunk = x[:, :, t0 : t0 + n]
            expected = block(chunk, eager)
            with ConvBiases() as meter:
                got = block(chunk, fused)
            assert meter.convs == 0
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
            with ConvBiases() as meter:
                fallback = block(chunk, other)
            assert meter.convs == 6  # three time taps per conv
            torch.testing.assert_close(fallback, expected, atol=1e-5, rtol=1e-5)
    assert fused.get(block.residual[2]).shape == (1, 32, 2, 4, 6)  # each conv keeps its 2 context frames


def test_fused_rgb_head_is_a_gemm_and_a_gather_across_chunks() -> None:
    # The decoder's head (norm, SiLU, causal 3×3×3 conv to 3 channels): the fast path runs no convolution
    # (one GEMM over the pixels, then kernels.conv_head's gather), and chunks of 1, 4, 1 and 2 frames carry
    # the causal context in its cache of partials, as the eager conv does with input frames.
    torch.manual_seed(0)
    head = _head(8, 3).eval()
    nn.init.normal_(head[2].bias, std=1.0)
    x = torch.randn(1, 8, 8, 6, 7).contiguous(memory_format=torch.channels_last_3d)
    eager_cache, fused_cache = CausalCache(), CausalCache(fused=True)
    t0 = 0
    with torch.no_grad():
        for n in (1, 4, 1, 2):
            chunk = x[:, :, t0 : t0 + n]
            expected = _run_head(head, chunk, eager_cache)
            with ConvBiases() as meter:
                got = _run_head(head, chunk, fused_cache)
            assert meter.convs == 0
            torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
            t0 += n
    assert fused_cache.get(head[2]).shape == (1, 2, 6, 7, 88)  # two frames of 81 (+7 pad) partials


@pytest.mark.parametrize(("head_impl", "convs"), [("gemm", 0), ("gemm_fp32", 0), ("cudnn", 1)])
def test_rgb_head_impls_agree(head_impl: str, convs: int) -> None:
    # WanVAE.head_impl / CausalCache(head_impl=): the GEMM + gather head with bf16-or-input-dtype partials
    # ("gemm"), fp32 partials ("gemm_fp32"), or one conv per chunk ("cudnn"); all the eager head's result.
    torch.manual_seed(0)
    head = _head(8, 3).eval()
    nn.init.normal_(head[2].bias, std=1.0)
    x = torch.randn(1, 8, 5, 6, 7).contiguous(memory_format=torch.channels_last_3d)
    eager_cache, fused_cache = CausalCache(), CausalCache(fused=True, head_impl=head_impl)
    with torch.no_grad():
        for t0, n in ((0, 1), (1, 4)):
            chunk = x[:, :, t0 : t0 + n]
            expected = _run_head(head, chunk, eager_cache)
            with ConvBiases() as meter:
                got = _run_head(head, chunk, fused_cache)
            assert meter.convs == convs
            torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="head_impl"):
        CausalCache(fused=True, head_impl="winograd")


@pytest.mark.slow
@pytest.mark.parametrize("conv_impl", ["taps2d", "cudnn3d", "igemm"])
def test_fused_decode_matches_eager(vae: WanVAE, conv_impl: str) -> None:
    # Triton interpreter on CPU: slow, so one small decode in two chunks after the first. "igemm": the tiny
    # decoder's 32-wide blocks (the middle and the first level) through kernels.conv3d_igemm.
    latents = torch.randn(1, 16, 3, 2, 3)
    eager = vae.decode(latents, fused=False)
    default, vae.conv_impl = vae.conv_impl, conv_impl
    widths, vae.igemm_channels = vae.igemm_channels, (32,)
    try:
        chunks = list(vae.decode_iter(latents, fused=True, chunk_latents=1, prefix_latents=2))
    finally:
        vae.conv_impl, vae.igemm_channels = default, widths
        for m in vae.modules():  # back to contiguous weights for the other tests
            if isinstance(m, (nn.Conv2d, nn.Conv3d)):
                m.weight.data = m.weight.data.contiguous()
    assert [c.shape[2] for c in chunks] == [1, 4, 4]
    torch.testing.assert_close(torch.cat(chunks, dim=2), eager, atol=2e-5, rtol=1e-5)


@pytest.mark.slow
def test_fused_encode_matches_eager(vae: WanVAE) -> None:
    video = torch.rand(1, 3, 9, 16, 16) * 2 - 1
    eager = vae.encode(video, fused=False)
    fused = vae.encode(video, fused=True, chunk_latents=2)
    torch.testing.assert_close(fused, eager, atol=2e-5, rtol=1e-5)


def test_chunked_encode_equals_whole_sequence(vae: WanVAE) -> None:
    video = torch.rand(1, 3, 9, 16, 24) * 2 - 1
    latents = vae.encode(video)
    cache = CausalCache()
    with torch.no_grad():
        mu = vae.conv1(vae.encoder(video, cache), cache)[:, :16]
    mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)
    torch.testing.assert_close(latents, (mu - mean) / std, atol=2e-5, rtol=1e-5)


def test_causal_later_frames_do_not_change_earlier_latents(vae: WanVAE) -> None:
    video = torch.rand(1, 3, 9, 16, 16) * 2 - 1
    edited = video.clone()
    edited[:, :, 5:] = -edited[:, :, 5:]  # only the last 4-frame chunk differs
    a, b = vae.encode(video), vae.encode(edited)
    torch.testing.assert_close(a[:, :, :2], b[:, :, :2])
    assert not torch.allclose(a[:, :, 2], b[:, :, 2])


def test_decode_peak_memory_does_not_grow_with_frames(vae: WanVAE) -> None:
    def extra_peak(fn, latents: torch.Tensor) -> int:  # type: ignore[no-untyped-def]
        with LiveTensorBytes() as meter:
            out = fn(latents)
        assert meter.current == out.untyped_storage().nbytes()  # nothing but the output left behind
        return meter.peak - out.untyped_storage().nbytes()

    short, long = torch.randn(1, 16, 3, 2, 2), torch.randn(1, 16, 12, 2, 2)  # 9 vs 45 output frames
    # The meter sees growth where there is growth: the unchunked decoder holds all frames.
    whole_short, whole_long = extra_peak(lambda z: _decode_whole(vae, z), short), extra_peak(
        lambda z: _decode_whole(vae, z), long
    )
    assert whole_long > 3 * whole_short
    # Ours: beyond the output buffer, the peak stays that of one chunk.
    ours_short, ours_long = extra_peak(vae.decode, short), extra_peak(vae.decode, long)
    assert ours_long < 1.1 * ours_short
    assert ours_long < whole_long / 3


def test_decode_convs_see_one_chunk(vae: WanVAE) -> None:
    seen: list[int] = []
    hooks = [
        m.register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape[2]))
        for m in vae.decoder.modules()
        if isinstance(m, nn.Conv3d)
    ]
    try:
        vae.decode(torch.randn(1, 16, 6, 2, 2))
    finally:
        for h in hooks:
            h.remove()
    # At most 4 new frames plus 2 cached ones of context, whatever the number of latent frames.
    assert seen and max(seen) <= 6


@pytest.mark.parametrize(
    ("shape", "match"),
    [
        ((1, 3, 8, 16, 16), "4k\\+1"),
        ((1, 3, 5, 20, 16), "multiples of 8"),
        ((1, 3, 5, 16, 12), "multiples of 8"),
        ((1, 4, 5, 16, 16), "\\[B, 3, F, H, W\\]"),
        ((3, 5, 16, 16), "\\[B, 3, F, H, W\\]"),
    ],
)
def test_encode_rejects_bad_video(vae: WanVAE, shape: tuple[int, ...], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        vae.encode(torch.zeros(shape))


def test_decode_rejects_bad_latents(vae: WanVAE) -> None:
    with pytest.raises(ValueError, match="16"):
        vae.decode(torch.zeros(1, 4, 2, 2, 2))
    with pytest.raises(ValueError, match="16"):
        vae.decode(torch.zeros(16, 2, 2, 2))


def test_config_presets_and_round_trip() -> None:
    wan = VAEConfig.from_name("wan2.1")
    assert (wan.base_dim, wan.z_dim, wan.dim_mult, wan.num_res_blocks) == (96, 16, (1, 2, 4, 4), 2)
    assert wan.temporal_downsample == (False, True, True)
    assert (wan.temporal_factor, wan.spatial_factor) == (4, 8)
    assert VAEConfig.from_name("tiny").z_dim == 16
    assert VAEConfig.from_dict(wan.to_dict()) == wan
    with pytest.raises(ValueError, match="unknown VAE preset"):
        VAEConfig.from_name("wan9")
    with pytest.raises(ValueError, match="latents_mean"):
        VAEConfig(z_dim=8)
    with pytest.raises(dataclasses.FrozenInstanceError):
        wan.base_dim = 3  # type: ignore[misc]


def test_full_size_parameter_shapes_match_wan() -> None:
    with torch.device("meta"):
        state = WanVAE(VAEConfig.from_name("wan2.1")).state_dict()
    # Shapes from Wan2.1_VAE.pth (z=16, dim 96).
    assert state["encoder.conv1.weight"].shape == (96, 3, 3, 3, 3)
    assert state["encoder.head.2.weight"].shape == (32, 384, 3, 3, 3)
    assert state["conv1.weight"].shape == (32, 32, 1, 1, 1)
    assert state["conv2.weight"].shape == (16, 16, 1, 1, 1)
    assert state["decoder.upsamples.3.time_conv.weight"].shape == (768, 384, 3, 1, 1)
    assert state["decoder.upsamples.3.resample.1.weight"].shape == (192, 384, 3, 3)
    assert state["decoder.upsamples.4.shortcut.weight"].shape == (384, 192, 1, 1, 1)
    assert state["decoder.middle.1.norm.gamma"].shape == (384, 1, 1)
    assert state["encoder.downsamples.5.time_conv.weight"].shape == (192, 192, 3, 1, 1)
    assert sum(v.numel() for v in state.values()) == pytest.approx(127e6, rel=0.02)


def test_infer_config_from_weights() -> None:
    cfg = VAEConfig(base_dim=8, num_res_blocks=1, temporal_downsample=(True, False, True))
    with torch.device("meta"):
        state = WanVAE(cfg).state_dict()
    assert infer_config(state) == cfg


def test_load_vae_pth_round_trip_and_dtype(vae: WanVAE, tmp_path: Path) -> None:
    torch.save(vae.state_dict(), tmp_path / "Wan2.1_VAE.pth")
    loaded = load_vae(tmp_path / "Wan2.1_VAE.pth")
    for key, value in vae.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value, rtol=0, atol=0)
    assert not any(p.requires_grad for p in loaded.parameters())
    half = load_vae(tmp_path / "Wan2.1_VAE.pth", dtype=torch.bfloat16)
    assert half.conv2.weight.dtype == torch.bfloat16
    assert half.decode(torch.zeros(1, 16, 1, 1, 1)).dtype == torch.bfloat16


def test_load_vae_names_missing_and_unexpected_keys(vae: WanVAE, tmp_path: Path) -> None:
    state = dict(vae.state_dict())
    del state["decoder.head.2.bias"]
    state["decoder.extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match=r"decoder\.head\.2\.bias") as info:
        load_vae(tmp_path / "bad.pth")
    assert "decoder.extra.weight" in str(info.value)


def test_load_vae_shape_mismatch(vae: WanVAE, tmp_path: Path) -> None:
    state = dict(vae.state_dict())
    state["decoder.head.0.gamma"] = torch.ones(5, 1, 1, 1)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match=r"decoder\.head\.0\.gamma"):
        load_vae(tmp_path / "bad.pth")


def test_canonical_manifest_is_checked(vae: WanVAE, tmp_path: Path) -> None:
    save_vae_canonical(vae, tmp_path / "ok")
    assert load_vae(tmp_path / "ok").config == vae.config
    write_canonical(tmp_path / "dit", vae.state_dict(), Manifest("transformer", vae.config.to_dict()))
    with pytest.raises(CheckpointError, match="not a VAE"):
        load_vae(tmp_path / "dit")
    with pytest.raises(CheckpointError, match="not a Wan VAE"):
        torch.save({"foo.weight": torch.zeros(1)}, tmp_path / "other.pth")
        load_vae(tmp_path / "other.pth")


def _conv_macs(vae: WanVAE) -> tuple[dict[str, int], list]:
    """Multiply-accumulates of the encoder's convolutions, counted by forward hooks (and the hooks)."""
    count = {"macs": 0}

    def hook(m: nn.Module, args: tuple, out: torch.Tensor) -> None:
        assert isinstance(m, (nn.Conv2d, nn.Conv3d))
        count["macs"] += out.numel() * m.in_channels * int(torch.tensor(m.kernel_size).prod())

    hooks = [m.register_forward_hook(hook) for m in vae.encoder.modules() if isinstance(m, (nn.Conv2d, nn.Conv3d))]
    return count, hooks


def _i2v_video(frames: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    video = torch.zeros(1, 3, frames, h, w)
    video[:, :, :1] = torch.rand(1, 3, 1, h, w, generator=g) * 2 - 1
    return video


@pytest.mark.parametrize("chunk_latents", [1, 2, 3])
def test_steady_encode_of_an_i2v_video_matches_the_full_encode_with_less_work(vae: WanVAE,
                                                                               chunk_latents: int) -> None:
    """The image then zeros (Wan's I2V condition): each layer stops computing frames once its output
    settles, and the latents equal those of every frame computed."""
    video = _i2v_video(41, 16, 24)
    count, hooks = _conv_macs(vae)
    try:
        vae.skip_steady_frames = False
        full = vae.encode(video, chunk_latents=chunk_latents)
        full_macs = count["macs"]
        count["macs"] = 0
        vae.skip_steady_frames = True
        steady = vae.encode(video, chunk_latents=chunk_latents)
        steady_macs = count["macs"]
    finally:
        vae.skip_steady_frames = True
        for h in hooks:
            h.remove()
    torch.testing.assert_close(steady, full, atol=1e-5, rtol=1e-5)
    assert steady_macs < 0.7 * full_macs, (steady_macs, full_macs)


def test_steady_encode_skips_settled_layers_in_later_chunks(vae: WanVAE) -> None:
    """Once a layer's output has settled, the chunks after it do not run that layer: an I2V condition encoded
    one latent frame per chunk costs what it costs in one chunk (1.28× at this size when each chunk recomputed
    one settled frame per layer; ~2× for the real VAE at 720p, where the H200 worker's memory budget makes
    2-latent chunks), and gives the same latents."""
    video = _i2v_video(41, 16, 24, seed=7)
    count, hooks = _conv_macs(vae)
    macs, latents = {}, {}
    try:
        for chunk in (1, 10):
            count["macs"] = 0
            latents[chunk] = vae.encode(video, chunk_latents=chunk)
            macs[chunk] = count["macs"]
    finally:
        for h in hooks:
            h.remove()
    torch.testing.assert_close(latents[1], latents[10], atol=1e-5, rtol=1e-5)
    assert macs[1] <= 1.1 * macs[10], macs


def test_steady_encode_of_an_i2v_video_compares_no_frames_per_layer(vae: WanVAE,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The video's frames are compared once, in one pass; each layer then knows its input's run from the layer
    before it, so no per-layer comparison (each a device sync on a GPU) runs, and the latents stay those of
    the every-frame encode."""
    import models.vae as vae_module

    video = _i2v_video(41, 16, 24, seed=8)
    vae.skip_steady_frames = False
    try:
        full = vae.encode(video, chunk_latents=2)
    finally:
        vae.skip_steady_frames = True
    calls: list[str] = []
    for name in ("_equal_tail", "_same_frame"):
        real = getattr(vae_module, name)
        monkeypatch.setattr(vae_module, name, lambda *a, _n=name, _f=real, **k: calls.append(_n) or _f(*a, **k))
    steady = vae.encode(video, chunk_latents=2)
    assert calls == []
    torch.testing.assert_close(steady, full, atol=1e-5, rtol=1e-5)


def test_same_as_previous_compares_each_frame_over_the_batch() -> None:
    from models.vae import _same_as_previous

    x = torch.zeros(2, 3, 9, 4, 5)
    x[:, :, 0] = 1.0
    x[1, 2, 5, 3, 4] = 2.0  # one value of one sample: frame 5 differs from 4, and 6 from 5
    assert _same_as_previous(x) == [False, False, True, True, True, False, False, True, True]
    assert _same_as_previous(x[:, :, :1]) == [False]


def test_steady_encode_of_a_constant_tail_starting_mid_chunk(vae: WanVAE) -> None:
    """Moving frames, then a still grey tail that starts inside a chunk: the same latents."""
    video = torch.rand(1, 3, 33, 16, 16, generator=torch.Generator().manual_seed(3)) * 2 - 1
    video[:, :, 14:] = 0.3
    vae.skip_steady_frames = False
    try:
        full = vae.encode(video, chunk_latents=3)
    finally:
        vae.skip_steady_frames = True
    torch.testing.assert_close(vae.encode(video, chunk_latents=3), full, atol=1e-5, rtol=1e-5)


def test_steady_skipping_stays_off_for_moving_video(vae: WanVAE, monkeypatch: pytest.MonkeyPatch) -> None:
    """A video whose last frames differ runs every layer on every frame, as before (no per-layer checks), and
    only its last 2·tf frames are compared (no pass over the whole video)."""
    import models.vae as vae_module

    calls = []
    monkeypatch.setattr(vae_module, "_steady_call", lambda *a: calls.append(a) or pytest.fail("steady path ran"))
    compared: list[int] = []
    real = vae_module._same_as_previous
    monkeypatch.setattr(vae_module, "_same_as_previous", lambda x: compared.append(x.shape[2]) or real(x))
    video = torch.rand(1, 3, 17, 16, 16, generator=torch.Generator().manual_seed(4)) * 2 - 1
    vae.encode(video, chunk_latents=2)
    assert calls == []
    assert compared == [2 * vae.config.temporal_factor]


def test_steady_call_computes_only_until_the_run_and_keeps_the_cache_exact() -> None:
    """One causal conv over a chunk whose last frames are equal: only the frames up to the first output
    inside the run are computed, the rest repeats it, and the next chunk sees the same context."""
    from models.vae import CausalConv3d, _steady_call

    torch.manual_seed(5)
    conv = CausalConv3d(4, 4, 3).eval()
    x = torch.rand(1, 4, 10, 5, 5)
    x[:, :, 3:] = x[:, :, 3:4]  # frames 3..9 equal
    ref_cache, cache = CausalCache(), CausalCache()
    cache.steady = True
    with torch.no_grad():
        head_ref = conv(x[:, :, :1], ref_cache)
        head, _ = _steady_call(conv, conv, [x[:, :, :1]], 1, cache)
        ref = conv(x[:, :, 1:], ref_cache)  # [1, 4, 9, 5, 5]
        y, total = _steady_call(conv, conv, [x[:, :, 1:]], 9, cache)
        assert total == 9 and y.shape[2] == 5  # run starts at chunk frame 2: outputs 0..4 computed
        torch.testing.assert_close(torch.cat([y, y[:, :, -1:].expand(-1, -1, 4, -1, -1)], 2), ref)
        nxt = torch.rand(1, 4, 3, 5, 5)
        torch.testing.assert_close(conv(nxt, cache), conv(nxt, ref_cache))  # the cache is the full chunk's
    torch.testing.assert_close(head, head_ref)


def test_steady_encode_takes_no_more_memory_than_the_full_encode(vae: WanVAE,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Each layer's input is freed once the next layer's is built. Skipping frames raises the peak by at most
    the one frame per layer kept to compare the next chunk with (~0.9 GiB at 720p on the real VAE, where the
    peak is 9.4 against 8.4 GiB); at this size it lowers it (it rose above the full encode's before the
    inputs were freed)."""
    video = _i2v_video(41, 64, 96, seed=6)
    caches: list[CausalCache] = []
    make = WanVAE._cache
    monkeypatch.setattr(WanVAE, "_cache", lambda self, fused: caches.append(make(self, fused)) or caches[-1])
    peaks = {}
    for steady in (False, True):
        vae.skip_steady_frames = steady
        with torch.no_grad(), LiveTensorBytes() as live:
            vae.encode(video, chunk_latents=3)
        peaks[steady] = live.peak
    vae.skip_steady_frames = True
    kept = sum(t.numel() * t.element_size() for r in caches[-1]._runs.values() for t in (r.frame, r.output)
               if t is not None)
    assert kept > 0 and not caches[0]._runs
    assert peaks[True] <= peaks[False] + kept, (peaks, kept)
    assert peaks[True] <= peaks[False], peaks


@pytest.mark.slow
def test_steady_encode_on_the_fast_path_matches_its_every_frame_encode(vae: WanVAE) -> None:
    """The fused path (Triton norm passes under the interpreter, taps2d convs writing padded buffers): a
    truncated chunk keeps each conv's padded-buffer context right for the next chunk."""
    video = _i2v_video(25, 16, 16, seed=7)
    vae.skip_steady_frames = False
    try:
        full = vae.encode(video, fused=True, chunk_latents=2)
    finally:
        vae.skip_steady_frames = True
    torch.testing.assert_close(vae.encode(video, fused=True, chunk_latents=2), full, atol=1e-5, rtol=1e-5)


def test_steady_encode_chunks_leave_room_for_the_kept_frames(vae: WanVAE, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fast path's chunk size counts the frames a steady-frame encode keeps between chunks (an I2V
    condition), and only then."""
    class Planned(Exception):
        pass

    seen: list[tuple[int, int]] = []

    def plan(self: WanVAE, per_latent: int, fixed: int, t_rest: int, budget: int | None) -> int:
        seen.append((per_latent, fixed))
        raise Planned

    monkeypatch.setattr(WanVAE, "_latents_per_chunk", plan)
    moving = torch.rand(1, 3, 17, 16, 24, generator=torch.Generator().manual_seed(8)) * 2 - 1
    for video in (moving, _i2v_video(17, 16, 24)):
        with pytest.raises(Planned):
            vae.encode(video, fused=True)
    frame = vae.config.base_dim * 16 * 24 * 4  # one fp32 full-resolution activation frame
    (per_moving, fixed_moving), (per_i2v, fixed_i2v) = seen
    assert per_moving == per_i2v == 7 * 4 * frame
    assert fixed_i2v - fixed_moving == 5 * frame


def test_frame_attention_matches_sdpa_on_the_strided_qkv_views() -> None:
    # q, k, v as the attention block makes them: thirds of one [N, L, 3C] tensor (row stride 3C)
    torch.manual_seed(0)
    qkv = torch.randn(3, 37, 3 * 24)
    q, k, v = qkv.chunk(3, dim=-1)
    want = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]
    got = _frame_attention(q, k, v)
    assert got.shape == (3, 37, 24) and got.dtype == torch.float32
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # 16-bit inputs: fp32 scores, probabilities rounded once to the input dtype, as a flash kernel does
    qb, kb, vb = (t.to(torch.bfloat16) for t in (q, k, v))
    got_b = _frame_attention(qb, kb, vb)
    want_b = F.scaled_dot_product_attention(qb.float()[:, None], kb.float()[:, None], vb.float()[:, None])[:, 0]
    assert got_b.dtype == torch.bfloat16
    torch.testing.assert_close(got_b.float(), want_b, atol=3e-2, rtol=3e-2)
    assert F.cosine_similarity(got_b.float().flatten(), want_b.flatten(), dim=0) > 0.9999


@pytest.mark.parametrize("impl", ["gemm", "sdpa"])
def test_fused_attention_block_impls_match_eager(vae: WanVAE, impl: str, monkeypatch: pytest.MonkeyPatch) -> None:
    block = next(m for m in vae.decoder.modules() if isinstance(m, AttentionBlock))
    c = block.proj.out_channels
    x = torch.randn(1, c, 3, 4, 5)
    with torch.no_grad():
        eager = block(x, CausalCache())
        if impl == "gemm":  # the fast path must not fall back to torch's SDPA

            def no_sdpa(*args: object, **kwargs: object) -> torch.Tensor:
                raise AssertionError("SDPA called")

            monkeypatch.setattr(F, "scaled_dot_product_attention", no_sdpa)
        fused = block(x.contiguous(memory_format=torch.channels_last_3d),
                      CausalCache(fused=True, attention_impl=impl))
    torch.testing.assert_close(fused, eager, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="attention_impl"):
        CausalCache(fused=True, attention_impl="flash")


def test_igemm_decode_plan_takes_bigger_chunks_within_the_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    # The implicit-GEMM blocks hold ~4 full-resolution activations per frame, not 7: at 720p the default
    # 12 GiB budget takes 2 latent frames per chunk instead of 1 (measured on an H200: 10.6 GiB peak).
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # the kernel "runs" on this (meta) device
    with torch.device("meta"):
        full = WanVAE(VAEConfig.from_name("wan2.1")).to(torch.bfloat16)
    assert full._igemm_full_resolution()
    shape_720p = (1, 16, 21, 90, 160)
    _, plan = full.decode_plan(shape_720p, fused=True, taper=False)
    assert max(plan) == 2 and sum(plan) == 21
    full.igemm_channels = (192,)  # the full-resolution (96-wide) blocks on cuDNN taps: the old sizing
    assert not full._igemm_full_resolution()
    assert max(full.decode_plan(shape_720p, fused=True, taper=False)[1]) == 1
    full.igemm_channels, full.conv_impl = (96, 192), "taps2d"
    assert max(full.decode_plan(shape_720p, fused=True, taper=False)[1]) == 1
    full.conv_impl = "igemm"
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # nowhere to run the kernel: the old sizing
    assert max(full.decode_plan(shape_720p, fused=True, taper=False)[1]) == 1
    # at 480p the budget would allow 7, but budget-sized chunks stop at 4 latent frames (16 video frames)
    assert max(full.decode_plan((1, 16, 21, 60, 104), fused=True, taper=False)[1]) == 4
    assert max(full.decode_plan(shape_720p, fused=True, taper=False, memory_budget=40 * 2**30)[1]) == 4
    assert max(full.decode_plan((1, 16, 21, 60, 104), fused=True, chunk_latents=7)[1]) == 7  # asked for: kept
    # a smaller budget still shrinks the chunks
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert max(full.decode_plan(shape_720p, fused=True, taper=False, memory_budget=9 * 2**30)[1]) == 1
