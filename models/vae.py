"""The Wan2.1 video VAE: a causal 3-D convolutional autoencoder, 16 latent channels, 4× in time, 8× in space.

Layouts:
    video    [B, 3, F, H, W], values in [-1, 1], F = 4k + 1, H and W multiples of 8
    latents  [B, 16, (F - 1) / 4 + 1, H / 8, W / 8], normalised per channel: (mu - mean) / std

Every convolution over time is causal: an output frame sees only its own and earlier input frames, so
a video can be pushed through in time chunks. Wan does exactly that and so do we: encode takes the
first frame, then chunks of 4 frames (one latent frame each); decode takes one latent frame at a time
(1 output frame for the first, 4 for each later one) and writes it into a preallocated output, so
activations never exist for more than one chunk. What one chunk leaves for the next (the last frames
each causal conv saw, whether a temporal resampler has passed its first frame) lives in an explicit
`CausalCache` handed to every layer; the modules themselves hold no state between calls.

Parameter names equal those of Wan's `Wan2.1_VAE.pth` (`encoder.*`, `decoder.*`, `conv1`, `conv2`), so
that file loads without renaming; `models.vae_loading` also maps diffusers' `AutoencoderKLWan` names.
Fast path (`fused=True`, the default on CUDA): activations in channels-last-3d memory (cuDNN's NDHWC
conv kernels), the RMS-norm + SiLU of every residual block in one Triton pass
(`kernels.rmsnorm_silu`) that writes straight into the causal conv's time-padded input buffer, spatial
padding done by the convolution itself, the upsamplers' nearest-2× + 3×3 conv as the four output parities'
2×2 convs on the low-resolution frames (16 instead of 36 multiply-adds per output), stacked into one conv
and interleaved by one Triton pass (`kernels.pixel_interleave`), the RGB head (3 output channels, which
cuDNN tiles badly) as one GEMM over the pixels with all 27 taps' weights and a Triton gather pass
(`kernels.conv_head`), the mid blocks' single 384-wide attention head (too wide for any fused SDPA kernel)
as two tensor-core GEMMs with fp32 scores around a one-pass Triton softmax (`_frame_attention`,
`kernels.softmax_rows`), and big chunks: the latent-resolution blocks see all latent frames at once, the
blocks after the first upsampler see as many latent frames per chunk as the memory budget allows (at most
4), ending on chunks of 4, 2, 1 latent frames (`chunk_plan`: the streaming MP4 encoder then has little left
after the last one).
`WanVAE.conv_impl = "taps2d"` ("cudnn3d" for cuDNN's 3-D kernels) runs the residual blocks'
3×3×3 convs as three conv2d (one per time tap) whose partial outputs the next norm pass sums; the
residual blocks' conv biases are added in those passes too (cuDNN would add each in a pass of its own).
`conv_impl = "igemm"` (the default) runs the square residual blocks whose width is in `WanVAE.igemm_channels` with
`kernels.conv3d_igemm` instead (sm90+; elsewhere as taps2d): each conv one implicit GEMM summing all 27 taps,
the first conv's epilogue writing the next norm + SiLU straight into the second conv's input buffer, the
second's adding bias and residual, so neither conv's output makes a pass through memory of its own.
Chunking never changes the result beyond rounding (every layer is causal and carries its cache); the eager path (`fused=False`) is the op-for-op definition the parity tests hold against
diffusers. An encode whose video ends on equal frames (an I2V condition: the image, then zeros) computes
each encoder layer only until its output settles into a repeated frame (`WanVAE.skip_steady_frames`,
`_steady_call`); a later chunk skips a settled layer altogether, and the video's frames are compared once, in
one pass, not per layer (each comparison was a device sync). Measurements: kernels/NOTES_vae.md.

Temporal resampling, as Wan defines it (the first frame is special):
    downsample3d: out = [x0] + [conv(x[2k-2], x[2k-1], x[2k]) for k >= 1]      (stride-2 kernel-3 conv)
    upsample3d:   out = [x0] + interleave(causal_conv(x[1:]) split in 2 frames) (x0 is not context)
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, fields
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

# Per-channel statistics of the Wan2.1 VAE's posterior mean, as published with Wan2.1
# (wan/modules/vae.py); latents are (mu - mean) / std.
WAN21_LATENT_MEAN: tuple[float, ...] = (
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
)  # fmt: skip
WAN21_LATENT_STD: tuple[float, ...] = (
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
)  # fmt: skip


@dataclass(frozen=True)
class VAEConfig:
    base_dim: int = 96
    z_dim: int = 16
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    temporal_downsample: tuple[bool, ...] = (False, True, True)
    dropout: float = 0.0
    latents_mean: tuple[float, ...] = WAN21_LATENT_MEAN
    latents_std: tuple[float, ...] = WAN21_LATENT_STD

    def __post_init__(self) -> None:
        if len(self.temporal_downsample) != len(self.dim_mult) - 1:
            raise ValueError(
                f"temporal_downsample needs {len(self.dim_mult) - 1} entries (one per downsampling), "
                f"got {len(self.temporal_downsample)}"
            )
        if len(self.latents_mean) != self.z_dim or len(self.latents_std) != self.z_dim:
            raise ValueError(f"latents_mean and latents_std need z_dim={self.z_dim} values each")

    @property
    def temporal_factor(self) -> int:
        return 2 ** sum(self.temporal_downsample)

    @property
    def spatial_factor(self) -> int:
        return 2 ** (len(self.dim_mult) - 1)

    @classmethod
    def from_name(cls, name: str) -> VAEConfig:
        if name not in VAE_PRESETS:
            raise ValueError(f"unknown VAE preset {name!r}; known: {sorted(VAE_PRESETS)}")
        return VAE_PRESETS[name]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VAEConfig:
        """Inverse of `to_dict` (JSON lists become tuples); unknown fields are an error."""
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown VAEConfig fields: {sorted(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# Bytes of GPU memory one encode or decode may take beyond what is allocated already (output included).
DEFAULT_MEMORY_BUDGET = 12 * 2**30
# Chunk sizing on the fast path: full-resolution activations (base_dim channels) live at once per frame
# (a residual block holds its input, the padded conv input and three time-tap partial outputs), and
# bytes for everything else (cuDNN workspace, attention, caches). Measured peaks: kernels/NOTES_vae.md.
_LIVE_ACTIVATIONS = 7
_WORKSPACE = 3 * 2**29
# With the full-resolution residual blocks on the implicit-GEMM conv (conv_impl "igemm": no tap partials, no
# separate norm or residual passes) a decode chunk holds ~4 such activations per frame, and the causal cache
# ~22 full-resolution frames (every conv's last 2 input frames, all levels). Measured on an H200 at 480p and
# 720p: peak = fixed + 4.0 activations per frame (kernels/NOTES_vae.md, session 21); these leave ~0.8 GiB spare.
_LIVE_ACTIVATIONS_IGEMM = 4.25
_CACHE_FRAMES_IGEMM = 22
_WORKSPACE_IGEMM = 2**29
# Budget-sized decode chunks stop at this many latent frames (16 video frames): beyond it the convs gain nothing
# (480p on an H200: 0.619 / 0.620 / 0.618 s at 4 / 7 / 10 latents per chunk), while the memory grows and a
# streaming consumer (the worker's MP4 encoder) gets its first frames later and ends further behind: with 7
# the whole job's encode tail went from 0.12-0.14 to 0.25-0.27 s (kernels/NOTES_vae.md, session 21).
_MAX_CHUNK_LATENTS = 4
# A steady-frame encode (`_steady_call`) also keeps one input frame per encoder layer between chunks (the
# frame the layer before it settled into, one clone for both): about this many full-resolution base_dim
# frames (0.9 GiB at 720p on the real VAE, measured on an H200 before settled layers were skipped).
_STEADY_KEPT_FRAMES = 5

def chunk_plan(t_rest: int, chunk: int, *, taper: bool) -> list[int]:
    """Latent frames per decode chunk after the first latent frame (which always goes alone): chunks of
    `chunk`, the last one smaller, summing to `t_rest`. With `taper`, the plan ends on halving chunks
    (…, 4, 2, 1; each smaller than `chunk`): a consumer that handles each chunk while the next one is
    decoded (the worker's MP4 encoder) then has one latent frame's worth (4 frames) left after the last
    one instead of a whole chunk. Chunking never changes the decoded frames (the causal cache makes it
    exact), only when they come out.

        chunk_plan(20, 7, taper=False) == [7, 7, 6]
        chunk_plan(20, 7, taper=True) == [7, 6, 4, 2, 1]
        chunk_plan(20, 4, taper=True) == [4, 4, 3, 3, 3, 2, 1]
    """
    chunk = max(1, chunk)
    tail: list[int] = []
    n = 1
    while taper and n < chunk and sum(tail) + n <= t_rest:
        tail.insert(0, n)
        n *= 2
    rest = t_rest - sum(tail)
    if not taper:
        return [min(chunk, rest - i) for i in range(0, rest, chunk)]
    k = -(-rest // chunk)  # near-equal chunks before the taper, larger first
    return [rest // k + int(i < rest % k) for i in range(k)] + tail


@dataclass
class DecodeStart:
    """What `WanVAE.begin_decode` hands to the chunk loop: the latent-resolution blocks' output for all
    frames [B, C_top, T, h, w], the causal cache they filled, and the chunk plan (latent frames per chunk,
    1 first)."""

    low: torch.Tensor
    cache: CausalCache
    plan: list[int]


VAE_PRESETS: dict[str, VAEConfig] = {
    "wan2.1": VAEConfig(),
    # Same structure and latent space (z=16, 4×/8×) as Wan2.1, narrow channels: CPU tests, dev stack.
    "tiny": VAEConfig(base_dim=8),
}


class _Run(NamedTuple):
    """A layer's run of equal input frames at the end of the last chunk (`_steady_call`)."""

    frame: torch.Tensor  # the last input frame [B, C, H, W]
    length: int  # how many input frames in a row have equalled it
    output: torch.Tensor | None  # [B, C', 1, H', W']: the output frame the run settled into, once one did


class _Hint(NamedTuple):
    """What `_steady_call` knows of a layer's input x without comparing its frames (each comparison a device
    sync): from the layer before it (or, for the first layer, from the whole video compared at once)."""

    x: torch.Tensor  # the input it describes (by identity)
    tail: int  # frames at x's end known to equal its last (at least 1; fewer than there are is still exact)
    continues: bool | None  # x's first frame equals the layer's last input frame before x (None: unknown)
    kept: torch.Tensor | None  # a clone of x's last frame [B, C, 1, H, W] already kept, or None


class CausalCache:
    """What one time chunk leaves for the next, per layer: the last input frames of each causal conv,
    and which temporal resamplers have already passed their first frame.

    Make one per encode or decode call and hand it to every layer with each chunk, in time order.
    `fused` selects the fast path for every layer of that call (see the module docstring).
    """

    def __init__(self, *, fused: bool = False, conv_impl: str = "cudnn3d", igemm_channels: tuple[int, ...] = (),
                 head_impl: str = "gemm", attention_impl: str = "gemm") -> None:
        if conv_impl not in CONV_IMPLS:
            raise ValueError(f"conv_impl must be one of {CONV_IMPLS}, got {conv_impl!r}")
        if head_impl not in HEAD_IMPLS:
            raise ValueError(f"head_impl must be one of {HEAD_IMPLS}, got {head_impl!r}")
        if attention_impl not in ATTENTION_IMPLS:
            raise ValueError(f"attention_impl must be one of {ATTENTION_IMPLS}, got {attention_impl!r}")
        self.head_impl = head_impl  # fast path: the RGB head (see HEAD_IMPLS)
        self.attention_impl = attention_impl  # fast path: the mid blocks' attention (see ATTENTION_IMPLS)
        self.fused = fused
        self.conv_impl = conv_impl  # fast path: how 3×3×3 convs run (see CausalConv3d.forward_buffer)
        self.igemm_channels = igemm_channels  # conv_impl "igemm": the residual blocks' widths it applies to
        self._frames: dict[nn.Module, torch.Tensor] = {}
        self._started: set[nn.Module] = set()
        # Steady-state skipping (`WanVAE.encode` turns it on for a video whose last frames are all equal):
        # per layer, the last input frame seen, how many frames in a row it has been the same, and the
        # output frame that run settled into (`_steady_call`).
        self.steady = False
        self._runs: dict[nn.Module, _Run] = {}
        self._hint: _Hint | None = None  # what is known of the next steady layer's input, without a comparison

    def get(self, layer: nn.Module) -> torch.Tensor | None:
        return self._frames.get(layer)

    def put(self, layer: nn.Module, frames: torch.Tensor) -> None:
        self._frames[layer] = frames

    def first_call(self, layer: nn.Module) -> bool:
        """True the first time `layer` asks, False afterwards."""
        if layer in self._started:
            return False
        self._started.add(layer)
        return True

    def nbytes(self) -> int:
        kept = [*self._frames.values(), *(t for r in self._runs.values() for t in (r.frame, r.output) if t is not None)]
        storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in kept}  # shared: once
        return sum(storages.values())


_CL3D = torch.channels_last_3d
CONV_IMPLS = ("cudnn3d", "taps2d", "igemm")
# Fast path: the mid blocks' single-head attention. "gemm": `_frame_attention` (fp32 scores from a 16-bit GEMM,
# a Triton softmax, a second GEMM); "sdpa": torch's scaled_dot_product_attention (its math fallback for the
# 384-wide head: fp32 on CUDA cores).
ATTENTION_IMPLS = ("gemm", "sdpa")


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    """[B, C, T, H, W] in channels-last-3d memory (a no-op when it already is)."""
    return x.contiguous(memory_format=_CL3D)


def _repeat_last(x: torch.Tensor, total: int, fused: bool) -> torch.Tensor:
    """The first `total` frames of x [B, C, n, H, W] followed by copies of its last frame (channels-last-3d on
    the fast path): a view of x when total <= n."""
    n = x.shape[2]
    if total <= n:
        return x[:, :, :total]
    out = torch.empty((*x.shape[:2], total, *x.shape[3:]), device=x.device, dtype=x.dtype,
                      memory_format=_CL3D if fused else torch.contiguous_format)
    out[:, :, :n].copy_(x)
    out[:, :, n:].copy_(x[:, :, n - 1 :].expand(-1, -1, total - n, -1, -1))
    return out


def _time_window(layer: nn.Module) -> tuple[int, int, int]:
    """(reach, stride, offset) of a layer in time: output frame j of a chunk reads its input frames
    stride·j + offset - reach … stride·j + offset (negative: the previous chunk's, through the cache)."""
    if isinstance(layer, CausalConv3d):
        return layer.context, 1, 0
    if isinstance(layer, ResidualBlock):
        return sum(m.context for m in layer.residual if isinstance(m, CausalConv3d)), 1, 0
    if isinstance(layer, Resample) and layer.mode == "downsample3d":
        return 2, 2, 1  # [past, x]: stride-2 windows (x[2j-1], x[2j], x[2j+1])
    if isinstance(layer, AttentionBlock) or (isinstance(layer, Resample) and layer.mode == "downsample2d"):
        return 0, 1, 0  # frame by frame
    raise TypeError(f"no time window known for {type(layer).__name__}")


# `_steady_call`: how far apart two frames computed in different chunks may be and still continue one run,
# in units of the dtype's epsilon times the frame's largest magnitude. The same frame computed in a chunk
# of another length can differ by rounding (another convolution algorithm; seen on CPU with oneDNN).
STEADY_TOLERANCE_EPS = 4.0


def _same_frame(a: torch.Tensor, b: torch.Tensor) -> bool:
    """a equals b, or differs from it by rounding only (STEADY_TOLERANCE_EPS)."""
    if torch.equal(a, b):
        return True
    scale = a.abs().amax().float()
    return bool((a.float() - b.float()).abs().amax() <= STEADY_TOLERANCE_EPS * torch.finfo(a.dtype).eps * scale)


def _equal_tail(x: torch.Tensor, limit: int | None = None) -> int:
    """How many frames at the end of x [B, C, T, H, W] equal its last frame (1 when only itself), counting
    no further than `limit`."""
    t = x.shape[2]
    stop = t if limit is None else min(t, limit)
    n = 1
    while n < stop and torch.equal(x[:, :, t - 1 - n], x[:, :, t - 1]):
        n += 1
    return n


def _same_as_previous(x: torch.Tensor) -> list[bool]:
    """[whether frame i of x [B, C, T, H, W] equals frame i - 1, for each i] (frame 0: False), from one pass."""
    t = x.shape[2]
    if t < 2:
        return [False] * t
    eq = (x[:, :, 1:] == x[:, :, :-1]).all(dim=-1).all(dim=-1).all(dim=1).all(dim=0)  # [T - 1], no copy of x
    return [False, *eq.tolist()]


def _steady_call(
    layer: nn.Module, fn: Callable[[torch.Tensor, CausalCache], torch.Tensor], box: list[torch.Tensor], total: int,
    cache: CausalCache,
) -> tuple[torch.Tensor, int]:
    """fn(x) for a chunk of `total` frames given as x = box.pop() [B, C, n, H, W] (n <= total: frames n..
    repeat the last one; taken out of the box so that it is freed once the layer's input is built from it),
    computing only the output frames that differ: an output frame whose whole time window lies
    in a run of equal input frames (within this chunk, or continuing the run the previous chunk ended on)
    equals every later one, so the layer runs on the input up to the first such frame and the rest of
    its output is that frame repeated. Within a chunk this is exact (the frames left out are the same
    computation on the same inputs); a run continues across chunks when the new chunk's frames equal the
    last one before it up to rounding (`_same_frame`). The layer's cache ends as after the whole chunk (its
    last input frames are in the run). A chunk whose every output frame lies in a run that had already
    settled in an earlier chunk is not computed at all: its output is that earlier frame (the same
    computation on the same inputs, and the layer's cache already holds the run), so once the I2V
    condition's zeros have settled through a layer, later chunks do not run it. `cache._hint` tells a layer
    what its input's run is when the layer before it (or `WanVAE.encode`, for the first) knows, so frames
    are compared here only without one. -> (output frames computed, output frames in all)."""
    reach, stride, offset = _time_window(layer)
    hint, cache._hint = cache._hint, None
    x = box.pop()
    n = x.shape[2]
    last = x[:, :, n - 1]
    if hint is not None and hint.x is not x:
        hint = None
    # the run of frames equal to the last one starts at s (then continues to `total`)
    s = n - (hint.tail if hint is not None else _equal_tail(x))
    prev = cache._runs.get(layer)
    continues = False
    if s == 0 and prev is not None:
        known = hint.continues if hint is not None else None
        continues = known if known is not None else _same_frame(x[:, :, 0], prev.frame)
    start = -prev.length if continues and prev is not None else s
    # the first output frame whose window is all in the run, and the input frames through it
    first = max(0, -(-(start + reach - offset) // stride))
    n_out = total // stride if total > 1 else 1
    if first == 0 and continues and prev is not None and prev.output is not None and total > 1:
        # every output frame is the one the run settled into in an earlier chunk; the next layer last saw
        # that frame too, so its input continues its run
        cache._runs[layer] = _Run(prev.frame, total - start, prev.output)
        cache._hint = _Hint(prev.output, 1, True, None)
        del x, last, hint
        return prev.output, n_out
    m = stride * first + offset + 1
    if total == 1 or m >= total:  # nothing to leave out (the first chunk: the resamplers' first frame)
        m = total
    inp = _repeat_last(x, m, cache.fused)
    if continues and prev is not None:
        frame = prev.frame
    elif hint is not None and hint.kept is not None:  # x's last frame is already kept, by the layer before
        frame = hint.kept[:, :, 0]
    else:
        frame = last.clone()
    del x, last, hint
    y = fn(inp, cache)
    # y's last frame is the run's output when `first` is among the frames computed. For the next layer, y is
    # taken to start no run of its own and to continue none (equal frames here are equal by chance, and
    # leaving them out of a run is exact: only more is computed)
    output = y[:, :, -1:].clone() if first < y.shape[2] else None
    cache._runs[layer] = _Run(frame, total - start, output)
    cache._hint = _Hint(y, 1, False, output)
    return y, n_out if total > 1 else y.shape[2]


def _rows(x: torch.Tensor) -> list[torch.Tensor]:
    """Views of a channels-last-3d [B, C, T, H, W] tensor as B row matrices [T·H·W, C]."""
    return [x[i].movedim(0, -1).view(-1, x.shape[1]) for i in range(x.shape[0])]


def _norm_silu_into(parts: list[torch.Tensor], gamma: torch.Tensor, out: torch.Tensor,
                    bias: torch.Tensor | None = None) -> None:
    """out <- silu(rms_norm(sum(parts) (+ bias)) · gamma) in one Triton pass. parts: one tensor, or a conv's
    three time-tap partial outputs; bias: the conv's [C] bias when it was left out of the conv; out: a
    channels-last-3d view (the new frames of a conv's padded input)."""
    from kernels.rmsnorm_silu import rmsnorm_silu_out, tap_sum_rmsnorm_silu_out

    rows = [_rows(_channels_last(p)) for p in parts]
    for i, outr in enumerate(_rows(out)):
        if len(parts) == 1:
            rmsnorm_silu_out(rows[0][i], gamma, outr, bias=bias)
        else:
            tap_sum_rmsnorm_silu_out(rows[0][i], rows[1][i], rows[2][i], gamma, outr, bias=bias)


def _sum_residual(parts: list[torch.Tensor], residual: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """sum(parts) (+ bias) + residual in one Triton pass, written over parts[0]."""
    from kernels.rmsnorm_silu import residual_sum_out, tap_sum_out

    out = _channels_last(parts[0])
    rows = [_rows(out), *(_rows(_channels_last(p)) for p in (*parts[1:], residual))]
    for row in zip(*rows, strict=True):
        if len(parts) == 1:
            residual_sum_out(row[0], row[1], row[0], bias=bias)
        else:
            tap_sum_out(*row, row[0], bias=bias)
    return out


def _derived(module: nn.Module, slot: str, weight: torch.Tensor, make: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """make(weight), computed once and kept on `module` (outside its parameters and state dict) while the
    weight's storage and version stay the same: a new state dict or an in-place change recomputes it."""
    key = (weight.data_ptr(), weight._version, weight.dtype, weight.device)
    cached = module.__dict__.get(slot)
    if cached is None or cached[0] != key:
        cached = (key, make(weight))
        module.__dict__[slot] = cached
    return cached[1]  # type: ignore[no-any-return]


# The decoder's RGB head (C_out 3) runs as a GEMM with 27·C_out columns (padded to this multiple) and a
# gather pass (kernels/conv_head.py): cuDNN ran it at ~24 TFLOP/s, 21 ms of a 480p decode on an H200.
_HEAD_GEMM_MAX_OUT = 4
_HEAD_COLUMNS = 8
# How the fast path runs that head (`WanVAE.head_impl`): "gemm" keeps the 27 partials in the activations'
# dtype (bf16), half the bytes of "gemm_fp32" at the same fidelity on an H200 (480p decode 0.641 s vs
# 0.649 s vs 0.658 s for "cudnn", cuDNN's conv; cos 0.999917 to the fp32 decode in all three).
HEAD_IMPLS = ("gemm", "gemm_fp32", "cudnn")


def _mm_fp32(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b with fp32 output: on CUDA bf16 inputs with an fp32 result (torch's mm out_dtype), elsewhere in fp32."""
    if a.is_cuda and a.dtype in (torch.bfloat16, torch.float16):
        try:
            return torch.mm(a, b, out_dtype=torch.float32)
        except (TypeError, RuntimeError, NotImplementedError):  # a torch without mm(out_dtype=) on CUDA
            return torch.mm(a, b).float()
    return torch.mm(a.float(), b.float())


def _add_biases(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    return b if a is None else a if b is None else a + b


class CausalConv3d(nn.Conv3d):
    """Conv3d over [B, C, T, H, W] with "same" spatial padding and left-only (causal) time padding.

    The kernel_t - 1 frames before a chunk come from the cache (the end of the previous chunk), zeros
    before the first frame. Stride 1; [B, C_in, T, H, W] -> [B, C_out, T, H, W].
    """

    def __init__(self, in_dim: int, out_dim: int, kernel: int | tuple[int, int, int]) -> None:
        super().__init__(in_dim, out_dim, kernel)
        kt, kh, kw = self.kernel_size
        self.context = kt - 1  # past frames each output frame sees
        self.spatial_pad = ((kw - 1) // 2, (kw - 1) // 2, (kh - 1) // 2, (kh - 1) // 2)

    def forward(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:  # type: ignore[override]
        if cache.fused:
            if not self.context:
                return self._conv(x)
            buf, new = self.input_buffer(x, cache)
            new.copy_(x)
            return self.forward_buffer(buf, cache)
        zeros_t = 0
        if self.context:
            past = cache.get(self)
            if past is not None:
                x = torch.cat([past, x], dim=2)  # [B, C, T_past + T, H, W]
            self.keep_context(x, cache)
            zeros_t = self.context - (0 if past is None else past.shape[2])
        if zeros_t or any(self.spatial_pad):
            x = F.pad(x, (*self.spatial_pad, zeros_t, 0))
        return super().forward(x)

    def keep_context(self, frames: torch.Tensor, cache: CausalCache) -> None:
        """Keep the last `context` frames of this conv's input [B, C_in, T, H, W] for the next chunk (a
        copy: the input's memory is reused or freed)."""
        if self.context:
            cache.put(self, frames[:, :, -self.context :].clone())

    # Fast path: the caller writes the chunk straight into the time-padded input buffer.
    def input_buffer(self, like: torch.Tensor, cache: CausalCache) -> tuple[torch.Tensor, torch.Tensor]:
        """(buf, new): buf [B, C_in, context + T, H, W] channels-last-3d whose first `context` frames
        hold the cached past (zeros before the first frame), and new = buf[:, :, context:], the T
        frames of this chunk for the caller to fill (B, T, H, W, dtype and device as in `like`)."""
        b, _, t, h, w = like.shape
        ctx = self.context
        buf = torch.empty(
            (b, self.in_channels, ctx + t, h, w), device=like.device, dtype=like.dtype, memory_format=_CL3D
        )
        if ctx:
            past = cache.get(self)
            n_past = 0 if past is None else past.shape[2]
            if n_past < ctx:
                buf[:, :, : ctx - n_past].zero_()
            if past is not None:
                buf[:, :, ctx - n_past : ctx].copy_(past)
        return buf, buf[:, :, ctx:]

    def forward_buffer(self, buf: torch.Tensor, cache: CausalCache, *, with_bias: bool = True) -> torch.Tensor:
        """Convolve a filled `input_buffer`, keeping its last frames for the next chunk: [B, C_out, T, H, W]
        (with_bias False: without the bias, for the caller to add)."""
        self.keep_context(buf, cache)
        return self._conv(buf, with_bias=with_bias)

    def forward_buffer_parts(self, buf: torch.Tensor, cache: CausalCache) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """`forward_buffer` without the bias, which is returned for the caller's next pass to add (cuDNN
        adds a conv's bias as a separate pass over the output), and whose output may come as the partial
        sums of the three time taps, for that pass to add too (`cache.conv_impl` "taps2d" or "igemm", square 3×3×3
        convs, where cuDNN's 2-D kernels beat its 3-D ones): sum_k conv2d(frames[k : k + T],
        weight[:, :, k]), frames as the batch. -> (parts, bias): each part [B, C_out, T, H, W]
        channels-last-3d; bias [C_out] or None."""
        taps = cache.conv_impl in ("taps2d", "igemm") and self.kernel_size == (3, 3, 3)
        if not (taps and self.in_channels == self.out_channels):
            return [self.forward_buffer(buf, cache, with_bias=False)], self.bias
        self.keep_context(buf, cache)
        t = buf.shape[2] - 2
        parts = []
        for k in range(3):
            per_batch = [
                F.conv2d(buf[i].transpose(0, 1)[k : k + t], self.weight[:, :, k], None, padding=1)
                for i in range(buf.shape[0])
            ]  # [T, C_out, H, W] channels-last each
            # [B, C_out, T, H, W]; for B = 1 a view (stacking would copy into NCDHW layout)
            parts.append(per_batch[0].transpose(0, 1)[None] if len(per_batch) == 1 else
                         _channels_last(torch.stack([p.transpose(0, 1) for p in per_batch])))  # fmt: skip
        return parts, self.bias

    def head_gemm(self, cache: CausalCache) -> bool:
        """Whether the fast path runs this conv as `forward_head` (3×3×3 with a few output channels, and
        the cache's head_impl not "cudnn")."""
        return cache.head_impl != "cudnn" and self.kernel_size == (3, 3, 3) and self.out_channels <= _HEAD_GEMM_MAX_OUT

    def forward_head(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        """The fast path of a conv with few output channels (the decoder's RGB head): x [B, C_in, T, H, W]
        channels-last-3d (this chunk's frames; no padded buffer) times all 27 taps' weights at once, a
        GEMM over the pixels, then `kernels.conv_head.col2im_causal` sums the partials onto each output
        pixel. The cache keeps the last two frames of partials (what the next chunk's first outputs
        need) instead of input frames. -> [B, C_out, T, H, W] channels-last-3d, x's dtype."""
        from kernels.conv_head import TAPS, col2im_causal, tap_matrix

        b, c_in, t, h, w = x.shape
        n_cols = -(-TAPS * self.out_channels // _HEAD_COLUMNS) * _HEAD_COLUMNS
        m = _derived(self, "_tap_matrix_cache", self.weight, lambda wt: tap_matrix(wt, n_cols))  # [C_in, n_cols]
        rows = _channels_last(x).permute(0, 2, 3, 4, 1).reshape(b * t * h * w, c_in)  # a view
        y = (_mm_fp32(rows, m) if cache.head_impl == "gemm_fp32" else torch.mm(rows, m)).view(b, t, h, w, n_cols)
        prev = cache.get(self)
        out = col2im_causal(y, prev, self.bias, self.out_channels, out_dtype=x.dtype)
        keep = y if prev is None or t >= 2 else torch.cat([prev, y], dim=1)
        cache.put(self, keep[:, -2:].clone())  # [B, <= 2, H, W, n_cols]
        return out

    def _conv(self, x: torch.Tensor, *, with_bias: bool = True) -> torch.Tensor:
        pad = (0, self.spatial_pad[2], self.spatial_pad[0])  # (t, h, w): cuDNN pads H and W itself
        return F.conv3d(x, self.weight, self.bias if with_bias else None, padding=pad)


class RMSNorm(nn.Module):
    """Wan's RMS_norm: x / ||x||_2 over channels (dim 1) · sqrt(C) · gamma, computed in fp32.

    gamma is [C, 1, 1, 1] for video [B, C, T, H, W] and [C, 1, 1] for frames [N, C, H, W].
    """

    def __init__(self, dim: int, *, video: bool = True) -> None:
        super().__init__()
        self.scale = dim**0.5
        self.gamma = nn.Parameter(torch.ones(dim, *((1,) * (3 if video else 2))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (F.normalize(x.float(), dim=1) * self.scale).to(x.dtype) * self.gamma


class ResidualBlock(nn.Module):
    """norm → SiLU → causal conv → norm → SiLU → dropout → causal conv, plus a (1×1×1 conv) shortcut."""

    def __init__(self, in_dim: int, out_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        # One Sequential so the parameter names match Wan's (residual.0/.2/.3/.6, shortcut).
        self.residual = nn.Sequential(
            RMSNorm(in_dim),
            nn.SiLU(),
            CausalConv3d(in_dim, out_dim, 3),
            RMSNorm(out_dim),
            nn.SiLU(),
            nn.Dropout(dropout),
            CausalConv3d(out_dim, out_dim, 3),
        )
        self.shortcut = CausalConv3d(in_dim, out_dim, 1) if in_dim != out_dim else None

    def forward(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        norm1, act1, conv1, norm2, act2, dropout, conv2 = self.residual
        if cache.fused and self._igemm(x, cache):
            return self._forward_igemm(x, cache)
        if cache.fused:  # eval only (no dropout): each norm + SiLU writes into its conv's padded input
            # the convs' biases ride along into the next pass (cuDNN would add each in a pass of its own)
            buf, new = conv1.input_buffer(x, cache)
            _norm_silu_into([x], norm1.gamma, new)
            parts, bias = conv1.forward_buffer_parts(buf, cache)  # [B, C_out, T, H, W], maybe 3 tap partials
            buf, new = conv2.input_buffer(parts[0], cache)
            _norm_silu_into(parts, norm2.gamma, new, bias)
            del parts
            parts, bias = conv2.forward_buffer_parts(buf, cache)
            del buf
            if self.shortcut is None:
                return _sum_residual(parts, x, bias)
            return _sum_residual(parts, self.shortcut._conv(x, with_bias=False), _add_biases(bias, self.shortcut.bias))
        h = conv1(act1(norm1(x)), cache)  # [B, C_out, T, H, W]
        h = conv2(dropout(act2(norm2(h))), cache)
        return h + (x if self.shortcut is None else self.shortcut(x, cache))

    def _igemm(self, x: torch.Tensor, cache: CausalCache) -> bool:
        """Whether the fast path runs this block with `kernels.conv3d_igemm` (a square block, `_igemm_runs`,
        weights in x's dtype)."""
        conv1 = self.residual[2]
        return (self.shortcut is None and conv1.weight.dtype == x.dtype
                and _igemm_runs(cache.conv_impl, cache.igemm_channels, x.shape[1], x.device, x.dtype))  # fmt: skip

    def _forward_igemm(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        """The fused block with two implicit-GEMM convs: norm + SiLU (one pass) into conv1's padded input;
        conv1, whose epilogue adds its bias and writes norm + SiLU straight into conv2's padded input;
        conv2, whose epilogue adds its bias and the residual. Each conv's last input frames go to the cache."""
        from kernels.conv3d_igemm import causal_conv3x3x3, weight_matrix

        norm1, _, conv1, norm2, _, _, conv2 = self.residual
        x = _channels_last(x)
        c = x.shape[1]
        buf, new = conv1.input_buffer(x, cache)
        _norm_silu_into([x], norm1.gamma, new)
        conv1.keep_context(buf, cache)
        buf2, new2 = conv2.input_buffer(x, cache)
        w1 = _derived(conv1, "_igemm_cache", conv1.weight, weight_matrix)
        causal_conv3x3x3(buf, w1, c, bias=conv1.bias, norm_gamma=norm2.gamma, out=new2)
        del buf
        conv2.keep_context(buf2, cache)
        w2 = _derived(conv2, "_igemm_cache", conv2.weight, weight_matrix)
        return causal_conv3x3x3(buf2, w2, c, bias=conv2.bias, residual=x)


def _igemm_runs(conv_impl: str, channels: tuple[int, ...], c: int, device: torch.device, dtype: torch.dtype) -> bool:
    """Whether a square residual block of width c runs on `kernels.conv3d_igemm`: conv_impl "igemm", c one of
    its `channels` and a width the kernel takes, a device it runs on, 16-bit activations on CUDA."""
    if conv_impl != "igemm" or c not in channels:
        return False
    from kernels.conv3d_igemm import available, supported

    return supported(c, c) and available(device) and (device.type != "cuda" or dtype in (torch.bfloat16, torch.float16))


def _norm_silu_conv(x: torch.Tensor, norm: RMSNorm, conv: CausalConv3d, cache: CausalCache) -> torch.Tensor:
    """conv(silu(norm(x))) on the fast path: one Triton pass into the conv's padded input, one conv (a conv
    with few output channels: into a plain tensor, then `CausalConv3d.forward_head`)."""
    if conv.head_gemm(cache):
        act = torch.empty(x.shape, device=x.device, dtype=x.dtype, memory_format=_CL3D)
        _norm_silu_into([x], norm.gamma, act)
        return conv.forward_head(act, cache)
    buf, new = conv.input_buffer(x, cache)
    _norm_silu_into([x], norm.gamma, new)
    return conv.forward_buffer(buf, cache)


def _per_frame(x: torch.Tensor, layer: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Apply a 2-D layer to every frame: [B, C, T, H, W] -> [B, C', T, H', W']."""
    b, c, t, h, w = x.shape
    y = layer(x.transpose(1, 2).reshape(b * t, c, h, w))  # [B*T, C', H', W']
    return y.reshape(b, t, *y.shape[1:]).transpose(1, 2)


class AttentionBlock(nn.Module):
    """Single-head self-attention among the pixels of each frame (no mixing across time), residual."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = RMSNorm(dim, video=False)
        self.to_qkv = nn.Conv2d(dim, dim * 3, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def _frames(self, x: torch.Tensor, impl: str = "sdpa") -> torch.Tensor:
        n, c, h, w = x.shape
        qkv = self.to_qkv(self.norm(x))  # [N, 3C, H, W]
        qkv = qkv.reshape(n, 1, 3 * c, h * w).transpose(2, 3)  # [N, 1, H*W, 3C]
        q, k, v = qkv.chunk(3, dim=-1)  # [N, 1, H*W, C] each
        if impl == "gemm":
            y = _frame_attention(q[:, 0], k[:, 0], v[:, 0])  # [N, H*W, C]
        else:
            y = F.scaled_dot_product_attention(q, k, v).squeeze(1)  # [N, H*W, C]
        y = y.transpose(1, 2).reshape(n, c, h, w)
        return self.proj(y)

    def forward(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        if not cache.fused:
            return x + _per_frame(x, self._frames)
        # Fast path: a few frames at a time, so that the [H·W, H·W] scores (fp32, and their 16-bit
        # probabilities) stay near 1 GiB whatever the chunk.
        hw = x.shape[3] * x.shape[4]
        step = max(1, 2**30 // (6 * hw * hw))
        out = torch.empty_like(x)
        frames_fn = functools.partial(self._frames, impl=cache.attention_impl)
        for t in range(0, x.shape[2], step):
            frames = x[:, :, t : t + step]
            out[:, :, t : t + step] = frames + _per_frame(frames, frames_fn)
        return out


def _frame_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q kᵀ / √C) v for q, k, v [N, L, C] (any strides with a unit channel stride) -> [N, L, C] in
    q's dtype: the fast path's single-head attention ("gemm" of ATTENTION_IMPLS). No fused SDPA kernel takes
    the VAE's 384-wide head, and PyTorch's fallback runs it in fp32 on CUDA cores (8.5 ms per 720p frame on
    an H200). Here the scores come from a tensor-core GEMM with fp32 output (bf16/fp16 on CUDA; an fp32
    GEMM elsewhere), `kernels.softmax_rows` turns them into probabilities in q's dtype in one pass, and a
    second GEMM applies them to v: the same roundings as a flash kernel (fp32 scores, 16-bit P)."""
    from kernels.softmax_rows import MAX_COLS, softmax_rows

    n, length, c = q.shape
    if length > MAX_COLS:
        return F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]
    scores = None
    if q.is_cuda and q.dtype in (torch.bfloat16, torch.float16):
        try:
            scores = torch.bmm(q, k.transpose(1, 2), out_dtype=torch.float32)  # [N, L, L]
        except (TypeError, RuntimeError, NotImplementedError):  # a torch without bmm's out_dtype: below
            pass
    if scores is None:
        scores = torch.bmm(q.float(), k.float().transpose(1, 2))
    probs = softmax_rows(scores, c**-0.5, out_dtype=q.dtype)
    del scores
    return torch.bmm(probs, v)


def _nearest2x(x: torch.Tensor) -> torch.Tensor:
    """Exact nearest 2× upsampling of channels-last frames [N, C, H, W] -> [N, C, 2H, 2W] (channels-last),
    any dtype: every value is copied, nothing is computed."""
    n, c, h, w = x.shape
    y = x.permute(0, 2, 3, 1)[:, :, None, :, None, :].expand(n, h, 2, w, 2, c)  # [N, H, 2, W, 2, C]
    return y.reshape(n, 2 * h, 2 * w, c).permute(0, 3, 1, 2)


def _subpixel_weights(weight: torch.Tensor) -> torch.Tensor:
    """A 3×3 conv's weight [C_out, C, 3, 3] -> the 2×2 weights of the four output parities of
    conv3x3(nearest2x(x)), stacked on the output channels in parity order (a, b) = (0, 0), (0, 1), (1, 0),
    (1, 1): [4·C_out, C, 2, 2] (see `_upsample2x_conv3x3`), channels-last, weight's dtype, summed in fp32."""
    wf = weight.float()
    rows = (torch.stack([wf[:, :, 0], wf[:, :, 1] + wf[:, :, 2]], 2), torch.stack([wf[:, :, 0] + wf[:, :, 1], wf[:, :, 2]], 2))
    parities = []
    for a in (0, 1):
        wr = rows[a]  # [C_out, C, 2, 3]
        cols = (torch.stack([wr[..., 0], wr[..., 1] + wr[..., 2]], 3), torch.stack([wr[..., 0] + wr[..., 1], wr[..., 2]], 3))
        parities += [cols[0], cols[1]]  # [C_out, C, 2, 2] for b = 0, 1
    return torch.cat(parities).to(weight.dtype).contiguous(memory_format=torch.channels_last)


def _upsample2x_conv3x3(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                        merged: torch.Tensor | None = None) -> torch.Tensor:
    """conv3x3(nearest2x(x)) (padding 1) without forming the upsampled frames: output pixel (2i+a, 2j+b)
    sees only low-resolution rows {i-1+a, i+a} and columns {j-1+b, j+b}, so each of the 4 parities is a
    2×2 conv of x with summed taps (rows: a=0 -> [w0, w1+w2], a=1 -> [w0+w1, w2]; columns alike): 16
    instead of 36 multiply-adds per output. The four parities run as one conv (their weights stacked on
    the output channels, `_subpixel_weights`; `merged`: those, precomputed) over the zero-padded input,
    and one Triton pass interleaves them and adds the bias (`kernels.pixel_interleave`).
    x [N, C, H, W] channels-last -> [N, C_out, 2H, 2W] channels-last."""
    from kernels.pixel_interleave import pixel_interleave

    w4 = _subpixel_weights(weight) if merged is None else merged
    y = F.conv2d(x, w4, padding=1)  # [N, 4·C_out, H+1, W+1]: the conv pads (no padded copy of x)
    return pixel_interleave(y, bias)


class NearestUpsample2x(nn.Module):
    """Nearest-neighbour 2× upsampling of [N, C, H, W] (in fp32: bf16 nearest is not exact everywhere)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x.float(), scale_factor=2.0, mode="nearest-exact").to(x.dtype)


class Resample(nn.Module):
    """Spatial 2× up/down sampling per frame, optionally with Wan's temporal 2× up/down sampling.

    modes: "upsample2d", "upsample3d" (channels C -> C/2), "downsample2d", "downsample3d" (C -> C).
    """

    def __init__(self, dim: int, mode: str) -> None:
        super().__init__()
        if mode not in ("upsample2d", "upsample3d", "downsample2d", "downsample3d"):
            raise ValueError(f"unknown resample mode {mode!r}")
        self.mode = mode
        self.time_conv: nn.Conv3d | None = None
        if mode.startswith("upsample"):
            self.resample = nn.Sequential(NearestUpsample2x(), nn.Conv2d(dim, dim // 2, 3, padding=1))
        else:
            # Pad right/bottom by one, then a stride-2 3×3 conv: H -> H/2.
            self.resample = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(dim, dim, 3, stride=2))
        if mode == "upsample3d":
            self.time_conv = CausalConv3d(dim, dim * 2, (3, 1, 1))
        elif mode == "downsample3d":
            self.time_conv = nn.Conv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1))

    def _subpixel(self, weight: torch.Tensor) -> torch.Tensor:
        """`_subpixel_weights(weight)`, computed once per weight (`_derived`)."""
        return _derived(self, "_subpixel_cache", weight, _subpixel_weights)

    def _double_time(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        assert isinstance(self.time_conv, CausalConv3d)
        b, c, _, h, w = x.shape
        # 1. The very first frame passes through once, not doubled and not context for the rest.
        head = None
        if cache.first_call(self):
            head, x = x[:, :, :1], x[:, :, 1:]
        if x.shape[2] == 0:
            return head if head is not None else x
        # 2. Every other frame becomes two: the conv's 2C channels are (frame a, frame b) × C.
        t = x.shape[2]
        y = self.time_conv(x, cache)  # [B, 2C, T, H, W]
        if cache.fused:  # channels-last in, channels-last out: [B, T, H, W, 2, C] -> [B, T, 2, H, W, C]
            y = y.permute(0, 2, 3, 4, 1).reshape(b, t, h, w, 2, c).permute(0, 1, 4, 2, 3, 5)
            y = y.reshape(b, 2 * t, h, w, c).permute(0, 4, 1, 2, 3)  # [B, C, 2T, H, W]
            return y if head is None else torch.cat([_channels_last(head), y], dim=2)
        y = y.reshape(b, 2, c, t, h, w)  # [B, 2, C, T, H, W]
        y = y.permute(0, 2, 3, 1, 4, 5).reshape(b, c, 2 * t, h, w)  # [B, C, 2T, H, W]
        return y if head is None else torch.cat([head, y], dim=2)

    def _halve_time(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        assert self.time_conv is not None
        # 1. The very first frame passes through unchanged and is the context of the next window.
        past = cache.get(self)
        if past is None:
            head, rest, context = x[:, :, :1], x[:, :, 1:], x[:, :, :1]
        else:
            head, rest, context = None, x, past
        cache.put(self, x[:, :, -1:].clone())
        if rest.shape[2] % 2:
            raise ValueError(
                f"temporal downsampling got {rest.shape[2]} frames after the first; chunks must hold an "
                "even number (video frames must be 4k+1, chunked as 1, 4, 4, ...)"
            )
        if rest.shape[2] == 0:
            return head if head is not None else rest
        # 2. Windows (x[2k-2], x[2k-1], x[2k]): stride 2 over [context, rest].
        y = self.time_conv(torch.cat([context, rest], dim=2))  # [B, C, T_rest / 2, H, W]
        return y if head is None else torch.cat([head, y], dim=2)

    def forward(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        if self.mode == "upsample3d":
            x = self._double_time(x, cache)  # [B, C, T', H, W]
        if cache.fused and self.mode.startswith("upsample"):
            conv = self.resample[1]
            merged = self._subpixel(conv.weight)
            return _per_frame(_channels_last(x), lambda f: _upsample2x_conv3x3(f, conv.weight, conv.bias, merged))
        x = _per_frame(x, self.resample)  # [B, C', T', H*2 or H/2, W*2 or W/2]
        if self.mode == "downsample3d":
            x = self._halve_time(x, cache)
        return x


def _middle(dim: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(ResidualBlock(dim, dim, dropout), AttentionBlock(dim), ResidualBlock(dim, dim, dropout))


def _head(dim: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(RMSNorm(dim), nn.SiLU(), CausalConv3d(dim, out_dim, 3))


def _run_head(head: nn.Sequential, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
    norm, act, conv = head
    if cache.fused:
        return _norm_silu_conv(x, norm, conv, cache)
    return conv(act(norm(x)), cache)


class Encoder(nn.Module):
    """video [B, 3, T, H, W] -> [B, 2·z, T', H/8, W/8] (mu and log-variance), one time chunk at a time."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        dims = [cfg.base_dim * m for m in (1, *cfg.dim_mult)]
        self.conv1 = CausalConv3d(3, dims[0], 3)
        blocks: list[nn.Module] = []
        for level, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResidualBlock(in_dim, out_dim, cfg.dropout))
                in_dim = out_dim
            if level < len(cfg.dim_mult) - 1:
                blocks.append(Resample(out_dim, "downsample3d" if cfg.temporal_downsample[level] else "downsample2d"))
        self.downsamples = nn.Sequential(*blocks)
        self.middle = _middle(dims[-1], cfg.dropout)
        self.head = _head(dims[-1], cfg.z_dim * 2)

    def forward(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        return self.forward_low(self.forward_high(x, cache), cache)  # [B, 2z, T', H/8, W/8]

    def forward_high(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        """The input conv and the down levels (every block with a spatial reach only: rows can be split,
        `models.vae_parallel.split_encode`) -> [B, C_top, T', H/8, W/8]."""
        return self._run([(self.conv1, self.conv1), *((b, b) for b in self.downsamples)], x, cache)

    def forward_low(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        """The mid block (its self-attention spans a whole frame) and the head, at latent resolution."""
        head = (self.head[2], lambda h, c: _run_head(self.head, h, c))
        return self._run([*((b, b) for b in self.middle), head], x, cache)

    @staticmethod
    def _run(layers: list[tuple[nn.Module, Callable[[torch.Tensor, CausalCache], torch.Tensor]]], x: torch.Tensor,
             cache: CausalCache) -> torch.Tensor:
        """x through each (layer, call) in turn; with `cache.steady`, each computes only the frames that
        differ (`_steady_call`) and the output is completed at the end."""
        if not cache.steady:
            for _, fn in layers:
                x = fn(x, cache)
            return x
        total = x.shape[2]
        box = [x]
        del x  # the box holds the only reference: each layer's input is freed once the next one is built
        for layer, fn in layers:
            y, total = _steady_call(layer, fn, box, total, cache)
            box.append(y)
            del y
        y = box.pop()
        hint = cache._hint if cache._hint is not None and cache._hint.x is y else None
        out = _repeat_last(y, total, cache.fused)
        # the frames repeated at the end are known equal to the last, for the next `_run` on this output
        cache._hint = None if hint is None else hint._replace(x=out, tail=total - y.shape[2] + hint.tail)
        return out


class Decoder(nn.Module):
    """latents (un-normalised) [B, z, T, h, w] -> video [B, 3, T', 8h, 8w], one time chunk at a time."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        mult = cfg.dim_mult
        dims = [cfg.base_dim * m for m in (mult[-1], *reversed(mult))]
        temporal_upsample = tuple(reversed(cfg.temporal_downsample))
        self.conv1 = CausalConv3d(cfg.z_dim, dims[0], 3)
        self.middle = _middle(dims[0], cfg.dropout)
        blocks: list[nn.Module] = []
        for level, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
            if level > 0:
                in_dim //= 2  # the previous level's upsampler halved the channels
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(ResidualBlock(in_dim, out_dim, cfg.dropout))
                in_dim = out_dim
            if level < len(mult) - 1:
                blocks.append(Resample(out_dim, "upsample3d" if temporal_upsample[level] else "upsample2d"))
        self.upsamples = nn.Sequential(*blocks)
        self.head = _head(dims[-1], 3)
        # Blocks before the first upsampler work at latent resolution (cheap per frame).
        self.n_low = next(i for i, blk in enumerate(blocks) if isinstance(blk, Resample)) if len(mult) > 1 else len(blocks)

    def forward(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        return self.forward_high(self.forward_low(x, cache), cache)  # [B, 3, T', 8h, 8w]

    def forward_low(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        """The latent-resolution part: [B, z, T, h, w] -> [B, C_top, T, h, w]."""
        x = self.conv1(x, cache)  # [B, C_top, T, h, w]
        for block in (*self.middle, *self.upsamples[: self.n_low]):
            x = block(x, cache)
        return x

    def forward_high(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        """From the first upsampler on: [B, C_top, T, h, w] -> [B, 3, T', 8h, 8w]."""
        for block in self.upsamples[self.n_low :]:
            x = block(x, cache)
        return _run_head(self.head, x, cache)


class WanVAE(nn.Module):
    """The Wan2.1 VAE. `encode` and `decode` work on normalised latents; see the module docstring.

    `memory_budget`: bytes of GPU memory one encode or decode may allocate on top of what is already
    allocated (the output included); it sets how many latent frames go through per chunk on the fast path.
    Each call may override it, or fix the chunk size directly.
    """

    def __init__(self, config: VAEConfig, *, memory_budget: int = DEFAULT_MEMORY_BUDGET) -> None:
        super().__init__()
        self.config = config
        self.memory_budget = memory_budget
        # Fast path: how square 3×3×3 convs run, one of CONV_IMPLS. "taps2d" (tap sums fused into the norm
        # passes) decoded 480p in 0.761 s vs cuDNN conv3d's 0.889 s, 720p 1.945 vs 2.249 s, cos 0.99991 to
        # fp32 vs 0.99990, on an H200 (kernels/NOTES_vae.md, session 16). "igemm" (the 96- and 192-wide
        # blocks through kernels.conv3d_igemm, taps2d elsewhere; taps2d where the kernel cannot run) decoded
        # 480p in 0.604 s vs taps2d's 0.635 s, 720p 1.544 vs 1.658 s (session 20; the 96-wide blocks alone:
        # 0.608 and 1.585 s; the 384-wide ones stay on cuDNN, which is faster there).
        self.conv_impl = "igemm"
        self.igemm_channels: tuple[int, ...] = (96, 192)  # conv_impl "igemm": the residual blocks it runs
        self.head_impl = "gemm"  # the decoder's RGB head on the fast path, one of HEAD_IMPLS
        self.attention_impl = "gemm"  # the mid blocks' attention on the fast path, one of ATTENTION_IMPLS
        # encode: when the video ends on equal frames (an I2V condition: the image, then zeros), compute each
        # layer's output only until it settles (`_steady_call`). False: every frame, every layer.
        self.skip_steady_frames = True
        z = config.z_dim
        self.encoder = Encoder(config)
        self.conv1 = CausalConv3d(2 * z, 2 * z, 1)  # encoder output -> (mu, log-variance)
        self.conv2 = CausalConv3d(z, z, 1)  # latents -> decoder input
        self.decoder = Decoder(config)

    def _stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (1, self.config.z_dim, 1, 1, 1)
        mean = torch.tensor(self.config.latents_mean, device=like.device, dtype=torch.float32).view(shape)
        std = torch.tensor(self.config.latents_std, device=like.device, dtype=torch.float32).view(shape)
        return mean, std

    def _param(self) -> torch.Tensor:
        return self.conv2.weight

    def _cache(self, fused: bool) -> CausalCache:
        """A new cache for one encode or decode call, with this VAE's fast-path choices."""
        return CausalCache(fused=fused, conv_impl=self.conv_impl, igemm_channels=self.igemm_channels,
                           head_impl=self.head_impl, attention_impl=self.attention_impl)

    def _fast(self, fused: bool | None) -> bool:
        """Resolve `fused` (None: on CUDA) and put the conv weights in channels-last memory for it."""
        fused = self._param().is_cuda if fused is None else fused
        if fused and self.training and self.config.dropout > 0:
            raise ValueError("the fused path is for inference (eval mode, no dropout)")
        if fused:
            # Outside inference mode: the weights must stay ordinary tensors (load_state_dict later).
            with torch.inference_mode(False):
                for m in self.modules():
                    if isinstance(m, (nn.Conv2d, nn.Conv3d)):
                        fmt = _CL3D if isinstance(m, nn.Conv3d) else torch.channels_last
                        if not m.weight.is_contiguous(memory_format=fmt):
                            m.weight.data = m.weight.data.contiguous(memory_format=fmt)
        return fused

    def _igemm_full_resolution(self) -> bool:
        """Whether the fast path runs the decoder's full-resolution residual blocks on `kernels.conv3d_igemm`
        (which needs less memory per frame than the other conv impls: see _LIVE_ACTIVATIONS_IGEMM)."""
        c, p = self.config.base_dim * self.config.dim_mult[0], self._param()
        return _igemm_runs(self.conv_impl, self.igemm_channels, c, p.device, p.dtype)

    def _latents_per_chunk(self, per_latent: int, fixed: int, t_rest: int, budget: int | None) -> int:
        """How many latent frames (after the first) one chunk takes: as many as `budget` bytes hold
        at `per_latent` bytes each, beyond `fixed`; evened out so the chunks are near equal."""
        budget = self.memory_budget if budget is None else budget
        n = max(1, min(t_rest, (budget - fixed) // max(per_latent, 1)))
        n_chunks = -(-t_rest // n) if t_rest else 1
        return max(1, -(-t_rest // n_chunks))

    @torch.no_grad()
    def encode(
        self,
        video: torch.Tensor,
        *,
        chunk_latents: int | None = None,
        fused: bool | None = None,
        memory_budget: int | None = None,
        run: Callable[[torch.Tensor, CausalCache], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """video [B, 3, F, H, W] in [-1, 1], F = 4k+1, H, W multiples of 8 ->
        normalised latents [B, z, (F-1)/4+1, H/8, W/8] ((mu - mean) / std), in the model's dtype.

        The first frame goes alone, then `chunk_latents` × 4 frames at a time (default: as many as
        `memory_budget` allows on the fast path, 1 on the eager path). `fused`: the fast path
        (default: on CUDA). `run(x, cache)`: what turns one chunk of video into [B, 2z, n, H/8, W/8]
        (default: the encoder, then the 1×1×1 conv; `models.vae_parallel.split_encode` passes its
        split one)."""
        cfg, p = self.config, self._param()
        tf, sf = cfg.temporal_factor, cfg.spatial_factor
        if video.dim() != 5 or video.shape[1] != 3:
            raise ValueError(f"video must be [B, 3, F, H, W], got {tuple(video.shape)}")
        b, _, f, h, w = video.shape
        if f < 1 or (f - 1) % tf:
            raise ValueError(f"video frames must be {tf}k+1 (1, {tf + 1}, {2 * tf + 1}, ...), got {f}")
        if h % sf or w % sf or h == 0 or w == 0:
            raise ValueError(f"video height and width must be positive multiples of {sf}, got {h}×{w}")
        fused = self._fast(fused)
        video = video.to(device=p.device, dtype=p.dtype)
        t_lat = (f - 1) // tf + 1
        # A video ending on many equal frames (I2V: the image, then zeros): skip what repeats (_steady_call).
        # Its last 2·tf frames are compared first, so a moving video costs no pass over all of its frames.
        steady = self.skip_steady_frames and f >= 2 * tf and all(_same_as_previous(video[:, :, f - 2 * tf :])[1:])
        # same[i]: frame i equals frame i - 1, for the first layer's runs (one pass, one device sync)
        same = _same_as_previous(video) if steady else []
        if chunk_latents is None:
            frame = b * cfg.base_dim * h * w * p.element_size()  # one full-resolution activation frame
            fixed = _WORKSPACE + (_STEADY_KEPT_FRAMES * frame if steady else 0)
            chunk_latents = self._latents_per_chunk(_LIVE_ACTIVATIONS * tf * frame, fixed, t_lat - 1,
                                                    memory_budget) if fused else 1

        # 1. First frame alone, then chunks of `chunk_latents · tf` frames (one latent frame per `tf`).
        mu = torch.empty(b, cfg.z_dim, t_lat, h // sf, w // sf, device=p.device, dtype=p.dtype)
        cache = self._cache(fused)
        cache.steady = steady
        if run is None:
            run = lambda x, c: self.conv1(self.encoder(x, c), c)
        i = 0
        while i < t_lat:
            n = 1 if i == 0 else min(chunk_latents, t_lat - i)
            start, stop = (0, 1) if i == 0 else (1 + tf * (i - 1), 1 + tf * (i - 1 + n))
            x = video[:, :, start:stop]
            x = _channels_last(x) if fused else x
            if steady:  # the first layer's run, from `same` (no comparison in `_steady_call`)
                tail = 1
                while stop - tail > start and same[stop - tail]:
                    tail += 1
                cache._hint = _Hint(x, tail, same[start] if start else None, None)
            out = run(x, cache)  # [B, 2z, n, h, w]
            del x
            mu[:, :, i : i + n] = out[:, : cfg.z_dim]
            i += n

        # 2. Normalise per channel.
        mean, std = self._stats(mu)
        return ((mu.float() - mean) / std).to(p.dtype)

    def decode_plan(
        self,
        shape: tuple[int, ...],
        *,
        fused: bool,
        chunk_latents: int | None = None,
        prefix_latents: int | None = None,
        memory_budget: int | None = None,
        taper: bool | None = None,
        high_rows: int | None = None,
    ) -> tuple[int, list[int]]:
        """(prefix_latents, plan) of a decode of latents of `shape` [B, z, T, h, w] (`decode_iter`'s
        arguments; `fused` resolved): latent frames per chunk through the latent-resolution blocks, and
        per chunk through the rest (the first latent frame alone, then `chunk_plan`). `high_rows`: latent
        rows one chunk of the rest covers (default h; a band's in `models.vae_parallel`)."""
        cfg = self.config
        b, _, t, h, w = shape
        rows = h if high_rows is None else high_rows
        sf, tf, el = cfg.spatial_factor, cfg.temporal_factor, self._param().element_size()
        budget = self.memory_budget if memory_budget is None else memory_budget
        c_top = cfg.base_dim * cfg.dim_mult[-1]
        low_per_latent = 6 * b * c_top * h * w * el  # a few activations at latent resolution
        if prefix_latents is None:
            prefix_latents = max(1, min(t, (budget // 4) // low_per_latent)) if fused else 1
        if taper is None:
            taper = chunk_latents is None
        if chunk_latents is None:
            frame = b * cfg.base_dim * cfg.dim_mult[0] * (sf * rows) * (sf * w) * el  # one full-resolution activation
            output = b * 3 * (tf * (t - 1) + 1) * (sf * h) * (sf * w) * el
            fixed = output + low_per_latent * min(t, prefix_latents)
            if fused and self._igemm_full_resolution():
                per_latent = int(_LIVE_ACTIVATIONS_IGEMM * tf * frame)
                fixed += _CACHE_FRAMES_IGEMM * frame + _WORKSPACE_IGEMM
            else:
                per_latent = _LIVE_ACTIVATIONS * tf * frame
                fixed += _WORKSPACE
            chunk_latents = min(self._latents_per_chunk(per_latent, fixed, t - 1, budget), _MAX_CHUNK_LATENTS) if fused else 1
        return prefix_latents, [1, *chunk_plan(t - 1, chunk_latents, taper=taper)]

    @torch.no_grad()
    def begin_decode(self, latents: torch.Tensor, *, fused: bool | None = None, **chunking: Any) -> DecodeStart:
        """The first half of `decode_iter` (same arguments, plus `high_rows` of `decode_plan`): the
        latent-resolution blocks over all frames, and the chunk plan for the rest."""
        cfg, p = self.config, self._param()
        if latents.dim() != 5 or latents.shape[1] != cfg.z_dim:
            raise ValueError(f"latents must be [B, {cfg.z_dim}, T, h, w], got {tuple(latents.shape)}")
        if min(latents.shape[2:]) < 1:
            raise ValueError(f"latents must have at least one frame and pixel, got {tuple(latents.shape)}")
        fused = self._fast(fused)
        t = latents.shape[2]
        prefix_latents, plan = self.decode_plan(tuple(latents.shape), fused=fused, **chunking)

        # 1. Un-normalise and apply the 1×1×1 input conv (latent-sized, cheap for all frames at once).
        mean, std = self._stats(latents)
        z = (latents.to(device=p.device, dtype=torch.float32) * std + mean).to(p.dtype)
        if fused:
            z = _channels_last(z)
        cache = self._cache(fused)
        z = self.conv2(z, cache)  # [B, z, T, h, w]

        # 2. The latent-resolution blocks, `prefix_latents` frames at a time, ahead of the rest.
        low = torch.cat([self.decoder.forward_low(z[:, :, i : i + prefix_latents], cache)
                         for i in range(0, t, prefix_latents)], dim=2)  # fmt: skip  # [B, C_top, T, h, w]
        return DecodeStart(low, cache, plan)

    @torch.no_grad()
    def decode_iter(
        self,
        latents: torch.Tensor,
        *,
        chunk_latents: int | None = None,
        prefix_latents: int | None = None,
        fused: bool | None = None,
        memory_budget: int | None = None,
        taper: bool | None = None,
    ) -> Iterator[torch.Tensor]:
        """Decode normalised latents [B, z, T, h, w] chunk by chunk, in order, yielding video frames
        [B, 3, n, 8h, 8w] clamped to [-1, 1]: n = 1 for the first latent frame, then 4 per latent frame
        (channels-last-3d memory on the fast path). The causal cache is carried from chunk to chunk, so
        the chunks concatenate to `decode(latents)` whatever their size.

        chunk_latents: latent frames per chunk after the first (default: as many as `memory_budget`
            bytes allow on the fast path, at most `_MAX_CHUNK_LATENTS` = 4; 1 on the eager path).
        prefix_latents: latent frames per chunk through the latent-resolution blocks, which run ahead
            of the rest (default: all of them when they fit the budget; 1 on the eager path).
        fused: the fast path (channels-last, Triton norm + SiLU); default: on CUDA.
        memory_budget: bytes (default `self.memory_budget`).
        taper: end on chunks of halving size (…, 4, 2, 1 latent frames; see `chunk_plan`), so that a
            consumer of the chunks (the streaming MP4 encoder) has little left after the last one.
            Default: when `chunk_latents` is chosen from the budget.
        """
        start = self.begin_decode(latents, chunk_latents=chunk_latents, prefix_latents=prefix_latents,
                                  fused=fused, memory_budget=memory_budget, taper=taper)
        low, cache, plan = start.low, start.cache, start.plan
        del start

        # 3. The rest, chunk by chunk: the first latent frame alone, then as planned.
        i = 0
        for n in plan:
            yield self.decoder.forward_high(low[:, :, i : i + n], cache).clamp_(-1.0, 1.0)  # [B, 3, 1 or 4n, H, W]
            i += n

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, **chunking: Any) -> torch.Tensor:
        """normalised latents [B, z, T, h, w] -> video [B, 3, 4(T-1)+1, 8h, 8w] in [-1, 1]: the
        concatenation of `decode_iter(latents, **chunking)` (same keyword arguments), written into one
        preallocated output. Peak memory: the output plus one chunk's activations."""
        cfg, p = self.config, self._param()
        b, _, t, h, w = latents.shape if latents.dim() == 5 else (0, 0, 0, 0, 0)
        frames = 1 + cfg.temporal_factor * (t - 1)
        sf = cfg.spatial_factor
        out = None
        start = 0
        for chunk in self.decode_iter(latents, **chunking):
            if out is None:
                out = torch.empty(b, 3, frames, h * sf, w * sf, device=p.device, dtype=p.dtype)
            n = chunk.shape[2]
            out[:, :, start : start + n] = chunk
            start += n
        assert out is not None and start == frames
        return out
