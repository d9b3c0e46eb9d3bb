"""Our Wan2.1 VAE against diffusers' AutoencoderKLWan (tiny config, perturbed random weights), loaded
through load_vae from each layout: diffusers folder, Wan .pth, canonical folder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
from diffusers import AutoencoderKLWan  # noqa: E402
from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers  # noqa: E402

from models.vae import WAN21_LATENT_MEAN, WAN21_LATENT_STD, VAEConfig, WanVAE  # noqa: E402
from models.vae_loading import load_vae, save_vae_canonical  # noqa: E402

MIN_COSINE = 0.99999
SIZES = [(1, 9, 32, 32), (2, 5, 24, 40)]  # (batch, frames, height, width)


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.nn.functional.cosine_similarity(a.double().flatten(), b.double().flatten(), dim=0).item()


@pytest.fixture(scope="module")
def reference() -> AutoencoderKLWan:
    torch.manual_seed(0)
    model = AutoencoderKLWan(base_dim=8, z_dim=16).eval()
    with torch.no_grad():
        for p in model.parameters():  # away from init: norm gammas != 1, biases != 0, proj != 0
            p.add_(torch.randn_like(p) * 0.05 + 0.01)
        # Keep most decoded values inside (-1, 1) so the clamp does not hide differences.
        model.decoder.conv_out.weight.mul_(0.25)
        model.decoder.conv_out.bias.mul_(0.25)
    return model


@pytest.fixture(scope="module")
def layouts(reference: AutoencoderKLWan, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("vae")
    # diffusers pipeline layout: the VAE lives in vae/, load_vae gets the pipeline root.
    reference.save_pretrained(root / "pipeline" / "vae")
    # Wan .pth: our parameter names, filled from the diffusers weights through diffusers' OWN
    # Wan -> diffusers converter (independent of our mapping).
    with torch.device("meta"):
        wan_names = list(WanVAE(VAEConfig.from_name("tiny")).state_dict())
    to_diffusers = {k: convert_wan_vae_to_diffusers({k: torch.empty(0)}).popitem()[0] for k in wan_names}
    ref_state = reference.state_dict()
    torch.save({k: ref_state[to_diffusers[k]].clone() for k in wan_names}, root / "Wan2.1_VAE.pth")
    save_vae_canonical(load_vae(root / "Wan2.1_VAE.pth"), root / "canonical", source="test")
    return {
        "diffusers": root / "pipeline",
        "wan_pth": root / "Wan2.1_VAE.pth",
        "canonical": root / "canonical",
    }


@pytest.fixture(scope="module")
def expected(reference: AutoencoderKLWan) -> dict[tuple[int, ...], dict[str, torch.Tensor]]:
    """diffusers' normalised posterior mean and decode, per input size."""
    mean = torch.tensor(reference.config.latents_mean).view(1, 16, 1, 1, 1)
    std = torch.tensor(reference.config.latents_std).view(1, 16, 1, 1, 1)
    out = {}
    for size in SIZES:
        b, f, h, w = size
        video = torch.rand(b, 3, f, h, w, generator=torch.Generator().manual_seed(f * h + w)) * 2 - 1
        with torch.no_grad():
            mu = reference.encode(video).latent_dist.mean  # raw mu
            decoded = reference.decode(mu).sample
        out[size] = {"video": video, "latents": (mu - mean) / std, "decoded": decoded}
    return out


def test_our_names_are_wan_names_per_diffusers_converter(reference: AutoencoderKLWan) -> None:
    ours = WanVAE(VAEConfig.from_name("tiny")).state_dict()
    converted = convert_wan_vae_to_diffusers(ours)
    assert set(converted) == set(reference.state_dict())
    for key, value in converted.items():
        assert value.shape == reference.state_dict()[key].shape, key


def test_latent_stats_are_wans(reference: AutoencoderKLWan) -> None:
    assert len(WAN21_LATENT_MEAN) == len(WAN21_LATENT_STD) == 16
    assert list(WAN21_LATENT_MEAN) == pytest.approx(reference.config.latents_mean)
    assert list(WAN21_LATENT_STD) == pytest.approx(reference.config.latents_std)


@pytest.mark.parametrize("layout", ["diffusers", "wan_pth", "canonical"])
def test_matches_diffusers(layout: str, layouts: dict[str, Path], expected: dict) -> None:
    vae = load_vae(layouts[layout])
    assert vae.config == VAEConfig.from_name("tiny")
    for size, ref in expected.items():
        latents = vae.encode(ref["video"])
        b, f, h, w = size
        assert latents.shape == (b, 16, (f - 1) // 4 + 1, h // 8, w // 8)
        assert _cosine(latents, ref["latents"]) >= MIN_COSINE, (layout, size)
        torch.testing.assert_close(latents, ref["latents"], atol=1e-4, rtol=1e-4)

        decoded = vae.decode(ref["latents"])
        assert decoded.shape == ref["video"].shape
        # The comparison means something only if most values are not clamped to ±1.
        assert (decoded.abs() < 0.999).float().mean() > 0.5
        assert _cosine(decoded, ref["decoded"]) >= MIN_COSINE, (layout, size)
        torch.testing.assert_close(decoded, ref["decoded"], atol=1e-4, rtol=1e-4)


def test_diffusers_vae_folder_itself_loads_the_same(layouts: dict[str, Path]) -> None:
    via_root = load_vae(layouts["diffusers"]).state_dict()
    via_vae = load_vae(layouts["diffusers"] / "vae").state_dict()
    via_pth = load_vae(layouts["wan_pth"]).state_dict()
    assert via_root.keys() == via_vae.keys() == via_pth.keys()
    for key, value in via_root.items():
        assert torch.equal(value, via_vae[key]) and torch.equal(value, via_pth[key]), key
