"""The FLUX.1 transformer (toward issue 20) against diffusers' FluxTransformer2DModel on the same random
weights at reduced size, dev (guidance embedding) and schnell (none); the key map Black Forest Labs <->
diffusers round-trips exactly; packing latents into 2x2 tokens is diffusers' `_pack_latents`."""

from __future__ import annotations

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from sd_helpers import randomize  # noqa: E402

from noisecraft.checkpoints import build_module, transformer_keys  # noqa: E402
from noisecraft.models.flux import Flux, FluxConfig, pack, unpack  # noqa: E402

TOLERANCE = 1e-5


def reference(guidance: bool, seed: int = 0):
    torch.manual_seed(seed)
    ref = diffusers.FluxTransformer2DModel(patch_size=1, in_channels=16, out_channels=16, num_layers=2, num_single_layers=2,
                                           attention_head_dim=16, num_attention_heads=2, joint_attention_dim=40,
                                           pooled_projection_dim=24, guidance_embeds=guidance, axes_dims_rope=(4, 6, 6))
    return randomize(ref, 0.1, seed + 1)


def ours_of(ref) -> Flux:
    c = ref.config
    hidden = c.num_attention_heads * c.attention_head_dim
    config = FluxConfig(in_channels=c.in_channels, out_channels=c.out_channels or c.in_channels, context_dim=c.joint_attention_dim,
                        pooled_dim=c.pooled_projection_dim, hidden=hidden, heads=c.num_attention_heads, depth=c.num_layers,
                        depth_single=c.num_single_layers, axes_dim=tuple(c.axes_dims_rope), guidance_embed=c.guidance_embeds)
    return build_module(Flux, config, transformer_keys.flux_from_diffusers(ref.state_dict()), "cpu", torch.float32)


@pytest.mark.parametrize("guidance", [True, False], ids=["dev", "schnell"])
def test_flux_matches_diffusers(guidance):
    ref = reference(guidance)
    ours = ours_of(ref)
    g = torch.Generator().manual_seed(5)
    latents = torch.randn(2, 4, 8, 6, generator=g)  # 4 channels x 2 x 2 = the 16 packed channels
    img, img_ids = pack(latents)
    txt = torch.randn(2, 7, 40, generator=g)
    txt_ids = torch.zeros(7, 3)
    pooled, sigma = torch.randn(2, 24, generator=g), torch.tensor([0.8, 0.1])
    scale = torch.tensor([3.5, 3.5]) if guidance else None
    with torch.no_grad():
        expected = ref(img, encoder_hidden_states=txt, pooled_projections=pooled, timestep=sigma, img_ids=img_ids,
                       txt_ids=txt_ids, guidance=scale).sample
        out = ours(img, 1000 * sigma, txt, pooled, scale, img_ids, txt_ids)
        unpacked = ours(latents, 1000 * sigma, txt, pooled, scale)  # latents in, latents out
    diff = float((out - expected).abs().max() / expected.abs().max())
    assert diff <= TOLERANCE, diff
    assert torch.equal(unpack(pack(latents)[0], 8, 6), latents)
    assert torch.allclose(unpacked, unpack(out, 8, 6), atol=1e-6)


@pytest.mark.parametrize("guidance", [True, False], ids=["dev", "schnell"])
def test_key_map_round_trips_exactly(guidance):
    ref = reference(guidance)
    state = ref.state_dict()
    original = transformer_keys.flux_from_diffusers(state)
    assert set(original) == set(ours_of(ref).state_dict())
    back = transformer_keys.flux_to_diffusers(original, ref.config.num_attention_heads * ref.config.attention_head_dim)
    assert back.keys() == state.keys() and all(torch.equal(back[k], state[k]) for k in state)


def test_packing_is_diffusers():
    from diffusers import FluxPipeline

    latents = torch.randn(1, 16, 8, 6, generator=torch.Generator().manual_seed(0))
    tokens, ids = pack(latents)
    assert torch.equal(tokens, FluxPipeline._pack_latents(latents, 1, 16, 8, 6))
    assert torch.equal(ids, FluxPipeline._prepare_latent_image_ids(1, 4, 3, "cpu", torch.float32))
