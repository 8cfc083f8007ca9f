"""Whole Stable Diffusion pipelines against diffusers' on the same random weights, seeds and settings.

For each family a reduced model (tests/sd_helpers.py: UNet and VAE; tests/clip_helpers.py: CLIP text
encoders with the real vocabulary) is written both as an original-layout single file and as a
diffusers folder (``save_pretrained`` of a diffusers pipeline). noisecraft loads each; diffusers
loads the folder. Both make a 10-step image with the same seed, guidance and sampler (Euler:
``EulerDiscreteScheduler`` from SD's scheduler config; DDIM for one case), and the final float images
are compared: max |ours - diffusers| / max |diffusers| <= 1e-3 (the issue's goal; measured ~1e-6).
img2img and inpainting (a 9-channel inpainting UNet, and an ordinary UNet with mask blending) are
compared with diffusers' StableDiffusionImg2ImgPipeline and StableDiffusionInpaintPipeline.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

diffusers = pytest.importorskip("diffusers")

from clip_helpers import BIG_G, CLIP_L, VIT_H, hf_state, hf_text_model, hf_to_openclip, hf_tokenizer, prefixed, truncated  # noqa: E402
from sd_helpers import make_unet, make_vae, write_single_file  # noqa: E402

from noisecraft.cli import main  # noqa: E402
from noisecraft.pipeline import Pipeline  # noqa: E402
from noisecraft.pngmeta import parse_parameters  # noqa: E402

IMAGE_TOLERANCE = 1e-3
SIZE = 32  # pixels: 16x16 latents through the f2 test VAE
SD_SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                    steps_offset=1, clip_sample=False, set_alpha_to_one=False)
PROMPT, NEGATIVE = "a product shot of a red teapot, soft light", "blurry, low quality"


def build_sd_model(tmp: Path, family: str, *, inpaint: bool = False, prediction: str = "eps", unet=None, vae=None,
                   resolution: int | None = None):
    """(single file, diffusers folder) of one reduced random model of `family` (`unet`, `vae`: use these instead;
    `resolution`: the single file declares this native size in its model spec metadata)."""
    scheduler = diffusers.EulerDiscreteScheduler.from_config(SD_SCHEDULER, prediction_type="v_prediction" if prediction == "v" else "epsilon")
    vae = vae or make_vae(family)
    if family == "sdxl":
        l, g = hf_text_model(CLIP_L, 3), hf_text_model(BIG_G, 4, projection=True)
        unet = make_unet(family, context=CLIP_L["hidden_size"] + BIG_G["hidden_size"], pooled=BIG_G["projection_dim"])
        text = prefixed("conditioner.embedders.0.transformer.", hf_state(l)) | \
            prefixed("conditioner.embedders.1.model.", hf_to_openclip(hf_state(g)))
        pipe = diffusers.StableDiffusionXLPipeline(vae=vae, text_encoder=l, text_encoder_2=g, tokenizer=hf_tokenizer(),
                                                   tokenizer_2=hf_tokenizer("!"), unet=unet, scheduler=scheduler)
    else:
        spec = CLIP_L if family == "sd1" else VIT_H
        full = hf_text_model(spec, 1)
        te = full if family == "sd1" else truncated(full, spec["num_hidden_layers"] - 1)  # SD2: penultimate layer
        unet = unet or make_unet(family, in_channels=9 if inpaint else 4, context=spec["hidden_size"])
        text = prefixed("cond_stage_model.transformer.", hf_state(full)) if family == "sd1" else \
            prefixed("cond_stage_model.model.", hf_to_openclip(hf_state(full)))
        pipe = diffusers.StableDiffusionPipeline(vae=vae, text_encoder=te, tokenizer=hf_tokenizer("!" if family == "sd2" else "<|endoftext|>"),
                                                 unet=unet, scheduler=scheduler, safety_checker=None,
                                                 feature_extractor=None, requires_safety_checker=False)
    folder = tmp / f"{family}-diffusers"
    pipe.save_pretrained(folder)
    metadata = {"modelspec.prediction_type": "v"} if prediction == "v" else {}
    if resolution:
        metadata["modelspec.resolution"] = f"{resolution}x{resolution}"
    single = write_single_file(tmp / f"{family}.safetensors", unet, vae, text, metadata)
    return single, folder


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def ours_float(pipe: Pipeline, **kwargs) -> np.ndarray:
    """noisecraft's image as floats in [0, 1], [H, W, 3], before the 8-bit rounding."""
    return pipe(**kwargs, output_type="pt")[0].permute(1, 2, 0).numpy()


def theirs_float(pipe, **kwargs) -> np.ndarray:
    pipe.set_progress_bar_config(disable=True)
    return pipe(**kwargs, output_type="np").images[0]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Built once per family and shared by the tests of this module."""
    cache = {}

    def get(family: str, **kw):
        key = (family, tuple(sorted(kw.items())))
        if key not in cache:
            cache[key] = build_sd_model(tmp_path_factory.mktemp(family), family, **kw)
        return cache[key]
    return get


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_txt2img_matches_diffusers(models, family):
    single, folder = models(family)
    cls = diffusers.StableDiffusionXLPipeline if family == "sdxl" else diffusers.StableDiffusionPipeline
    theirs = cls.from_pretrained(folder)
    expected = theirs_float(theirs, prompt=PROMPT, negative_prompt=NEGATIVE, num_inference_steps=10, guidance_scale=7.0,
                            height=SIZE, width=SIZE, generator=torch.Generator().manual_seed(42))
    for path in (single, folder):
        ours = Pipeline.from_pretrained(path, device="cpu")
        assert ours.family == family
        image = ours_float(ours, prompt=PROMPT, negative_prompt=NEGATIVE, steps=10, guidance_scale=7.0, sampler="euler",
                           seed=42, width=SIZE, height=SIZE)
        assert rel(image, expected) <= IMAGE_TOLERANCE, path


def test_sdxl_empty_negative_prompt_is_zero_conditioning_as_in_diffusers(models):
    single, folder = models("sdxl")
    theirs = diffusers.StableDiffusionXLPipeline.from_pretrained(folder)
    expected = theirs_float(theirs, prompt=PROMPT, num_inference_steps=6, guidance_scale=5.0, height=SIZE, width=SIZE,
                            generator=torch.Generator().manual_seed(1))
    image = ours_float(Pipeline.from_pretrained(single, device="cpu"), prompt=PROMPT, steps=6, guidance_scale=5.0,
                       sampler="euler", seed=1, width=SIZE, height=SIZE)
    assert rel(image, expected) <= IMAGE_TOLERANCE


def test_sd2_v_prediction_and_ddim_match_diffusers(models):
    single, folder = models("sd2", prediction="v")
    theirs = diffusers.StableDiffusionPipeline.from_pretrained(folder)
    # DDIM with its own default spacing ("leading"), as SD 2's repositories configure it
    theirs.scheduler = diffusers.DDIMScheduler.from_config(SD_SCHEDULER, prediction_type="v_prediction")
    expected = theirs_float(theirs, prompt=PROMPT, negative_prompt=NEGATIVE, num_inference_steps=10, guidance_scale=7.0,
                            height=SIZE, width=SIZE, generator=torch.Generator().manual_seed(3))
    ours = Pipeline.from_pretrained(single, device="cpu")
    assert ours.config.prediction == "v"
    image = ours_float(ours, prompt=PROMPT, negative_prompt=NEGATIVE, steps=10, guidance_scale=7.0, sampler="ddim",
                       seed=3, width=SIZE, height=SIZE)
    assert rel(image, expected) <= IMAGE_TOLERANCE


def start_picture(seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    base = np.linspace(0, 255, SIZE)[None, :, None] * np.ones((SIZE, 1, 3))
    return Image.fromarray(np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8))


def half_mask() -> Image.Image:
    mask = np.zeros((SIZE, SIZE), dtype=np.uint8)
    mask[:, SIZE // 2:] = 255
    return Image.fromarray(mask)


def test_img2img_matches_diffusers(models):
    single, folder = models("sd1")
    theirs = diffusers.StableDiffusionImg2ImgPipeline.from_pretrained(folder)
    kwargs = dict(prompt=PROMPT, negative_prompt=NEGATIVE, guidance_scale=7.0)
    expected = theirs_float(theirs, image=start_picture(), strength=0.6, num_inference_steps=10,
                            generator=torch.Generator().manual_seed(5), **kwargs)
    image = ours_float(Pipeline.from_pretrained(single, device="cpu"), init_image=start_picture(), strength=0.6, steps=10,
                       sampler="euler", seed=5, **kwargs)
    assert rel(image, expected) <= IMAGE_TOLERANCE


@pytest.mark.parametrize("inpaint_model,strength", [(True, 1.0), (True, 0.7), (False, 1.0), (False, 0.7)])
def test_inpainting_matches_diffusers(models, inpaint_model, strength):
    single, folder = models("sd1", inpaint=inpaint_model)
    theirs = diffusers.StableDiffusionInpaintPipeline.from_pretrained(folder)
    kwargs = dict(prompt=PROMPT, negative_prompt=NEGATIVE, guidance_scale=7.0)
    expected = theirs_float(theirs, image=start_picture(), mask_image=half_mask(), strength=strength, num_inference_steps=10,
                            height=SIZE, width=SIZE, generator=torch.Generator().manual_seed(9), **kwargs)
    ours = Pipeline.from_pretrained(single, device="cpu")
    assert ours.inpainting_model == inpaint_model
    image = ours_float(ours, init_image=start_picture(), mask_image=half_mask(), strength=strength, steps=10,
                       sampler="euler", seed=9, **kwargs)
    assert rel(image, expected) <= IMAGE_TOLERANCE


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_cli_generates_from_a_stable_diffusion_file(models, family, tmp_path, capsys):
    single, folder = models(family)
    for path in (single, folder):
        assert main(["info", str(path)]) == 0
        assert f"family:      Stable Diffusion {family}" in capsys.readouterr().out
    out = tmp_path / "x.png"
    assert main(["generate", "a red teapot", "--model", str(single), "--steps", "2", "--size", f"{SIZE}",
                 "--seed", "7", "--out", str(out), "--device", "cpu"]) == 0
    image = Image.open(out)
    params = parse_parameters(image.info["parameters"])
    assert image.size == (SIZE, SIZE) and params["Seed"] == "7" and params["Model"] == family
    import hashlib

    assert params["Model hash"] == hashlib.sha256(single.read_bytes()).hexdigest()[:10]


def test_cli_lora_on_unet_and_text_encoder_and_an_embedding(models, tmp_path):
    """--lora changes the picture and is recorded; its text-encoder layers reach the encoder; --embedding loads."""
    from safetensors.torch import save_file

    single, _ = models("sd1")
    pipe = Pipeline.from_pretrained(single, device="cpu")
    g = torch.Generator().manual_seed(0)
    tensors = {}
    from noisecraft.checkpoints.lora import text_lora_targets

    for name, module in list(text_lora_targets(pipe.text_encoder).items())[:4]:
        out_f, in_f = module.weight.shape
        tensors |= {f"{name}.lora_down.weight": torch.randn(2, in_f, generator=g), f"{name}.lora_up.weight": torch.randn(out_f, 2, generator=g)}
    for name in ("down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k", "mid_block_attentions_0_proj_in"):
        module = dict(pipe.unet.named_modules())[{"down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k": "input_blocks.1.1.transformer_blocks.0.attn2.to_k",
                                                  "mid_block_attentions_0_proj_in": "middle_block.1.proj_in"}[name]]
        w = module.weight
        tensors |= {f"lora_unet_{name}.lora_down.weight": torch.randn(2, *w.shape[1:], generator=g),
                    f"lora_unet_{name}.lora_up.weight": torch.randn(w.shape[0], 2, *w.shape[2:], generator=g)}
    save_file(tensors, tmp_path / "style.safetensors")
    before = pipe.conditioner.encode([PROMPT])["context"]
    assert pipe.load_lora(tmp_path / "style.safetensors", 0.5) == 6
    assert not torch.allclose(before, pipe.conditioner.encode([PROMPT])["context"])
    pipe.unload_loras()
    assert torch.equal(before, pipe.conditioner.encode([PROMPT])["context"])

    save_file({"emb_params": torch.randn(2, CLIP_L["hidden_size"], generator=g)}, tmp_path / "teapot-style.safetensors")
    common = ["generate", "a teapot-style teapot", "--model", str(single), "--steps", "2", "--size", f"{SIZE}", "--seed", "1", "--device", "cpu"]
    assert main(common + ["--out", str(tmp_path / "plain.png")]) == 0
    assert main(common + ["--out", str(tmp_path / "lora.png"), "--lora", f"{tmp_path / 'style.safetensors'}:0.8",
                          "--embedding", str(tmp_path / "teapot-style.safetensors")]) == 0
    plain, styled = Image.open(tmp_path / "plain.png"), Image.open(tmp_path / "lora.png")
    assert not np.array_equal(np.asarray(plain), np.asarray(styled))
    params = parse_parameters(styled.info["parameters"])
    assert params["Lora"] == "style: 0.8" and params["Lora hashes"].startswith("style: ")


def test_vae_swap_and_bf16(models, tmp_path):
    """--vae replaces the checkpoint's autoencoder; bf16 runs and stays close to float32."""
    from sd_helpers import ldm_vae
    from safetensors.torch import save_file

    single, _ = models("sd1")
    settings = dict(prompt=PROMPT, steps=4, sampler="euler", seed=2, width=SIZE, height=SIZE)
    base = ours_float(Pipeline.from_pretrained(single, device="cpu"), **settings)
    save_file({k: v.contiguous() for k, v in ldm_vae(make_vae("sd1", seed=11)).items()}, tmp_path / "other-vae.safetensors")
    swapped = ours_float(Pipeline.from_pretrained(single, device="cpu", vae=tmp_path / "other-vae.safetensors"), **settings)
    assert np.abs(swapped - base).mean() > 0.01
    half = ours_float(Pipeline.from_pretrained(single, device="cpu", dtype=torch.bfloat16), **settings)
    assert np.isfinite(half).all() and np.abs(half - base).mean() < 0.05


if __name__ == "__main__":  # print the measured differences (python tests/test_sd_pipeline.py)
    import tempfile

    tmp = Path(tempfile.mkdtemp())
    rows = []
    for family in ("sd1", "sd2", "sdxl"):
        single, folder = build_sd_model(tmp / family, family)
        cls = diffusers.StableDiffusionXLPipeline if family == "sdxl" else diffusers.StableDiffusionPipeline
        expected = theirs_float(cls.from_pretrained(folder), prompt=PROMPT, negative_prompt=NEGATIVE, num_inference_steps=10,
                                guidance_scale=7.0, height=SIZE, width=SIZE, generator=torch.Generator().manual_seed(42))
        for label, path in (("single file", single), ("diffusers folder", folder)):
            image = ours_float(Pipeline.from_pretrained(path, device="cpu"), prompt=PROMPT, negative_prompt=NEGATIVE, steps=10,
                               guidance_scale=7.0, sampler="euler", seed=42, width=SIZE, height=SIZE)
            rows.append((f"{family} txt2img, 10 Euler steps, {label}", rel(image, expected)))
    single, folder = build_sd_model(tmp / "v", "sd2", prediction="v")
    theirs = diffusers.StableDiffusionPipeline.from_pretrained(folder)
    theirs.scheduler = diffusers.DDIMScheduler.from_config(SD_SCHEDULER, prediction_type="v_prediction")
    expected = theirs_float(theirs, prompt=PROMPT, negative_prompt=NEGATIVE, num_inference_steps=10, guidance_scale=7.0,
                            height=SIZE, width=SIZE, generator=torch.Generator().manual_seed(3))
    image = ours_float(Pipeline.from_pretrained(single, device="cpu"), prompt=PROMPT, negative_prompt=NEGATIVE, steps=10,
                       guidance_scale=7.0, sampler="ddim", seed=3, width=SIZE, height=SIZE)
    rows.append(("sd2 v-prediction, 10 DDIM steps", rel(image, expected)))
    single, folder = build_sd_model(tmp / "i2i", "sd1")
    kwargs = dict(prompt=PROMPT, negative_prompt=NEGATIVE, guidance_scale=7.0)
    expected = theirs_float(diffusers.StableDiffusionImg2ImgPipeline.from_pretrained(folder), image=start_picture(), strength=0.6,
                            num_inference_steps=10, generator=torch.Generator().manual_seed(5), **kwargs)
    image = ours_float(Pipeline.from_pretrained(single, device="cpu"), init_image=start_picture(), strength=0.6, steps=10,
                       sampler="euler", seed=5, **kwargs)
    rows.append(("sd1 img2img, strength 0.6", rel(image, expected)))
    for inpaint_model in (True, False):
        single, folder = build_sd_model(tmp / f"inp{inpaint_model}", "sd1", inpaint=inpaint_model)
        for strength in (1.0, 0.7):
            expected = theirs_float(diffusers.StableDiffusionInpaintPipeline.from_pretrained(folder), image=start_picture(),
                                    mask_image=half_mask(), strength=strength, num_inference_steps=10, height=SIZE, width=SIZE,
                                    generator=torch.Generator().manual_seed(9), **kwargs)
            image = ours_float(Pipeline.from_pretrained(single, device="cpu"), init_image=start_picture(), mask_image=half_mask(),
                               strength=strength, steps=10, sampler="euler", seed=9, **kwargs)
            rows.append((f"sd1 inpainting, {'9-channel model' if inpaint_model else 'mask-blended'}, strength {strength}",
                         rel(image, expected)))
    print(f"{'case':60s} max rel diff")
    for name, value in rows:
        print(f"{name:60s} {value:.1e}")
