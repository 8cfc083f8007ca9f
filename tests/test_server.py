"""`noisecraft serve` as clients meet it: HTTP statuses, 422s naming the field, PNGs with their
parameters, seeds, the queue under pressure (429, position, interrupt, disconnects) and faults.

Each test runs a real uvicorn server in a background thread over tiny random-weight models.
"""

from __future__ import annotations

import base64
import io
import json
import threading
import time

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from noisecraft.pngmeta import parse_parameters, save_png
from noisecraft import devices
from noisecraft.server.context import ServerSettings
from noisecraft.server.errors import field_of
from noisecraft.settings import Limits, Request

from server_fixtures import Controlled, cached_pipeline, entry_for, make_pool, model_file, running_server


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("server-models")


@pytest.fixture(scope="module")
def text_model(root):
    return model_file(root, "pixel", text=True)


@pytest.fixture(scope="module")
def server(text_model):
    """A plain server over the tiny text-conditioned model, shared by the read-mostly tests."""
    pipe = cached_pipeline(text_model)
    with running_server(make_pool({entry_for(text_model): pipe})) as url:
        yield url, pipe


@pytest.fixture(scope="module")
def controlled_server(text_model):
    pipe = Controlled(cached_pipeline(text_model))
    with running_server(make_pool({entry_for(text_model): pipe}, queue_size=1),
                        ServerSettings(limits=Limits(), disconnect_poll_s=0.05)) as url:
        yield url, pipe


@pytest.fixture
def controlled(controlled_server):
    """A server whose pipeline the test can hold at a step and make fail; queue of 1, idle at the start."""
    url, pipe = controlled_server
    pipe.hold.set()
    pipe.reached.clear()
    pipe.calls, pipe.steps_seen = 0, []
    pipe.faults.clear()
    pipe.outside_faults.clear()
    _wait_until(lambda: _idle(url))
    yield url, pipe
    pipe.hold.set()


def _idle(url: str) -> bool:
    queue = httpx.get(url + "/queue").json()
    return queue["running"] == 0 and queue["waiting"] == 0


def png(b64: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    image.load()
    return image


def post(url, path, body, timeout=60.0, **kwargs):
    return httpx.post(url + path, json=body, timeout=timeout, **kwargs)


# -- txt2img ---------------------------------------------------------------------------------------
def test_txt2img_returns_pngs_with_parameters_and_a1111_info(server):
    url, _ = server
    body = {"prompt": "a red square", "negative_prompt": "blurry", "seed": 7, "batch_size": 2, "n_iter": 2,
            "steps": 3, "cfg_scale": 4, "width": 16, "height": 32, "sampler_name": "Euler a",
            # what A1111 clients also send; noisecraft ignores it instead of refusing
            "enable_hr": False, "styles": [], "restore_faces": False, "alwayson_scripts": {}, "some_future_field": 1}
    response = post(url, "/sdapi/v1/txt2img", body)
    assert response.status_code == 200, response.text
    result = response.json()
    info = json.loads(result["info"])
    assert info["seed"] == 7 and info["all_seeds"] == [7, 8, 9, 10]
    assert info["width"] == 16 and info["height"] == 32 and info["steps"] == 3 and info["sampler_name"] == "Euler a"
    assert result["parameters"]["prompt"] == "a red square" and "some_future_field" not in result["parameters"]
    assert len(result["images"]) == 4
    for k, b64 in enumerate(result["images"]):
        image = png(b64)
        assert image.format == "PNG" and image.size == (16, 32)
        params = parse_parameters(image.info["parameters"])
        assert params["Seed"] == str(7 + k) and params["Sampler"] == "Euler a" and params["negative_prompt"] == "blurry"
        assert image.info["parameters"] == info["infotexts"][k]


def test_same_seed_gives_the_bytes_of_a_direct_pipeline_call(server, tmp_path):
    url, pipe = server
    body = {"prompt": "a blue square", "seed": 123, "steps": 4, "cfg_scale": 3, "width": 16, "height": 16,
            "sampler_name": "DPM++ 2M", "scheduler": "Karras", "batch_size": 2}
    images = post(url, "/sdapi/v1/txt2img", body).json()["images"]
    # image 1 of the batch is what a lone call with seed 124 makes
    direct = pipe("a blue square", steps=4, guidance_scale=3, sampler="dpmpp_2m_karras", width=16, height=16, seed=124)[0]
    save_png(direct, tmp_path / "direct.png")
    assert base64.b64decode(images[1]) == (tmp_path / "direct.png").read_bytes()
    assert "Sampler: DPM++ 2M Karras" in png(images[0]).info["parameters"]


def test_random_seed_is_reported(server):
    url, _ = server
    result = post(url, "/sdapi/v1/txt2img", {"prompt": "x", "seed": -1, "steps": 1, "width": 16, "height": 16}).json()
    seed = json.loads(result["info"])["seed"]
    assert isinstance(seed, int) and seed >= 0
    assert f"Seed: {seed}," in png(result["images"][0]).info["parameters"]


def test_model_defaults_fill_missing_fields(server):
    url, pipe = server
    result = post(url, "/sdapi/v1/txt2img", {"prompt": "a green square"}).json()
    info = json.loads(result["info"])
    assert (info["width"], info["height"]) == (pipe.config.image_size,) * 2
    assert info["steps"] == pipe.config.defaults["steps"] and info["cfg_scale"] == pipe.config.defaults["guidance_scale"]


@pytest.mark.parametrize("body, field, words", [
    ({"width": 17}, "width", "multiple of"),
    ({"width": 4096}, "width", "larger than"),
    ({"height": 0}, "height", "positive"),
    ({"steps": 0}, "steps", "from 1 to 150"),
    ({"steps": 151}, "steps", "from 1 to 150"),
    ({"batch_size": 17}, "batch_size", "from 1 to 16"),
    ({"batch_size": 4, "n_iter": 5}, "n_iter", "at most 16"),
    ({"sampler_name": "nope"}, "sampler_name", "unknown sampler"),
    ({"scheduler": "sgm_uniform"}, "scheduler", "unknown scheduler"),
    ({"prompt": "   "}, "prompt", "prompt is empty"),
    ({"seed": "abc"}, "seed", ""),
    ({"cfg_scale": 200}, "cfg_scale", "guidance scale"),
    ({"override_settings": {"sd_model_checkpoint": "/etc/passwd"}}, "sd_model_checkpoint", "unknown model"),
])
def test_invalid_requests_get_422_naming_the_field_before_any_compute(controlled, body, field, words):
    url, pipe = controlled
    response = post(url, "/sdapi/v1/txt2img", {"prompt": "a square", "steps": 2, "width": 16, "height": 16} | body)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"][0]
    assert detail["loc"][-1] == field and words in detail["msg"]
    assert pipe.calls == 0


def test_guidance_nan_is_a_422(controlled):
    url, pipe = controlled
    raw = '{"prompt": "x", "steps": 2, "width": 16, "height": 16, "cfg_scale": NaN}'
    response = httpx.post(url + "/sdapi/v1/txt2img", content=raw, headers={"Content-Type": "application/json"})
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["body", "cfg_scale"]
    assert pipe.calls == 0


@pytest.mark.parametrize("body, field", [
    ({"init_images": ["not base64 at all!"]}, "init_images"),
    ({"init_images": [base64.b64encode(b"plain text, not a picture").decode()]}, "init_images"),
    ({"init_images": []}, "init_images"),
    ({"mask": "%%%"}, "mask"),
])
def test_malformed_base64_images_get_422(controlled, body, field):
    url, pipe = controlled
    good = _png_b64(Image.new("RGB", (16, 16), (200, 30, 30)))
    response = post(url, "/sdapi/v1/img2img", {"prompt": "x", "steps": 2, "init_images": [good]} | body)
    assert response.status_code == 422, response.text
    assert field in response.json()["detail"][0]["loc"]
    assert pipe.calls == 0


def test_field_of_names_the_field_of_every_pipeline_settings_error(server):
    _, pipe = server
    cases = [(dict(prompt=""), "prompt"), (dict(steps=0), "steps"), (dict(guidance_scale=-1), "cfg_scale"),
             (dict(guidance_rescale=2), "guidance_rescale"), (dict(sampler="zzz"), "sampler_name"),
             (dict(width=3), "width"), (dict(height=3), "height"), (dict(num_images=0), "batch_size"),
             (dict(seed=-5), "seed")]
    for kwargs, field in cases:
        with pytest.raises(Exception) as caught:
            pipe.resolve(Request(**({"prompt": "x"} | kwargs)))
        assert field_of(caught.value) == (field,), (kwargs, str(caught.value))


# -- img2img ---------------------------------------------------------------------------------------
def _png_b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_img2img_with_mask_on_a_latent_model(root):
    path = model_file(root, "latent", text=False)
    pipe = cached_pipeline(path)
    init_image = Image.new("RGB", (16, 16), (200, 30, 30))
    mask = Image.new("L", (16, 16), 0)
    mask.paste(255, (4, 4, 12, 12))
    body = {"prompt": "", "seed": 3, "steps": 4, "denoising_strength": 0.5, "width": 16, "height": 16,
            "sampler_name": "Euler", "init_images": ["data:image/png;base64," + _png_b64(init_image)],
            "mask": _png_b64(mask), "inpainting_fill": 1, "mask_blur": 4}
    with running_server(make_pool({entry_for(path): pipe})) as url:
        response = post(url, "/sdapi/v1/img2img", body)
    assert response.status_code == 200, response.text
    result = response.json()
    image = png(result["images"][0])
    assert image.size == (16, 16) and "Denoising strength: 0.5" in image.info["parameters"]
    assert json.loads(result["info"])["denoising_strength"] == 0.5
    assert result["parameters"].get("init_images") is None  # not echoed back unless include_init_images
    direct = pipe("", steps=4, sampler="euler", width=16, height=16, seed=3, init_image=init_image, strength=0.5,
                  mask_image=mask)[0]
    assert np.array_equal(np.asarray(image.convert("RGB")), np.asarray(direct.convert("RGB")))


def test_img2img_on_a_pixel_model_is_a_422_not_a_crash(server):
    url, _ = server
    init = _png_b64(Image.new("RGB", (16, 16), (200, 30, 30)))
    response = post(url, "/sdapi/v1/img2img", {"prompt": "x", "steps": 2, "init_images": [init]})
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["body", "init_images"]


# -- the queue ---------------------------------------------------------------------------------------
def _in_background(fn, *args, **kwargs):
    box = {}
    thread = threading.Thread(target=lambda: box.setdefault("result", fn(*args, **kwargs)), daemon=True)
    thread.start()
    return thread, box


def _wait_until(condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.02)


BODY = {"prompt": "a", "steps": 3, "width": 16, "height": 16, "seed": 1}


def test_full_queue_answers_429_with_retry_after_and_shows_positions(controlled):
    url, pipe = controlled
    pipe.hold.clear()
    first, first_box = _in_background(post, url, "/sdapi/v1/txt2img", BODY | {"force_task_id": "first"})
    assert pipe.reached.wait(10)  # running, held at step 1
    second, second_box = _in_background(post, url, "/sdapi/v1/txt2img", BODY | {"force_task_id": "second"})
    _wait_until(lambda: httpx.get(url + "/queue").json()["waiting"] == 1)
    third = post(url, "/sdapi/v1/txt2img", BODY)
    assert third.status_code == 429
    assert int(third.headers["Retry-After"]) >= 1 and "queue is full" in third.json()["detail"]
    waiting = httpx.get(url + "/queue", params={"task_id": "second"}).json()["task"]
    assert waiting["status"] == "queued" and waiting["position"] == 1
    running = httpx.get(url + "/queue", params={"task_id": "first"}).json()["task"]
    assert running["status"] == "running" and running["step"] == 1
    pipe.hold.set()
    first.join(30), second.join(30)
    assert first_box["result"].status_code == 200 and second_box["result"].status_code == 200
    assert httpx.get(url + "/queue", params={"task_id": "second"}).json()["task"]["status"] == "done"


def test_interrupt_stops_the_running_job_within_one_step_and_the_queue_moves_on(controlled):
    url, pipe = controlled
    pipe.hold.clear()
    long_job, long_box = _in_background(post, url, "/sdapi/v1/txt2img", BODY | {"prompt": "long", "steps": 50, "batch_size": 2, "n_iter": 3})
    assert pipe.reached.wait(10)
    queued, queued_box = _in_background(post, url, "/sdapi/v1/txt2img", BODY | {"prompt": "next"})
    _wait_until(lambda: httpx.get(url + "/queue").json()["waiting"] == 1)
    assert httpx.post(url + "/sdapi/v1/interrupt").json() == {"interrupted": 1}
    pipe.hold.set()
    long_job.join(30), queued.join(30)
    result = long_box["result"]
    assert result.status_code == 200
    info = json.loads(result.json()["info"])
    assert info["interrupted"] is True and result.json()["images"] == []
    # held after step 1 when the interrupt came: step 2 was under way, and nothing after it
    assert [step for prompt, step in pipe.steps_seen if prompt == "long"] == [1, 2]
    assert queued_box["result"].status_code == 200 and len(queued_box["result"].json()["images"]) == 1


def test_cancel_by_task_id_drops_a_waiting_job(controlled):
    url, pipe = controlled
    pipe.hold.clear()
    first, _ = _in_background(post, url, "/sdapi/v1/txt2img", BODY)
    assert pipe.reached.wait(10)
    second, second_box = _in_background(post, url, "/sdapi/v1/txt2img", BODY | {"force_task_id": "mine"})
    _wait_until(lambda: httpx.get(url + "/queue").json()["waiting"] == 1)
    assert httpx.post(url + "/queue/mine/cancel").status_code == 200
    second.join(10)
    assert second_box["result"].status_code == 499
    pipe.hold.set()
    first.join(30)
    assert pipe.calls == 1
    assert httpx.post(url + "/queue/nobody/cancel").status_code == 404


def test_a_client_that_disconnects_has_its_queued_job_dropped(controlled):
    url, pipe = controlled
    pipe.hold.clear()
    first, first_box = _in_background(post, url, "/sdapi/v1/txt2img", BODY)
    assert pipe.reached.wait(10)
    with pytest.raises(httpx.ReadTimeout):  # the client gives up and closes its connection
        post(url, "/sdapi/v1/txt2img", BODY | {"prompt": "gone"}, timeout=0.5)
    _wait_until(lambda: httpx.get(url + "/queue").json()["waiting"] == 0, timeout=5)
    pipe.hold.set()
    first.join(30)
    assert first_box["result"].status_code == 200
    time.sleep(0.2)
    assert pipe.calls == 1 and not any(prompt == "gone" for prompt, _ in pipe.steps_seen)


def test_progress_reports_the_running_job_with_a_preview(controlled):
    url, pipe = controlled
    pipe.hold.clear()
    job, box = _in_background(post, url, "/sdapi/v1/txt2img", BODY | {"steps": 4, "n_iter": 2})
    assert pipe.reached.wait(10)
    _wait_until(lambda: httpx.get(url + "/sdapi/v1/progress").json()["state"]["sampling_steps"] == 4)
    progress = httpx.get(url + "/sdapi/v1/progress").json()
    assert progress["state"]["sampling_step"] == 1 and progress["state"]["job_count"] == 2
    assert 0 < progress["progress"] < 1 and progress["eta_relative"] >= 0
    assert png(progress["current_image"]).size == (16, 16)
    assert httpx.get(url + "/sdapi/v1/progress", params={"skip_current_image": True}).json()["current_image"] is None
    pipe.hold.set()
    job.join(30)
    assert box["result"].status_code == 200
    idle = httpx.get(url + "/sdapi/v1/progress").json()
    assert idle["progress"] == 0 and idle["state"]["job_count"] == 0


# -- faults ----------------------------------------------------------------------------------------
def test_an_exception_in_one_job_is_a_500_and_the_worker_serves_the_next(controlled):
    url, pipe = controlled
    pipe.faults["boom"] = ValueError("a bug in a layer")
    response = post(url, "/sdapi/v1/txt2img", BODY | {"prompt": "boom"})
    assert response.status_code == 500
    assert "internal error" in response.json()["detail"] and "Traceback" not in response.text
    again = post(url, "/sdapi/v1/txt2img", BODY | {"prompt": "fine"})
    assert again.status_code == 200 and len(again.json()["images"]) == 1


def test_out_of_memory_is_a_507_memory_is_freed_and_the_worker_serves_the_next(controlled, monkeypatch):
    url, pipe = controlled
    freed = []
    real_free = devices.free_memory
    monkeypatch.setattr(devices, "free_memory", lambda device: (freed.append(device), real_free(device)))
    pipe.faults["huge"] = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
    response = post(url, "/sdapi/v1/txt2img", BODY | {"prompt": "huge", "batch_size": 2})
    assert response.status_code == 507, response.text
    assert "out of memory" in response.json()["detail"] and "lower the size" in response.json()["detail"]
    assert freed == ["cpu"]
    assert post(url, "/sdapi/v1/txt2img", BODY | {"prompt": "small"}).status_code == 200


def test_out_of_memory_raised_outside_the_pipeline_is_also_507(controlled):
    url, pipe = controlled
    pipe.outside_faults["oom"] = torch.OutOfMemoryError("CUDA out of memory")
    response = post(url, "/sdapi/v1/txt2img", BODY | {"prompt": "oom"})
    assert response.status_code == 507 and "out of memory making 1 image(s) of 16x16" in response.json()["detail"]
    assert post(url, "/sdapi/v1/txt2img", BODY | {"prompt": "ok"}).status_code == 200


# -- models, samplers, options ----------------------------------------------------------------------
def test_samplers_models_and_model_switch(root):
    a_path, b_path = model_file(root, "pixel", False, seed=0), model_file(root, "pixel", False, seed=1)
    a, b = entry_for(a_path, "model-a"), entry_for(b_path, "model-b")
    pool = make_pool({a: cached_pipeline(a_path), b: cached_pipeline(b_path)})
    with running_server(pool) as url:
        samplers = httpx.get(url + "/sdapi/v1/samplers").json()
        names = [s["name"] for s in samplers]
        assert "Euler a" in names and "DPM++ 2M Karras" in names and ["dpmpp_2m_karras"] in [s["aliases"] for s in samplers]
        models = httpx.get(url + "/sdapi/v1/sd-models").json()
        assert [m["title"] for m in models] == [a.title, b.title]
        assert all("/" not in m["filename"] for m in models)  # no server folders shown
        assert httpx.get(url + "/sdapi/v1/options").json()["sd_model_checkpoint"] == a.title

        def hash_of_a_picture(extra=None):
            body = BODY | ({"override_settings": extra} if extra else {})
            return parse_parameters(png(post(url, "/sdapi/v1/txt2img", body).json()["images"][0]).info["parameters"])["Model hash"]

        assert hash_of_a_picture() == a.hash
        assert hash_of_a_picture({"sd_model_checkpoint": "model-b"}) == b.hash  # one request only
        assert httpx.get(url + "/sdapi/v1/options").json()["sd_model_checkpoint"] == a.title
        assert httpx.post(url + "/sdapi/v1/options", json={"sd_model_checkpoint": b.title, "other": 1}).status_code == 200
        assert httpx.get(url + "/sdapi/v1/options").json()["sd_model_checkpoint"] == b.title
        assert hash_of_a_picture() == b.hash
        bad = httpx.post(url + "/sdapi/v1/options", json={"sd_model_checkpoint": "../../etc/passwd"})
        assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "sd_model_checkpoint"]


def test_png_info_reads_parameters_back(server):
    url, _ = server
    image = post(url, "/sdapi/v1/txt2img", BODY | {"prompt": "a tree", "seed": 9}).json()["images"][0]
    info = httpx.post(url + "/sdapi/v1/png-info", json={"image": image}).json()
    assert info["parameters"]["Seed"] == "9" and info["info"].startswith("a tree")


def test_save_images_writes_nothing(server, tmp_path, monkeypatch):
    url, _ = server
    monkeypatch.chdir(tmp_path)
    response = post(url, "/sdapi/v1/txt2img", BODY | {"save_images": True, "send_images": False,
                                                       "outdir_txt2img_samples": str(tmp_path / "out")})
    assert response.status_code == 200 and response.json()["images"] == []
    assert list(tmp_path.iterdir()) == []
