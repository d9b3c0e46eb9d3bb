"""The VAE decode split across ranks (models.vae_parallel) on CPU: gloo, the tiny VAE in fp32.

The rank processes are this file run as a script (`test_parallel._run_ranks`); each decodes the same
latents split and whole (in the same process, so with the same threads) and saves both; the test also
decodes here, in one process. oneDNN picks its convolution algorithm by input size, so a band's rows can
round differently from the whole frame's (~1e-6); with oneDNN off (``exact`` mode) the split has come out
bit-exact on this project's CPUs, and is held to 1e-6.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from test_parallel import _cos, _run_ranks

from models.vae import CausalCache, VAEConfig, WanVAE, _run_head
from models.vae_parallel import bands, encoder_reach, stage_reach, stages, work_fractions

# (latents shape, decode_iter arguments): latent heights 7 and 13 (not divisible by 2 or 3), 4 (bands
# of 1 and 2 rows: halos wider than a neighbour's band), a tapered plan, one latent frame at a time.
CASES = [
    ((1, 16, 4, 7, 3), dict(chunk_latents=2, taper=True)),
    ((1, 16, 2, 13, 2), dict(chunk_latents=1)),
    ((1, 16, 3, 4, 3), dict(chunk_latents=2, taper=False)),
]
FUSED_CASE = (1, 16, 2, 2, 3)  # the fast path under Triton's CPU interpreter: slow, so tiny
# split_encode: (video shape, encode arguments). The down path reaches ~5 latent rows each way, so the bands
# are only really cut from ~12 latent rows up: 32 and 25 (odd) latent rows, and 4 (bands of 1-2 rows whose
# halo is the whole frame); two time chunkings
ENCODE_CASES = [
    ((1, 3, 5, 256, 16), dict(chunk_latents=1)),
    ((1, 3, 9, 200, 8), dict(chunk_latents=2)),
    ((1, 3, 9, 32, 24), dict(chunk_latents=1)),
    ((1, 3, 17, 96, 8), dict(chunk_latents=1)),  # an I2V condition (`_video`): each rank skips steady frames
]
FUSED_ENCODE_CASE = (1, 3, 5, 128, 8)


def _vae() -> WanVAE:
    torch.manual_seed(0)
    vae = WanVAE(VAEConfig.from_name("tiny")).eval()
    with torch.no_grad():
        for p in vae.parameters():
            p.add_(torch.randn_like(p) * 0.05 + 0.01)
    return vae


def _latents(shape: tuple[int, ...]) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(sum(shape)))


def _video(shape: tuple[int, ...]) -> torch.Tensor:
    """Random frames; for 17 frames the first frame, then zeros (Wan's I2V condition)."""
    video = torch.rand(shape, generator=torch.Generator().manual_seed(sum(shape))) * 2 - 1
    if shape[2] == 17:
        video[:, :, 1:] = 0
    return video


def _rank_main(mode: str, rank: int, world: int, port: int, out: Path) -> None:
    """mode "exact": CASES with oneDNN off; "all": CASES with oneDNN on, and the fast path (FUSED_CASE)."""
    from models.parallel import init_sequence_parallel
    from models.vae_parallel import split_decode_iter, split_encode

    torch.set_num_threads(1)
    sp = init_sequence_parallel(rank, world, port=port, backend="gloo")
    vae = _vae()
    result: dict[str, object] = {}
    with torch.inference_mode():
        for onednn in (True,) if mode == "all" else (False,):
            torch.backends.mkldnn.enabled = onednn
            for i, (shape, kw) in enumerate(CASES):
                latents = _latents(shape)
                chunks = list(split_decode_iter(vae, latents, sp, **kw))
                result[f"split{i}_{onednn}"] = torch.cat(chunks, dim=2)
                result[f"sizes{i}_{onednn}"] = [c.shape[2] for c in chunks]
                result[f"whole{i}_{onednn}"] = vae.decode(latents, **kw)
            for i, (shape, kw) in enumerate(ENCODE_CASES):
                video = _video(shape)
                result[f"enc_split{i}_{onednn}"] = split_encode(vae, video, sp, **kw)
                result[f"enc_whole{i}_{onednn}"] = vae.encode(video, **kw)
        if mode == "all":
            result["fused"] = torch.cat(list(split_decode_iter(vae, _latents(FUSED_CASE), sp, fused=True)), dim=2)
            result["enc_fused"] = split_encode(vae, _video(FUSED_ENCODE_CASE), sp, fused=True)
    torch.save(result, out / f"rank{rank}.pt")
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def _check(out: Path, world: int, *, onednn: bool) -> None:
    """Every rank's split decode equals its own whole decode (bit for bit without oneDNN) and this
    process's, and came in the chunks decode_iter yields."""
    vae = _vae()
    for i, (shape, kw) in enumerate(CASES):
        here = vae.decode(_latents(shape), **kw)  # this process: default threads and oneDNN
        plan = [1 if n == 1 and not j else 4 * n for j, n in enumerate(vae.decode_plan(shape, fused=False, **kw)[1])]
        for rank in range(world):
            got = torch.load(out / f"rank{rank}.pt")
            split, whole = got[f"split{i}_{onednn}"], got[f"whole{i}_{onednn}"]
            assert got[f"sizes{i}_{onednn}"] == plan, (i, rank)
            assert split.shape == whole.shape == here.shape
            torch.testing.assert_close(split, whole, atol=1e-5 if onednn else 1e-6, rtol=0)
            torch.testing.assert_close(split, here, atol=1e-5, rtol=0)
            assert _cos(split, here) > 0.9999999
    for i, (shape, kw) in enumerate(ENCODE_CASES):  # the split encode: every rank the whole latents
        here = vae.encode(_video(shape), **kw)
        vae.skip_steady_frames = False  # every frame through every layer: the same latents
        torch.testing.assert_close(vae.encode(_video(shape), **kw), here, atol=1e-5, rtol=0)
        vae.skip_steady_frames = True
        for rank in range(world):
            got = torch.load(out / f"rank{rank}.pt")
            split, whole = got[f"enc_split{i}_{onednn}"], got[f"enc_whole{i}_{onednn}"]
            assert split.shape == whole.shape == here.shape == (1, 16, (shape[2] - 1) // 4 + 1, shape[3] // 8,
                                                                 shape[4] // 8)
            torch.testing.assert_close(split, whole, atol=1e-5 if onednn else 1e-6, rtol=0)
            torch.testing.assert_close(split, here, atol=1e-5, rtol=0)


def test_stage_reach_is_the_exact_receptive_field() -> None:
    # Perturb one input row of each stage: exactly the output rows whose reach holds it change.
    vae = _vae()
    for k, stage in enumerate(stages(vae)):
        c_in = stage.blocks[0].resample[1].in_channels if hasattr(stage.blocks[0], "resample") else None
        assert c_in is not None
        x = torch.randn(1, c_in, 1, 12, 3)

        def run(x: torch.Tensor, stage=stage) -> torch.Tensor:  # type: ignore[no-untyped-def]
            cache = CausalCache()
            with torch.no_grad():
                for blk in stage.blocks:
                    x = blk(x, cache)
                return _run_head(vae.decoder.head, x, cache) if stage.head else x

        base = run(x)
        row = 6
        y = x.clone()
        y[:, :, :, row] += 1.0
        changed = ((run(y) - base).abs().amax(dim=(0, 1, 2, 4)) > 0).nonzero().flatten().tolist()
        expect = [o for o in range(base.shape[3]) if stage_reach(stage, vae.decoder.head, o, o + 1)[0] <= row
                  < stage_reach(stage, vae.decoder.head, o, o + 1)[1]]  # fmt: skip
        assert changed == expect, (k, changed, expect)


def test_encoder_reach_covers_the_receptive_field() -> None:
    # Perturb one video row: every latent row of the down path that changes has that row in its reach
    # (what makes the split exact), and the reach is tight to within one latent row at each end (interval
    # arithmetic through the stride-2 convs ignores row parity); the real config's layers, tiny channels.
    # float64: at the edge of the reach the change decays below fp32's resolution (row 131's effect on
    # latent row 24, whose reach starts at 131, is ~3e-8 of the output) and would read as "unchanged".
    vae = _vae().double()
    x = torch.randn(1, 3, 1, 256, 8, dtype=torch.float64)

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return vae.encoder.forward_high(x, CausalCache())

    base = run(x)
    for row in (0, 100, 131, 255):
        y = x.clone()
        y[:, :, :, row] += 1.0
        changed = ((run(y) - base).abs().amax(dim=(0, 1, 2, 4)) > 0).nonzero().flatten().tolist()
        expect = [o for o in range(base.shape[3]) if encoder_reach(vae, o, o + 1)[0] <= row
                  < encoder_reach(vae, o, o + 1)[1]]  # fmt: skip
        assert changed and set(changed) <= set(expect), (row, changed, expect)
        assert changed[0] - expect[0] <= 1 and expect[-1] - changed[-1] <= 1, (row, changed, expect)
    assert encoder_reach(vae, 3, 4) == (-37, 100)


def test_bands_and_work_fractions_at_480p() -> None:
    assert bands(7, 2) == [(0, 3), (3, 7)] and bands(4, 3) == [(0, 1), (1, 2), (2, 4)]
    with torch.device("meta"):
        full = WanVAE(VAEConfig.from_name("wan2.1"))
    work = work_fractions(full, (1, 16, 21, 60, 104), 2)
    assert 270 < work["tflop"] < 280  # kernels/NOTES_vae.md: 274 TFLOP for this decode
    assert work["low_share"] < 0.05  # the part every rank runs whole
    assert all(0.5 < f < 0.56 for f in work["per_rank"])
    assert work["halo_rows"][0] == [(0, 4), (4, 0)]  # 4 latent rows before the first upsampler


@pytest.mark.slow
def test_two_ranks_decode_equals_whole_decode_and_on_the_fast_path(tmp_path: Path) -> None:
    assert _run_ranks("all", tmp_path, world=2, script=__file__) == [0, 0]
    _check(tmp_path, 2, onednn=True)
    eager = _vae().decode(_latents(FUSED_CASE), fused=False)
    for rank in range(2):  # the fast path (channels-last, Triton norms) split, vs the eager whole decode
        got = torch.load(tmp_path / f"rank{rank}.pt")["fused"]
        torch.testing.assert_close(got, eager, atol=2e-5, rtol=1e-5)
    eager = _vae().encode(_video(FUSED_ENCODE_CASE), fused=False)
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt")["enc_fused"]
        torch.testing.assert_close(got, eager, atol=5e-5, rtol=1e-5)


@pytest.mark.slow
def test_three_ranks_decode_equals_whole_decode_without_onednn(tmp_path: Path) -> None:
    # a middle rank with two neighbours; at height 4 the halos span more than one neighbour's band
    assert _run_ranks("exact", tmp_path, world=3, script=__file__) == [0, 0, 0]
    _check(tmp_path, 3, onednn=False)


if __name__ == "__main__":
    _mode, _rank, _world, _port, _out = sys.argv[1:]
    _rank_main(_mode, int(_rank), int(_world), int(_port), Path(_out))
