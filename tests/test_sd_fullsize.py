"""Full-size SD 1.5 and SDXL networks against diffusers/transformers (slow: run with --runslow).

Random weights at the real sizes, converted to the original layout and loaded by noisecraft
(sharing the tensors, so memory stays at one copy): UNet forward (small latents to keep CPU time
sane), VAE decode, and the CLIP text encoders, each compared with the reference implementation.
Tolerance: max relative difference <= 1e-4 in float32.
"""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.slow

diffusers = pytest.importorskip("diffusers")

from clip_helpers import hf_state, hf_text_model, hf_to_openclip, hf_tokenizer, prefixed  # noqa: E402

from noisecraft.checkpoints import build_module, keymaps, sd_config  # noqa: E402
from noisecraft.checkpoints import sd as sdfiles  # noqa: E402
from noisecraft.checkpoints.sd import text_encoder_from_single_file as sd_text_encoder_from_single_file  # noqa: E402
from noisecraft.models.unet import UNet, timestep_embedding  # noqa: E402
from noisecraft.models.vae import AutoencoderKL  # noqa: E402

TOLERANCE = 1e-4
SD15_UNET = dict(block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, cross_attention_dim=768, attention_head_dim=8)
SDXL_UNET = dict(block_out_channels=(320, 640, 1280), layers_per_block=2, cross_attention_dim=2048,
                 down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                 transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), use_linear_projection=True,
                 addition_embed_type="text_time", addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816)
CLIP_L = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, hidden_act="quick_gelu")
BIG_G = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20, hidden_act="gelu",
             projection_dim=1280)


def rel(a, b) -> float:
    return ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()


def ours_from(ref) -> UNet:
    config = sd_config.unet_config_from_diffusers(dict(ref.config))
    with torch.device("meta"):
        keys = UNet(config).state_dict().keys()
    return build_module(UNet, config, keymaps.unet_from_diffusers(ref.state_dict(), keys), "cpu", torch.float32)


@pytest.mark.parametrize("name,kwargs,params", [("sd15", SD15_UNET, 859_520_964), ("sdxl", SDXL_UNET, 2_567_463_684)])
def test_full_size_unet(name, kwargs, params):
    torch.manual_seed(0)
    ref = diffusers.UNet2DConditionModel(**kwargs).eval()
    ours = ours_from(ref)
    assert sum(p.numel() for p in ours.parameters()) == params
    assert sd_config.family_of(ours.state_dict()) == ("sdxl" if name == "sdxl" else "sd1")
    g = torch.Generator().manual_seed(1)
    x, t = torch.randn(1, 4, 32, 32, generator=g), torch.tensor([700.0])
    context = torch.randn(1, 77, kwargs["cross_attention_dim"], generator=g)
    extra, y = {}, None
    if name == "sdxl":
        pooled, ids = torch.randn(1, 1280, generator=g), torch.tensor([[1024.0, 1024, 0, 0, 1024, 1024]])
        extra = {"added_cond_kwargs": {"text_embeds": pooled, "time_ids": ids}}
        y = torch.cat([pooled, timestep_embedding(ids.flatten(), 256).reshape(1, -1)], 1)
    with torch.no_grad():
        diff = rel(ours(x, t, context, y=y), ref(x, t, encoder_hidden_states=context, **extra).sample)
    print(f"{name} UNet max rel diff {diff:.1e}")
    assert diff <= TOLERANCE


def test_full_size_vae_decode():
    torch.manual_seed(0)
    ref = diffusers.AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                                  down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4).eval()
    state = sdfiles.vae_from_diffusers_layout(ref.state_dict())
    vae = build_module(AutoencoderKL, sd_config.vae_config_of(state, "sd1"), state, "cpu", torch.float32)
    z = torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        diff = rel(vae.decode(z), ref.decode(z).sample)
    print(f"SD VAE decode max rel diff {diff:.1e}")
    assert diff <= TOLERANCE


def test_full_size_sdxl_text_encoders():
    l, g = hf_text_model(CLIP_L, 3), hf_text_model(BIG_G, 4, projection=True)
    state = prefixed("conditioner.embedders.0.transformer.", hf_state(l)) | \
        prefixed("conditioner.embedders.1.model.", hf_to_openclip(hf_state(g)))
    ours = sd_text_encoder_from_single_file(state, "sdxl")
    pipe = diffusers.StableDiffusionXLPipeline(vae=None, text_encoder=l, text_encoder_2=g, tokenizer=hf_tokenizer(),
                                               tokenizer_2=hf_tokenizer("!"), unet=None, scheduler=None)
    prompt = "a menu photo of ramen with a soft-boiled egg, overhead, natural light"
    with torch.no_grad():
        tokens, _, pooled, _ = pipe.encode_prompt(prompt, do_classifier_free_guidance=False)
        emb = ours.encode([prompt])
    print(f"SDXL text encoders max rel diff: tokens {rel(emb.tokens, tokens):.1e}, pooled {rel(emb.pooled, pooled):.1e}")
    assert rel(emb.tokens, tokens) <= TOLERANCE and rel(emb.pooled, pooled) <= TOLERANCE


def test_full_size_sd15_controlnet():
    """A full-size SD 1.5 ControlNet (its real hint embedding, 16-32-96-256, /8) against diffusers' ControlNetModel."""
    from noisecraft.checkpoints.controlnet import ControlNetConfig, build, from_diffusers

    torch.manual_seed(0)
    ref = diffusers.ControlNetModel(**SD15_UNET).eval()
    with torch.no_grad():  # its zero convolutions start at zero: make every residual matter
        for name, p in ref.named_parameters():
            if name.startswith(("controlnet_down_blocks", "controlnet_mid_block", "controlnet_cond_embedding.conv_out")):
                p.normal_(0, 0.02)
    config = ControlNetConfig(sd_config.unet_config_from_diffusers(dict(ref.config)))
    ours = build_module(build, config, from_diffusers(ref.state_dict(), config), "cpu", torch.float32)
    g = torch.Generator().manual_seed(1)
    x, hint, t = torch.randn(1, 4, 32, 32, generator=g), torch.rand(1, 3, 256, 256, generator=g), torch.tensor([700.0])
    context = torch.randn(1, 77, 768, generator=g)
    with torch.no_grad():
        down, mid = ref(x, t, encoder_hidden_states=context, controlnet_cond=hint, return_dict=False)
        ours_down, ours_mid = ours(x, hint, t, context)
    diff = max(rel(a, b) for a, b in zip([*ours_down, ours_mid], [*down, mid]))
    print(f"SD 1.5 ControlNet residuals max rel diff {diff:.1e}")
    assert diff <= TOLERANCE


@pytest.mark.parametrize("name", ["sd35-large", "sd35-medium", "flux-dev", "flux-schnell"])
def test_full_size_flow_transformers_on_the_meta_device(name):
    """SD 3.5 Large (8.06B) / Medium and FLUX.1 dev / schnell (11.9B) at their real sizes, on the meta device:
    the same parameter count and names (through the key maps) as diffusers' models, and the output shape."""
    from noisecraft.checkpoints import transformer_keys
    from noisecraft.models.flux import Flux, FluxConfig
    from noisecraft.models.mmdit import MMDiT, MMDiTConfig

    configs = {
        "sd35-large": (MMDiTConfig(depth=38, hidden=2432, heads=38, qk_norm=True, pos_embed_max_size=192), 8_056_627_520,
                       dict(num_layers=38, attention_head_dim=64, num_attention_heads=38, caption_projection_dim=2432,
                            qk_norm="rms_norm", pos_embed_max_size=192)),
        "sd35-medium": (MMDiTConfig(depth=24, hidden=1536, heads=24, qk_norm=True, pos_embed_max_size=384,
                                    dual_attention_layers=tuple(range(13))), 2_243_171_520,
                        dict(num_layers=24, attention_head_dim=64, num_attention_heads=24, caption_projection_dim=1536,
                             qk_norm="rms_norm", pos_embed_max_size=384, dual_attention_layers=tuple(range(13)))),
        "flux-dev": (FluxConfig(), 11_901_408_320, dict(guidance_embeds=True)),
        "flux-schnell": (FluxConfig(guidance_embed=False), 11_891_178_560, dict(guidance_embeds=False)),
    }
    config, params, theirs = configs[name]
    with torch.device("meta"):
        if name.startswith("sd35"):
            ours = MMDiT(config)
            ref = diffusers.SD3Transformer2DModel(sample_size=128, patch_size=2, in_channels=16, joint_attention_dim=4096,
                                                  pooled_projection_dim=2048, out_channels=16, **theirs)
            names = transformer_keys.mmdit_from_diffusers(ref.state_dict(), config.depth)
            out = ours(torch.empty(1, 16, 128, 128), torch.tensor([500.0]), torch.empty(1, 333, 4096), torch.empty(1, 2048))
            assert out.shape == (1, 16, 128, 128)
        else:
            ours = Flux(config)
            ref = diffusers.FluxTransformer2DModel(**theirs)
            names = transformer_keys.flux_from_diffusers(ref.state_dict())
            out = ours(torch.empty(1, 16, 128, 128), torch.tensor([500.0]), torch.empty(1, 512, 4096), torch.empty(1, 768),
                       torch.tensor([3.5]) if config.guidance_embed else None)
            assert out.shape == (1, 16, 128, 128)
    count = sum(p.numel() for p in ours.parameters())
    print(f"{name}: {count:,} parameters")
    assert count == params == sum(p.numel() for p in ref.parameters())
    assert set(names) == set(ours.state_dict())


def test_full_size_z_image_on_the_meta_device():
    """Z-Image-Turbo (6.15B) at its real size on the meta device: diffusers' parameter count and names."""
    from noisecraft.checkpoints import transformer_keys
    from noisecraft.models.zimage import ZImage, ZImageConfig

    with torch.device("meta"):
        ours, ref = ZImage(ZImageConfig()), diffusers.ZImageTransformer2DModel()
    count = sum(p.numel() for p in ours.parameters())
    print(f"z-image: {count:,} parameters")
    assert count == 6_154_908_736 == sum(p.numel() for p in ref.parameters())
    assert set(transformer_keys.zimage_from_diffusers(ref.state_dict())) == set(ours.state_dict())
