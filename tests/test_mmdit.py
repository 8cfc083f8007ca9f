"""The SD3 / SD3.5 MMDiT (toward issue 20) against diffusers' SD3Transformer2DModel on the same random
weights at reduced size: SD3 (plain), SD3.5 Large (RMS q/k norms) and SD3.5 Medium (MMDiT-X: an extra
image-only attention in the first blocks); the key map original <-> diffusers round-trips exactly."""

from __future__ import annotations

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from sd_helpers import randomize  # noqa: E402

from noisecraft.checkpoints import build_module, transformer_keys  # noqa: E402
from noisecraft.models.mmdit import MMDiT, MMDiTConfig, sincos_2d  # noqa: E402

TOLERANCE = 1e-5
VARIANTS = {"sd3": dict(), "sd35-large": dict(qk_norm="rms_norm"),
            "sd35-medium": dict(qk_norm="rms_norm", dual_attention_layers=(0, 1))}


def reference(variant: str, seed: int = 0):
    torch.manual_seed(seed)
    ref = diffusers.SD3Transformer2DModel(sample_size=16, patch_size=2, in_channels=16, num_layers=3, attention_head_dim=16,
                                          num_attention_heads=2, joint_attention_dim=40, caption_projection_dim=32,
                                          pooled_projection_dim=24, out_channels=16, pos_embed_max_size=12,
                                          **VARIANTS[variant])
    return randomize(ref, 0.1, seed + 1)  # every weight clearly non-trivial, zero-initialised ones too


def ours_of(ref, variant: str) -> MMDiT:
    c = ref.config
    config = MMDiTConfig(in_channels=c.in_channels, out_channels=c.out_channels, patch_size=c.patch_size, depth=c.num_layers,
                         hidden=c.num_attention_heads * c.attention_head_dim, heads=c.num_attention_heads,
                         context_dim=c.joint_attention_dim, pooled_dim=c.pooled_projection_dim,
                         pos_embed_max_size=c.pos_embed_max_size, qk_norm=variant != "sd3",
                         dual_attention_layers=tuple(c.dual_attention_layers))
    return build_module(MMDiT, config, transformer_keys.mmdit_from_diffusers(ref.state_dict(), config.depth), "cpu", torch.float32)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_mmdit_matches_diffusers(variant):
    ref = reference(variant)
    ours = ours_of(ref, variant)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 16, 16, 12, generator=g)  # not square: 8x6 patches, cropped from the centre of 12x12
    context, pooled = torch.randn(2, 7, 40, generator=g), torch.randn(2, 24, generator=g)
    t = torch.tensor([700.0, 25.0])
    with torch.no_grad():
        expected = ref(x, encoder_hidden_states=context, pooled_projections=pooled, timestep=t).sample
        out = ours(x, t, context, pooled)
    diff = float((out - expected).abs().max() / expected.abs().max())
    assert diff <= TOLERANCE, diff


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_key_map_round_trips_exactly(variant):
    ref = reference(variant)
    state = ref.state_dict()
    original = transformer_keys.mmdit_from_diffusers(state, ref.config.num_layers)
    assert set(original) == set(ours_of(ref, variant).state_dict())
    back = transformer_keys.mmdit_to_diffusers(original, ref.config.num_layers)
    assert back.keys() == state.keys() and all(torch.equal(back[k], state[k]) for k in state)


def test_position_table_is_diffusers_sincos():
    from diffusers.models.embeddings import get_2d_sincos_pos_embed

    expected = torch.as_tensor(get_2d_sincos_pos_embed(32, 12, base_size=12, interpolation_scale=1.0, output_type="pt"))
    assert torch.allclose(sincos_2d(12, 32)[0], expected.float(), atol=1e-6)
