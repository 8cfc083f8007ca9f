"""The studio's and the gallery's HTTP API (the page's workflow without the page), and the gallery
flags of `noisecraft serve` and `noisecraft generate`."""

from __future__ import annotations

import base64
import io
import subprocess
import sys

import httpx
import numpy as np
import pytest
from PIL import Image

from noisecraft.gallery import Gallery
from noisecraft.studio import parse, size_for, spread
from noisecraft.errors import UserError

from helpers import serving
from server_fixtures import cached_pipeline, entry_for, make_pool, model_file, running_server


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    root = tmp_path_factory.mktemp("studio")
    path = model_file(root, "latent", text=False)
    gallery = Gallery(root / "gallery")
    with running_server(make_pool({entry_for(path, "tiny"): cached_pipeline(path)}), gallery=gallery) as url:
        yield httpx.Client(base_url=url, timeout=120), gallery
    gallery.close()


def fetch(client, item) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(client.get(item["image_url"]).content)).convert("RGB"), dtype=float)


def test_flags_parse_like_midjourney():
    prompt, flags = parse("a palm tree at dusk --ar 16:9 --no text, people --seed 7 --chaos 30 --q .5")
    assert prompt == "a palm tree at dusk"
    assert (flags.aspect, flags.no, flags.seed, flags.chaos, flags.quality) == ("16:9", "text, people", 7, 30, 0.75)
    assert size_for("16:9", 512, 8) == (680, 384) and size_for("2:3", 1024, 8) == (832, 1248)
    assert spread(4.0, 0) == [] and spread(4.0, 100)[0] < 4.0 < spread(4.0, 100)[-1]
    for bad, words in [("x --ar 7:3", "--ar takes one of"), ("x --chaos 200", "--chaos takes a whole number from 0 to 100"),
                       ("x --stylize 50", "unknown parameter --stylize"), ("x --q 3", "--q takes one of")]:
        with pytest.raises(UserError, match=words):
            parse(bad)


def test_grid_then_upscale_vary_zoom_pan_with_lineage(studio):
    client, gallery = studio
    grid = client.post("/studio/imagine", json={"prompt": "a shop --seed 40 --ar 3:2"}).json()
    assert [(i["seed"], i["operation"]) for i in grid["items"]] == [(40, "imagine"), (41, "imagine"), (42, "imagine"), (43, "imagine")]
    assert {(i["width"], i["height"]) for i in grid["items"]} == {(24, 16)}
    second = grid["items"][1]
    up = client.post(f"/studio/{second['id']}/upscale", json={"mode": "creative"}).json()
    assert up["items"][0]["parent_id"] == second["id"] and up["items"][0]["operation"] == "upscale (creative)"
    assert (up["items"][0]["width"], up["items"][0]["height"]) == (48, 32) and "redrawn at strength 0.45" in up["how"]
    big = up["items"][0]
    parent = fetch(client, big)
    distances = {}
    for mode in ("subtle", "strong"):
        varied = client.post(f"/studio/{big['id']}/vary", json={"mode": mode, "seed": 5}).json()["items"]
        assert len(varied) == 4 and varied[0]["strength"] == {"subtle": 0.5, "strong": 0.85}[mode]
        distances[mode] = np.mean([np.abs(fetch(client, v) - parent).mean() for v in varied])
    assert distances["subtle"] < distances["strong"]
    zoomed = client.post(f"/studio/{big['id']}/zoom", json={"factor": 2}).json()["items"][0]
    assert (zoomed["width"], zoomed["height"]) == (96, 64)
    assert np.abs(fetch(client, zoomed)[16:48, 24:72] - parent).max() <= 2  # the parent, untouched, in the middle
    panned = client.post(f"/studio/{big['id']}/pan", json={"direction": "left", "prompt": "a bakery"}).json()["items"][0]
    assert (panned["width"], panned["height"]) == (72, 32) and panned["prompt"] == "a bakery"  # remix
    assert np.abs(fetch(client, panned)[:, 24:] - parent).max() <= 2
    lineage = client.get(f"/gallery/{panned['id']}").json()["lineage"]
    assert [(x["id"], x["operation"]) for x in lineage] == [(panned["id"], "pan left"), (big["id"], "upscale (creative)"),
                                                            (second["id"], "imagine")]


def test_vary_region_keeps_the_outside(studio):
    client, _ = studio
    item = client.post("/studio/imagine", json={"prompt": "a sign --seed 3"}).json()["items"][0]
    mask = Image.new("L", (16, 16), 0)
    mask.paste(255, (0, 0, 8, 16))
    buffer = io.BytesIO()
    mask.save(buffer, "PNG")
    varied = client.post(f"/studio/{item['id']}/region", json={"mask": base64.b64encode(buffer.getvalue()).decode()}).json()
    parent, child = fetch(client, item), fetch(client, varied["items"][0])
    assert np.abs(child[:, 8:] - parent[:, 8:]).max() <= 2 and np.abs(child[:, :8] - parent[:, :8]).mean() > 5
    empty = io.BytesIO()
    Image.new("L", (16, 16), 0).save(empty, "PNG")
    refused = client.post(f"/studio/{item['id']}/region", json={"mask": base64.b64encode(empty.getvalue()).decode()})
    assert refused.status_code == 422 and "the mask is empty" in refused.json()["detail"][0]["msg"]


def test_studio_refusals_are_one_sentence(studio):
    client, _ = studio
    bad = client.post("/studio/imagine", json={"prompt": "x --ar 7:3"})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "prompt"]
    assert client.post("/studio/999999/vary", json={"mode": "subtle"}).status_code == 404
    item = client.post("/studio/imagine", json={"prompt": "x --seed 1"}).json()["items"][0]
    for operation, body, words in [("vary", {"mode": "wild"}, "vary takes subtle or strong"),
                                   ("zoom", {"factor": 3}, "zoom out takes 1.5 or 2.0"),
                                   ("pan", {"direction": "north"}, "pan takes left, right, up or down"),
                                   ("twist", {}, "unknown studio operation 'twist'")]:
        answer = client.post(f"/studio/{item['id']}/{operation}", json=body)
        assert answer.status_code == 422 and words in answer.json()["detail"][0]["msg"], answer.text


def test_gallery_search_pages_favourite_delete(studio):
    client, gallery = studio
    for word in ("harbour", "bakery", "harbour"):
        client.post("/studio/imagine", json={"prompt": f"a {word} view --seed 9"})
    found = client.get("/gallery", params={"query": "harb", "limit": 5}).json()
    assert len(found["items"]) == 5 and all("harbour" in i["prompt"] for i in found["items"])
    rest = client.get("/gallery", params={"query": "harb", "limit": 5, "before": found["next"]}).json()
    assert len(rest["items"]) == 3 and rest["next"] is None
    ids = [i["id"] for i in found["items"] + rest["items"]]
    assert ids == sorted(ids, reverse=True)  # newest first
    target = found["items"][0]
    assert client.post(f"/gallery/{target['id']}/favourite", json={"favourite": True}).json()["favourite"] is True
    assert [i["id"] for i in client.get("/gallery", params={"favourite": "true"}).json()["items"]] == [target["id"]]
    path = gallery.path(gallery.get(target["id"]))
    shared = sum(1 for i in ids if gallery.get(i).sha256 == target["sha256"])
    assert client.delete(f"/gallery/{target['id']}").json() == {"deleted": target["id"]}
    assert client.get(f"/gallery/{target['id']}").status_code == 404
    assert path.exists() == (shared > 1)  # the file goes with its last row


def test_a1111_pictures_are_in_the_gallery(studio):
    client, _ = studio
    client.post("/sdapi/v1/txt2img", json={"prompt": "a menu board", "width": 16, "height": 16, "steps": 2, "seed": 4})
    item = client.get("/gallery", params={"query": "menu board"}).json()["items"][0]
    assert (item["source"], item["seed"], item["operation"]) == ("a1111", 4, "generate")


def test_serve_and_generate_keep_pictures_in_the_gallery_folder(tmp_path):
    folder = tmp_path / "library"
    with serving("--model", "builtin", "--device", "cpu", "--gallery", folder) as (url, process):
        made = httpx.post(url + "/sdapi/v1/txt2img", json={"prompt": "a lighthouse", "steps": 2, "seed": 1}, timeout=120)
        assert made.status_code == 200
    with serving("--model", "builtin", "--device", "cpu", "--gallery", folder) as (url, process):  # after a restart
        items = httpx.get(url + "/gallery", params={"query": "lighthouse"}).json()["items"]
        assert [i["seed"] for i in items] == [1]
    out = subprocess.run([sys.executable, "-m", "noisecraft.cli", "generate", "a lighthouse", "--steps", "2", "--seed", "2",
                          "--out", tmp_path, "--gallery", folder, "--device", "cpu"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    with Gallery(folder) as g:
        assert sorted(i.seed for i in g.search("lighthouse")[0]) == [1, 2] and g.search("lighthouse")[0][0].source == "cli"
    refused = subprocess.run([sys.executable, "-m", "noisecraft.cli", "serve", "--no-gallery", "--gallery", folder],
                             capture_output=True, text=True)
    assert refused.returncode == 2 and "--no-gallery keeps no pictures" in refused.stderr


def test_upscale_command(tmp_path):
    source = tmp_path / "tree.png"
    subprocess.run([sys.executable, "-m", "noisecraft.cli", "generate", "a palm tree", "--steps", "2", "--seed", "3",
                    "--out", source, "--device", "cpu"], check=True, capture_output=True)
    out = subprocess.run([sys.executable, "-m", "noisecraft.cli", "upscale", source, "--seed", "1", "--steps", "4",
                          "--out", tmp_path, "--device", "cpu"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    picture = Image.open(out.stdout.strip())
    assert picture.size == (128, 128) and picture.info["parameters"].startswith("a palm tree")
    assert "redrawn at strength 0.25" in out.stderr


def test_task_ids_model_titles_and_no_gallery(studio, tmp_path):
    client, _ = studio
    made = client.post("/studio/imagine", json={"prompt": "a kiosk --seed 2", "task_id": "grid-kiosk-1"}).json()
    assert client.get("/queue", params={"task_id": "grid-kiosk-1"}).json()["task"]["status"] == "done"
    title = client.get("/sdapi/v1/sd-models").json()[0]["title"]
    assert [i["id"] for i in client.get("/gallery", params={"model": title, "query": "kiosk"}).json()["items"]] == \
        sorted((i["id"] for i in made["items"]), reverse=True)
    path = model_file(tmp_path, "latent", text=False)
    with running_server(make_pool({entry_for(path): cached_pipeline(path)})) as url:  # no gallery at all
        refused = httpx.post(url + "/studio/imagine", json={"prompt": "a kiosk"})
    assert refused.status_code == 422 and "keeps no gallery" in refused.json()["detail"][0]["msg"]
