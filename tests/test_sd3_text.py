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


def tiny_t5_tokenizer():
    """A small SentencePiece-style unigram tokenizer built here (T5's layout: <pad> 0, </s> 1, <unk> 2, then
    '▁'-prefixed pieces and single characters), with T5's closing </s>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    words = ["a", "product", "shot", "of", "red", "teapot", "soft", "light", "photo", "the"]
    letters = sorted(set("".join(words)) | set("abcdefghijklmnopqrstuvwxyz,"))
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [(f"▁{w}", -2.0) for w in words] + \
        [("▁", -3.0)] + [(c, -5.0) for c in letters] + [(f"▁{c}", -4.0) for c in letters]
    tokenizer = Tokenizer(models.Unigram(vocab, unk_id=2))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return tokenizer


def test_t5_tokens_and_sd3_conditioning_with_t5_match_diffusers():
    from transformers import PreTrainedTokenizerFast, T5Config, T5EncoderModel

    from noisecraft.text.t5 import T5TextEncoder

    tokenizer = tiny_t5_tokenizer()
    torch.manual_seed(0)
    t5 = T5EncoderModel(T5Config(vocab_size=tokenizer.get_vocab_size(), d_model=JOINT, d_kv=32, d_ff=256, num_layers=2,
                                 num_heads=4, feed_forward_proj="gated-gelu", is_encoder_decoder=False)).eval()
    ours_t5 = T5TextEncoder.from_state(t5.state_dict(), tokenizer, max_length=32)
    clip_l, clip_g = hf_text_model(CLIP_L, 3, projection=True), hf_text_model(BIG_G, 4, projection=True)
    state = prefixed("text_encoders.clip_l.transformer.", hf_state(clip_l)) | prefixed("text_encoders.clip_g.transformer.", hf_state(clip_g))
    conditioner = Conditioner(text_encoder_from_single_file(state, "sd3"), family="sd3", adm_in_channels=None, image_size=64,
                              device=torch.device("cpu"), dtype=torch.float32, context_dim=JOINT, t5=ours_t5)
    transformer = diffusers.SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=16, num_layers=1, attention_head_dim=8,
                                                  num_attention_heads=2, joint_attention_dim=JOINT, caption_projection_dim=16,
                                                  pooled_projection_dim=1, out_channels=16, pos_embed_max_size=8)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    pipe = diffusers.StableDiffusion3Pipeline(transformer=transformer, scheduler=diffusers.FlowMatchEulerDiscreteScheduler(),
                                              vae=None, text_encoder=clip_l, tokenizer=hf_tokenizer(), text_encoder_2=clip_g,
                                              tokenizer_2=hf_tokenizer("!"), text_encoder_3=t5, tokenizer_3=fast)
    with torch.no_grad():
        for prompt in PROMPTS:
            tokens, _, _, _ = pipe.encode_prompt(prompt, prompt_2=None, prompt_3=None, do_classifier_free_guidance=False,
                                                 max_sequence_length=32)
            ours = conditioner.encode([prompt])["context"]
            assert ours.shape == tokens.shape == (1, 77 + 32, JOINT)
            assert float((ours - tokens).abs().max() / tokens.abs().max()) <= 1e-5, prompt
            assert float(ours[:, 77:].abs().max()) > 0  # the T5 part is there
