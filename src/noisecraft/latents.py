"""Pictures <-> latents through a model's autoencoder (`LatentCodec`): the latent scale and shift,
posterior samples drawn from the image's own noise, tiled decoding of large pictures, the float32
retry of a half-precision decode that overflowed, and a quick look at latents without the decoder.
Pixel models pass through unchanged.
"""

from __future__ import annotations

import threading
from typing import Callable

import torch

from .models.vae import AutoencoderKL

TILE_ABOVE = 128  # latent pixels: larger images decode in tiles unless `tiling` says otherwise


class LatentCodec:
    """Encode images in [-1, 1] to scaled latents and decode latents to images in [0, 1]."""

    def __init__(self, vae: AutoencoderKL | None, dtype: torch.dtype):
        self.vae, self.dtype = vae, dtype
        self.tiling: bool | None = None  # None: tile only pictures larger than TILE_ABOVE latent pixels
        self._rgb: tuple[torch.Tensor, torch.Tensor] | None = None  # `approximate`'s fitted map: weight [3, C], bias [3]
        self._normal: tuple[torch.Tensor, torch.Tensor] | None = None  # its least-squares sums X^T X, X^T Y
        self._lock = threading.Lock()

    def encode(self, pixels: torch.Tensor, noise: Callable | None = None) -> torch.Tensor:
        """Scaled latents: a posterior sample drawn from `noise(like)`, or the posterior mean."""
        vae = self.vae
        posterior = vae.encode(pixels.to(next(vae.parameters()).dtype))
        z = posterior.mean if noise is None else posterior.mean + posterior.std * noise(posterior.mean)
        return ((z.float() - vae.config.shift_factor) * vae.config.scaling_factor).to(self.dtype)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents (or pixels, for pixel models) to images in [0, 1].

        A half-precision VAE that overflows (SDXL's does in fp16) is moved to float32 and the decode
        repeated, instead of returning a black image.
        """
        if self.vae is not None:
            z = latents.float() / self.vae.config.scaling_factor + self.vae.config.shift_factor
            vae_dtype = next(self.vae.parameters()).dtype
            tiled = self.tiling if self.tiling is not None else max(z.shape[-2:]) > TILE_ABOVE
            run = self.vae.decode_tiled if tiled else self.vae.decode
            out = run(z.to(vae_dtype))
            if vae_dtype != torch.float32 and not torch.isfinite(out).all():
                self.vae.float()
                out = run(z)
            pixels = ((out.float() + 1) / 2).clamp(0, 1)
            self._learn(latents, pixels)
            return pixels
        return ((latents.float() + 1) / 2).clamp(0, 1)

    @torch.no_grad()
    def approximate(self, latents: torch.Tensor) -> torch.Tensor:
        """A quick look at the first picture of `latents` [N, C, h, w]: [3, h, w] in [0, 1], without the decoder.

        A linear map from latent channels to RGB (what A1111's "Approx" previews do), fitted by least
        squares on every real decode this codec has made (the finished pictures teach it for free),
        the first time on one decode of a crop of at most 32 x 32 latents. A matrix product per call.
        """
        z = latents[0].float()
        if self.vae is None:
            return ((z + 1) / 2).clamp(0, 1)
        if self._rgb is None:
            self.decode(latents[:1, :, :32, :32])
        weight, bias = (t.to(z.device) for t in self._rgb)
        return (torch.einsum("kc,chw->khw", weight, z) + bias[:, None, None]).clamp(0, 1)

    def _learn(self, latents: torch.Tensor, pixels: torch.Tensor) -> None:
        """Add a decode's (latents, picture) pairs to `approximate`'s least-squares fit."""
        factor = pixels.shape[-1] // latents.shape[-1]
        colours = torch.nn.functional.avg_pool2d(pixels.float(), factor)  # [N, 3, h, w]: each latent pixel's colour
        x = latents.float().transpose(0, 1).reshape(latents.shape[1], -1)
        x = torch.cat([x, torch.ones(1, x.shape[1], device=x.device)]).T.double().cpu()  # [M, C + 1]
        y = colours.transpose(0, 1).reshape(3, -1).T.double().cpu()  # [M, 3]
        with self._lock:
            xtx, xty = (x.T @ x, x.T @ y) if self._normal is None else (self._normal[0] + x.T @ x, self._normal[1] + x.T @ y)
            self._normal = (xtx, xty)
            solution = torch.linalg.solve(xtx + 1e-6 * torch.eye(len(xtx), dtype=xtx.dtype), xty).float()  # [C + 1, 3]
            self._rgb = (solution[:-1].T.contiguous(), solution[-1].clone())

    def inpaint_channels(self, init: torch.Tensor | None, mask: torch.Tensor | None, noise: Callable, n: int, shape: tuple,
                         factor: int, device: torch.device) -> torch.Tensor:
        """[mask, masked-image latents] for an inpainting UNet; without a start picture, a blank canvas to paint in."""
        if init is None:  # txt2img with an inpainting model: everything masked, over a grey (0) image
            blank = torch.zeros(n, 3, shape[1] * factor, shape[2] * factor, device=device)
            return torch.cat([torch.ones(n, 1, *shape[1:], device=device), self.encode(blank)], dim=1).to(self.dtype)
        masked = self.encode(init * (mask.to(init.device) < 0.5), noise)
        return torch.cat([latent_mask(mask, shape).to(device).expand(n, -1, -1, -1), masked], dim=1).to(self.dtype)


def latent_mask(mask: torch.Tensor, shape: tuple) -> torch.Tensor:
    """A pixel mask [1, 1, H, W] at the latents' size (nearest, as diffusers)."""
    return torch.nn.functional.interpolate(mask, size=tuple(shape[1:]))
