"""Fine-tuning over HTTP (issue 19): photos in, samples to watch, the LoRA file out, as a queued job that
gives way to picture requests (a picture sent during a training is answered while the training runs)."""

from __future__ import annotations

import io
import time

import httpx
import pytest
from PIL import Image

from helpers import tiny_model_file
from server_fixtures import cached_pipeline, entry_for, make_pool, running_server

COLOURS = [(220, 30, 30), (30, 200, 40), (30, 60, 220), (230, 210, 20), (200, 40, 200)]


def photo(colour, fmt: str = "PNG") -> bytes:
    picture = Image.new("RGB", (40, 32), (250, 250, 250))
    picture.paste(colour, (8, 8, 32, 24))
    buffer = io.BytesIO()
    picture.save(buffer, fmt)
    return buffer.getvalue()


def files(count: int = 5):
    return [("photos", (f"p{k}.png", photo(COLOURS[k % 5]), "image/png")) for k in range(count)]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("finetune-server")
    path = tiny_model_file(root / "learnable.safetensors", kind="latent", text=True, learnable=True)
    with running_server(make_pool({entry_for(path, "tiny"): cached_pipeline(path)})) as url:
        yield httpx.Client(base_url=url, timeout=120)


def wait_for(client, training_id: str, done=("done", "failed", "cancelled"), timeout: float = 180) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = client.get(f"/finetune/{training_id}").json()
        if body["status"] in done:
            return body
        time.sleep(0.2)
    raise AssertionError(f"training {training_id} still {body['status']} at step {body['step']}")


def test_a_training_over_http_shows_samples_and_gives_the_lora_file(server):
    started = server.post("/finetune", files=files(), data={"name": "Acme Box", "class_word": "box", "steps": "6",
                                                            "every": "3", "rank": "4", "lr": "0.01"})
    assert started.status_code == 202, started.text
    body = started.json()
    assert body["status"] in ("waiting", "running") and body["photos"] == 5 and body["steps"] == 6
    done = wait_for(server, body["id"])
    assert done["status"] == "done", done
    assert [c["step"] for c in done["held_out"]] == [3, 6] and done["best_step"] in (3, 6) and done["samples"] == 2
    sheet = Image.open(io.BytesIO(server.get(done["samples_url"]).content))
    assert sheet.format == "PNG" and sheet.height > 2 * 100  # two rows of samples
    assert Image.open(io.BytesIO(server.get(done["before_after_url"]).content)).format == "PNG"
    lora = server.get(done["lora_url"])
    assert lora.status_code == 200 and 'filename="acme-box.safetensors"' in lora.headers["content-disposition"]
    from safetensors.torch import load

    tensors = load(lora.content)
    assert tensors and all(k.startswith("lora_unet_") for k in tensors)
    assert any(t.abs().sum() > 0 for k, t in tensors.items() if "lora_up" in k)  # it learned something
    assert [t["id"] for t in server.get("/finetune").json()].count(body["id"]) == 1


def test_pictures_do_not_wait_for_a_training(server):
    body = server.post("/finetune", files=files(), data={"name": "long box", "steps": "3000", "every": "3000", "rank": "4"}).json()
    deadline = time.monotonic() + 60
    while server.get(f"/finetune/{body['id']}").json()["step"] < 3:
        assert time.monotonic() < deadline, "the training never started"
        time.sleep(0.1)
    began = time.monotonic()
    picture = server.post("/sdapi/v1/txt2img", json={"prompt": "a red box", "steps": 4, "seed": 1})
    took = time.monotonic() - began
    assert picture.status_code == 200 and len(picture.json()["images"]) == 1
    during = server.get(f"/finetune/{body['id']}").json()
    assert during["status"] == "running" and during["step"] < 3000, during  # answered while the training runs
    assert took < 30, took
    cancelled = server.post(f"/finetune/{body['id']}/cancel").json()
    assert cancelled["id"] == body["id"]
    assert wait_for(server, body["id"], timeout=30)["status"] == "cancelled"


def test_bad_uploads_are_one_sentence(server):
    def refused(files_, data, loc):
        answer = server.post("/finetune", files=files_, data=data)
        assert answer.status_code == 422, answer.text
        detail = answer.json()["detail"][0]
        assert detail["loc"][-len(loc):] == loc and detail["msg"].count(". ") == 0, detail
        return detail["msg"]

    assert "send the photos as files named photos" in refused(None, {"name": "x"}, ["photos"])
    bmp = [("photos", ("a.bmp", photo(COLOURS[0], "BMP"), "image/bmp"))]
    assert "is not a picture noisecraft can read" in refused(files(2) + bmp, {"name": "x"}, ["photos", 2])
    assert "name is what the photos show" in refused(files(1), {}, ["name"])
    assert "steps must be from 1 to 5000, not 0" in refused(files(1), {"name": "x", "steps": "0"}, ["steps"])
    assert "prior preservation needs class_word" in refused(files(1), {"name": "x", "prior": "4"}, ["class_word"])
    assert server.get("/finetune/ft-nothing").status_code == 404
    assert server.get("/finetune/ft-nothing/lora.safetensors").status_code == 404
