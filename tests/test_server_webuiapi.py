"""The server driven by a real A1111 client, unchanged: PyPI's `webuiapi` (`WebUIApi(host, port)`)."""

from __future__ import annotations

import numpy as np
import pytest
import webuiapi
from PIL import Image

from noisecraft.server.context import ServerSettings

from server_fixtures import cached_pipeline, entry_for, make_pool, model_file, running_server

KEY = "shop-key-5d1c9a"


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("webuiapi-models")


@pytest.fixture(scope="module")
def server(root):
    text_model, other = model_file(root, "pixel", text=True), model_file(root, "pixel", text=False, seed=1)
    pipe = cached_pipeline(text_model)
    models = {entry_for(text_model, "emoji-tiny"): pipe, entry_for(other, "other-tiny"): cached_pipeline(other)}
    with running_server(make_pool(models)) as url:
        yield int(url.rsplit(":", 1)[1]), pipe, list(models)


def test_txt2img_images_seeds_and_info(server):
    port, pipe, _ = server
    api = webuiapi.WebUIApi(host="127.0.0.1", port=port)
    result = api.txt2img(prompt="a red square", negative_prompt="blurry", seed=11, width=16, height=32, steps=3,
                         cfg_scale=4, batch_size=2, n_iter=2, sampler_name="Euler a")
    assert len(result.images) == 4
    assert all(image.size == (16, 32) and image.format == "PNG" for image in result.images)
    assert result.info["all_seeds"] == [11, 12, 13, 14] and result.info["seed"] == 11
    assert result.info["infotexts"][3] == result.images[3].info["parameters"]
    assert "Seed: 14," in result.images[3].info["parameters"] and "Sampler: Euler a" in result.images[3].info["parameters"]
    assert result.parameters["prompt"] == "a red square"
    alone = pipe("a red square", negative_prompt="blurry", steps=3, guidance_scale=4, sampler="Euler a", width=16, height=32, seed=13)[0]
    assert np.array_equal(np.asarray(result.images[2]), np.asarray(alone))


def test_samplers_models_options_progress_and_interrupt(server, capsys):
    port, _, entries = server
    api = webuiapi.WebUIApi(host="127.0.0.1", port=port)
    assert {"Euler a", "DPM++ 2M Karras", "DDIM"} <= set(api.util_get_sampler_names())
    assert api.util_get_model_names() == sorted(e.title for e in entries)
    assert api.util_get_current_model() == entries[0].title
    api.util_set_model("other-tiny")
    assert api.util_get_current_model() == entries[1].title
    result = api.txt2img(prompt="", seed=1, width=16, height=16, steps=2)
    assert result.info["sd_model_hash"] == entries[1].hash
    api.util_set_model(entries[0].title)
    progress = api.get_progress()
    assert progress["progress"] == 0 and progress["state"]["job_count"] == 0
    assert api.interrupt() == {"interrupted": 0}
    api.util_wait_for_ready(check_interval=0.05)


def test_img2img_with_a_mask(root):
    path = model_file(root, "latent", text=False)
    with running_server(make_pool({entry_for(path): cached_pipeline(path)})) as url:
        api = webuiapi.WebUIApi(host="127.0.0.1", port=int(url.rsplit(":", 1)[1]))
        init = Image.new("RGB", (16, 16), (30, 60, 220))
        mask = Image.new("L", (16, 16), 0)
        mask.paste(255, (0, 0, 8, 16))
        result = api.img2img(images=[init], mask_image=mask, prompt="", seed=5, width=16, height=16, steps=4,
                             denoising_strength=0.6, sampler_name="Euler")
    assert len(result.images) == 1 and result.images[0].size == (16, 16)
    assert result.info["denoising_strength"] == 0.6 and "Denoising strength: 0.6" in result.images[0].info["parameters"]


def test_basic_auth_as_a1111_clients_send_it(root):
    path = model_file(root, "pixel", text=False)
    with running_server(make_pool({entry_for(path): cached_pipeline(path)}), ServerSettings(api_key=KEY)) as url:
        port = int(url.rsplit(":", 1)[1])
        result = webuiapi.WebUIApi(host="127.0.0.1", port=port, username="shop", password=KEY).txt2img(
            prompt="", seed=2, width=16, height=16, steps=2)
        assert result.images[0].size == (16, 16)
        with pytest.raises(RuntimeError) as refused:
            webuiapi.WebUIApi(host="127.0.0.1", port=port).txt2img(prompt="", width=16, height=16, steps=2)
        assert refused.value.args[0] == 401 and KEY not in refused.value.args[1]


@pytest.fixture(scope="module")
def latent_server(root):
    path = model_file(root, "latent", text=False)
    pipe = cached_pipeline(path)
    with running_server(make_pool({entry_for(path): pipe})) as url:
        yield webuiapi.WebUIApi(host="127.0.0.1", port=int(url.rsplit(":", 1)[1])), pipe


def test_hires_fix_draws_upscales_and_redraws(latent_server):
    from noisecraft.settings import Request
    from noisecraft.upscale import upscale

    api, pipe = latent_server
    result = api.txt2img(prompt="", seed=7, width=16, height=16, steps=3, sampler_name="Euler", enable_hr=True,
                         hr_scale=2, hr_upscaler=webuiapi.HiResUpscaler.Lanczos, hr_second_pass_steps=4,
                         denoising_strength=0.4, batch_size=2)
    assert [image.size for image in result.images] == [(32, 32), (32, 32)]
    # the same as drawing the first pass and upscaling it with noisecraft.upscale, image by image
    first = pipe("", seed=8, width=16, height=16, steps=3, sampler="Euler")[0]
    expected, _ = upscale(pipe, first, 2, Request("", seed=8, steps=4, sampler="Euler"), strength=0.4)
    assert np.array_equal(np.asarray(result.images[1]), np.asarray(expected))
    assert 'Upscale: "2x Lanczos, tiled img2img at 0.4 (4 of 4 tiles, seed 8)"' in result.images[1].info["parameters"]
    assert "Size: 32x32" in result.images[1].info["parameters"]


def test_hires_fix_default_latent_upscaler_and_target_size(latent_server):
    api, _ = latent_server
    result = api.txt2img(prompt="", seed=1, width=16, height=16, steps=2, enable_hr=True, hr_resize_x=48, hr_resize_y=32)
    assert result.images[0].size == (48, 48)  # A1111: the larger ratio wins (48/16 = 3)


def test_upscalers_and_extras(latent_server):
    api, _ = latent_server
    names = [u["name"] for u in api.get_upscalers()]
    assert names[:3] == ["None", "Lanczos", "Nearest"]
    picture = Image.fromarray(np.random.default_rng(0).integers(0, 255, (10, 14, 3), dtype=np.uint8))
    result = api.extra_single_image(picture, upscaler_1="Lanczos", upscaling_resize=3)
    assert result.image.size == (42, 30)
    assert np.array_equal(np.asarray(result.image), np.asarray(picture.resize((42, 30), Image.LANCZOS)))
    sized = api.extra_single_image(picture, resize_mode=1, upscaling_resize_w=20, upscaling_resize_h=20,
                                   upscaler_1="Nearest", upscaling_crop=True)
    assert sized.image.size == (20, 20)


def test_unknown_upscaler_is_a_422_naming_it(latent_server):
    import requests

    api, _ = latent_server
    answer = requests.post(f"{api.baseurl}/txt2img", json={"prompt": "", "width": 16, "height": 16, "steps": 2,
                                                           "enable_hr": True, "hr_upscaler": "4x-Nothing"})
    assert answer.status_code == 422
    assert answer.json()["detail"][0]["loc"] == ["body", "hr_upscaler"]
    assert "unknown upscaler '4x-Nothing'" in answer.json()["detail"][0]["msg"]
    big = requests.post(f"{api.baseurl}/txt2img", json={"prompt": "", "width": 16, "height": 16, "enable_hr": True,
                                                        "hr_scale": 20})
    assert big.status_code == 422 and big.json()["detail"][0]["loc"] == ["body", "hr_scale"]


def test_an_upscaler_file_in_upscalers_extras_and_hires(root):
    from safetensors.torch import save_file

    from noisecraft.checkpoints.upscaler import load_upscaler
    from noisecraft.models.rrdbnet import RRDBNet

    import torch

    torch.manual_seed(0)
    file = root / "4x-tiny-esrgan.safetensors"
    save_file(RRDBNet(num_feat=8, num_block=1, num_grow_ch=8, scale=4).state_dict(), str(file))
    up = load_upscaler(file)
    up.filename = file.name
    path = model_file(root, "latent", text=False)
    with running_server(make_pool({entry_for(path): cached_pipeline(path)}),
                        ServerSettings(upscalers={up.name: up})) as url:
        api = webuiapi.WebUIApi(host="127.0.0.1", port=int(url.rsplit(":", 1)[1]))
        listed = {u["name"]: u for u in api.get_upscalers()}
        assert listed["4x-tiny-esrgan"]["scale"] == 4 and listed["4x-tiny-esrgan"]["model_path"] == file.name
        picture = Image.new("RGB", (12, 10), (200, 40, 40))
        assert api.extra_single_image(picture, upscaler_1="4x-tiny-esrgan", upscaling_resize=4).image.size == (48, 40)
        result = api.txt2img(prompt="", seed=2, width=16, height=16, steps=2, enable_hr=True, hr_scale=2,
                             hr_upscaler="4x-tiny-esrgan", denoising_strength=0.3)
        assert result.images[0].size == (32, 32) and "2x 4x-tiny-esrgan" in result.images[0].info["parameters"]
