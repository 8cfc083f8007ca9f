"""SD3's text conditioning (toward issue 20) against diffusers' StableDiffusion3Pipeline.encode_prompt on the
same random CLIP-L and OpenCLIP bigG (reduced widths, the real vocabulary), without T5 (zeros, as SD3
allows): the joint tokens [CLIP-L | bigG penultimate, zero-padded to the joint width; T5 zeros] and the
pooled vector [CLIP-L pooled | bigG pooled], both projected."""

from __future__ import annotations

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from clip_helpers import BIG_G, CLIP_L, hf_state, hf_text_model, hf_tokenizer, prefixed  # noqa: E402

from noisecraft.checkpoints.sd import text_encoder_from_single_file  # noqa: E402
from noisecraft.text.conditioner import Conditioner  # noqa: E402

JOINT = 384
PROMPTS = ["a product shot of a red teapot, soft light", ""]


def test_sd3_conditioning_matches_diffusers_without_t5():
    clip_l, clip_g = hf_text_model(CLIP_L, 3, projection=True), hf_text_model(BIG_G, 4, projection=True)
    state = prefixed("text_encoders.clip_l.transformer.", hf_state(clip_l)) | prefixed("text_encoders.clip_g.transformer.", hf_state(clip_g))
    encoder = text_encoder_from_single_file(state, "sd3")
    assert encoder.pooled_dim == clip_l.config.projection_dim + clip_g.config.projection_dim  # both pooled, projected
    conditioner = Conditioner(encoder, family="sd3", adm_in_channels=None, image_size=64, device=torch.device("cpu"),
                              dtype=torch.float32, context_dim=JOINT)
    transformer = diffusers.SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=16, num_layers=1, attention_head_dim=8,
                                                  num_attention_heads=2, joint_attention_dim=JOINT, caption_projection_dim=16,
                                                  pooled_projection_dim=encoder.pooled_dim, out_channels=16, pos_embed_max_size=8)
    pipe = diffusers.StableDiffusion3Pipeline(transformer=transformer, scheduler=diffusers.FlowMatchEulerDiscreteScheduler(),
                                              vae=None, text_encoder=clip_l, tokenizer=hf_tokenizer(), text_encoder_2=clip_g,
                                              tokenizer_2=hf_tokenizer("!"), text_encoder_3=None, tokenizer_3=None)
    with torch.no_grad():
        for prompt in PROMPTS:
            tokens, _, pooled, _ = pipe.encode_prompt(prompt, prompt_2=None, prompt_3=None, do_classifier_free_guidance=False)
            ours = conditioner.encode([prompt])
            assert ours["context"].shape == tokens.shape == (1, 77 + 256, JOINT)
            scale = tokens.abs().max()
            assert float((ours["context"] - tokens).abs().max() / scale) <= 1e-5, prompt
            assert float((ours["y"] - pooled).abs().max() / pooled.abs().max()) <= 1e-5, prompt
