"""Training objectives, apart from the networks they train (EDM keeps its loss classes beside, not
inside, its networks): the denoising loss with Min-SNR weights, the autoencoder's loss, and the
patch-GAN's hinge loss with its adaptive weight.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..denoiser import Denoiser
from ..models.vae import AutoencoderKL


def training_sigmas(denoiser: Denoiser, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Sigmas [batch] (float64) of timesteps t ~ U{0, ..., T-1}, as DDPM training draws them."""
    device = generator.device if generator is not None else denoiser.sigmas.device
    t = torch.randint(0, denoiser.num_train_timesteps, (batch,), generator=generator, device=device)
    return denoiser.sigmas[t.to(denoiser.sigmas.device)]


def denoising_loss(denoiser: Denoiser, x0: torch.Tensor, sigma: torch.Tensor, cond: dict | None = None,
                   noise: torch.Tensor | None = None, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample MSE [B] in the network's native target (Ho et al. 2020 L_simple for eps).

    x = x0 + sigma * noise; targets: eps -> noise, x0 -> x0,
    v -> alpha noise - sigma_vp x0 = c_in (noise - sigma x0). `weights` [B, 1, H, W] (averaging 1 per
    sample, e.g. a photo's loss mask at the latents' size) weigh each position: zero ignores it.
    """
    noise = torch.randn_like(x0) if noise is None else noise
    sigma = torch.as_tensor(sigma, device=x0.device)
    if sigma.ndim == 0:
        sigma = sigma.expand(x0.shape[0])
    x = x0 + sigma.to(device=x0.device, dtype=x0.dtype).reshape(-1, *([1] * (x0.ndim - 1))) * noise
    out, s, c_in = denoiser.network_output(x, sigma, cond)
    if denoiser.prediction == "eps":
        target = noise
    elif denoiser.prediction == "v":
        target = c_in * (noise - s * x0)
    else:
        target = x0
    error = (out - target).pow(2)
    return (error if weights is None else error * weights.to(error.dtype)).flatten(1).mean(1)


def min_snr_weights(sigma: torch.Tensor, gamma: float, prediction: str) -> torch.Tensor:
    """Min-SNR-gamma loss weights (Hang et al. 2023, "Efficient Diffusion Training via Min-SNR
    Weighting Strategy", eq. 8 and Sec. 3.4) for per-sample losses in the network's native target.

    SNR = alpha^2 / sigma_vp^2 = 1 / sigma^2 in the variance-exploding sigma used here. The x0 loss
    weighted by min(SNR, gamma) becomes, in the other targets: eps -> min(SNR, gamma) / SNR,
    v -> min(SNR, gamma) / (SNR + 1), x0 -> min(SNR, gamma).
    """
    snr = 1.0 / sigma.double() ** 2
    clipped = snr.clamp(max=gamma)
    if prediction == "eps":
        weight = clipped / snr
    elif prediction == "v":
        weight = clipped / (snr + 1)
    else:
        weight = clipped
    return weight.float()


def vae_loss(vae: AutoencoderKL, x: torch.Tensor, kl_weight: float = 1e-6,
             generator: torch.Generator | None = None, discriminator: nn.Module | None = None,
             gan_weight: float = 0.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L1 reconstruction of a posterior sample plus ``kl_weight`` times the KL term; returns (loss, logs).

    This is the objective of LDM's ``LPIPSWithDiscriminator`` without the perceptual (LPIPS) term,
    which needs pretrained VGG weights noisecraft cannot ship: per sample,
    ``sum |x - x_hat| + kl_weight * KL(q(z|x) || N(0, I))``, averaged over the batch. Both terms
    are divided by the number of pixel values (C*H*W), so the loss reads as a mean absolute
    error while ``kl_weight`` keeps its meaning from the LDM configs (1e-6 for SD's kl-f8).
    With a `discriminator` and ``gan_weight > 0`` (off by default) the patch-GAN generator term
    ``-D(x_hat)`` is added with the adaptive weight of Esser et al. 2021, eq. 7.
    Logs (detached, so no device sync): ``loss``, ``l1`` (mean absolute error), ``mse``, ``kl``
    (per sample, in nats), ``gan`` when used, and ``recon`` (the reconstruction, for the
    discriminator's own step).
    """
    recon, posterior = vae(x, generator)
    per_value = x[0].numel()
    l1 = (x.float() - recon.float()).abs().mean()
    kl = posterior.kl().mean()
    loss = l1 + kl_weight * kl / per_value
    with torch.no_grad():
        mse = (x.float() - recon.float()).pow(2).mean()
    logs = {"l1": l1.detach(), "mse": mse, "kl": kl.detach(), "recon": recon.detach()}
    if discriminator is not None and gan_weight > 0:
        generator_loss = -discriminator(recon).float().mean()
        last_layer = getattr(vae, "module", vae).decoder.conv_out.weight
        loss = loss + gan_weight * adaptive_weight(l1, generator_loss, last_layer) * generator_loss
        logs["gan"] = generator_loss.detach()
    logs["loss"] = loss.detach()
    return loss, logs


def hinge_discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """0.5 * (E[relu(1 - D(x))] + E[relu(1 + D(x_hat))]) (Lim & Ye 2017, geometric GAN)."""
    return 0.5 * (F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean())


def adaptive_weight(reconstruction_loss: torch.Tensor, generator_loss: torch.Tensor, last_layer: torch.Tensor,
                    max_weight: float = 1e4) -> torch.Tensor:
    """lambda = ||grad_L rec|| / (||grad_L gan|| + 1e-4) at the decoder's last layer L (Esser et al. 2021, eq. 7)."""
    rec_grad = torch.autograd.grad(reconstruction_loss, last_layer, retain_graph=True)[0]
    gan_grad = torch.autograd.grad(generator_loss, last_layer, retain_graph=True)[0]
    return (rec_grad.norm() / (gan_grad.norm() + 1e-4)).clamp(0, max_weight).detach()
