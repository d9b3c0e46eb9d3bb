"""The wan-tiny pipeline end to end on CPU: shapes, determinism, I2V conditioning, validation."""

from pathlib import Path

import numpy as np
import pytest
import torch

from models.checkpoint_components import resolve_components
from models.checkpoint_io import CheckpointError
from models.pipeline import load_pipeline
from models.pipeline_types import GenerationRequest
from models.presets import adaptive_size, check_frames, get_model, latent_frames
from models.tiny import ensure_tiny_checkpoints


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return ensure_tiny_checkpoints(tmp_path_factory.mktemp("ckpt") / "wan-tiny")


@pytest.fixture(scope="module")
def pipe(tiny_dir):
    return load_pipeline("wan-tiny", [tiny_dir])


def _req(**kw) -> GenerationRequest:
    base = dict(prompt="a red fox in the snow", width=64, height=64, num_frames=5, seed=3, num_steps=2)
    base.update(kw)
    return GenerationRequest(**base)


def test_t2v_frames_shape_progress_and_timings(pipe):
    steps = []
    result = pipe.generate(_req(), on_step=lambda done, total: steps.append((done, total)))
    assert result.frames.shape == (5, 64, 64, 3) and result.frames.dtype == np.uint8
    assert steps == [(1, 2), (2, 2)]
    assert len(result.timings.denoise_steps) == 2
    assert result.timings.text_encode > 0 and result.timings.vae_decode > 0
    assert result.frames.std() > 1.0  # not a constant image


def test_same_seed_same_video_different_seed_differs(pipe):
    a = pipe.generate(_req(seed=11)).frames
    b = pipe.generate(_req(seed=11)).frames
    c = pipe.generate(_req(seed=12)).frames
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_prompt_changes_the_video_and_text_is_cached(pipe):
    a = pipe.generate(_req(prompt="a red fox")).frames
    b = pipe.generate(_req(prompt="a blue whale")).frames
    assert not np.array_equal(a, b)
    assert "a red fox" in pipe._text_cache and "a blue whale" in pipe._text_cache


def test_on_step_can_cancel(pipe):
    class Stop(Exception):
        pass

    def cancel(done, total):
        raise Stop

    with pytest.raises(Stop):
        pipe.generate(_req(), on_step=cancel)


def test_i2v_condition_layout(pipe):
    img = np.random.default_rng(0).integers(0, 255, (40, 90, 3), dtype=np.uint8)
    cond = pipe.image_condition(img, 9, 96, 64)
    assert cond.shape == (1, 20, latent_frames(9), 8, 12)
    assert torch.all(cond[:, :4, 0] == 1) and torch.all(cond[:, :4, 1:] == 0)
    result = pipe.generate(_req(kind="i2v", image=img, width=96, height=64, num_frames=9))
    assert result.frames.shape == (9, 64, 96, 3)
    assert result.timings.image_encode > 0


def test_i2v_image_steers_the_video(pipe):
    rng = np.random.default_rng(1)
    a = pipe.generate(_req(kind="i2v", image=rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))).frames
    b = pipe.generate(_req(kind="i2v", image=np.zeros((64, 64, 3), np.uint8))).frames
    assert not np.array_equal(a, b)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        (dict(num_frames=6), "4k\\+1"),
        (dict(width=70), "multiples of 16"),
        (dict(num_frames=37), "num_frames 37"),
        (dict(num_steps=5), "1 to 4"),
        (dict(kind="i2v"), "needs an image"),
    ],
)
def test_bad_requests_are_rejected_with_reasons(pipe, kw, match):
    with pytest.raises(ValueError, match=match):
        pipe.generate(_req(**kw))


def test_components_resolve_from_roles_and_layouts(tiny_dir):
    spec = get_model("wan-tiny")
    parts = resolve_components([tiny_dir], spec)
    assert parts.transformers == {"t2v": tiny_dir / "transformer", "i2v": tiny_dir / "i2v"}
    assert parts.vae == tiny_dir / "vae" and parts.text_encoder == tiny_dir / "text_encoder"
    assert parts.tokenizer == tiny_dir / "text_encoder" / "tokenizer"

    explicit = resolve_components(
        [f"transformer={tiny_dir / 'transformer'}", f"i2v={tiny_dir / 'i2v'}", tiny_dir / "vae",
         tiny_dir / "text_encoder"], spec)
    assert explicit.transformers["i2v"] == tiny_dir / "i2v"

    with pytest.raises(CheckpointError, match="no vae"):
        resolve_components([f"transformer={tiny_dir / 'transformer'}", f"i2v={tiny_dir / 'i2v'}",
                            tiny_dir / "text_encoder"], spec)
    with pytest.raises(CheckpointError, match="two checkpoints for transformer"):
        resolve_components([tiny_dir / "transformer", tiny_dir / "i2v"], spec)
    with pytest.raises(CheckpointError, match="no such file"):
        resolve_components([f"vae={tiny_dir / 'missing'}"], spec)
    with pytest.raises(CheckpointError, match="experts"):
        resolve_components([tiny_dir], get_model("wan2.2-i2v-a14b"))


def test_single_files_are_classified_by_their_tensors(tiny_dir, tmp_path):
    from models.checkpoint_io import read_state_dict

    for sub, name in (("vae", "Wan2.1_VAE.pth"), ("text_encoder", "t5.pth"), ("transformer", "dit-high.pth")):
        torch.save(read_state_dict(tiny_dir / sub), tmp_path / name)
    parts = resolve_components([tmp_path / "Wan2.1_VAE.pth", tmp_path / "t5.pth", tmp_path / "dit-high.pth",
                                f"low={tmp_path / 'dit-high.pth'}"], get_model("wan2.2-i2v-a14b"))
    assert parts.vae == tmp_path / "Wan2.1_VAE.pth"
    assert parts.text_encoder == tmp_path / "t5.pth"
    assert parts.transformers == {"high": tmp_path / "dit-high.pth", "low": tmp_path / "dit-high.pth"}


def test_presets():
    check_frames(81)
    with pytest.raises(ValueError):
        check_frames(80)
    assert latent_frames(81) == 21
    w, h = adaptive_size(1920, 1080, 832 * 480)
    assert w % 16 == 0 and h % 16 == 0 and abs(w / h - 16 / 9) < 0.05
    assert abs(w * h - 832 * 480) / (832 * 480) < 0.05
    with pytest.raises(ValueError, match="unknown model"):
        get_model("sora")


class _Recorder(torch.nn.Module):
    """Wraps a DiT and records the model times it was called at."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.times: list[float] = []

    def forward(self, x, t, ctx, cond):
        self.times.append(float(t[0]) / 1000.0)
        return self.inner(x, t, ctx, cond)


def test_a14b_switches_from_the_high_to_the_low_noise_expert_below_t_0_9(pipe):
    from dataclasses import replace

    from models.pipeline import WanPipeline
    from models.samplers import rcm_timesteps

    spec = replace(get_model("wan-tiny"), kinds=("i2v",), experts=True)
    high, low = _Recorder(pipe.transformers["i2v"]), _Recorder(pipe.transformers["i2v"])
    a14b = WanPipeline(spec, {"high": high, "low": low}, pipe.text_encoder, pipe.vae, pipe.device, pipe.dtype)
    img = np.full((64, 64, 3), 128, np.uint8)
    a14b.generate(_req(kind="i2v", image=img, num_steps=4, sigma_max=200.0))
    times = rcm_timesteps(4, 200.0)[:-1]
    assert high.times == pytest.approx([t for t in times if t >= 0.9])
    assert low.times == pytest.approx([t for t in times if t < 0.9])
    assert high.times and low.times


def test_flow_solver_with_cfg_runs_the_negative_prompt(tiny_dir):
    flow = load_pipeline("wan-tiny", [tiny_dir], sampler="flow")
    steps = []
    out = flow.generate(_req(num_steps=3, negative_prompt="blurry", guidance_scale=4.0),
                        on_step=lambda d, n: steps.append(d))
    assert steps == [1, 2, 3] and out.frames.shape == (5, 64, 64, 3)
    assert "blurry" in flow._text_cache


def test_the_i2v_only_tiny_model_loads_just_its_dit(tiny_dir):
    i2v = load_pipeline("wan-tiny-i2v", [tiny_dir])
    assert set(i2v.transformers) == {"i2v"}
    with pytest.raises(ValueError, match="does not do t2v"):
        i2v.generate(_req())
