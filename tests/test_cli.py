"""The command line as a user meets it: files that come out, exit codes, one-sentence errors."""

import subprocess
import sys

import pytest

from noisecraft.pngmeta import parse_parameters, read_parameters

from helpers import color_dataset, tiny_model_file


def run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "noisecraft.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return tiny_model_file(tmp_path_factory.mktemp("m") / "tiny.safetensors")


def test_generate_writes_pngs_with_parameters(model, tmp_path):
    out = tmp_path / "out"
    result = run("generate", "a palm tree", "--model", model, "--steps", "3", "--seed", "5", "--num-images", "2",
                 "--size", "16x32", "--sampler", "euler_a", "--negative", "blurry", "--guidance", "4", "--out", out)
    assert result.returncode == 0, result.stderr
    files = sorted(out.glob("*.png"))
    assert [f.name for f in files] == ["a-palm-tree-5.png", "a-palm-tree-6.png"]
    params = parse_parameters(read_parameters(files[1]))
    assert params["Seed"] == "6" and params["Size"] == "16x32" and params["Sampler"] == "Euler a"
    assert params["negative_prompt"] == "blurry" and params["Steps"] == "3" and params["CFG scale"] == "4.0"


def test_generate_to_a_named_file(model, tmp_path):
    result = run("generate", "sushi", "--model", model, "--steps", "2", "--seed", "1", "--out", tmp_path / "x.png")
    assert result.returncode == 0, result.stderr
    assert read_parameters(tmp_path / "x.png").startswith("sushi\n")


@pytest.mark.parametrize("args, message", [
    (["generate", ""], "prompt is empty"),
    (["generate", "x", "--size", "17x16"], "not a multiple"),
    (["generate", "x", "--steps", "0"], "steps must be"),
    (["generate", "x", "--sampler", "nope"], "unknown sampler 'nope'; choose one of"),
])
def test_bad_generate_input_is_one_sentence_and_nonzero_exit(model, args, message):
    result = run(*args, "--model", model)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_missing_and_corrupt_model_files(tmp_path):
    result = run("generate", "x", "--model", tmp_path / "none.safetensors")
    assert result.returncode == 2 and "no model at" in result.stderr and "Traceback" not in result.stderr
    (tmp_path / "bad.safetensors").write_bytes(b"garbage garbage garbage")
    result = run("info", tmp_path / "bad.safetensors")
    assert result.returncode == 2 and "Traceback" not in result.stderr


def test_info_describes_a_model(model):
    result = run("info", model)
    assert result.returncode == 0, result.stderr
    assert "kind:        pixel" in result.stdout and "unet:" in result.stdout and "minilm" in result.stdout


def test_samplers_lists_names():
    result = run("samplers")
    assert result.returncode == 0 and "dpmpp_2m_karras" in result.stdout and "Euler a" in result.stdout


def test_train_errors_are_sentences(tmp_path):
    result = run("train", tmp_path / "missing.toml")
    assert result.returncode == 2 and "no training config" in result.stderr
    config = tmp_path / "c.toml"
    config.write_text('[model]\nkind = "pixel"\ntext_encoder = ""\n[data]\npath = "empty"\n')
    (tmp_path / "empty").mkdir()
    result = run("train", config)
    assert result.returncode == 2 and "holds no images" in result.stderr and "Traceback" not in result.stderr
    config.write_text("[train]\nstepz = 3\n")
    result = run("train", config)
    assert result.returncode == 2 and "unknown setting train.stepz" in result.stderr


def test_train_from_toml_writes_a_usable_model(tmp_path):
    color_dataset(tmp_path / "data")
    config = tmp_path / "c.toml"
    config.write_text("""
[model]
kind = "pixel"
image_size = 16
text_encoder = ""
unet = { model_channels = 32, channel_mult = [1, 2], num_res_blocks = 1, attention_resolutions = [], num_head_channels = 16 }
[data]
path = "data"
[train]
steps = 2
batch_size = 2
sample_every = 0
out = "run"
""")
    result = run("train", config, "--no-progress")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "run" / "model.safetensors").exists()
    result = run("generate", "", "--model", tmp_path / "run", "--steps", "2", "--seed", "0", "--out", tmp_path / "u.png")
    assert result.returncode == 0, result.stderr  # an unconditional model needs no prompt
