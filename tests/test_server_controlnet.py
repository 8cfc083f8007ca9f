"""The A1111 ControlNet extension's API (issue 19) with PyPI's `webuiapi` client: `controlnet_units` on txt2img
give the picture noisecraft's Pipeline makes with the same ControlNet and control picture, the model and
module lists and detect answer in the extension's shapes, and bad units are 422s naming the field."""

from __future__ import annotations

import base64
import io

import httpx
import numpy as np
import pytest
from PIL import Image

webuiapi = pytest.importorskip("webuiapi")
diffusers = pytest.importorskip("diffusers")

from test_controlnet import shape_picture, write_controlnet  # noqa: E402
from test_sd_pipeline import PROMPT, SIZE, build_sd_model  # noqa: E402
from server_fixtures import cached_pipeline, entry_for, make_pool, running_server  # noqa: E402

from noisecraft.control import Control, preprocess  # noqa: E402
from noisecraft.server.context import ServerSettings  # noqa: E402
from noisecraft.server.controlnets import offer  # noqa: E402


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("control-server")
    single, folder = build_sd_model(root, "sd1")
    write_controlnet(diffusers.StableDiffusionPipeline.from_pretrained(folder).unet, root / "net", root / "canny-test.safetensors")
    offered = offer([str(root / "canny-test.safetensors")])
    pipe = cached_pipeline(single)
    settings = ServerSettings(controlnets=offered)
    with running_server(make_pool({entry_for(single, "tiny-sd1"): pipe}), settings) as url:
        host, port = url.rsplit(":", 1)
        yield webuiapi.WebUIApi(host=host.removeprefix("http://"), port=int(port), sampler="Euler", steps=6), \
            httpx.Client(base_url=url, timeout=120), pipe, root, next(iter(offered))


def test_controlnet_units_draw_what_the_pipeline_draws(served):
    api, client, pipe, root, title = served
    assert api.controlnet_model_list() == [title] and "canny" in api.controlnet_module_list()
    picture = shape_picture()
    unit = webuiapi.ControlNetUnit(image=picture, module="canny", model=title, weight=0.8, threshold_a=100,
                                   threshold_b=200, resize_mode="Just Resize", guidance_end=0.75)
    # (a fresh alwayson_scripts each call: webuiapi's default dict keeps the units of the call before)
    answer = api.txt2img(prompt=PROMPT, seed=3, width=SIZE, height=SIZE, cfg_scale=5, controlnet_units=[unit], alwayson_scripts={})
    plain = api.txt2img(prompt=PROMPT, seed=3, width=SIZE, height=SIZE, cfg_scale=5, alwayson_scripts={})
    control = Control(pipe.load_controlnet(root / "canny-test.safetensors"), picture, "canny", 0.8, 0.0, 0.75)
    expected = pipe(prompt=PROMPT, seed=3, width=SIZE, height=SIZE, guidance_scale=5.0, steps=6, sampler="euler",
                    controls=[control])[0]
    assert np.array_equal(np.asarray(answer.image.convert("RGB")), np.asarray(expected))
    assert not np.array_equal(np.asarray(plain.image.convert("RGB")), np.asarray(expected))  # the control mattered
    assert f'ControlNet 0: "Module: canny, Model: {title}, Weight: 0.8' in answer.info["infotexts"][0]


def test_detect_and_bad_units(served):
    api, client, pipe, root, title = served
    picture = shape_picture()
    buffer = io.BytesIO()
    picture.save(buffer, "PNG")
    b64 = base64.b64encode(buffer.getvalue()).decode()
    detected = client.post("/controlnet/detect", json={"controlnet_module": "canny", "controlnet_images": [b64],
                                                       "controlnet_threshold_a": 100, "controlnet_threshold_b": 200}).json()
    edges = Image.open(io.BytesIO(base64.b64decode(detected["images"][0])))
    assert np.array_equal(np.asarray(edges.convert("RGB")), np.asarray(preprocess(picture, "canny")))

    def refused(unit, loc_end, words):
        body = {"prompt": "x", "steps": 2, "width": SIZE, "height": SIZE,
                "alwayson_scripts": {"controlnet": {"args": [unit]}}}
        answer = client.post("/sdapi/v1/txt2img", json=body)
        assert answer.status_code == 422, answer.text
        detail = answer.json()["detail"][0]
        assert detail["loc"][-len(loc_end):] == loc_end and words in detail["msg"], detail

    refused({"image": b64, "module": "canny", "model": "nope"}, ["args", 0, "model"], "this server has no ControlNet 'nope'")
    refused({"image": b64, "module": "depth_midas", "model": title}, ["args", 0, "module"], "needs a detector model")
    refused({"module": "canny", "model": title}, ["args", 0, "image"], "send the control picture as image")
    refused({"image": b64, "module": "canny", "model": title, "weight": 5}, ["args", 0], "control strength must be from 0 to 2")
    disabled = {"prompt": "x", "steps": 2, "width": SIZE, "height": SIZE,
                "alwayson_scripts": {"controlnet": {"args": [{"enabled": False, "model": "nope"}]}}}
    assert client.post("/sdapi/v1/txt2img", json=disabled).status_code == 200  # a disabled unit is not read
