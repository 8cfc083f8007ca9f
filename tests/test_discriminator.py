import torch

from noisecraft.models.discriminator import PatchDiscriminator
from noisecraft.models.vae import AutoencoderKL, VAEConfig
from noisecraft.train.losses import adaptive_weight, hinge_discriminator_loss, vae_loss


def test_patch_logits_shape():
    d = PatchDiscriminator(3, ch=32, layers=2)
    assert d(torch.randn(2, 3, 64, 64)).shape == (2, 1, 14, 14)


def test_hinge_loss_values():
    assert hinge_discriminator_loss(torch.full((4,), 2.0), torch.full((4,), -2.0)) == 0  # confident and right
    assert torch.isclose(hinge_discriminator_loss(torch.zeros(4), torch.zeros(4)), torch.tensor(1.0))


def test_adaptive_weight_is_the_gradient_norm_ratio():
    w = torch.randn(5, requires_grad=True)
    rec, gan = (3 * w).sum(), (w * 0.5).sum()
    expected = (3 * 5**0.5) / (0.5 * 5**0.5 + 1e-4)
    assert torch.isclose(adaptive_weight(rec, gan, w), torch.tensor(expected))


def test_vae_loss_adds_the_generator_term_only_when_asked():
    vae = AutoencoderKL(VAEConfig.tiny())
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    g = torch.Generator().manual_seed(0)
    plain, logs = vae_loss(vae, x, generator=g)
    assert "gan" not in logs and logs["recon"].shape == x.shape
    g = torch.Generator().manual_seed(0)
    with_gan, logs = vae_loss(vae, x, generator=g, discriminator=PatchDiscriminator(3, ch=32), gan_weight=0.5)
    assert "gan" in logs and not torch.isclose(plain, with_gan)
