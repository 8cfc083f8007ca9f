"""SD3.5 and FLUX.1 files as people have them (issue 20): the files noisecraft reads are the ones diffusers' own
single-file converters read (FLUX's at its hard-coded full width, 3072, with one double and one single block), the
CLI makes pictures from `sd3.5_medium.safetensors` and from Black Forest Labs' bare `flux1-schnell.safetensors`
with its parts beside it, `noisecraft info` names family, size and precision, and missing parts are asked for in
one sentence."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from diffusers.loaders.single_file_utils import (convert_flux_transformer_checkpoint_to_diffusers,  # noqa: E402
                                                 convert_sd3_transformer_checkpoint_to_diffusers)
from flow_helpers import build_flux, build_sd3  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from sd_helpers import randomize  # noqa: E402

from noisecraft import Pipeline, Request  # noqa: E402
from noisecraft.checkpoints import build_module, transformer_keys  # noqa: E402
from noisecraft.checkpoints.transformer_config import flux_config_of  # noqa: E402
from noisecraft.errors import UserError  # noqa: E402
from noisecraft.models.flux import Flux  # noqa: E402
from noisecraft.pngmeta import parse_parameters, read_parameters  # noqa: E402


def run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "noisecraft.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


@pytest.fixture(scope="module")
def sd3(tmp_path_factory):
    return build_sd3(tmp_path_factory.mktemp("sd3"))


@pytest.fixture(scope="module")
def schnell(tmp_path_factory):
    return build_flux(tmp_path_factory.mktemp("schnell"), dev=False)


def test_the_sd3_file_written_is_what_diffusers_single_file_converter_reads(sd3):
    pipe, _, files = sd3
    state = {k.removeprefix("model.diffusion_model."): v for k, v in load_file(files["all-in-one"]).items()
             if k.startswith("model.diffusion_model.")}
    back = convert_sd3_transformer_checkpoint_to_diffusers(state)
    reference = pipe.transformer.state_dict()
    assert back.keys() == reference.keys() and all(torch.equal(back[k], reference[k]) for k in reference)


def test_a_full_width_flux_file_reads_as_diffusers_reads_it_and_runs_alike(tmp_path):
    """diffusers' FLUX converter knows only width 3072 (24 heads of 128): one double and one single block."""
    torch.manual_seed(0)
    ref = diffusers.FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=1, num_single_layers=1,
                                           attention_head_dim=128, num_attention_heads=24, joint_attention_dim=64,
                                           pooled_projection_dim=32, guidance_embeds=True, axes_dims_rope=(16, 56, 56))
    ref = randomize(ref, 0.02, 1)
    path = tmp_path / "flux1-dev.safetensors"
    save_file({k: v.contiguous() for k, v in transformer_keys.flux_from_diffusers(ref.state_dict()).items()}, path)
    written = load_file(path)
    back = convert_flux_transformer_checkpoint_to_diffusers(dict(written))
    reference = ref.state_dict()
    assert back.keys() == reference.keys() and all(torch.equal(back[k], reference[k]) for k in reference)
    ours = build_module(Flux, flux_config_of(written), written, "cpu", torch.float32)
    assert ours.config.axes_dim == (16, 56, 56) and ours.config.heads == 24
    g = torch.Generator().manual_seed(3)
    latents, txt, pooled = torch.randn(1, 16, 8, 6, generator=g), torch.randn(1, 5, 64, generator=g), torch.randn(1, 32, generator=g)
    with torch.no_grad():
        from noisecraft.models.flux import pack
        img, ids = pack(latents)
        expected = ref(img, encoder_hidden_states=txt, pooled_projections=pooled, timestep=torch.tensor([0.6]), img_ids=ids,
                       txt_ids=torch.zeros(5, 3), guidance=torch.tensor([3.5])).sample
        out = ours(img, torch.tensor([600.0]), txt, pooled, torch.tensor([3.5]), ids)
    assert float((out - expected).abs().max() / expected.abs().max()) <= 1e-5


def test_the_cli_draws_from_sd35_medium_and_from_bfl_flux_schnell_with_its_parts(sd3, schnell, tmp_path):
    shutil.copy(sd3[2]["all-in-one"], tmp_path / "sd3.5_medium.safetensors")
    parts = schnell[2]
    for name, file in (("flux1-schnell", "transformer"), ("ae", "ae"), ("clip_l", "clip_l"), ("t5xxl_fp16", "t5xxl")):
        shutil.copy(parts[file], tmp_path / f"{name}.safetensors")
    made = run("generate", "a red teapot on a table", "--model", "sd3.5_medium.safetensors", "--size", "64", "--steps", "3",
               "--seed", "4", "--out", "sd35.png", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    params = parse_parameters(read_parameters(tmp_path / "sd35.png"))
    assert params["Model"] == "sd3.5_medium" and params["Sampler"] == "Euler" and params["Steps"] == "3"
    flux = ["generate", "a red teapot on a table", "--model", "flux1-schnell.safetensors", "--size", "64", "--seed", "4"]
    missing = run(*flux, cwd=tmp_path)
    assert missing.returncode == 2 and "--vae" in missing.stderr and "Traceback" not in missing.stderr
    made = run(*flux, "--vae", "ae.safetensors", "--text-encoders", "clip_l.safetensors", "t5xxl_fp16.safetensors",
               "--out", "schnell.png", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    params = parse_parameters(read_parameters(tmp_path / "schnell.png"))
    assert params["Steps"] == "4" and params["Model"] == "flux1-schnell" and "Negative prompt" not in params
    info = run("info", "flux1-schnell.safetensors", cwd=tmp_path).stdout
    assert "FLUX.1 schnell" in info and "float32" in info and "1 double + 1 single blocks" in info
    info = run("info", "sd3.5_medium.safetensors", cwd=tmp_path).stdout
    assert "Stable Diffusion 3.5 Medium" in info and "CLIP-L + CLIP-G + T5-XXL" in info and "shift 3" in info


def test_missing_and_mismatched_parts_are_asked_for_in_one_sentence(sd3, schnell):
    parts = schnell[2]
    with pytest.raises(UserError, match="holds no text encoders; give them with --text-encoders clip_l"):
        Pipeline.from_pretrained(parts["transformer"], device="cpu", vae=parts["ae"])
    with pytest.raises(UserError, match="no T5 text encoder, which FLUX.1 reads"):
        Pipeline.from_pretrained(parts["transformer"], device="cpu", vae=parts["ae"], text_encoders=[parts["clip_l"]])
    with pytest.raises(UserError, match="is neither a CLIP, a T5 nor a Qwen3"):
        Pipeline.from_pretrained(parts["transformer"], device="cpu", vae=parts["ae"], text_encoders=[parts["ae"]])
    with pytest.raises(UserError, match="are for SD3, FLUX and Z-Image files"):
        Pipeline.from_pretrained(None, device="cpu", text_encoders=[parts["clip_l"]])
    pipe = Pipeline.from_pretrained(sd3[2]["all-in-one"], device="cpu")
    with pytest.raises(UserError, match="Euler a sampler is not made for flow-matching"):
        pipe("a teapot", sampler="euler_a", width=32, height=32)


def test_sd3_runs_without_t5_and_keeps_guidance_and_img2img(sd3, tmp_path):
    """T5 is optional for SD3 (zeros in its place, as SD3 was trained to allow); img2img starts on the flow's path."""
    pipe, _, files = sd3
    without = tmp_path / "sd35-no-t5.safetensors"
    save_file({k: v for k, v in load_file(files["all-in-one"]).items() if not k.startswith("text_encoders.t5xxl.")}, without)
    ours = Pipeline.from_pretrained(without, device="cpu")
    assert ours.conditioner.t5 is None
    first = ours("a teapot", width=32, height=32, steps=2, seed=1)[0]
    again = ours("a teapot", width=32, height=32, steps=2, seed=1)[0]
    assert first.tobytes() == again.tobytes()  # same seed, same picture
    changed = ours("a teapot", init_image=first, strength=0.5, steps=4, seed=2)[0]
    assert changed.size == (32, 32) and "Denoising strength: 0.5" in changed.info["parameters"]


def test_the_a1111_and_openai_apis_serve_sd35_and_flux(sd3, schnell, tmp_path):
    """The servers are thin: an SD3.5 file and a FLUX.1 folder answer webuiapi's txt2img and openai's images.generate
    (this FLUX file declares a 32 px native size, which the OpenAI route draws at before upscaling)."""
    import base64
    import io

    import openai
    import webuiapi
    from PIL import Image
    from server_fixtures import entry_for, make_pool, running_server

    sd3_file, flux_file = sd3[2]["all-in-one"], tmp_path / "flux1-schnell-32px.safetensors"
    save_file(load_file(schnell[2]["all-in-one"]), flux_file, {"modelspec.resolution": "32x32"})
    models = {entry_for(sd3_file, "sd35"): Pipeline.from_pretrained(sd3_file, device="cpu"),
              entry_for(flux_file, "schnell"): Pipeline.from_pretrained(flux_file, device="cpu")}
    with running_server(make_pool(models)) as url:
        api = webuiapi.WebUIApi(host="127.0.0.1", port=int(url.rsplit(":", 1)[1]))
        api.util_set_model("sd35")
        result = api.txt2img(prompt="a red teapot", negative_prompt="blurry", width=32, height=32, steps=2, seed=3,
                             sampler_name="Euler", cfg_scale=4, alwayson_scripts={})
        assert result.image.size == (32, 32) and "Negative prompt: blurry" in result.info["infotexts"][0]
        with pytest.raises(RuntimeError, match="422.*not made for flow-matching models"):  # webuiapi raises on 4xx
            api.txt2img(prompt="a red teapot", width=32, height=32, steps=2, sampler_name="DPM++ 2M SDE", alwayson_scripts={})
        api.util_set_model("schnell")
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        made = client.images.generate(prompt="a red teapot", model="schnell", size="256x256", quality="low")
        image = Image.open(io.BytesIO(base64.b64decode(made.data[0].b64_json)))
        assert image.size == (256, 256) and "Model: " in image.info["parameters"]


def test_the_size_in_memory_is_said_before_loading_and_what_to_do_when_it_will_not_fit(tmp_path, monkeypatch):
    from noisecraft.checkpoints import memory

    file = tmp_path / "mixed.safetensors"
    save_file({"a": torch.zeros(1000, 1000, dtype=torch.float16), "b": torch.zeros(1000, 1000).to(torch.float8_e4m3fn),
               "c": torch.zeros(10, dtype=torch.int64)}, file)
    assert memory.weight_bytes([file], torch.bfloat16) == 2_000_000 + 1_000_000 + 80  # fp8 stays fp8
    monkeypatch.setattr(memory, "free_bytes", lambda device: 2_500_000)
    said = memory.fit_report("flux1-dev", [file], torch.device("cuda"), torch.bfloat16, offload=False)
    assert said == ("flux1-dev: 0.0 GB of weights in bfloat16, more than the 0.0 GB free on cuda: add --offload "
                    "(one block at a time on the GPU) or use an fp8 or GGUF file")
    assert memory.fit_report("flux1-dev", [file], torch.device("cuda"), torch.bfloat16, offload=True).endswith("one block at a time on the GPU")
    monkeypatch.setattr(memory, "free_bytes", lambda device: 10**10)
    assert memory.fit_report("m", [file], torch.device("cpu"), torch.float32, offload=False) == "m: 0.0 GB of weights in float32, 10.0 GB free in memory"


def test_offloading_on_a_cpu_changes_nothing(sd3):
    pipe = Pipeline.from_pretrained(sd3[2]["all-in-one"], device="cpu", offload=True)
    again = Pipeline.from_pretrained(sd3[2]["all-in-one"], device="cpu")
    assert len(pipe.transformer.blocks()) == pipe.transformer.config.depth
    a, b = (p("a teapot", width=32, height=32, steps=2, seed=1)[0] for p in (pipe, again))
    assert a.tobytes() == b.tobytes()


def test_text_encoders_can_stay_on_their_own_device(sd3):
    """--text-device cpu: the text encoders load and run there and hand their states to the pipeline's device (here
    the meta device stands for a GPU: the networks land on it, the encoders do not)."""
    pipe = Pipeline.from_pretrained(sd3[2]["all-in-one"], device="meta", text_device="cpu")
    assert next(pipe.transformer.parameters()).device.type == "meta"
    assert pipe.text_encoder.device.type == "cpu" and pipe.conditioner.t5.device.type == "cpu"
    cond = pipe.conditioner.encode(["a red teapot"])
    assert cond["context"].device.type == "meta" and cond["y"].device.type == "meta"
    with pytest.raises(UserError, match="--text-device are for SD3, FLUX and Z-Image files"):
        Pipeline.from_pretrained(None, device="cpu", text_device="cpu")


def test_text_encoders_can_be_freed_after_encoding(sd3, tmp_path):
    """free_text_encoders: the prompts encoded first draw exactly as before, the encoders are gone, another
    prompt is refused in one sentence; the CLI's --free-text-encoders does the same for its one prompt."""
    pipe = Pipeline.from_pretrained(sd3[2]["all-in-one"], device="cpu")
    before = pipe("a red teapot", negative_prompt="blurry", width=32, height=32, steps=2, seed=3, num_images=3, batch_size=2)
    pipe.free_text_encoders(Request("a red teapot", negative_prompt="blurry", width=32, height=32, steps=2, seed=3,
                                    num_images=3, batch_size=2))
    assert pipe.text_encoder is None and pipe.conditioner.t5 is None
    after = pipe("a red teapot", negative_prompt="blurry", width=32, height=32, steps=2, seed=3, num_images=3, batch_size=2)
    assert [a.tobytes() for a in after] == [b.tobytes() for b in before]
    with pytest.raises(UserError, match="text encoders were freed after encoding"):
        pipe("a blue teapot", width=32, height=32, steps=2)
    shutil.copy(sd3[2]["all-in-one"], tmp_path / "sd35.safetensors")
    made = run("generate", "a red teapot", "--model", "sd35.safetensors", "--size", "32", "--steps", "2", "--num-images", "2",
               "--free-text-encoders", "--out", "out", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    assert len(list((tmp_path / "out").glob("*.png"))) == 2
