"""The LDM UNet against diffusers' UNet2DConditionModel, loaded through diffusers' own LDM converter.

Each tiny config keeps a structural feature of a real family: SD1 (conv proj_in/out, a fixed head
count, attention at the top levels), SD2 (linear projections, 64->16-channel heads, depth 2) and
SDXL (no attention at level 0, per-level depths, the pooled vector ``y`` through ``label_emb``).
Our random weights are wrapped as ``model.diffusion_model.*``, converted with
``convert_ldm_unet_checkpoint`` and loaded strictly, so a wrong name, shape or wiring fails here.

Tolerance: max |ours - diffusers| / max |diffusers| <= 1e-4 in float32. The two compute the same
function with differently ordered float32 sums; measured differences are around 1e-6.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from noisecraft.models.unet import UNet, UNetConfig, timestep_embedding

diffusers = pytest.importorskip("diffusers")
from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, create_unet_diffusers_config_from_ldm  # noqa: E402

TOLERANCE = 1e-4


SD1_STYLE = UNetConfig(model_channels=32, channel_mult=(1, 2, 2), num_res_blocks=2, attention_resolutions=(1, 2),
                       transformer_depth=1, num_heads=2, context_dim=24)
SD2_STYLE = UNetConfig(model_channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(1, 2),
                       transformer_depth=2, num_heads=-1, num_head_channels=16, context_dim=24,
                       use_linear_in_transformer=True)
# y = [pooled (20) | six size/crop numbers, each as an 8-d sinusoid]: SDXL's text_time vector, shrunk.
POOLED, TIME_IDS, TIME_DIM = 20, 6, 8
SDXL_STYLE = UNetConfig(model_channels=32, channel_mult=(1, 2, 2), num_res_blocks=1, attention_resolutions=(2, 4),
                        transformer_depth=(0, 1, 2), num_heads=-1, num_head_channels=16, context_dim=24,
                        use_linear_in_transformer=True, adm_in_channels=POOLED + TIME_IDS * TIME_DIM)


def randomize(module: torch.nn.Module) -> torch.nn.Module:
    """Perturb every parameter, zero-initialised ones included, so that every weight matters."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return module.eval()


def ldm_yaml(c: UNetConfig) -> dict:
    """The parts of an original ``v1-inference.yaml``-style config that diffusers' converter reads."""
    params = dict(in_channels=c.in_channels, out_channels=c.out_channels, model_channels=c.model_channels,
                  channel_mult=list(c.channel_mult), num_res_blocks=c.num_res_blocks,
                  attention_resolutions=list(c.attention_resolutions), context_dim=c.context_dim,
                  transformer_depth=c.transformer_depth if isinstance(c.transformer_depth, int) else list(c.transformer_depth),
                  use_linear_in_transformer=c.use_linear_in_transformer, num_head_channels=c.num_head_channels)
    if c.num_heads != -1:
        params["num_heads"] = c.num_heads
    if c.adm_in_channels:
        params |= dict(num_classes="sequential", adm_in_channels=c.adm_in_channels)
    vae = {"params": {"ddconfig": {"ch_mult": [1, 2, 4, 4]}}}
    return {"model": {"params": {"unet_config": {"params": params}, "first_stage_config": vae}}}


def diffusers_twin(ours: UNet, config: dict | None = None):
    """diffusers' UNet2DConditionModel holding our weights, via the LDM single-file converter."""
    checkpoint = {f"model.diffusion_model.{k}": v for k, v in ours.state_dict().items()}
    config = config or create_unet_diffusers_config_from_ldm(ldm_yaml(ours.config), checkpoint)
    ref = diffusers.UNet2DConditionModel(**config)
    ref.load_state_dict(convert_ldm_unet_checkpoint(checkpoint, config), strict=True)
    return ref.eval()


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def inputs(c: UNetConfig, batch: int = 2, size: int = 16, tokens: int = 5):
    x = torch.randn(batch, c.in_channels, size, size)
    t = torch.tensor([999.0, 17.25])[:batch]  # fractional timesteps work as in the original
    context = torch.randn(batch, tokens, c.context_dim)
    return x, t, context


@pytest.mark.parametrize("config", [SD1_STYLE, SD2_STYLE], ids=["sd1-conv-proj-heads", "sd2-linear-proj-head-channels"])
def test_matches_diffusers(config):
    ours = randomize(UNet(config))
    ref = diffusers_twin(ours)
    x, t, context = inputs(config)
    with torch.no_grad():
        out = ours(x, t, context)
        expected = ref(x, t, encoder_hidden_states=context).sample
    assert out.shape == x.shape
    assert rel_diff(out, expected) <= TOLERANCE
    assert norms(ours) == norms(ref)  # eps differences hide below the tolerance, so compare them directly


def norms(module: torch.nn.Module) -> list:
    """(kind, channels, eps) of every normalisation layer: 1e-5 in ResBlocks, 1e-6 before transformers."""
    found = [("group", m.num_channels, m.eps) for m in module.modules() if isinstance(m, torch.nn.GroupNorm)]
    found += [("layer", m.normalized_shape, m.eps) for m in module.modules() if isinstance(m, torch.nn.LayerNorm)]
    return sorted(found)


def test_context_mask_matches_diffusers_encoder_attention_mask():
    ours = randomize(UNet(SD1_STYLE))
    ref = diffusers_twin(ours)
    x, t, context = inputs(SD1_STYLE)
    mask = torch.tensor([[True, True, True, False, False], [True, False, True, True, True]])
    with torch.no_grad():
        out = ours(x, t, context, context_mask=mask)
        expected = ref(x, t, encoder_hidden_states=context, encoder_attention_mask=mask.float()).sample
        unmasked = ours(x, t, context)
    assert rel_diff(out, expected) <= TOLERANCE
    assert rel_diff(out, unmasked) > 1e-3  # the mask did something


def test_label_emb_matches_diffusers_projection_class_embedding():
    """diffusers' converter maps an LDM ``num_classes: sequential`` UNet to class_embed_type='projection'."""
    ours = randomize(UNet(SDXL_STYLE))
    ref = diffusers_twin(ours)
    assert ref.config.class_embed_type == "projection"
    x, t, context = inputs(SDXL_STYLE)
    y = torch.randn(2, SDXL_STYLE.adm_in_channels)
    with torch.no_grad():
        out = ours(x, t, context, y=y)
        expected = ref(x, t, encoder_hidden_states=context, class_labels=y).sample
    assert rel_diff(out, expected) <= TOLERANCE
    with pytest.raises(ValueError, match="needs the pooled vector y"):
        ours(x, t, context)


def test_sdxl_text_time_vector_matches_diffusers():
    """SDXL's y is [pooled text | sinusoids of (h, w, crop top, crop left, target h, target w)]."""
    ours = randomize(UNet(SDXL_STYLE))
    checkpoint = {f"model.diffusion_model.{k}": v for k, v in ours.state_dict().items()}
    config = create_unet_diffusers_config_from_ldm(ldm_yaml(SDXL_STYLE), checkpoint)
    config |= dict(class_embed_type=None, addition_embed_type="text_time", addition_time_embed_dim=TIME_DIM)
    ref = diffusers_twin(ours, config)
    x, t, context = inputs(SDXL_STYLE)
    pooled = torch.randn(2, POOLED)
    time_ids = torch.tensor([[1024.0, 1024, 0, 0, 1024, 1024], [768, 1344, 16, 0, 1024, 1024]])
    y = torch.cat([pooled, timestep_embedding(time_ids.flatten(), TIME_DIM).reshape(2, -1)], dim=1)
    with torch.no_grad():
        out = ours(x, t, context, y=y)
        expected = ref(x, t, encoder_hidden_states=context,
                       added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids}).sample
    assert rel_diff(out, expected) <= TOLERANCE


def test_masked_tokens_do_not_influence_the_output():
    ours = randomize(UNet(UNetConfig.tiny()))
    x, t, context = inputs(UNetConfig.tiny(), tokens=6)
    mask = torch.tensor([[True, True, False, False, False, False], [True, True, True, True, False, False]])
    changed = context.clone()
    changed[~mask] = torch.randn(int((~mask).sum()), context.shape[-1]) * 10
    with torch.no_grad():
        a = ours(x, t, context, context_mask=mask)
        b = ours(x, t, changed, context_mask=mask)
        nothing = ours(x, t, context, context_mask=torch.zeros_like(mask))  # nothing to attend: no NaN
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert torch.isfinite(nothing).all()


def test_sd15_state_dict_layout_and_parameter_count():
    unet = UNet(UNetConfig.sd15(), device="meta")
    state = unet.state_dict()
    assert len(state) == 686
    assert sum(p.numel() for p in unet.parameters()) == 859_520_964
    assert state["input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"].shape == (320, 768)
    assert state["output_blocks.11.1.proj_out.weight"].shape == (320, 320, 1, 1)  # conv proj in SD1
    assert state["input_blocks.3.0.op.weight"].shape == (320, 320, 3, 3)
    assert state["output_blocks.2.1.conv.weight"].shape == (1280, 1280, 3, 3)
    assert state["middle_block.1.transformer_blocks.0.ff.net.0.proj.weight"].shape == (10240, 1280)
    assert state["time_embed.0.weight"].shape == (1280, 320)
    assert state["out.2.weight"].shape == (4, 320, 3, 3)
    assert not any(k.startswith("label_emb") for k in state)


def test_sd2_and_sdxl_layouts():
    sd2 = UNet(UNetConfig.sd2(), device="meta")
    assert sum(p.numel() for p in sd2.parameters()) == 865_910_724
    assert sd2.state_dict()["output_blocks.11.1.proj_out.weight"].shape == (320, 320)  # linear proj in SD2
    xl = UNet(UNetConfig.sdxl(), device="meta")
    state = xl.state_dict()
    assert len(state) == 1680
    assert sum(p.numel() for p in xl.parameters()) == 2_567_463_684
    assert state["label_emb.0.0.weight"].shape == (1280, 2816)
    assert state["label_emb.0.2.weight"].shape == (1280, 1280)
    assert "input_blocks.7.1.transformer_blocks.9.attn2.to_k.weight" in state
    assert not any(k.startswith("input_blocks.1.1") for k in state)  # no attention at level 0


@pytest.mark.parametrize("name", ["sd15", "sd2", "sdxl", "tiny"])
def test_config_round_trips_through_json(name):
    config = getattr(UNetConfig, name)()
    data = json.loads(json.dumps(config.to_dict()))
    assert UNetConfig.from_dict(data) == config
    assert UNetConfig(**{"channel_mult": [1, 2], "attention_resolutions": [2]}).channel_mult == (1, 2)


def test_bad_config_is_one_sentence():
    from noisecraft.errors import UserError

    with pytest.raises(UserError, match="multiples of 32"):
        UNetConfig(model_channels=20)
    with pytest.raises(UserError, match="one depth per level"):
        UNetConfig(transformer_depth=(1, 2))


def test_low_precision_channels_last_and_checkpointing():
    config = UNetConfig.tiny()
    ours = randomize(UNet(config))
    x, t, context = inputs(config, size=8)
    with torch.no_grad():
        reference = ours(x, t, context)
        fast = ours.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last), t, context)
        torch.testing.assert_close(fast, reference, rtol=1e-4, atol=1e-5)
        for dtype in (torch.bfloat16, torch.float16):
            half = UNet(config, dtype=dtype)
            half.load_state_dict(ours.state_dict())
            out = half.eval()(x, t, context)
            assert out.dtype == torch.float32  # back to the input's dtype
            assert rel_diff(out, reference) < 0.05
    grads = []
    for use_checkpoint in (False, True):  # gradient checkpointing recomputes, and changes no gradient
        model = UNet(dataclasses.replace(config, use_checkpoint=use_checkpoint)).train()
        model.load_state_dict(ours.state_dict(), assign=False)
        model(x.contiguous(), t, context).square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-5, atol=1e-8)
