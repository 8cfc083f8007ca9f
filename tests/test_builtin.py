"""The shipped model: present in the package, loadable, and used when no model is named."""

import subprocess
import sys

from noisecraft.pipeline import Pipeline
from noisecraft.pngmeta import parse_parameters, read_parameters
from noisecraft.settings import Request
from noisecraft.text.subjects import sentence_vectors


def test_builtin_model_generates_a_64px_picture():
    pipe = Pipeline.from_pretrained(device="cpu")
    assert pipe.config.name == "noisecraft-emoji" and pipe.config.kind == "latent"
    image = pipe("a palm tree", steps=2, seed=0)[0]
    assert image.size == (64, 64) and image.mode == "RGB"
    assert parse_parameters(image.info["parameters"])["Model"] == "noisecraft-emoji"


def test_cli_uses_the_builtin_model_by_default(tmp_path):
    result = subprocess.run([sys.executable, "-m", "noisecraft.cli", "generate", "a palm tree", "--steps", "2",
                             "--seed", "3", "--out", str(tmp_path / "palm.png")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    params = parse_parameters(read_parameters(tmp_path / "palm.png"))
    assert params["Seed"] == "3" and params["Size"] == "64x64" and len(params["Model hash"]) == 10
    info = subprocess.run([sys.executable, "-m", "noisecraft.cli", "info"], capture_output=True, text=True, timeout=300)
    assert info.returncode == 0 and "noisecraft-emoji" in info.stdout and "float16" in info.stdout


def test_builtin_model_draws_the_nearest_of_its_emoji_names():
    pipe = Pipeline.from_pretrained(device="cpu")
    assert pipe.subjects is not None and len(pipe.subjects.names) > 1000
    names = pipe.subjects.names
    assert pipe.subjects.nearest(sentence_vectors(pipe.text_encoder, names)) == names  # a prompt that is an emoji name is drawn as itself
    assert [pipe.resolve(Request(p)).subject for p in ("a smartphone", "a bike", "palm tree", "family: man, woman, girl")] == \
        ["mobile phone", "bicycle", None, None]
    # the subject of a long prompt is found in its parts: "a pizza" outweighs the style words
    assert pipe.resolve(Request("a pizza, professional product photography, isolated on a clean white seamless "
                                "background, soft diffused studio lighting, sharp focus")).subject == "pizza"


def test_loading_the_builtin_model_does_not_import_torch_dynamo():
    """A cold start stays lean: building the text encoder on the meta device once pulled in
    torch._dynamo (about 1.5 s of every `noisecraft generate`) through nn.Embedding's random init."""
    code = ("import sys; from noisecraft.pipeline import Pipeline; Pipeline.from_pretrained(device='cpu'); "
            "print('torch._dynamo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
