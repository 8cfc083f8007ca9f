"""One home for settings: `Request` -> `Pipeline.resolve` -> `Settings`, checked once per request,
and a model file read once per load."""

from __future__ import annotations

import sys

import httpx
import pytest
import torch

import noisecraft
from noisecraft.cli import main
from noisecraft.errors import UserError
from noisecraft.pipeline import Pipeline
from noisecraft.settings import Limits, Request, Settings

from helpers import tiny_model_file
from server_fixtures import cached_pipeline, entry_for, make_pool, running_server
from test_sd_pipeline import build_sd_model


def count_calls(monkeypatch, module, name: str) -> list:
    """Count every call of `module.name` (or of a class's method), wherever in noisecraft it was imported by name."""
    original, calls = getattr(module, name), []

    def counted(*args, **kwargs):
        calls.append(args)
        return original(*args, **kwargs)

    if isinstance(module, type):
        monkeypatch.setattr(module, name, counted)
        return calls
    for loaded in list(sys.modules.values()):
        if getattr(loaded, "__name__", "").startswith("noisecraft") and getattr(loaded, name, None) is original:
            monkeypatch.setattr(loaded, name, counted)
    return calls


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return tiny_model_file(tmp_path_factory.mktemp("m") / "tiny.safetensors")


def counters(monkeypatch):
    import noisecraft.samplers
    import noisecraft.settings

    return {"Pipeline.resolve": count_calls(monkeypatch, Pipeline, "resolve"),
            "settings.resolve": count_calls(monkeypatch, noisecraft.settings, "resolve"),
            "resolve_sampler": count_calls(monkeypatch, noisecraft.samplers, "resolve_sampler")}


def test_one_resolve_per_cli_generate(model, tmp_path, monkeypatch, capsys):
    calls = counters(monkeypatch)
    assert main(["generate", "a palm tree", "--model", str(model), "--steps", "2", "--num-images", "3", "--batch-size", "2",
                 "--sampler", "Euler a", "--out", str(tmp_path), "--device", "cpu"]) == 0
    assert len(list(tmp_path.glob("*.png"))) == 3
    assert {name: len(c) for name, c in calls.items()} == {"Pipeline.resolve": 1, "settings.resolve": 1, "resolve_sampler": 1}


def test_one_resolve_per_txt2img_request(model, monkeypatch):
    pipe = cached_pipeline(model)
    with running_server(make_pool({entry_for(model): pipe})) as url:
        calls = counters(monkeypatch)
        body = {"prompt": "a red square", "steps": 2, "batch_size": 2, "n_iter": 2, "width": 16, "height": 16,
                "sampler_name": "DPM++ 2M", "scheduler": "karras"}
        response = httpx.post(url + "/sdapi/v1/txt2img", json=body, timeout=60)
        assert response.status_code == 200 and len(response.json()["images"]) == 4
        assert "Sampler: DPM++ 2M Karras" in response.json()["info"]
    assert {name: len(c) for name, c in calls.items()} == {"Pipeline.resolve": 1, "settings.resolve": 1, "resolve_sampler": 1}


@pytest.mark.parametrize("kind", ["noisecraft", "sd"])
def test_a_model_file_is_sniffed_and_its_header_read_once_per_load(tmp_path, monkeypatch, kind):
    from noisecraft.checkpoints import io

    if kind == "noisecraft":
        file = tiny_model_file(tmp_path / "tiny.safetensors", text=False)
    else:
        file, _ = build_sd_model(tmp_path, "sd1")
    sniffs, headers = count_calls(monkeypatch, io, "sniff"), count_calls(monkeypatch, io, "read_safetensors_header")
    Pipeline.from_pretrained(file, device="cpu")
    assert [str(a[0]) for a in sniffs] == [str(file)] and [str(a[0]) for a in headers] == [str(file)]


def test_settings_are_what_was_asked_with_the_models_defaults(model):
    pipe = Pipeline.from_pretrained(model, device="cpu")
    s = pipe.resolve(Request("a cat", seed=3, num_images=5, batch_size=2, scheduler="karras"))
    assert isinstance(s, Settings) and s.sampler.name == "euler_karras"  # the model's default sampler, Karras spacing
    assert (s.steps, s.guidance_scale, s.width, s.height) == (4, 3.0, 16, 16) and s.seeds == [3, 4, 5, 6, 7]
    assert len(s.sigmas) == 5 and s.sigmas.dtype == torch.float64
    assert s.part(2, 2).seeds == [5, 6] and s.part(2, 2).sigmas is s.sigmas
    assert 0 <= pipe.resolve(Request("a cat")).seed < 2**32  # a random seed when none is given
    # a Settings is drawn as it is: a second call resolves nothing again and draws the same picture
    a, b = pipe(s.part(0, 1), output_type="pt"), pipe("a cat", seed=3, sampler="euler_karras", output_type="pt")
    assert torch.equal(a, b)
    with pytest.raises(TypeError):
        pipe(s, steps=3)


@pytest.mark.parametrize("request_, limits, field, words", [
    (Request("x", steps=151), Limits(), "steps", "from 1 to 150"),
    (Request("x", steps=1001), None, "steps", "from 1 to 1000"),
    (Request("x", batch_size=17), Limits(), "batch_size", "from 1 to 16"),
    (Request("x", num_images=20, batch_size=4), Limits(), "num_images", "at most 16"),
    (Request("x", batch_size=0), None, "batch_size", "at least 1"),
    (Request("x", width=256), Limits(max_side=128), "width", "128 pixels this server allows"),
    (Request("x", sampler="ddim", scheduler="karras"), None, "scheduler", "no Karras schedule"),
    (Request("x", scheduler="sgm"), None, "scheduler", "unknown scheduler"),
    (Request("x", guidance_scale="lots"), None, "guidance_scale", "guidance scale must be a number"),
    (Request("x", negative_prompt=3), None, "negative_prompt", "must be text"),
])
def test_resolve_names_the_field_at_fault(model, request_, limits, field, words):
    pipe = Pipeline.from_pretrained(model, device="cpu")
    with pytest.raises(UserError, match=words) as caught:
        pipe.resolve(request_, limits=limits)
    assert caught.value.field == field


def test_the_package_offers_request_and_pipeline():
    assert noisecraft.Request is Request and noisecraft.Pipeline is Pipeline and noisecraft.__version__
