"""Nearest-subject prompts: the subject index, its place in model files, and what generation does with it."""

import json
import subprocess
import sys

import pytest
import torch

from helpers import tiny_model_file
from noisecraft.checkpoints import load_model_file, save_model_file
from noisecraft.datasets.emoji import subject_phrases
from noisecraft.errors import ModelFileError, UserError
from noisecraft.text.minilm import load_text_encoder
from noisecraft.pipeline import Pipeline
from noisecraft.pngmeta import parse_parameters, read_parameters
from noisecraft.settings import Request
from noisecraft.text.subjects import SubjectIndex

PHRASES = {"palm tree, plant, beach, tropical": "palm tree", "rocket, space, launch": "rocket",
           "red apple, fruit, red": "red apple", "piñata, party, celebration": "piñata"}


@pytest.fixture(scope="module")
def encoder():
    return load_text_encoder("minilm")


@pytest.fixture(scope="module")
def index(encoder):
    return SubjectIndex.build(encoder, PHRASES)


def test_names_find_themselves_and_new_wordings_find_their_subject(encoder, index):
    assert index.names == sorted(PHRASES.values()) and len(index.vectors) == len(PHRASES) * 2
    names = ["palm tree", "rocket", "red apple", "piñata"]
    assert index.nearest(encoder.encode(names).pooled) == names
    assert index.nearest(encoder.encode(["a spaceship taking off", "a tropical beach tree"]).pooled) == ["rocket", "palm tree"]
    assert index.subject_of(encoder, "a red apple, studio lighting, soft shadow, sharp focus, high detail") == "red apple"


def test_the_index_survives_a_model_file_round_trip(tmp_path, index):
    file = tiny_model_file(tmp_path / "m.safetensors", kind="latent")
    config, parts, _ = load_model_file(file)
    save_model_file(file, config, parts | {"subjects": index.to_part()}, dtype=torch.float16)
    back = SubjectIndex.from_part(load_model_file(file)[1]["subjects"])
    assert back.names == index.names and torch.equal(back.owner, index.owner.long())
    assert torch.allclose(back.vectors, index.vectors, atol=1e-3)
    with pytest.raises(ModelFileError, match="inconsistent"):
        SubjectIndex.from_part(index.to_part() | {"owner": torch.full((len(index.vectors),), 99, dtype=torch.int32)})


def test_subject_phrases_drop_the_style_words():
    rows = [{"text": "palm tree, plant, beach, google style", "name": "palm tree", "style": "google"},
            {"text": "rocket, space, twitter style", "name": "rocket", "style": "twitter"}]
    assert subject_phrases(rows) == {"palm tree, plant, beach": "palm tree", "rocket, space": "rocket"}


@pytest.fixture(scope="module")
def indexed_model(tmp_path_factory, index):
    folder = tmp_path_factory.mktemp("indexed")
    file = tiny_model_file(folder / "model.safetensors", kind="latent")
    config, parts, _ = load_model_file(file)
    torch.manual_seed(0)  # wake the zero-initialised output layers, so the pictures depend on the text
    parts["unet"] = {k: torch.randn_like(v) * 0.1 if not v.any() else v for k, v in parts["unet"].items()}
    save_model_file(file, config, parts | {"subjects": index.to_part()})
    return folder


def test_a_new_wording_draws_the_nearest_subject_and_says_so(indexed_model):
    pipe = Pipeline.from_pretrained(indexed_model, device="cpu")
    auto = pipe("a spaceship taking off", steps=2, seed=5, output_type="pt")
    named = pipe("a spaceship taking off", steps=2, seed=5, subject="rocket", output_type="pt")
    own = pipe("a spaceship taking off", steps=2, seed=5, subject="off", output_type="pt")
    assert torch.equal(auto, named) and not torch.equal(auto, own)
    params = parse_parameters(pipe("a spaceship taking off", steps=2, seed=5)[0].info["parameters"])
    assert params["Subject"] == "rocket"
    assert "Subject" not in parse_parameters(pipe("a spaceship taking off", steps=2, seed=5, subject="off")[0].info["parameters"])


def test_a_subject_name_is_drawn_exactly_as_without_the_index(indexed_model):
    pipe = Pipeline.from_pretrained(indexed_model, device="cpu")
    assert pipe.resolve(Request("red apple")).subject is None
    image = pipe("red apple", steps=2, seed=1)[0]
    assert "Subject" not in parse_parameters(image.info["parameters"])
    assert torch.equal(pipe("red apple", steps=2, seed=1, output_type="pt"),
                       pipe("red apple", steps=2, seed=1, subject="off", output_type="pt"))


def test_models_without_an_index_read_the_prompt(tmp_path):
    pipe = Pipeline.from_pretrained(tiny_model_file(tmp_path / "plain.safetensors", kind="latent"), device="cpu")
    assert pipe.subjects is None and pipe.resolve(Request("a spaceship taking off")).subject is None
    with pytest.raises(UserError, match="subject"):
        pipe.resolve(Request("a rocket", subject="  "))


def test_cli_subject_option_and_info(indexed_model, tmp_path):
    out = tmp_path / "x.png"
    run = [sys.executable, "-m", "noisecraft.cli"]
    result = subprocess.run(run + ["generate", "a spaceship taking off", "--model", str(indexed_model), "--steps", "2",
                                   "--seed", "2", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "subject 'rocket'" in result.stderr and parse_parameters(read_parameters(out))["Subject"] == "rocket"
    result = subprocess.run(run + ["generate", "a spaceship taking off", "--model", str(indexed_model), "--steps", "2",
                                   "--seed", "2", "--subject", "off", "--out", str(tmp_path / "off.png")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "Subject" not in parse_parameters(read_parameters(tmp_path / "off.png"))
    info = subprocess.run(run + ["info", str(indexed_model)], capture_output=True, text=True, timeout=300)
    assert "subjects:    4 (8 phrases)" in info.stdout


def test_the_http_api_reports_the_subject_and_takes_subject_off(indexed_model):
    import httpx

    from server_fixtures import entry_for, make_pool, running_server

    entry = entry_for(indexed_model)
    with running_server(make_pool({entry: Pipeline.from_pretrained(indexed_model, device="cpu")})) as url:
        body = {"prompt": "a spaceship taking off", "steps": 2, "seed": 4}
        info = json.loads(httpx.post(f"{url}/sdapi/v1/txt2img", json=body, timeout=120).json()["info"])
        assert info["extra_generation_params"] == {"Subject": "rocket"} and "Subject: rocket" in info["infotexts"][0]
        info = json.loads(httpx.post(f"{url}/sdapi/v1/txt2img", json=body | {"subject": "off"}, timeout=120).json()["info"])
        assert info["extra_generation_params"] == {} and "Subject" not in info["infotexts"][0]
