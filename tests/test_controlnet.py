"""ControlNet (issue 19) against diffusers' `ControlNetModel` and its ControlNet pipelines on the same random
weights at reduced size (tests/test_sd_pipeline.py's models: VAE f2, so the ControlNets' hint embedding has
one stride-2 step, `conditioning_embedding_out_channels=(16, 32)`): the residuals within 1e-5 and the
pictures within the pipelines' tolerance, for files in the original single-file layout and diffusers folders."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

diffusers = pytest.importorskip("diffusers")

from safetensors.torch import save_file  # noqa: E402

from test_sd_pipeline import PROMPT, SIZE, build_sd_model, ours_float, rel, theirs_float  # noqa: E402

from noisecraft.checkpoints.controlnet import diffusers_names, read_controlnet  # noqa: E402
from noisecraft.control import Control, preprocess  # noqa: E402
from noisecraft.errors import UserError  # noqa: E402
from noisecraft.pipeline import Pipeline  # noqa: E402

TOLERANCE = 1e-5
DRAW = dict(steps=8, guidance_scale=5.0, sampler="euler", seed=3, width=SIZE, height=SIZE)
THEIRS = dict(num_inference_steps=8, guidance_scale=5.0, height=SIZE, width=SIZE)


def shape_picture() -> Image.Image:
    picture = Image.new("RGB", (SIZE, SIZE), "white")
    draw = ImageDraw.Draw(picture)
    draw.rectangle([6, 8, 22, 26], fill=(200, 30, 30))
    draw.ellipse([16, 4, 30, 18], fill=(20, 40, 200))
    return picture


def make_controlnet(unet, seed: int = 7):
    """diffusers' ControlNet from a UNet, its zero convolutions made non-zero (an untrained one does nothing)."""
    net = diffusers.ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(16, 32))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.startswith(("controlnet_down_blocks", "controlnet_mid_block", "controlnet_cond_embedding.conv_out")):
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return net.eval()


def write_controlnet(unet, folder, single):
    """A random ControlNet of `unet` as a diffusers folder and, the same weights, as an original-layout single
    file (control_model.*, named by noisecraft's key map; the folder is what proves the map against diffusers)."""
    net = make_controlnet(unet)
    net.save_pretrained(folder)
    _, state, _, _ = read_controlnet(folder)
    save_file({f"control_model.{k}": v.contiguous() for k, v in state.items()}, single)
    return net


@pytest.fixture(scope="module", params=["sd1", "sdxl"])
def setup(request, tmp_path_factory):
    family = request.param
    root = tmp_path_factory.mktemp(f"control-{family}")
    single, folder = build_sd_model(root, family)
    cls = diffusers.StableDiffusionXLPipeline if family == "sdxl" else diffusers.StableDiffusionPipeline
    base = cls.from_pretrained(folder)
    net = write_controlnet(base.unet, root / "controlnet-diffusers", root / "control.safetensors")
    return family, single, base, net, root


def test_residuals_match_diffusers_controlnet_model(setup):
    family, single, base, net, root = setup
    ours = Pipeline.from_pretrained(single, device="cpu").load_controlnet(root / "control.safetensors").module
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, SIZE // 2, SIZE // 2, generator=g)
    hint = torch.rand(2, 3, SIZE, SIZE, generator=g)
    context = torch.randn(2, 77, ours.config.context_dim, generator=g)
    t = torch.tensor([500.0, 20.0])
    extra, y = {}, None
    if family == "sdxl":
        from clip_helpers import BIG_G
        from noisecraft.models.unet import timestep_embedding

        pooled = torch.randn(2, BIG_G["projection_dim"], generator=g)
        ids = torch.tensor([[32.0, 32, 0, 0, 32, 32]] * 2)
        extra = {"added_cond_kwargs": {"text_embeds": pooled, "time_ids": ids}}
        time_dim = (ours.config.adm_in_channels - pooled.shape[1]) // 6
        y = torch.cat([pooled, timestep_embedding(ids.flatten(), time_dim).reshape(2, -1)], dim=1)
    with torch.no_grad():
        down, mid = net(x, t, encoder_hidden_states=context, controlnet_cond=hint, return_dict=False, **extra)
        our_down, our_mid = ours(x, hint, t, context, y)
    assert len(our_down) == len(down)
    worst = max(rel(a.numpy(), b.numpy()) for a, b in zip([*our_down, our_mid], [*down, mid]))
    assert worst <= TOLERANCE, worst
    assert float(mid.abs().max()) > 1e-3  # the residuals are not zero


@pytest.mark.parametrize("where", ["control.safetensors", "controlnet-diffusers"])
def test_pictures_match_diffusers_controlnet_pipeline(setup, where):
    family, single, base, net, root = setup
    cls = diffusers.StableDiffusionXLControlNetPipeline if family == "sdxl" else diffusers.StableDiffusionControlNetPipeline
    extra = {} if family == "sdxl" else {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}
    components = {k: v for k, v in base.components.items() if k not in ("safety_checker", "feature_extractor", "image_encoder")}
    theirs = cls(**components, controlnet=net, **extra)
    picture = shape_picture()
    expected = theirs_float(theirs, prompt=PROMPT, image=picture, controlnet_conditioning_scale=0.8,
                            control_guidance_start=0.125, control_guidance_end=0.75,
                            generator=torch.Generator().manual_seed(3), **THEIRS)
    pipe = Pipeline.from_pretrained(single, device="cpu")
    control = Control(pipe.load_controlnet(root / where), picture, "none", strength=0.8, start=0.125, end=0.75)
    image = ours_float(pipe, prompt=PROMPT, controls=[control], **DRAW)
    plain = ours_float(pipe, prompt=PROMPT, **DRAW)
    assert rel(image, plain) > 1e-2  # the ControlNet matters
    assert rel(image, expected) <= 1e-3, rel(image, expected)
    stacked = ours_float(pipe, prompt=PROMPT, controls=[control, Control(control.net, picture, "none", 0.4)], **DRAW)
    assert rel(stacked, image) > 1e-3  # several stack


def test_parameters_name_the_controlnet_and_bad_controls_are_one_sentence(setup):
    family, single, base, net, root = setup
    pipe = Pipeline.from_pretrained(single, device="cpu")
    loaded = pipe.load_controlnet(root / "control.safetensors")
    picture = pipe(prompt=PROMPT, controls=[Control(loaded, shape_picture(), "canny", 0.7)], **DRAW)[0]
    assert f'ControlNet 0: "Module: canny, Model: control [{loaded.hash}], Weight: 0.7, Guidance Start: 0, Guidance End: 1"' \
        in picture.info["parameters"]
    for bad, words in [(dict(preprocessor="openpose"), "unknown control preprocessor 'openpose'"),
                       (dict(strength=3.0), "control strength must be from 0 to 2"),
                       (dict(start=0.8, end=0.2), "start < end")]:
        with pytest.raises(UserError, match=words):
            pipe(prompt=PROMPT, controls=[Control(loaded, shape_picture(), **({"preprocessor": "none"} | bad))], **DRAW)


def test_a_controlnet_for_another_family_is_refused(tmp_path):
    sd1_single, sd1_folder = build_sd_model(tmp_path / "a", "sd1")
    xl_single, xl_folder = build_sd_model(tmp_path / "b", "sdxl")
    make_controlnet(diffusers.StableDiffusionXLPipeline.from_pretrained(xl_folder).unet).save_pretrained(tmp_path / "xl-net")
    pipe = Pipeline.from_pretrained(sd1_single, device="cpu")
    with pytest.raises(UserError, match="is for SDXL models; this model is sd1"):
        pipe(prompt=PROMPT, controls=[Control(pipe.load_controlnet(tmp_path / "xl-net"), shape_picture())], **DRAW)


def test_canny_is_opencvs_edges():
    import cv2

    picture = shape_picture()
    edges = np.asarray(preprocess(picture, "canny"))
    assert edges.shape == (SIZE, SIZE, 3) and set(np.unique(edges)) <= {0, 255}
    assert np.array_equal(edges[..., 0], cv2.Canny(np.asarray(picture.convert("L")), 100, 200))
    assert np.array_equal(np.asarray(preprocess(picture, "depth")), np.asarray(picture))  # a given map is used as is


def test_the_key_map_covers_every_parameter(setup):
    family, single, base, net, root = setup
    config, _, _, _ = read_controlnet(root / "control.safetensors")
    assert set(diffusers_names(config).values()) == set(net.state_dict())


def test_cli_control_flags(tmp_path, capsys):
    from noisecraft.cli import main
    from noisecraft.control import parse_control_argument

    single, folder = build_sd_model(tmp_path, "sd1")
    root = tmp_path
    write_controlnet(diffusers.StableDiffusionPipeline.from_pretrained(folder).unet, root / "net", root / "control.safetensors")
    shape_picture().save(tmp_path / "shape.png")
    common = ["generate", PROMPT, "--model", str(single), "--steps", "3", "--size", str(SIZE), "--seed", "1", "--device", "cpu"]
    assert main(common + ["--out", str(tmp_path / "c.png"), "--controlnet", str(root / "control.safetensors"),
                          "--control", f"canny:{tmp_path / 'shape.png'}:0.8"]) == 0
    assert 'ControlNet 0: "Module: canny, Model: control [' in Image.open(tmp_path / "c.png").info["parameters"]
    capsys.readouterr()
    assert main(common + ["--out", str(tmp_path / "d.png"), "--control", f"canny:{tmp_path / 'shape.png'}"]) == 2
    assert capsys.readouterr().err.strip() == ("noisecraft: error: give one --controlnet FILE per --control KIND:PICTURE "
                                               "(or one --controlnet for all of them)")
    assert parse_control_argument("depth:C:/maps/d.png:0.5:0.1:0.9") == ("depth", "C:/maps/d.png", 0.5, 0.1, 0.9)
    with pytest.raises(UserError, match="give STRENGTH, or STRENGTH:START:END"):
        parse_control_argument("canny:a.png:0.2:0.5")
