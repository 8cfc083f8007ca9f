import numpy as np
import pytest
import torch

from noisecraft.errors import ModelFileError, UserError
from noisecraft.pipeline import Pipeline
from noisecraft.pngmeta import parse_parameters

from helpers import tiny_model_file


@pytest.fixture(scope="module")
def pixel_pipe(tmp_path_factory):
    path = tiny_model_file(tmp_path_factory.mktemp("pixel") / "tiny.safetensors")
    return Pipeline.from_pretrained(path, device="cpu")


@pytest.fixture(scope="module")
def latent_pipe(tmp_path_factory):
    path = tiny_model_file(tmp_path_factory.mktemp("latent") / "model.safetensors", kind="latent")
    return Pipeline.from_pretrained(path.parent, device="cpu")


def _pixels(image):
    return np.asarray(image, dtype=np.int16)


def test_images_have_size_and_a1111_parameters(pixel_pipe):
    images = pixel_pipe("a palm tree", negative_prompt="blurry", steps=3, guidance_scale=4.0,
                        sampler="dpmpp_2m_karras", width=32, height=16, seed=42, num_images=2)
    assert [im.size for im in images] == [(32, 16), (32, 16)]
    params = parse_parameters(images[1].info["parameters"])
    assert params["prompt"] == "a palm tree" and params["negative_prompt"] == "blurry"
    assert params["Steps"] == "3" and params["Sampler"] == "DPM++ 2M Karras" and params["CFG scale"] == "4.0"
    assert params["Seed"] == "43" and params["Size"] == "32x16" and params["Model"] == "tiny"
    assert len(params["Model hash"]) == 10


@pytest.mark.parametrize("sampler", ["euler_a", "dpmpp_2m_sde", "ddim"])
def test_same_seed_same_image_and_batch_equals_single_runs(pixel_pipe, sampler):
    batch = pixel_pipe("sushi", steps=4, seed=7, num_images=3, sampler=sampler)
    again = pixel_pipe("sushi", steps=4, seed=7, num_images=3, sampler=sampler)
    assert all((_pixels(a) == _pixels(b)).all() for a, b in zip(batch, again))
    for k in range(3):
        single = pixel_pipe("sushi", steps=4, seed=7 + k, sampler=sampler)[0]
        assert np.abs(_pixels(single) - _pixels(batch[k])).max() <= 1  # batched kernels may round differently
    assert np.abs(_pixels(batch[0]) - _pixels(batch[1])).max() > 10


def test_latent_model_decodes_through_the_vae(latent_pipe):
    images = latent_pipe("a rocket", steps=2, seed=0, num_images=1, width=16, height=16)
    assert images[0].size == (16, 16) and images[0].mode == "RGB"
    assert latent_pipe.size_factor == 4  # VAE x2, UNet x2


def test_guidance_one_skips_the_negative_pass(pixel_pipe):
    calls = []
    real = pixel_pipe.unet.forward
    pixel_pipe.unet.forward = lambda x, *a, **k: calls.append(x.shape[0]) or real(x, *a, **k)
    try:
        pixel_pipe("x", steps=2, guidance_scale=1.0, sampler="euler", seed=0)
        pixel_pipe("x", steps=2, guidance_scale=2.0, sampler="euler", seed=0)
    finally:
        del pixel_pipe.unet.forward
    assert calls == [1, 1, 2, 2]


def test_callback_sees_every_step_and_can_interrupt(pixel_pipe):
    seen = []
    pixel_pipe("x", steps=5, sampler="euler", seed=0, callback=lambda i, n, x0: seen.append((i, n)))
    assert seen == [(i, 5) for i in range(1, 6)]

    class Stop(Exception):
        pass

    def stop(i, n, x0):
        if i == 2:
            raise Stop

    with pytest.raises(Stop):
        pixel_pipe("x", steps=5, sampler="euler", seed=0, callback=stop)


@pytest.mark.parametrize("kwargs, message", [
    ({"prompt": "  "}, "prompt is empty"),
    ({"width": 31}, "not a multiple of 2"),
    ({"steps": 0}, "steps must be"),
    ({"sampler": "warp_drive"}, "unknown sampler 'warp_drive'; choose one of: .*euler"),
    ({"num_images": 0}, "number of images"),
    ({"height": 100000}, "larger than"),
    ({"guidance_scale": float("nan")}, "guidance scale"),
    ({"seed": "abc"}, "seed must be"),
])
def test_bad_input_is_one_clear_sentence(pixel_pipe, kwargs, message):
    args = {"prompt": "a palm tree", "steps": 2} | kwargs
    with pytest.raises(UserError, match=message):
        pixel_pipe(**args)


def test_missing_corrupt_and_pickle_model_files(tmp_path):
    with pytest.raises(ModelFileError, match="no model at"):
        Pipeline.from_pretrained(tmp_path / "nothing.safetensors", device="cpu")
    good = tiny_model_file(tmp_path / "good.safetensors", text=False).read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(good[: len(good) // 2])
    with pytest.raises(ModelFileError, match="truncated"):
        Pipeline.from_pretrained(tmp_path / "cut.safetensors", device="cpu")
    torch.save({"x": torch.zeros(1)}, tmp_path / "evil.safetensors")
    with pytest.raises(ModelFileError, match="pickle"):
        Pipeline.from_pretrained(tmp_path / "evil.safetensors", device="cpu")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(ModelFileError):
        Pipeline.from_pretrained(tmp_path / "junk.safetensors", device="cpu")
