"""Latent previews: a rough RGB image of a latent frame without a VAE pass.

A Wan2.1 latent pixel (16 channels) stands for an 8×8 patch of video, and its channels carry the
patch's mean colour nearly linearly: `rgb ≈ W·z + b` with W [3, 16] and b [3] ("latent RGB factors",
the trick ComfyUI and other UIs use for sampler previews). We fit our own factors by least squares
for whichever VAE the pipeline loaded (the real Wan2.1 VAE or the random tiny one), once, from a
handful of smooth synthetic colour images: encode them, decode the latents, and regress the decoded
8×8-pooled colour on the latents. The fit costs one small VAE encode + decode (milliseconds on a GPU);
a preview afterwards is a [3, 16] projection of one latent frame, on the device.

During sampling the pipeline previews the current x0 estimate (rectified flow: x0 = x_t − t·v) of the
middle latent frame: [h, w, 3] uint8 at latent resolution, e.g. 104×60 for 832×480.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class LatentPreview:
    weight: torch.Tensor  # [3, z] float32
    bias: torch.Tensor  # [3] float32

    @classmethod
    @torch.inference_mode()
    def fit(cls, vae: torch.nn.Module, *, images: int = 8, size: int = 64, seed: int = 0) -> LatentPreview:
        """Least-squares factors for `vae` (a models.vae.WanVAE) from `images` smooth random colour
        images of `size`×`size` pixels (deterministic for a seed). Values are in [-1, 1] units."""
        param = next(vae.parameters())
        sf = int(vae.config.spatial_factor)  # type: ignore[union-attr, arg-type]
        g = torch.Generator().manual_seed(seed)
        # Smooth colour fields: a 3×3 grid of random colours, bilinearly upsampled; [B, 3, 1, S, S].
        grid = torch.rand(images, 3, 3, 3, generator=g) * 2.0 - 1.0
        video = F.interpolate(grid, size=(size, size), mode="bilinear", align_corners=True)[:, :, None]
        z = vae.encode(video.to(param.device, param.dtype))  # type: ignore[operator]  # [B, z, 1, s, s]
        decoded = vae.decode(z)  # type: ignore[operator]  # [B, 3, 1, S, S]
        target = F.avg_pool2d(decoded[:, :, 0].float().cpu(), sf)  # [B, 3, s, s]
        zs = z[:, :, 0].float().cpu()  # [B, z, s, s]
        x = zs.permute(0, 2, 3, 1).reshape(-1, zs.shape[1])  # [N, z]
        y = target.permute(0, 2, 3, 1).reshape(-1, 3)  # [N, 3]
        a = torch.cat([x, torch.ones(x.shape[0], 1)], dim=1)  # [N, z + 1]
        sol = torch.linalg.lstsq(a, y).solution  # [z + 1, 3]
        return cls(weight=sol[:-1].T.contiguous(), bias=sol[-1].contiguous())

    def to(self, device: torch.device | str) -> LatentPreview:
        """These factors on `device`. Keep them where the latents are: `to_rgb` with factors elsewhere copies
        them every call, and a copy from pageable host memory to a GPU first waits for the GPU's stream to
        drain, i.e. for the denoise step in flight (a host sync per step)."""
        return LatentPreview(weight=self.weight.to(device), bias=self.bias.to(device))

    def to_rgb(self, latent: torch.Tensor) -> torch.Tensor:
        """latent [z, h, w] (normalised, any float dtype, any device) → [h, w, 3] uint8 on its device
        (fastest with the factors already there: `to`)."""
        w, b = self.weight, self.bias
        if w.device != latent.device:
            w, b = w.to(latent.device), b.to(latent.device)
        rgb = torch.einsum("cz,zhw->hwc", w, latent.float()) + b  # [h, w, 3] in [-1, 1] units
        return ((rgb.clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)
