"""Reduced SD3.5 and FLUX.1 models built in diffusers with random weights, written in the layouts people have.

    build_sd3(tmp)         StableDiffusion3Pipeline (SD3.5 Medium's MMDiT-X shape: RMS q/k norms, an image-only
                           attention in the first block), the 16-channel VAE, CLIP-L + bigG (projected) and T5
    build_flux(tmp, dev)   FluxPipeline (dev: guidance embedding; schnell: none), CLIP-L + T5

Each returns the diffusers pipeline and the files: a diffusers folder (``save_pretrained``), an all-in-one single
file in Stability's / ComfyUI's names (``model.diffusion_model.*``, ``first_stage_model.*``,
``text_encoders.{clip_l,clip_g,t5xxl}.transformer.*``) and the parts apart, as Black Forest Labs and ComfyUI ship
them (the bare transformer, ``ae.safetensors``, ``clip_l.safetensors``, ``clip_g.safetensors``, ``t5xxl.safetensors``).
The T5 tokenizer is noisecraft's bundled T5 v1.1 vocabulary on both sides (single files carry none).
"""

from __future__ import annotations

from pathlib import Path

import torch

import diffusers
from clip_helpers import BIG_G, CLIP_L, hf_state, hf_text_model, hf_tokenizer, prefixed, save_safetensors
from sd_helpers import ldm_vae, randomize

from noisecraft.checkpoints.transformer_keys import flux_from_diffusers, mmdit_from_diffusers
from noisecraft.text.t5 import bundled_tokenizer

T5_WIDTH = 64


def make_t5(seed: int = 7):
    """A random T5 v1.1 encoder (gated GELU) over T5's real 32,128-row embedding."""
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    t5 = T5EncoderModel(T5Config(vocab_size=32128, d_model=T5_WIDTH, d_kv=16, d_ff=128, num_layers=2, num_heads=4,
                                 feed_forward_proj="gated-gelu", relative_attention_num_buckets=8))
    return randomize(t5, 0.05, seed)


def t5_tokenizer():
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=bundled_tokenizer(), pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def t5_state(t5) -> dict:
    """The encoder's tensors as T5 files hold them: the embedding once, as ``shared.weight``."""
    return {k: v for k, v in t5.state_dict().items() if k != "encoder.embed_tokens.weight"}


def make_flow_vae(family: str, seed: int = 2):
    """The 16-channel autoencoder of SD3 / FLUX (no quant convs), shrunk to two levels (downsampling x2)."""
    torch.manual_seed(seed)
    scale, shift = (1.5305, 0.0609) if family == "sd3" else (0.3611, 0.1159)
    vae = diffusers.AutoencoderKL(block_out_channels=(32, 64), layers_per_block=1, latent_channels=16, norm_num_groups=32,
                                  down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                                  sample_size=32, scaling_factor=scale, shift_factor=shift, use_quant_conv=False,
                                  use_post_quant_conv=False)
    return randomize(vae, 0.02, seed)


def _write_parts(tmp: Path, stem: str, transformer: dict, vae, texts: dict[str, dict]) -> dict[str, Path]:
    """The all-in-one file and the parts apart; returns their paths by name."""
    vae_state = ldm_vae(vae)
    aio = {f"model.diffusion_model.{k}": v for k, v in transformer.items()} | prefixed("first_stage_model.", vae_state)
    for name, state in texts.items():
        aio |= prefixed(f"text_encoders.{name}.transformer.", state)
    files = {"all-in-one": save_safetensors(tmp / f"{stem}.safetensors", aio),
             "transformer": save_safetensors(tmp / f"{stem}-transformer.safetensors", transformer),
             "ae": save_safetensors(tmp / f"{stem}-ae.safetensors", vae_state)}
    for name, state in texts.items():
        files[name] = save_safetensors(tmp / f"{stem}-{name}.safetensors", state)
    return files


def build_sd3(tmp: Path, seed: int = 0):
    clip_l, clip_g = hf_text_model(CLIP_L, 3, projection=True), hf_text_model(BIG_G, 4, projection=True)
    t5 = make_t5()
    torch.manual_seed(seed)
    transformer = diffusers.SD3Transformer2DModel(
        sample_size=16, patch_size=2, in_channels=16, num_layers=2, attention_head_dim=64, num_attention_heads=2,
        joint_attention_dim=T5_WIDTH, caption_projection_dim=128, out_channels=16, pos_embed_max_size=16,
        pooled_projection_dim=clip_l.config.projection_dim + clip_g.config.projection_dim, qk_norm="rms_norm",
        dual_attention_layers=(0,))
    transformer = randomize(transformer, 0.1, seed + 1)
    vae = make_flow_vae("sd3")
    pipe = diffusers.StableDiffusion3Pipeline(
        transformer=transformer, scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0), vae=vae,
        text_encoder=clip_l, tokenizer=hf_tokenizer(), text_encoder_2=clip_g, tokenizer_2=hf_tokenizer("!"),
        text_encoder_3=t5, tokenizer_3=t5_tokenizer())
    folder = tmp / "sd35-diffusers"
    pipe.save_pretrained(folder)
    original = mmdit_from_diffusers(transformer.state_dict(), transformer.config.num_layers)
    files = _write_parts(tmp, "sd35", original, vae, {"clip_l": hf_state(clip_l), "clip_g": hf_state(clip_g), "t5xxl": t5_state(t5)})
    return pipe, folder, files


def build_flux(tmp: Path, dev: bool = True, seed: int = 0):
    clip_l, t5 = hf_text_model(CLIP_L, 3), make_t5()
    torch.manual_seed(seed)
    transformer = diffusers.FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=32, num_attention_heads=2,
        joint_attention_dim=T5_WIDTH, pooled_projection_dim=CLIP_L["hidden_size"], guidance_embeds=dev,
        axes_dims_rope=(4, 14, 14))
    transformer = randomize(transformer, 0.1, seed + 1)
    vae = make_flow_vae("flux")
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(
        **(dict(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)
           if dev else dict(shift=1.0)))
    pipe = diffusers.FluxPipeline(transformer=transformer, scheduler=scheduler, vae=vae, text_encoder=clip_l,
                                  tokenizer=hf_tokenizer(), text_encoder_2=t5, tokenizer_2=t5_tokenizer())
    name = "flux1-dev" if dev else "flux1-schnell"
    folder = tmp / f"{name}-diffusers"
    pipe.save_pretrained(folder)
    files = _write_parts(tmp, name, flux_from_diffusers(transformer.state_dict()), vae,
                         {"clip_l": hf_state(clip_l), "t5xxl": t5_state(t5)})
    return pipe, folder, files


QWEN_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")  # Qwen3's, for one user turn, thinking on


def make_qwen(seed: int = 5):
    """A random Qwen3 (2 layers, 48 wide) over Qwen's real 151,936-row embedding."""
    from transformers import Qwen3Config, Qwen3Model

    torch.manual_seed(seed)
    model = Qwen3Model(Qwen3Config(vocab_size=151936, hidden_size=48, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
                                   num_key_value_heads=2, head_dim=16, rope_theta=1_000_000.0, rms_norm_eps=1e-6,
                                   max_position_embeddings=40960, tie_word_embeddings=True))
    return randomize(model, 0.05, seed)


def build_zimage(tmp: Path, seed: int = 0):
    """ZImagePipeline (Z-Image-Turbo's structure, reduced) and its files: a diffusers folder, the bare transformer in
    the original names, ae.safetensors and a Qwen3 file as ComfyUI ships it (``model.*`` names)."""
    from transformers import PreTrainedTokenizerFast

    from noisecraft.checkpoints.transformer_keys import zimage_from_diffusers
    from noisecraft.text.qwen import bundled_tokenizer as qwen_tokenizer

    qwen = make_qwen()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=qwen_tokenizer(), pad_token="<|endoftext|>", eos_token="<|im_end|>")
    tokenizer.chat_template = QWEN_TEMPLATE
    torch.manual_seed(seed)
    transformer = diffusers.ZImageTransformer2DModel(all_patch_size=(2,), all_f_patch_size=(1,), in_channels=16, dim=64, n_layers=2,
                                                     n_refiner_layers=1, n_heads=2, n_kv_heads=2, cap_feat_dim=48,
                                                     axes_dims=[8, 12, 12], axes_lens=[1024, 64, 64])
    transformer = randomize(transformer, 0.1, seed + 1)
    vae = make_flow_vae("flux")
    pipe = diffusers.ZImagePipeline(scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0), vae=vae, text_encoder=qwen,
                                    tokenizer=tokenizer, transformer=transformer)
    folder = tmp / "zimage-diffusers"
    pipe.save_pretrained(folder)
    files = {"transformer": save_safetensors(tmp / "z_image_turbo.safetensors", zimage_from_diffusers(transformer.state_dict())),
             "ae": save_safetensors(tmp / "zimage-ae.safetensors", ldm_vae(vae)),
             "qwen": save_safetensors(tmp / "qwen_3_4b.safetensors", prefixed("model.", qwen.state_dict()))}
    return pipe, folder, files
