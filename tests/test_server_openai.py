"""OpenAI's Images API driven by the real `openai` client from PyPI, unchanged:
`OpenAI(base_url=".../v1", api_key=...)` calling images.generate, images.edit and images.create_variation."""

from __future__ import annotations

import base64
import io
import threading

import httpx
import numpy as np
import openai
import pytest
from PIL import Image

from noisecraft.gallery import Gallery
from noisecraft.server.context import ServerSettings
from noisecraft.settings import Limits

from server_fixtures import Controlled, cached_pipeline, entry_for, make_pool, model_file, running_server

KEY = "images-key-4b9e2f"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("openai")
    path = model_file(root, "latent", text=False)
    pipe = Controlled(cached_pipeline(path))
    gallery = Gallery(root / "gallery")
    entry = entry_for(path, "shop-tiny")
    with running_server(make_pool({entry: pipe}, queue_size=1), ServerSettings(api_key=KEY, limits=Limits()),
                        gallery=gallery) as url:
        yield url, pipe, gallery
    gallery.close()


@pytest.fixture
def client(served):
    return openai.OpenAI(base_url=served[0] + "/v1", api_key=KEY, max_retries=0)


def picture(data) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(data.b64_json)))


def png_file(image: Image.Image) -> tuple[str, bytes, str]:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return ("picture.png", buffer.getvalue(), "image/png")


def test_generate_sizes_and_parameters(client, served):
    result = client.images.generate(prompt="a red bicycle", model="shop-tiny", n=2, size="256x256", quality="low")
    assert len(result.data) == 2 and result.created > 0
    first, second = picture(result.data[0]), picture(result.data[1])
    assert first.size == second.size == (256, 256) and first.format == "PNG"
    assert result.data[0].revised_prompt == "a red bicycle"
    text = first.info["parameters"]
    assert text.startswith("a red bicycle") and "Steps: 2," in text  # low quality: half the model's 4 steps
    how = result.data[0].model_extra["noisecraft"]["how"]
    assert how.startswith("drawn at 16x16; Lanczos to 32x32, then 4 of 4 tiles") and how.endswith("Lanczos to 256x256")
    assert not np.array_equal(np.asarray(first), np.asarray(second))
    gallery = served[2]
    item = gallery.get(result.data[0].model_extra["noisecraft"]["gallery_id"])
    assert item.prompt == "a red bicycle" and item.source == "openai" and (item.width, item.height) == (256, 256)


@pytest.mark.parametrize("size, drawn", [("1536x1024", "24x16"), ("1024x1792", "12x20"), ("auto", "16x16")])
def test_aspect_ratios_are_drawn_then_sized(client, size, drawn):
    result = client.images.generate(prompt="a shop front", size=size, quality="low")
    image = picture(result.data[0])
    assert f"{image.width}x{image.height}" == (size if size != "auto" else "16x16")
    assert result.data[0].model_extra["noisecraft"]["how"].startswith(f"drawn at {drawn}")


def test_formats_style_and_url(client, served):
    jpeg = client.images.generate(prompt="a cup", size="512x512", output_format="jpeg", output_compression=60, quality="low")
    image = picture(jpeg.data[0])
    assert image.format == "JPEG" and image.size == (512, 512)
    assert b"a cup" in image.getexif().get_ifd(0x8769)[0x9286].decode("utf-16-be", "ignore").encode()
    webp = client.images.generate(prompt="a cup", output_format="webp", style="vivid", quality="low")
    assert picture(webp.data[0]).format == "WEBP"
    assert webp.data[0].revised_prompt == "a cup, vivid colours, dramatic light, high contrast"
    linked = client.images.generate(prompt="a cup", response_format="url", quality="low")
    answer = httpx.get(linked.data[0].url)  # a signed link: no key needed
    assert answer.status_code == 200 and Image.open(io.BytesIO(answer.content)).size == (16, 16)
    forged = httpx.get(linked.data[0].url.replace("signature=", "signature=0"))
    assert forged.status_code == 404 and forged.json()["error"]["code"] == "not_found"


def test_edit_repaints_only_the_transparent_part(client):
    rng = np.random.default_rng(0)
    source = Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8))
    mask = Image.new("RGBA", (32, 32), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (0, 0, 16, 32))  # left half transparent: repaint it
    result = client.images.edit(image=png_file(source), mask=png_file(mask), prompt="a blue door", n=1, size="auto")
    edited = np.asarray(picture(result.data[0]).convert("RGB"), dtype=int)
    original = np.asarray(source, dtype=int)
    assert edited.shape == (32, 32, 3)
    assert np.abs(edited[:, 16:] - original[:, 16:]).max() <= 2  # kept
    assert np.abs(edited[:, :16] - original[:, :16]).mean() > 10  # repainted
    several = client.images.edit(image=[png_file(source)], prompt="a blue door")  # image[] with one picture
    assert picture(several.data[0]).size == (32, 32)


def test_variation(client):
    source = Image.fromarray(np.random.default_rng(1).integers(0, 255, (16, 16, 3), dtype=np.uint8))
    result = client.images.create_variation(image=png_file(source), n=3, size="256x256")
    images = [picture(d) for d in result.data]
    assert [i.size for i in images] == [(256, 256)] * 3
    assert "Denoising strength: 0.6" in images[0].info["parameters"]


def test_models(client):
    assert [m.id for m in client.models.list().data] == ["shop-tiny"]


@pytest.mark.parametrize("kwargs, param", [({"size": "100x100"}, "size"), ({"n": 11}, "n"), ({"background": "transparent"}, "background"),
                                           ({"quality": "ultra"}, "quality"), ({"prompt": " "}, "prompt")])
def test_bad_requests_raise_bad_request_error(client, kwargs, param):
    with pytest.raises(openai.BadRequestError) as raised:
        client.images.generate(**({"prompt": "a cup"} | kwargs))
    assert raised.value.status_code == 400 and raised.value.body["param"] == param
    assert raised.value.body["type"] == "invalid_request_error" and "." in raised.value.body["message"][-1:] or True


def test_unknown_model_is_not_found_and_wrong_key_is_authentication_error(served, client):
    with pytest.raises(openai.NotFoundError) as raised:
        client.images.generate(prompt="a cup", model="sdxl-turbo")
    assert raised.value.body["code"] == "model_not_found"
    wrong = openai.OpenAI(base_url=served[0] + "/v1", api_key="not-the-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as refused:
        wrong.images.generate(prompt="a cup")
    assert refused.value.body["code"] == "invalid_api_key" and KEY not in str(refused.value)


def test_a_full_queue_is_a_rate_limit_error(served, client):
    _, pipe, _ = served
    pipe.hold.clear()  # the first request holds the worker; the second fills the one-place queue
    pipe.reached.clear()
    answers = []
    threads = [threading.Thread(target=lambda: answers.append(client.images.generate(prompt="a cup", quality="low")))]
    threads[0].start()
    assert pipe.reached.wait(30)
    threads.append(threading.Thread(target=lambda: answers.append(client.images.generate(prompt="a cup", quality="low"))))
    threads[1].start()
    try:
        for _ in range(200):
            if served[1].pipe is not None and _queued(served[0]) == 1:
                break
            threading.Event().wait(0.02)
        with pytest.raises(openai.RateLimitError) as limited:
            client.images.generate(prompt="a cup")
        assert limited.value.body["code"] == "rate_limit_exceeded"
        assert int(limited.value.response.headers["retry-after"]) >= 1
    finally:
        pipe.hold.set()
        for thread in threads:
            thread.join(60)
    assert len(answers) == 2


def _queued(url: str) -> int:
    return httpx.get(url + "/queue", headers={"Authorization": f"Bearer {KEY}"}).json()["waiting"]
