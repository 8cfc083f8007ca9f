"""The flow-matching transformers' configs read from their weights alone (toward issue 20): an SD3.5-shaped
MMDiT and a FLUX-shaped transformer from diffusers, in the original layouts (Stability's, Black Forest
Labs'), give back the config they were made with, and the model built from it matches diffusers."""

from __future__ import annotations

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from sd_helpers import randomize  # noqa: E402

from noisecraft.checkpoints import build_module, transformer_keys  # noqa: E402
from noisecraft.checkpoints.transformer_config import flux_config_of, mmdit_config_of  # noqa: E402
from noisecraft.errors import ModelFileError  # noqa: E402
from noisecraft.models.flux import Flux, pack  # noqa: E402
from noisecraft.models.mmdit import MMDiT  # noqa: E402


def test_an_sd35_medium_shaped_file_reads_its_own_config():
    torch.manual_seed(0)
    ref = randomize(diffusers.SD3Transformer2DModel(sample_size=16, patch_size=2, in_channels=16, num_layers=3, attention_head_dim=64,
                                                     num_attention_heads=2, joint_attention_dim=40, caption_projection_dim=128,
                                                     pooled_projection_dim=24, out_channels=16, pos_embed_max_size=10,
                                                     qk_norm="rms_norm", dual_attention_layers=(0, 1)))
    state = transformer_keys.mmdit_from_diffusers(ref.state_dict(), 3)
    config = mmdit_config_of(state)
    assert (config.depth, config.hidden, config.heads, config.patch_size, config.pos_embed_max_size) == (3, 128, 2, 2, 10)
    assert (config.context_dim, config.pooled_dim, config.qk_norm, config.dual_attention_layers) == (40, 24, True, (0, 1))
    ours = build_module(MMDiT, config, state, "cpu", torch.float32)
    g = torch.Generator().manual_seed(2)
    x, context, pooled, t = torch.randn(1, 16, 12, 12, generator=g), torch.randn(1, 5, 40, generator=g), torch.randn(1, 24, generator=g), torch.tensor([400.0])
    with torch.no_grad():
        expected = ref(x, encoder_hidden_states=context, pooled_projections=pooled, timestep=t).sample
        assert float((ours(x, t, context, pooled) - expected).abs().max() / expected.abs().max()) <= 1e-5
    with pytest.raises(ModelFileError, match="lacks pos_embed"):
        mmdit_config_of({k: v for k, v in state.items() if k != "pos_embed"})


@pytest.mark.parametrize("guidance", [True, False], ids=["dev", "schnell"])
def test_a_flux_shaped_file_reads_its_own_config(guidance):
    torch.manual_seed(0)
    ref = randomize(diffusers.FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=2, num_single_layers=3,
                                                      attention_head_dim=32, num_attention_heads=2, joint_attention_dim=40,
                                                      pooled_projection_dim=24, guidance_embeds=guidance, axes_dims_rope=(4, 14, 14)))
    state = transformer_keys.flux_from_diffusers(ref.state_dict())
    config = flux_config_of(state)
    assert (config.hidden, config.heads, config.depth, config.depth_single, config.axes_dim) == (64, 2, 2, 3, (4, 14, 14))
    assert (config.guidance_embed, config.context_dim, config.pooled_dim, config.mlp_ratio) == (guidance, 40, 24, 4.0)
    ours = build_module(Flux, config, state, "cpu", torch.float32)
    g = torch.Generator().manual_seed(2)
    img, ids = pack(torch.randn(1, 4, 6, 8, generator=g))
    txt, pooled, sigma = torch.randn(1, 5, 40, generator=g), torch.randn(1, 24, generator=g), torch.tensor([0.6])
    scale = torch.tensor([3.5]) if guidance else None
    with torch.no_grad():
        expected = ref(img, encoder_hidden_states=txt, pooled_projections=pooled, timestep=sigma, img_ids=ids,
                       txt_ids=torch.zeros(5, 3), guidance=scale).sample
        out = ours(img, 1000 * sigma, txt, pooled, scale, ids)
    assert float((out - expected).abs().max() / expected.abs().max()) <= 1e-5
