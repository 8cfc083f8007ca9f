"""img2img, inpainting and outpainting on a tiny latent model: what users see and what they are told."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from noisecraft.cli import main
from noisecraft.errors import UserError
from noisecraft.images import outpaint_canvas
from noisecraft.pipeline import Pipeline
from noisecraft.pngmeta import parse_parameters

from helpers import tiny_model_file


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    return Pipeline.from_pretrained(tiny_model_file(tmp_path_factory.mktemp("m") / "m.safetensors", kind="latent"), device="cpu")


def picture(width=16, height=16, seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))


def test_img2img_size_strength_and_reproducibility(pipe):
    init = picture(20, 17)  # rounded down to the model's multiple of 4
    a = pipe("a red square", init_image=init, strength=0.5, seed=3, steps=4)[0]
    b = pipe("a red square", init_image=init, strength=0.5, seed=3, steps=4)[0]
    assert a.size == (20, 16) and np.array_equal(np.asarray(a), np.asarray(b))
    assert parse_parameters(a.info["parameters"])["Denoising strength"] == "0.5"



def final_latents(pipe, monkeypatch, **kwargs) -> torch.Tensor:
    """The latents the pipeline hands to the VAE decoder."""
    captured = {}
    original = pipe.decode
    monkeypatch.setattr(pipe, "decode", lambda z: captured.setdefault("z", z.clone()) is not None and original(z))
    pipe(**kwargs)
    monkeypatch.setattr(pipe, "decode", original)
    return captured["z"]


def start_latents(pipe, image, seed) -> torch.Tensor:
    """The start picture's latents as the pipeline draws them: the first draw of the seed's generator."""
    from noisecraft.images import to_tensor
    from noisecraft.pipeline import BatchNoise

    with torch.no_grad():
        return pipe.encode(to_tensor(image, *image.size), BatchNoise([seed], pipe.device, pipe.dtype))


def test_low_strength_stays_near_the_start_picture(pipe, monkeypatch):
    square = picture(16, 16)
    reference = start_latents(pipe, square, 3)
    distance = {strength: (final_latents(pipe, monkeypatch, prompt="a red square", init_image=square, strength=strength,
                                         seed=3, steps=20) - reference).abs().mean().item() for strength in (0.1, 1.0)}
    assert distance[0.1] < 0.1 * distance[1.0]


def test_img2img_runs_strength_times_steps(pipe):
    seen = []
    pipe("x", init_image=picture(), strength=0.5, steps=10, seed=0, callback=lambda i, n, x0: seen.append(n))
    assert seen == [5] * 5


def test_inpainting_keeps_the_unmasked_latents(pipe, monkeypatch):
    """The kept half ends exactly at the start image's latents; the masked half is repainted."""
    init = picture(16, 16, seed=1)
    mask = np.zeros((16, 16), dtype=np.uint8)
    mask[:, 8:] = 255  # repaint the right half: latent columns 4..7 (the tiny VAE downsamples by 2)
    z = final_latents(pipe, monkeypatch, prompt="a blue square", init_image=init, mask_image=Image.fromarray(mask),
                      strength=1.0, steps=4, seed=5)
    reference = start_latents(pipe, init, 5)
    assert torch.equal(z[..., :4], reference[..., :4])
    assert (z[..., 4:] - reference[..., 4:]).abs().mean() > 0.1


def test_outpaint_canvas_pads_to_the_multiple_and_masks_the_new_area():
    canvas, mask = outpaint_canvas(picture(10, 10), (3, 0, 2, 1), multiple=8)
    assert canvas.size == (16, 16) and mask.size == (16, 16)
    m = np.asarray(mask)
    assert m[0:10, 3:13].max() == 0 and m[:, :3].min() == 255 and m[10:, :].min() == 255
    assert np.array_equal(np.asarray(canvas)[0:10, 3:13], np.asarray(picture(10, 10)))


@pytest.mark.parametrize("kwargs,message", [
    (dict(mask_image=Image.new("L", (16, 16))), "needs the image"),
    (dict(init_image=Image.new("RGB", (16, 16)), strength=0.0), "strength"),
    (dict(init_image=Image.new("RGB", (16, 16)), strength=1.5), "strength"),
    (dict(strength=0.5), "only applies with a start image"),
])
def test_bad_img2img_input_is_one_sentence(pipe, kwargs, message):
    with pytest.raises(UserError, match=message):
        pipe("x", steps=2, **kwargs)


def test_cli_img2img_and_outpaint(tmp_path, capsys):
    model = tiny_model_file(tmp_path / "m.safetensors", kind="latent")
    picture(16, 16).save(tmp_path / "in.png")
    assert main(["generate", "a red square", "--model", str(model), "--init-image", str(tmp_path / "in.png"),
                 "--strength", "0.6", "--steps", "3", "--seed", "1", "--out", str(tmp_path / "a.png"), "--device", "cpu"]) == 0
    assert Image.open(tmp_path / "a.png").size == (16, 16)
    assert main(["generate", "a red square", "--model", str(model), "--init-image", str(tmp_path / "in.png"),
                 "--outpaint", "4,0,4,0", "--steps", "3", "--out", str(tmp_path / "wide.png"), "--device", "cpu"]) == 0
    assert Image.open(tmp_path / "wide.png").size == (24, 16)
    capsys.readouterr()
    assert main(["generate", "x", "--model", str(model), "--init-image", str(tmp_path / "missing.png"), "--device", "cpu"]) == 2
    assert "--init-image" in capsys.readouterr().err
    (tmp_path / "bad.png").write_bytes(b"not a picture")
    assert main(["generate", "x", "--model", str(model), "--init-image", str(tmp_path / "bad.png"), "--device", "cpu"]) == 2
    assert "not a picture" in capsys.readouterr().err
    assert main(["generate", "x", "--model", str(model), "--outpaint", "a,b", "--init-image", str(tmp_path / "in.png"), "--device", "cpu"]) == 2


def test_tiled_decode_blends_tiles_exactly_for_a_local_decoder(monkeypatch):
    """With a decoder that acts pixel by pixel, tiles + cross-fades must rebuild the whole decode exactly."""
    from noisecraft.models.vae import AutoencoderKL, VAEConfig

    vae = AutoencoderKL(VAEConfig.tiny())
    monkeypatch.setattr(vae, "decode", lambda z: torch.nn.functional.interpolate(z[:, :3], scale_factor=2))
    z = torch.randn(2, 4, 37, 29)
    assert torch.allclose(vae.decode_tiled(z, tile=16, overlap=4), vae.decode(z), atol=1e-6)
    assert vae.decode_tiled(z, tile=64).shape == (2, 3, 74, 58)
