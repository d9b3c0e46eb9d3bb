import math

import pytest
import torch

from models.samplers import (
    draw_initial_noise,
    flow_sigmas,
    initial_noise,
    rcm_timesteps,
    sample_flow_cfg,
    sample_rcm,
)


def test_rcm_timesteps_match_the_published_schedule():
    got = rcm_timesteps(4, 80.0)
    want = [0.987654, 0.933781, 0.852895, 0.608979, 0.0]
    assert got == pytest.approx(want, abs=1e-6)
    assert rcm_timesteps(1, 80.0) == pytest.approx([80 / 81, 0.0])
    assert rcm_timesteps(2, 200.0) == pytest.approx([200 / 201, math.tan(1.5) / (math.tan(1.5) + 1), 0.0])


@pytest.mark.parametrize("steps", [0, 5])
def test_rcm_rejects_unsupported_step_counts(steps):
    with pytest.raises(ValueError, match="steps"):
        rcm_timesteps(steps, 80.0)


def _oracle(x0):
    # The exact rectified-flow velocity towards a known clean sample.
    return lambda x, t: (x - x0) / t


@pytest.mark.parametrize("mode", ["sde", "ode"])
@pytest.mark.parametrize("steps", [1, 2, 4])
def test_rcm_with_an_exact_velocity_lands_on_the_clean_sample(mode, steps):
    x0 = torch.randn(1, 4, 3, 5, 6)
    noise = torch.randn_like(x0)
    out = sample_rcm(_oracle(x0), noise, num_steps=steps, sigma_max=80.0,
                     generator=torch.Generator().manual_seed(0), mode=mode)
    torch.testing.assert_close(out, x0, rtol=1e-5, atol=1e-5)


def test_rcm_sde_renoises_with_fresh_seeded_noise():
    noise = torch.randn(1, 2, 1, 3, 3)
    seen = []

    def velocity(x, t):
        seen.append((x.clone(), t))
        return torch.zeros_like(x)

    out = sample_rcm(velocity, noise, num_steps=2, sigma_max=80.0,
                     generator=torch.Generator().manual_seed(7), mode="sde")
    t0, t1, _ = rcm_timesteps(2, 80.0)
    g = torch.Generator().manual_seed(7)
    eps1 = torch.randn(noise.shape, generator=g)
    x1 = (1 - t1) * (noise * t0) + t1 * eps1
    torch.testing.assert_close(seen[0][0], noise * t0)
    torch.testing.assert_close(seen[1][0], x1)
    torch.testing.assert_close(out, x1)  # last step: t_next = 0, x0 = x - t*0
    assert [t for _, t in seen] == pytest.approx([t0, t1])


def test_rcm_is_deterministic_per_seed_and_reports_steps():
    noise = torch.randn(1, 2, 2, 4, 4)
    vel = lambda x, t: torch.sin(x) * t
    calls = []
    a = sample_rcm(vel, noise, num_steps=4, sigma_max=80.0, generator=torch.Generator().manual_seed(1),
                   on_step=lambda i, n: calls.append((i, n)))
    b = sample_rcm(vel, noise, num_steps=4, sigma_max=80.0, generator=torch.Generator().manual_seed(1))
    c = sample_rcm(vel, noise, num_steps=4, sigma_max=80.0, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    assert calls == [(1, 4), (2, 4), (3, 4), (4, 4)]


def test_rcm_ode_step_follows_the_flow():
    noise = torch.randn(1, 1, 1, 2, 2)
    v_const = torch.full_like(noise, 0.5)
    out = sample_rcm(lambda x, t: v_const, noise, num_steps=3, sigma_max=80.0,
                     generator=torch.Generator().manual_seed(0), mode="ode")
    t = rcm_timesteps(3, 80.0)
    torch.testing.assert_close(out, noise * t[0] - t[0] * v_const)


def test_flow_sigmas_are_shifted_and_monotone():
    s = flow_sigmas(50, 5.0)
    assert s[0] == pytest.approx(1.0) and s[-1] == 0.0 and len(s) == 51
    assert all(a > b for a, b in zip(s, s[1:], strict=False))
    assert s[25] == pytest.approx(5 * 0.5 / (1 + 4 * 0.5))


def test_flow_cfg_combines_guidance_and_reaches_the_clean_sample():
    x0 = torch.randn(1, 3, 2, 4, 4)
    noise = torch.randn_like(x0)
    exact = lambda x, s: (x - x0) / s
    out = sample_flow_cfg(exact, exact, noise, num_steps=10, shift=3.0, guidance_scale=4.0)
    torch.testing.assert_close(out, x0, rtol=1e-4, atol=1e-4)

    cond = lambda x, s: torch.ones_like(x)
    uncond = lambda x, s: torch.zeros_like(x)
    out = sample_flow_cfg(cond, uncond, noise, num_steps=4, shift=1.0, guidance_scale=3.0)
    torch.testing.assert_close(out, noise - 3.0)  # sum of (s_next - s) over steps is -1


@pytest.mark.gpu
def test_rcm_loop_never_waits_for_the_gpu():
    """On CUDA the denoise loop queues everything: the SDE's fresh noise (drawn on the CPU for seeds that
    mean the same on every device) goes up from pinned memory and the preview's latent->RGB factors live on
    the device; a pageable host->device copy would first wait for the step in flight (a host sync per step).
    CUDA's sync debug mode turns any synchronizing call into an error; the values are the CPU run's."""
    from models.latent_preview import LatentPreview

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    noise = torch.randn(1, 16, 3, 8, 8)
    preview = LatentPreview(weight=torch.randn(3, 16), bias=torch.zeros(3)).to("cuda")
    images = []

    def run(start, x0_hook=None):
        vel = lambda x, t: torch.sin(x) * t  # noqa: E731
        return sample_rcm(vel, start, num_steps=4, sigma_max=80.0, mode="sde",
                          generator=torch.Generator().manual_seed(3), on_x0=x0_hook)

    want = run(noise)
    start = noise.cuda()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        got = run(start, lambda i, n, x0: images.append(preview.to_rgb(x0[0, :, 1])))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.testing.assert_close(got.cpu(), want, rtol=1e-5, atol=1e-5)
    assert len(images) == 4 and images[0].is_cuda and images[0].dtype == torch.uint8
    # and the check is real: a pageable copy inside the loop is refused
    torch.cuda.set_sync_debug_mode("error")
    try:
        with pytest.raises(RuntimeError, match="synchroniz"):
            torch.randn(4, 4).to("cuda")
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_initial_noise_drawn_on_a_thread_is_the_seeds_noise_and_leaves_the_generator_where_it_was():
    """draw_initial_noise (generate draws the noise while the encoders run): take() gives exactly
    initial_noise's tensor for the seed, and the generator then continues as after initial_noise (the SDE's
    later draws are unchanged); a failed draw is raised by take(), not lost on the thread."""
    shape = (1, 16, 3, 6, 8)
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    take = draw_initial_noise(shape, g1, "cpu")
    want = initial_noise(shape, g2, "cpu")
    got = take()
    assert torch.equal(got, want) and got.shape == shape and got.dtype == torch.float32
    assert torch.equal(torch.randn(5, generator=g1), torch.randn(5, generator=g2))
    bad = draw_initial_noise((1, -3), torch.Generator().manual_seed(0), "cpu")
    with pytest.raises(RuntimeError):
        bad()


@pytest.mark.gpu
def test_initial_noise_drawn_on_a_thread_reaches_the_gpu_without_a_sync():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    take = draw_initial_noise((1, 16, 3, 6, 8), torch.Generator().manual_seed(7), "cuda")
    want = initial_noise((1, 16, 3, 6, 8), torch.Generator().manual_seed(7), "cpu")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        got = take()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert got.is_cuda and torch.equal(got.cpu(), want)
