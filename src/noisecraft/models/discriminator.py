"""The patch-GAN discriminator and losses used to sharpen autoencoders (off by default).

PatchGAN: Isola et al. 2017 ("Image-to-Image Translation with Conditional Adversarial Networks"),
as LDM trains its autoencoders (Esser et al. 2021, "Taming Transformers", Sec. 3.2; Rombach et al.
2022, App. G): a few strided convolutions that score overlapping patches as real or fake, a hinge
loss, and the generator term weighted adaptively by the ratio of gradient norms at the decoder's
last layer (Esser et al. 2021, eq. 7). GroupNorm replaces BatchNorm so that small and distributed
batches behave the same.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PatchDiscriminator(nn.Module):
    """Logits [B, 1, h, w], one per overlapping patch; `layers` stride-2 stages after the first."""

    def __init__(self, in_channels: int = 3, ch: int = 64, layers: int = 2):
        super().__init__()
        blocks: list[nn.Module] = [nn.Conv2d(in_channels, ch, 4, 2, 1), nn.LeakyReLU(0.2)]
        width = ch
        for n in range(1, layers + 1):
            out = ch * min(2**n, 8)
            stride = 2 if n < layers else 1
            blocks += [nn.Conv2d(width, out, 4, stride, 1, bias=False), nn.GroupNorm(32, out), nn.LeakyReLU(0.2)]
            width = out
        blocks.append(nn.Conv2d(width, 1, 4, 1, 1))
        self.main = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x)


def hinge_discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """0.5 * (E[relu(1 - D(x))] + E[relu(1 + D(x_hat))]) (Lim & Ye 2017, geometric GAN)."""
    return 0.5 * (F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean())


def adaptive_weight(reconstruction_loss: torch.Tensor, generator_loss: torch.Tensor, last_layer: torch.Tensor,
                    max_weight: float = 1e4) -> torch.Tensor:
    """lambda = ||grad_L rec|| / (||grad_L gan|| + 1e-4) at the decoder's last layer L (Esser et al. 2021, eq. 7)."""
    rec_grad = torch.autograd.grad(reconstruction_loss, last_layer, retain_graph=True)[0]
    gan_grad = torch.autograd.grad(generator_loss, last_layer, retain_graph=True)[0]
    return (rec_grad.norm() / (gan_grad.norm() + 1e-4)).clamp(0, max_weight).detach()
