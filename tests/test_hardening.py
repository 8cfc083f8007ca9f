"""Hostile and careless input (issue 16): each case was a crash, a hang, a 500 or a traceback before.

Server cases run a real uvicorn server in this process (server_fixtures) or a `noisecraft serve`
process; CLI and training cases run `python -m noisecraft.cli` as a user does.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import torch
from PIL import Image, PngImagePlugin

from noisecraft.checkpoints import load_model_file, save_model_file, write_safetensors
from noisecraft.errors import ModelFileError, UserError
from noisecraft.pipeline import Pipeline
from noisecraft.server.context import ServerSettings
from noisecraft.server.security import allowed_hosts, check_exposure
from noisecraft.text.minilm import load_text_encoder
from noisecraft.text.subjects import SubjectIndex

from helpers import color_dataset, serving, tiny_model_file
from server_fixtures import Controlled, cached_pipeline, entry_for, make_pool, model_file, running_server

PHRASES = {"palm tree, plant, beach": "palm tree", "rocket, space, launch": "rocket", "red apple, fruit": "red apple"}


def run_cli(*args, timeout=300, **kwargs):
    return subprocess.run([sys.executable, "-m", "noisecraft.cli", *args], capture_output=True, text=True,
                          timeout=timeout, **kwargs)


def one_sentence(result) -> str:
    """The one line of stderr a failing command printed (a server's INFO log lines aside)."""
    err = "\n".join(line for line in result.stderr.strip().splitlines() if not line.startswith("INFO:"))
    assert result.returncode == 2, (result.returncode, err[-2000:])
    assert "Traceback" not in err and len(err.splitlines()) == 1, err[-2000:]
    return err


def _png_b64(image: Image.Image, fmt: str = "PNG", **kw) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kw)
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("hardening")


@pytest.fixture(scope="module")
def text_model(root):
    return model_file(root, "pixel", text=True)


@pytest.fixture(scope="module")
def indexed_model(root):
    """A tiny text model whose file carries a subject index (so prompts go through the subject lookup)."""
    file = tiny_model_file(root / "indexed.safetensors")
    config, parts, _ = load_model_file(file)
    index = SubjectIndex.build(load_text_encoder("minilm"), PHRASES)
    save_model_file(file, config, parts | {"subjects": index.to_part()})
    return file


@pytest.fixture(scope="module")
def server(text_model):
    pipe = cached_pipeline(text_model)
    with running_server(make_pool({entry_for(text_model): pipe})) as url:
        yield url, pipe


# -- 1. progress polling is cheap and bounded ---------------------------------------------------------
def test_progress_polls_share_one_cheap_preview_per_step(root, monkeypatch):
    latent = model_file(root, "latent", text=False)
    pipe = Controlled(cached_pipeline(latent))
    decodes, looks = [], []
    real_decode, real_look = pipe.pipe.vae.decode, pipe.pipe.codec.approximate
    monkeypatch.setattr(pipe.pipe.vae, "decode", lambda z: decodes.append(z.shape) or real_decode(z))
    monkeypatch.setattr(pipe.pipe.codec, "approximate", lambda x: looks.append(1) or real_look(x))
    with running_server(make_pool({entry_for(latent): pipe}, queue_size=2)) as url:
        pipe.hold.clear()
        job = threading.Thread(target=lambda: httpx.post(url + "/sdapi/v1/txt2img", timeout=60,
                                                         json={"prompt": "", "steps": 3, "width": 64, "height": 64}))
        job.start()
        assert pipe.reached.wait(10)
        answers = []
        threads = [threading.Thread(target=lambda: answers.append(httpx.get(url + "/sdapi/v1/progress", timeout=30)))
                   for _ in range(30)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert len(answers) == 30 and all(a.status_code == 200 for a in answers)
        pictures = {a.json()["current_image"] for a in answers} - {None}
        assert len(pictures) == 1  # one picture for that step, shared
        image = Image.open(io.BytesIO(base64.b64decode(pictures.pop())))
        assert image.size == (64, 64)
        assert httpx.get(url + "/sdapi/v1/progress", params={"skip_current_image": True}).json()["current_image"] is None
        during = len(decodes)
        pipe.hold.set()
        job.join(30)
    # during the held step: one look made for 30 polls, and at most one real decode (fitting the colour map)
    assert len(looks) == 1 and during <= 1


def test_the_preview_approximates_the_decoded_picture():
    pipe = Pipeline.from_pretrained(device="cpu")  # the built-in model: a real autoencoder
    seen = {}
    pipe("a palm tree", steps=8, seed=0, callback=lambda i, n, x0: seen.update(x0=x0))
    look = pipe.codec.approximate(seen["x0"])
    real = torch.nn.functional.avg_pool2d(pipe.decode(seen["x0"]), pipe.config.downsample_factor)[0]
    assert look.shape == real.shape == (3, 16, 16)
    assert (look - real).abs().mean() < 0.08  # colours within ~20/255 on average, without running the decoder


# -- 2. no model work on the event loop; prompts are bounded ------------------------------------------
def test_no_text_encoding_on_the_event_loop_and_prompt_parts_are_capped(indexed_model, monkeypatch):
    pipe = Pipeline.from_pretrained(indexed_model, device="cpu")
    calls = []
    real_encode = pipe.text_encoder.encode

    def encode(texts):
        try:
            asyncio.get_running_loop()
            on_loop = True
        except RuntimeError:
            on_loop = False
        calls.append((len(texts), on_loop))
        return real_encode(texts)

    monkeypatch.setattr(pipe.text_encoder, "encode", encode)
    with running_server(make_pool({entry_for(indexed_model): pipe})) as url:
        response = httpx.post(url + "/sdapi/v1/txt2img", timeout=60,
                              json={"prompt": "a," * 997 + "rocket", "steps": 1, "width": 16, "height": 16})
        assert response.status_code == 200, response.text
        too_long = httpx.post(url + "/sdapi/v1/txt2img", json={"prompt": "x" * 2001, "steps": 1}, timeout=60)
        assert too_long.status_code == 422 and too_long.json()["detail"][0]["loc"] == ["body", "prompt"]
        assert "at most 2000" in too_long.json()["detail"][0]["msg"]
    assert calls and not any(on_loop for _, on_loop in calls)
    assert max(n for n, _ in calls) <= 17  # the whole prompt and at most 16 distinct parts


# -- 3. DNS rebinding: the Host must name this server ---------------------------------------------------
def test_requests_for_other_host_names_are_refused(server):
    url, _ = server
    port = url.rsplit(":", 1)[1]
    for host in ("evil.example", f"evil.example:{port}", "127.0.0.1.evil.example", ""):
        response = httpx.get(url + "/sdapi/v1/options", headers={"Host": host})
        assert response.status_code in (400, 421), (host, response.status_code)
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost", f"[::1]:{port}"):
        assert httpx.get(url + "/sdapi/v1/options", headers={"Host": host}).status_code == 200, host


def test_allowed_host_names_follow_the_listening_address(text_model):
    assert allowed_hosts("0.0.0.0") is None  # every address of the machine: names are unknown; the key protects it
    assert set(allowed_hosts("0.0.0.0", ["studio.lan"])) == {"localhost", "127.0.0.1", "::1", "0.0.0.0", "studio.lan"}
    assert "192.168.1.20" in allowed_hosts("192.168.1.20")
    settings = ServerSettings(allowed_hosts=allowed_hosts("127.0.0.1", ["studio.lan"]))
    with running_server(make_pool({entry_for(text_model): cached_pipeline(text_model)}), settings) as url:
        assert httpx.get(url + "/info", headers={"Host": "studio.lan:7860"}).status_code == 200
        assert httpx.get(url + "/info", headers={"Host": "other.lan"}).status_code == 421


# -- 4. the body limit holds for streamed bodies ----------------------------------------------------------
def test_a_chunked_body_past_the_limit_is_refused_and_not_kept(text_model):
    settings = ServerSettings(max_body=4096, body_timeout=1.0)
    with running_server(make_pool({entry_for(text_model): cached_pipeline(text_model)}), settings) as url:
        sent = []

        def chunks():
            for _ in range(64):
                sent.append(1)
                yield b" " * 65536

        response = httpx.post(url + "/sdapi/v1/txt2img", content=chunks(), headers={"Content-Type": "application/json"})
        assert response.status_code == 413 and "larger than" in response.json()["detail"]
        # a body that stops half way is not waited for forever
        sock = socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])))
        sock.sendall(b"POST /sdapi/v1/txt2img HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100\r\n\r\n{\"prompt\": ")
        sock.settimeout(10)
        started = time.monotonic()
        answer = sock.recv(4096)
        sock.close()
        assert b" 408 " in answer.split(b"\r\n")[0] and time.monotonic() - started < 5


# -- 5. 422s, not 500s ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("field", ["prompt", "negative_prompt", "sampler_name", "scheduler", "subject"])
def test_a_lone_surrogate_is_a_422(server, field):
    url, pipe = server
    raw = '{"prompt": "a square", "steps": 1, "width": 16, "height": 16, "%s": "x\\ud800y"}' % field
    response = httpx.post(url + "/sdapi/v1/txt2img", content=raw, headers={"Content-Type": "application/json"}, timeout=60)
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"][-1] == field


def test_png_info_with_a_broken_escape_is_read_as_it_is(server):
    url, _ = server
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", 'a tree\nSteps: 2, Sampler: "Euler \\q a", Seed: 1')
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="PNG", pnginfo=info)
    response = httpx.post(url + "/sdapi/v1/png-info", json={"image": base64.b64encode(buffer.getvalue()).decode()})
    assert response.status_code == 200, response.text
    assert response.json()["parameters"]["Seed"] == "1" and "Euler" in response.json()["parameters"]["Sampler"]


def test_deeply_nested_override_settings_are_refused_before_any_work(text_model):
    pipe = Controlled(cached_pipeline(text_model))
    with running_server(make_pool({entry_for(text_model): pipe})) as url:
        nested = {}
        for _ in range(300):
            nested = {"a": nested}
        body = json.dumps({"prompt": "x", "steps": 1, "width": 16, "height": 16, "override_settings": nested})
        response = httpx.post(url + "/sdapi/v1/txt2img", content=body, headers={"Content-Type": "application/json"})
        assert response.status_code == 422 and "override_settings" in response.json()["detail"][0]["loc"]
        assert pipe.calls == 0


# -- 6. one sentence, never a traceback (CLI and training) --------------------------------------------------------
def _bad_header_file(path: Path, header) -> Path:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * 64)
    return path


@pytest.fixture(scope="module")
def bad_files(root):
    files = {"list header": _bad_header_file(root / "list.safetensors", [1, 2]),
             "bad offsets": _bad_header_file(root / "offsets.safetensors", {"t": {"dtype": "F32", "shape": [1], "data_offsets": "ab"}}),
             "number metadata": _bad_header_file(root / "meta.safetensors", {"__metadata__": {"format": 5, "config": 7}}),
             "bad config": _bad_header_file(root / "config.safetensors", {"__metadata__": {"format": "noisecraft", "config": "[1]"}})}
    return files


@pytest.mark.parametrize("what", ["list header", "bad offsets", "number metadata", "bad config"])
@pytest.mark.parametrize("command", ["generate", "info", "serve"])
def test_malformed_safetensors_headers_are_one_sentence(bad_files, what, command):
    file = bad_files[what]
    args = {"generate": ["generate", "x", "--model", file], "info": ["info", file],
            "serve": ["serve", "--model", file, "--port", "0"]}[command]
    one_sentence(run_cli(*map(str, args), timeout=120))


def test_cli_input_errors_are_one_sentence_before_any_work(root, text_model, tmp_path):
    (tmp_path / "a-file").write_text("not a folder")
    bomb = tmp_path / "bomb.png"
    Image.new("1", (10_000, 10_000)).save(bomb)  # 100 M pixels in a few kB
    Image.new("RGB", (16, 16)).save(tmp_path / "in.bmp")
    Image.new("RGB", (16, 16)).save(tmp_path / "in.png")
    latent = model_file(root, "latent", text=False)
    cases = [
        (["generate", "x", "--model", text_model, "--out", tmp_path / "a-file" / "x.png"], "cannot write"),
        (["generate", "x", "--model", latent, "--init-image", bomb], "pixels"),
        (["generate", "x", "--model", latent, "--init-image", tmp_path / "in.png", "--mask", bomb], "pixels"),
        (["generate", "x", "--model", latent, "--init-image", tmp_path / "none.png"], "no such file"),
        (["generate", "x", "--model", latent, "--init-image", tmp_path / "in.bmp"], "PNG, JPEG or WebP"),
        (["generate", "x", "--model", latent, "--init-image", tmp_path / "in.png", "--outpaint", "99999"], "--outpaint"),
        (["serve", "--model", text_model, "--max-size", "-5", "--port", "0"], "--max-size"),
        (["serve", "--model", text_model, "--api-key", "   ", "--port", "0"], "API key"),
        (["serve", "--model", text_model, "--api-key", "short", "--port", "0"], "API key"),
    ]
    for args, words in cases:
        assert words in one_sentence(run_cli(*map(str, args))), args


def test_a_prompt_that_is_not_utf8_is_one_sentence(text_model, tmp_path):
    result = subprocess.run([sys.executable, "-m", "noisecraft.cli", "generate", b"caf\xe9 au lait", "--model", str(text_model),
                             "--out", str(tmp_path / "x.png")], capture_output=True, timeout=300)
    result.stderr = result.stderr.decode("utf-8", "replace")
    assert "not text" in one_sentence(result)


def test_training_input_errors_are_one_sentence(tmp_path):
    color_dataset(tmp_path / "data")
    config = tmp_path / "c.toml"
    config.write_text('[model]\nkind = "pixel"\nimage_size = 16\ntext_encoder = ""\n'
                      'unet = { model_channels = 32, channel_mult = [1, 2], num_res_blocks = 1, attention_resolutions = [], num_head_channels = 16 }\n'
                      '[data]\npath = "data"\n[train]\nsteps = 2\nbatch_size = 2\nsample_every = 0\nout = "run"\n')
    for setting in ("train.lr=nan", "train.lr=-1", "train.steps=2.5", "train.ema_decay=1.5", "train.precision='fp8'"):
        assert setting.split("=")[0] in one_sentence(run_cli("train", config, "--no-progress", "--set", setting)), setting
    assert run_cli("train", config, "--no-progress").returncode == 0
    # the same run folder, a bigger model: the checkpoint no longer fits
    config.write_text(config.read_text().replace("model_channels = 32", "model_channels = 64"))
    assert "different model" in one_sentence(run_cli("train", config, "--no-progress", "--steps", "4"))
    (tmp_path / "run" / "checkpoint.safetensors").write_bytes(b"\x10\0\0\0\0\0\0\0{" + b" " * 40)
    one_sentence(run_cli("train", config, "--no-progress", "--steps", "4"))


def test_a_caption_that_is_not_utf8_skips_its_image_with_a_warning(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for k, colour in enumerate(["red", "blue", "green"]):
        Image.new("RGB", (16, 16), colour).save(data / f"{k}.png")
        (data / f"{k}.txt").write_text(f"a {colour} square", encoding="utf-8")
    (data / "1.txt").write_bytes("a bl\xe9u square".encode("latin-1"))
    from noisecraft.train.data import load_image_folder

    logged = []
    dataset = load_image_folder(data, 16, log=logged.append)
    assert len(dataset) == 2 and any("1.txt" in line and "UTF-8" in line for line in logged)
    (data / "metadata.jsonl").write_bytes(b'{"file_name": "0.png", "text": "caf\xe9"}\n')
    with pytest.raises(UserError, match="not UTF-8"):
        load_image_folder(data, 16)


# -- should fix --------------------------------------------------------------------------------------------
def test_cross_site_posts_are_refused(server):
    url, _ = server
    evil = httpx.post(url + "/sdapi/v1/interrupt", headers={"Origin": "http://evil.example",
                                                            "Content-Type": "application/x-www-form-urlencoded"})
    assert evil.status_code == 403
    assert httpx.post(url + "/sdapi/v1/interrupt", headers={"Origin": url}).status_code == 200  # the page itself
    assert httpx.post(url + "/sdapi/v1/interrupt").status_code == 200  # clients that are not browsers send no Origin
    assert httpx.get(url + "/sdapi/v1/options", headers={"Origin": "http://evil.example"}).status_code == 200  # reads: CORS


def test_api_keys_are_compared_as_bytes_and_weak_ones_refused(text_model):
    key = "ключ-секрет-42"
    with running_server(make_pool({entry_for(text_model): cached_pipeline(text_model)}), ServerSettings(api_key=key)) as url:
        good = httpx.get(url + "/sdapi/v1/options", headers={"Authorization": ("Bearer " + key).encode("utf-8")})
        assert good.status_code == 200
        wrong = httpx.get(url + "/sdapi/v1/options", headers={"Authorization": ("Bearer " + key[:-1] + "3").encode("utf-8")})
        assert wrong.status_code == 401
    for weak in ("", "   ", "short", "has space in it", "tab\tkey-long"):
        with pytest.raises(UserError, match="API key"):
            check_exposure("127.0.0.1", weak, insecure=False)


def test_a_damaged_subject_index_is_refused(indexed_model, tmp_path):
    data = bytearray(indexed_model.read_bytes())
    (size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + size])
    start, end = header["subjects.vectors"]["data_offsets"]
    data[8 + size + start + (end - start) // 2] ^= 0x40  # one flipped bit in a phrase vector
    damaged = tmp_path / "damaged.safetensors"
    damaged.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="subject index"):
        Pipeline.from_pretrained(damaged, device="cpu")
    # a file without the checksum (written before it existed) is still checked for consistency
    config, parts, _ = load_model_file(indexed_model)
    parts["subjects"]["vectors"] = parts["subjects"]["vectors"] * 3
    tensors = {f"{p}.{k}": v for p, state in parts.items() for k, v in state.items()}
    write_safetensors(tmp_path / "old.safetensors", tensors, {"format": "noisecraft", "config": json.dumps(config.to_dict())})
    with pytest.raises(ModelFileError, match="subject index"):
        Pipeline.from_pretrained(tmp_path / "old.safetensors", device="cpu")


def test_out_never_overwrites_a_picture(text_model, tmp_path):
    out = tmp_path / "x.png"
    first = run_cli("generate", "a", "--model", str(text_model), "--steps", "1", "--seed", "1", "--out", str(out))
    assert first.returncode == 0, first.stderr
    before = out.read_bytes()
    second = run_cli("generate", "b", "--model", str(text_model), "--steps", "1", "--seed", "2", "--out", str(out))
    assert second.returncode == 0 and second.stdout.strip().endswith("x-1.png")
    assert out.read_bytes() == before and (tmp_path / "x-1.png").exists()


def test_only_png_jpeg_and_webp_are_read(server, root):
    latent = model_file(root, "latent", text=False)
    with running_server(make_pool({entry_for(latent): cached_pipeline(latent)})) as url:
        picture = Image.new("RGB", (16, 16), (200, 30, 30))
        for fmt in ("BMP", "GIF", "TIFF"):
            body = {"prompt": "", "steps": 1, "init_images": [_png_b64(picture, fmt)]}
            response = httpx.post(url + "/sdapi/v1/img2img", json=body, timeout=60)
            assert response.status_code == 422 and "PNG, JPEG or WebP" in response.json()["detail"][0]["msg"], fmt
        for fmt in ("PNG", "JPEG", "WEBP"):
            body = {"prompt": "", "steps": 1, "init_images": [_png_b64(picture, fmt)]}
            assert httpx.post(url + "/sdapi/v1/img2img", json=body, timeout=60).status_code == 200, fmt


def test_half_open_connections_are_closed(text_model):
    with running_server(make_pool({entry_for(text_model): cached_pipeline(text_model)}), header_timeout=1.0) as url:
        port = int(url.rsplit(":", 1)[1])
        for opening in (b"", b"GET /info HTTP/1.1\r\nHost: 127.0.0.1\r\n"):  # nothing at all; headers never finished
            sock = socket.create_connection(("127.0.0.1", port))
            sock.sendall(opening)
            sock.settimeout(6)
            started = time.monotonic()
            assert sock.recv(1024) == b"" and time.monotonic() - started < 4  # closed by the server
            sock.close()
        assert httpx.get(url + "/info").status_code == 200  # and the server serves on


def test_ctrl_c_answers_the_running_request_with_503(text_model):
    with serving("--model", text_model, "--device", "cpu") as (url, server):
        box = {}
        request = threading.Thread(target=lambda: box.setdefault("r", httpx.post(url + "/sdapi/v1/txt2img", timeout=60, json={
            "prompt": "a long one", "steps": 150, "width": 64, "height": 64, "batch_size": 4})))
        request.start()
        while httpx.get(url + "/sdapi/v1/progress?skip_current_image=true").json()["state"]["sampling_step"] < 1:
            time.sleep(0.05)
        server.send_signal(signal.SIGINT)
        request.join(30)
        assert box["r"].status_code == 503 and "shutting down" in box["r"].json()["detail"]
        assert server.wait(30) == 0
        assert "Traceback" not in server.stderr.read().decode()


def test_a_checkpoint_whose_text_encoder_does_not_fit_its_unet_is_refused_at_load(tmp_path):
    """Found while writing the polling benchmark: the mismatch was a 500 at the first picture, not an error at load."""
    from clip_helpers import CLIP_L, hf_state, hf_text_model, prefixed
    from sd_helpers import make_unet, make_vae, write_single_file

    text = prefixed("cond_stage_model.transformer.", hf_state(hf_text_model(CLIP_L, 3)))  # 128 wide
    file = write_single_file(tmp_path / "mixed.safetensors", make_unet("sd1", context=768), make_vae("sd1"), text)
    with pytest.raises(ModelFileError, match="mixes parts of different models"):
        Pipeline.from_pretrained(file, device="cpu")
