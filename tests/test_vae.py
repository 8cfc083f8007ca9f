"""The LDM autoencoder against diffusers' AutoencoderKL, loaded through diffusers' own LDM converter.

Random weights in our (original CompVis) layout are wrapped as ``first_stage_model.*``, converted
with ``convert_ldm_vae_checkpoint`` and loaded strictly. Tolerance: max |ours - diffusers| /
max |diffusers| <= 1e-4 in float32 (both run the same float32 operations).
"""

from __future__ import annotations

import json

import pytest
import torch

from noisecraft.models.vae import AutoencoderKL, VAEConfig
from noisecraft.train.losses import vae_loss

diffusers = pytest.importorskip("diffusers")
from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint, create_vae_diffusers_config_from_ldm  # noqa: E402

TOLERANCE = 1e-4


# Three levels (f4), a channel change at every level, 2 blocks per level; diffusers has no attention
# outside the middle blocks, so attn_resolutions stays empty here (as in every SD VAE).
TINY = VAEConfig(ch=32, ch_mult=(1, 2, 2), num_res_blocks=2, z_channels=4, embed_dim=3, resolution=16)


def randomize(module: torch.nn.Module) -> torch.nn.Module:
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return module.eval()


def diffusers_twin(ours: AutoencoderKL):
    c = ours.config
    ddconfig = dict(in_channels=c.in_channels, out_ch=c.out_channels, ch=c.ch, ch_mult=list(c.ch_mult),
                    num_res_blocks=c.num_res_blocks, z_channels=c.z_channels, resolution=c.resolution)
    original = {"model": {"params": {"scale_factor": c.scaling_factor,
                                     "first_stage_config": {"params": {"embed_dim": c.embed_dim, "ddconfig": ddconfig}}}}}
    checkpoint = {f"first_stage_model.{k}": v for k, v in ours.state_dict().items()}
    config = create_vae_diffusers_config_from_ldm(original, checkpoint)
    # diffusers ties embed_dim to z_channels, so the parity tests use embed_dim == z_channels.
    ref = diffusers.AutoencoderKL(**config)
    ref.load_state_dict(convert_ldm_vae_checkpoint(checkpoint, config), strict=True)
    return ref.eval()


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def test_encode_and_decode_match_diffusers():
    config = VAEConfig(**TINY.to_dict() | {"embed_dim": 4})
    ours = randomize(AutoencoderKL(config))
    ref = diffusers_twin(ours)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        posterior, expected = ours.encode(x), ref.encode(x).latent_dist
        assert posterior.mean.shape == (2, 4, 4, 4)
        assert rel_diff(posterior.mean, expected.mean) <= TOLERANCE
        assert rel_diff(posterior.logvar, expected.logvar) <= TOLERANCE
        z = torch.randn(2, 4, 4, 4)
        out = ours.decode(z)
        assert out.shape == (2, 3, 16, 16)
        assert rel_diff(out, ref.decode(z).sample) <= TOLERANCE
        assert ours.decode(posterior.mode()).shape == x.shape
    assert sorted((m.num_channels, m.eps) for m in ours.modules() if isinstance(m, torch.nn.GroupNorm)) == \
        sorted((m.num_channels, m.eps) for m in ref.modules() if isinstance(m, torch.nn.GroupNorm))


def test_odd_sizes_follow_the_original_asymmetric_padding():
    ours = randomize(AutoencoderKL(VAEConfig(**TINY.to_dict() | {"embed_dim": 4})))
    ref = diffusers_twin(ours)
    x = torch.randn(1, 3, 13, 18)
    with torch.no_grad():
        mean = ours.encode(x).mean
        assert mean.shape == (1, 4, 3, 4)
        assert rel_diff(mean, ref.encode(x).latent_dist.mean) <= TOLERANCE


def test_posterior():
    ours = randomize(AutoencoderKL(TINY))
    with torch.no_grad():
        p = ours.encode(torch.rand(2, 3, 8, 8) * 2 - 1)
    assert p.mean.shape == p.logvar.shape == (2, 3, 2, 2)  # embed_dim latent channels
    torch.testing.assert_close(p.std, torch.exp(0.5 * p.logvar))
    torch.testing.assert_close(p.mode(), p.mean)
    a, b = p.sample(torch.Generator().manual_seed(1)), p.sample(torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, b)
    assert not torch.equal(a, p.mean)
    expected = 0.5 * (p.mean**2 + p.logvar.exp() - 1 - p.logvar).sum(dim=(1, 2, 3))
    torch.testing.assert_close(p.kl(), expected)
    assert (p.kl() >= 0).all() and p.kl().shape == (2,)
    from noisecraft.models.vae import DiagonalGaussian

    extreme = DiagonalGaussian(torch.cat([torch.zeros(1, 1, 1, 1), torch.full((1, 1, 1, 1), -100.0)], dim=1))
    assert extreme.logvar.item() == -30.0


def test_sd_layout_on_meta_device():
    vae = AutoencoderKL(VAEConfig.sd(), device="meta")
    state = vae.state_dict()
    assert len(state) == 248
    assert sum(p.numel() for p in vae.parameters()) == 83_653_863
    shapes = {
        "encoder.conv_in.weight": (128, 3, 3, 3),
        "encoder.down.0.block.1.conv2.weight": (128, 128, 3, 3),
        "encoder.down.1.block.0.nin_shortcut.weight": (256, 128, 1, 1),
        "encoder.down.1.downsample.conv.weight": (256, 256, 3, 3),
        "encoder.down.2.downsample.conv.weight": (512, 512, 3, 3),
        "encoder.mid.attn_1.q.weight": (512, 512, 1, 1),
        "encoder.mid.attn_1.proj_out.bias": (512,),
        "encoder.mid.block_2.norm2.weight": (512,),
        "encoder.conv_out.weight": (8, 512, 3, 3),
        "quant_conv.weight": (8, 8, 1, 1),
        "post_quant_conv.weight": (4, 4, 1, 1),
        "decoder.conv_in.weight": (512, 4, 3, 3),
        "decoder.up.3.upsample.conv.weight": (512, 512, 3, 3),
        "decoder.up.1.block.0.nin_shortcut.weight": (256, 512, 1, 1),
        "decoder.up.0.block.2.conv1.weight": (128, 128, 3, 3),
        "decoder.norm_out.weight": (128,),
        "decoder.conv_out.weight": (3, 128, 3, 3),
    }
    assert {k: tuple(state[k].shape) for k in shapes} == shapes
    assert "encoder.down.3.downsample.conv.weight" not in state and "decoder.up.0.upsample.conv.weight" not in state
    assert VAEConfig.sd().downsample_factor == 8 and VAEConfig.sdxl().scaling_factor == 0.13025


def test_attention_levels_when_asked():
    config = VAEConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,), resolution=16)
    vae = AutoencoderKL(config)
    state = vae.state_dict()
    assert "encoder.down.1.attn.0.q.weight" in state and "decoder.up.1.attn.1.k.weight" in state
    assert not any(k.startswith("encoder.down.0.attn") for k in state)
    with torch.no_grad():
        assert vae.decode(vae.encode(torch.randn(1, 3, 16, 16)).sample()).shape == (1, 3, 16, 16)


@pytest.mark.parametrize("name", ["sd", "sdxl", "tiny"])
def test_config_round_trips_through_json(name):
    config = getattr(VAEConfig, name)()
    assert VAEConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert VAEConfig(ch_mult=[1, 2]).ch_mult == (1, 2)


def test_vae_loss_decreases_when_overfitting_two_images():
    torch.manual_seed(0)
    vae = AutoencoderKL(VAEConfig.tiny()).train()
    x = torch.zeros(2, 3, 8, 8)
    x[0, 0, :, :4], x[1, 2, 2:6, 2:6] = 1.0, 1.0
    x = x * 2 - 1
    optimizer = torch.optim.Adam(vae.parameters(), lr=2e-3)
    first = None
    for step in range(40):
        loss, logs = vae_loss(vae, x, kl_weight=1e-6, generator=torch.Generator().manual_seed(step))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        first = first if first is not None else logs["loss"].item()
    assert set(logs) == {"loss", "l1", "mse", "kl", "recon"}
    assert logs["loss"].item() < 0.5 * first


def test_a_16_channel_autoencoder_without_quant_convs_matches_diffusers():
    """SD3's and FLUX's autoencoders (16 latent channels, no quant_conv/post_quant_conv; toward issue 20)."""
    import diffusers

    from noisecraft.checkpoints import build_module
    from noisecraft.checkpoints.sd import vae_from_diffusers_layout
    from noisecraft.checkpoints.sd_config import vae_config_of

    torch.manual_seed(0)
    ref = diffusers.AutoencoderKL(block_out_channels=(32, 64), layers_per_block=1, latent_channels=16,
                                  down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                                  use_quant_conv=False, use_post_quant_conv=False, norm_num_groups=32).eval()
    state = vae_from_diffusers_layout(ref.state_dict())
    assert not any("quant_conv" in k for k in state)
    config = vae_config_of(state, "sd3")
    assert (config.z_channels, config.use_quant_conv, config.scaling_factor, config.shift_factor) == (16, False, 1.5305, 0.0609)
    ours = build_module(AutoencoderKL, config, state, "cpu", torch.float32)
    g = torch.Generator().manual_seed(1)
    x, z = torch.rand(1, 3, 32, 32, generator=g) * 2 - 1, torch.randn(1, 16, 16, 16, generator=g)
    with torch.no_grad():
        assert torch.allclose(ours.decode(z), ref.decode(z).sample, atol=1e-5)
        assert torch.allclose(ours.encode(x).mean, ref.encode(x).latent_dist.mean, atol=1e-5)
