"""Whole SD3.5 and FLUX.1 pipelines (issue 20) against diffusers' StableDiffusion3Pipeline and FluxPipeline on the
same random weights at reduced size: the same seed gives the same picture, from a diffusers folder, from an
all-in-one single file and from the parts apart (a bare transformer, ae.safetensors, clip/t5 files)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

diffusers = pytest.importorskip("diffusers")

from flow_helpers import build_flux, build_sd3  # noqa: E402

from noisecraft import Pipeline, Request  # noqa: E402

TOLERANCE = 1e-5  # relative to the largest pixel value, float32 on the CPU
PROMPT, NEGATIVE = "a product shot of a red teapot, soft light", "blurry, low quality"
WIDTH, HEIGHT = 48, 64


def rel(a, b) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.fixture(scope="module")
def sd3(tmp_path_factory):
    return build_sd3(tmp_path_factory.mktemp("sd3"))


@pytest.fixture(scope="module", params=[True, False], ids=["dev", "schnell"])
def flux(request, tmp_path_factory):
    return request.param, *build_flux(tmp_path_factory.mktemp("flux"), dev=request.param)


def ours(path, **kwargs) -> np.ndarray:
    load = {k: kwargs.pop(k) for k in ("vae", "text_encoders") if k in kwargs}
    pipe = Pipeline.from_pretrained(path, device="cpu", **load)
    return pipe(PROMPT, width=WIDTH, height=HEIGHT, output_type="pt", **kwargs)[0].permute(1, 2, 0).numpy(), pipe


def test_sd35_matches_diffusers_from_a_folder_an_all_in_one_file_and_parts(sd3):
    pipe, folder, files = sd3
    with torch.no_grad():
        expected = pipe(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=4, guidance_scale=5.0, height=HEIGHT, width=WIDTH,
                        generator=torch.Generator().manual_seed(11), output_type="np").images[0]
    sources = {"folder": (folder, {}), "all-in-one": (files["all-in-one"], {}),
               "parts": (files["transformer"], dict(vae=files["ae"], text_encoders=[files["t5xxl"], files["clip_g"], files["clip_l"]]))}
    for name, (path, load) in sources.items():
        image, loaded = ours(path, negative_prompt=NEGATIVE, steps=4, guidance_scale=5.0, sampler="euler", seed=11, **load)
        assert loaded.family == "sd3" and loaded.transformer is not None and loaded.unet is None
        assert rel(image, expected) <= TOLERANCE, (name, rel(image, expected))


def test_flux_matches_diffusers_from_a_folder_an_all_in_one_file_and_parts(flux):
    dev, pipe, folder, files = flux
    steps, guidance = (4, 3.5) if dev else (2, 0.0)
    with torch.no_grad():
        expected = pipe(PROMPT, num_inference_steps=steps, guidance_scale=guidance, height=HEIGHT, width=WIDTH,
                        generator=torch.Generator().manual_seed(5), output_type="np").images[0]
    sources = {"folder": (folder, {}), "all-in-one": (files["all-in-one"], {}),
               "parts": (files["transformer"], dict(vae=files["ae"], text_encoders=[files["clip_l"], files["t5xxl"]]))}
    for name, (path, load) in sources.items():
        image, loaded = ours(path, steps=steps, guidance_scale=guidance, seed=5, **load)
        assert loaded.family == "flux" and loaded.config.flow_dynamic == dev
        assert rel(image, expected) <= TOLERANCE, (name, rel(image, expected))


def test_img2img_matches_diffusers_sd3_and_flux_img2img(sd3, flux):
    """img2img starts on the flow's straight path at the cut diffusers' SD3 / FLUX img2img pipelines make
    (int(steps - steps * strength) steps skipped; 0.55 of 5 steps runs 3, where the UNet families run 2)."""
    rng = np.random.default_rng(0)
    init = Image.fromarray(rng.integers(0, 255, (HEIGHT, WIDTH, 3), dtype=np.uint8))
    dev, flux_pipe, flux_folder, _ = flux
    cases = [(diffusers.StableDiffusion3Img2ImgPipeline(**sd3[0].components), sd3[1], dict(guidance_scale=4.0), dict(sampler="euler")),
             (diffusers.FluxImg2ImgPipeline(**flux_pipe.components), flux_folder, dict(guidance_scale=3.5 if dev else 0.0), {})]
    for theirs, folder, guidance, extra in cases:
        with torch.no_grad():
            expected = theirs(PROMPT, image=init, strength=0.55, num_inference_steps=5, height=HEIGHT, width=WIDTH,
                              generator=torch.Generator().manual_seed(3), output_type="np", **guidance).images[0]
        pipe = Pipeline.from_pretrained(folder, device="cpu")
        settings = pipe.resolve(Request(PROMPT, steps=5, strength=0.55, seed=3, **guidance, **extra), init_image=init)
        assert len(settings.sigmas) - 1 == 3
        image = pipe(settings, init_image=init, output_type="pt")[0].permute(1, 2, 0).numpy()
        assert rel(image, expected) <= TOLERANCE, (folder.name, rel(image, expected))


def test_inpainting_matches_diffusers_sd3_and_flux_inpainting(sd3, flux):
    """Inpainting with the flow families: the kept region follows the start picture's straight path, as diffusers'
    SD3 / FLUX inpainting pipelines blend it. diffusers' SD3 inpainting decodes its latents without the VAE's shift
    factor (its txt2img and img2img add it), so for SD3 its latents are decoded here with the shift before comparing."""
    rng = np.random.default_rng(1)
    init = Image.fromarray(rng.integers(0, 255, (HEIGHT, WIDTH, 3), dtype=np.uint8))
    mask = Image.new("L", (WIDTH, HEIGHT), 0)
    mask.paste(255, (8, 8, 40, 40))
    dev, flux_pipe, flux_folder, _ = flux
    cases = [(diffusers.StableDiffusion3InpaintPipeline(**sd3[0].components), sd3[1], dict(guidance_scale=4.0), dict(sampler="euler")),
             (diffusers.FluxInpaintPipeline(**flux_pipe.components), flux_folder, dict(guidance_scale=3.5 if dev else 0.0), {})]
    for strength in (1.0, 0.6):
        for theirs, folder, guidance, extra in cases:
            sd3_case = isinstance(theirs, diffusers.StableDiffusion3InpaintPipeline)
            with torch.no_grad():
                out = theirs(PROMPT, image=init, mask_image=mask, strength=strength, num_inference_steps=5, height=HEIGHT, width=WIDTH,
                             generator=torch.Generator().manual_seed(3), output_type="latent" if sd3_case else "np", **guidance).images
                if sd3_case:
                    vae = theirs.vae
                    decoded = vae.decode(out / vae.config.scaling_factor + vae.config.shift_factor).sample
                    out = ((decoded / 2 + 0.5).clamp(0, 1)).permute(0, 2, 3, 1).numpy()
            expected = out[0]
            pipe = Pipeline.from_pretrained(folder, device="cpu")
            image = pipe(PROMPT, init_image=init, mask_image=mask, strength=strength, steps=5, seed=3, output_type="pt",
                         **guidance, **extra)[0].permute(1, 2, 0).numpy()
            assert rel(image, expected) <= TOLERANCE, (folder.name, strength, rel(image, expected))
