"""Presets: one file for the page, A1111's styles and OpenAI's style; A1111 styles.csv and Fooocus JSON read too."""

from __future__ import annotations

import json

import httpx
import pytest

from noisecraft.errors import UserError
from noisecraft.presets import builtin, combined, find, load

from server_fixtures import cached_pipeline, entry_for, make_pool, model_file, running_server


def test_builtin_presets_apply_their_template():
    presets = builtin()
    assert [p.id for p in presets if p.chip] == ["product", "menu", "social", "signage"]
    prompt, negative = find(presets, "Menu item").apply("a bowl of ramen", "cold")
    assert prompt.startswith("a bowl of ramen, appetizing food photography") and negative.startswith("cold, blurry")
    assert find(presets, "product").apply("")[0].startswith("professional product photography")  # no stray comma
    with pytest.raises(UserError, match="unknown preset 'Gothic'; choose one of: Product shot, Menu item"):
        find(presets, "Gothic")


def test_a1111_styles_csv_and_fooocus_json(tmp_path):
    styles = tmp_path / "styles.csv"
    styles.write_text('name,prompt,negative_prompt\n"Cinematic","cinematic still of {prompt}, film grain","cartoon"\n'
                      'Watercolour,"watercolour painting",\n', encoding="utf-8")
    cinematic, watercolour = load(styles)
    assert cinematic.apply("a harbour") == ("cinematic still of a harbour, film grain", "cartoon")
    assert watercolour.apply("a harbour") == ("a harbour, watercolour painting", "")  # no placeholder: words after
    fooocus = tmp_path / "sdxl_styles.json"
    fooocus.write_text(json.dumps([{"name": "Fooocus Sharp", "prompt": "{prompt}, sharp focus", "negative_prompt": "blur"}]))
    assert [p.id for p in combined([styles, fooocus])][-3:] == ["cinematic", "watercolour", "fooocus-sharp"]
    for name, text, words in [("bad.json", "{", "not valid JSON"), ("bad.csv", "a,b\n1,2\n", "starts with the header"),
                              ("bad.toml", "[[preset]]\nprompt = 3\n", "needs a name"), ("styles.txt", "", r"\.toml \(noisecraft\)")]:
        (tmp_path / name).write_text(text)
        with pytest.raises(UserError, match=words):
            load(tmp_path / name)


def test_server_lists_and_applies_presets(tmp_path):
    path = model_file(tmp_path, "pixel", text=False)
    with running_server(make_pool({entry_for(path): cached_pipeline(path)})) as url:
        assert [p["label"] for p in httpx.get(url + "/presets").json()][:2] == ["Product shot", "Menu item"]
        styles = httpx.get(url + "/sdapi/v1/prompt-styles").json()
        assert styles[1]["name"] == "Menu item" and styles[1]["prompt"].startswith("{prompt}, appetizing")
        answer = httpx.post(url + "/sdapi/v1/txt2img", json={"prompt": "ramen", "styles": ["Menu item"], "width": 16,
                                                             "height": 16, "steps": 2, "seed": 1}, timeout=60).json()
        info = json.loads(answer["info"])
        assert info["prompt"].startswith("ramen, appetizing food photography") and info["negative_prompt"].startswith("blurry")
        refused = httpx.post(url + "/sdapi/v1/txt2img", json={"prompt": "ramen", "styles": ["Gothic"]})
        assert refused.status_code == 422 and refused.json()["detail"][0]["loc"] == ["body", "styles"]


def test_cli_lists_and_applies_presets(tmp_path):
    import subprocess
    import sys

    from PIL import Image

    styles = tmp_path / "styles.csv"
    styles.write_text('name,prompt,negative_prompt\nChalkboard,"{prompt} drawn in chalk on a blackboard",photo\n')
    listed = subprocess.run([sys.executable, "-m", "noisecraft.cli", "presets", "--presets", styles],
                            capture_output=True, text=True)
    assert listed.returncode == 0 and listed.stdout.startswith("Product shot") and "Chalkboard" in listed.stdout
    out = tmp_path / "special.png"
    made = subprocess.run([sys.executable, "-m", "noisecraft.cli", "generate", "soup of the day", "--presets", styles,
                           "--preset", "chalkboard", "--steps", "2", "--seed", "1", "--out", out, "--device", "cpu"],
                          capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    assert Image.open(out).info["parameters"].startswith("soup of the day drawn in chalk on a blackboard\nNegative prompt: photo")
    refused = subprocess.run([sys.executable, "-m", "noisecraft.cli", "generate", "soup", "--preset", "Gothic"],
                             capture_output=True, text=True)
    assert refused.returncode == 2 and "unknown preset 'Gothic'; choose one of: Product shot" in refused.stderr
