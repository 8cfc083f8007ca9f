"""The hostile and careless cases of issue 16, tried on a source tree through its CLI and HTTP API only.

    python scripts/hardening_probe.py [--src OTHER/src]      # a table: case, what happened

Run it on the tree before a change and after (`--src` points PYTHONPATH at that tree's src/) to get
the before/after table of the issue's closing note. It starts `noisecraft serve` processes on
loopback ports (each capped at 12 GB of address space) and runs `noisecraft` commands on tiny
random-weight models in a temporary folder.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import resource
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
from PIL import Image, PngImagePlugin

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from helpers import free_port, wait_for_server  # noqa: E402


MEMORY_CAP = 12 * 2**30  # the server's address space: a server that runs away fails alone, not the machine


def _cap_memory():
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))


class Serve:
    def __init__(self, env, *args):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen([sys.executable, "-m", "noisecraft.cli", "serve", "--port", str(self.port),
                                         "--device", "cpu", *map(str, args)], env=env, preexec_fn=_cap_memory,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        wait_for_server(self.url, self.process)

    def rss_mb(self) -> float:
        with open(f"/proc/{self.process.pid}/status") as handle:
            return next(int(line.split()[1]) for line in handle if line.startswith("VmRSS")) / 1024

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()


def cli(env, *args, timeout=300):
    try:
        result = subprocess.run([sys.executable, "-m", "noisecraft.cli", *map(str, args)], capture_output=True, env=env,
                                timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"accepted: still running after {timeout} s (stopped by the probe)"
    err = result.stderr.decode("utf-8", "replace").strip()
    lines = [line for line in err.splitlines() if not line.startswith("INFO:")]
    kind = "traceback" if "Traceback" in err else ("one sentence" if len(lines) == 1 else f"{len(lines)} lines")
    return f"exit {result.returncode}, {kind}" + (f": {lines[-1][:90]}" if lines and kind != "traceback" else "")


def wait_for_step(url: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while httpx.get(url + "/sdapi/v1/progress?skip_current_image=true", timeout=60).json()["state"]["sampling_step"] < 1:
        if time.monotonic() > deadline:
            raise RuntimeError("the job never started")
        time.sleep(0.05)


def attempt(fn):
    """fn(), or what went wrong (a timeout, a dropped connection) as text."""
    try:
        return fn()
    except Exception as error:
        return f"{type(error).__name__}"


def status(response) -> str:
    if isinstance(response, str):
        return response
    try:
        detail = response.json().get("detail")
        detail = detail[0]["msg"] if isinstance(detail, list) else detail
    except Exception:
        detail = response.text[:60]
    return f"{response.status_code}" + (f" ({str(detail)[:70]})" if response.status_code >= 400 else "")


def png_b64(image, fmt="PNG", pnginfo=None) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, pnginfo=pnginfo)
    return base64.b64encode(buffer.getvalue()).decode()


def probe(env, tmp: Path) -> dict[str, str]:
    from helpers import color_dataset, tiny_model_file

    rows: dict[str, str] = {}
    text = tiny_model_file(tmp / "text.safetensors")
    latent = tiny_model_file(tmp / "latent" / "model.safetensors", kind="latent", text=False)
    subprocess.run([sys.executable, "-c", f"""
import sys; sys.path.insert(0, {str(Path(__file__).resolve().parents[1] / 'tests')!r})
from helpers import tiny_model_file
from noisecraft.checkpoints import load_model_file, save_model_file
try:
    from noisecraft.text.minilm import load_text_encoder
    from noisecraft.text.subjects import SubjectIndex
except ImportError:
    from noisecraft.models.text import load_text_encoder
    from noisecraft.subjects import SubjectIndex
f = tiny_model_file(__import__('pathlib').Path({str(tmp / 'indexed.safetensors')!r}))
c, p, _ = load_model_file(f)
save_model_file(f, c, p | {{'subjects': SubjectIndex.build(load_text_encoder('minilm'), {{'rocket, space': 'rocket', 'palm tree, beach': 'palm tree'}}).to_part()}})
"""], env=env, check=True)
    indexed = tmp / "indexed.safetensors"

    # -- the server cases
    server = Serve(env, "--model", latent, "--model", text, "--model", indexed, "--max-size", 512)
    try:
        url = server.url
        stop = threading.Event()
        job = threading.Thread(target=lambda: attempt(lambda: httpx.post(url + "/sdapi/v1/txt2img", timeout=300, json={
            "prompt": "", "steps": 40, "width": 256, "height": 256, "batch_size": 4})), daemon=True)
        before = server.rss_mb()
        job.start()
        wait_for_step(url)
        timings, errors, peak = [], [], [before]

        def poll():
            while not stop.is_set():
                started = time.monotonic()
                try:
                    httpx.get(url + "/sdapi/v1/progress", timeout=60)
                    timings.append(time.monotonic() - started)
                except httpx.HTTPError as error:
                    errors.append(type(error).__name__)

        pollers = [threading.Thread(target=poll, daemon=True) for _ in range(30)]
        for thread in pollers:
            thread.start()
        for _ in range(20):
            time.sleep(0.25)
            peak.append(server.rss_mb())
        stop.set()
        for thread in pollers:
            thread.join(120)
        job.join(300)
        median = f"median {sorted(timings)[len(timings) // 2]:.2f} s" if timings else "none answered"
        rows["30 clients poll /progress during a 256x256 job"] = (f"{len(timings)} polls answered ({median}), {len(errors)} failed "
                                                                 f"{sorted(set(errors))}, server RSS +{max(peak) - before:.0f} MB"
                                                                 + ("" if server.process.poll() is None else
                                                                    f", the server died (exit {server.process.poll()})"))
        server.process.kill()  # a fresh server for the other cases, whatever state that one is in
        server = Serve(env, "--model", indexed, "--model", latent, "--model", text, "--max-size", 512)
        url = server.url
        box, lags = {}, []
        slow = threading.Thread(target=lambda: box.setdefault("r", attempt(lambda: httpx.post(url + "/sdapi/v1/txt2img", timeout=300, json={
            "prompt": "a," * 999 + "a", "steps": 1, "width": 16, "height": 16}))))
        slow.start()
        while slow.is_alive():
            started = time.monotonic()
            attempt(lambda: httpx.get(url + "/sdapi/v1/progress?skip_current_image=true", timeout=120))
            lags.append(time.monotonic() - started)
            time.sleep(0.02)
        rows['prompt "a," x 1000: /progress while it is read'] = f"slowest answer {max(lags):.2f} s; the request: {status(box['r'])}"
        big = attempt(lambda: httpx.post(url + "/sdapi/v1/txt2img", timeout=300, json={
            "prompt": "x" * 2**20, "steps": 1, "width": 16, "height": 16, "send_images": False}))
        rows["a 1 MB prompt"] = status(big)
        rows["Host: evil.example"] = status(httpx.get(url + "/sdapi/v1/options", headers={"Host": "evil.example"}))

        def chunks():
            for _ in range(80):
                yield b" " * 2**20

        started = time.monotonic()
        response = attempt(lambda: httpx.post(url + "/sdapi/v1/png-info", content=chunks(), headers={"Content-Type": "application/json"},
                                              timeout=120))
        rows["80 MB chunked body (limit 64 MB)"] = f"{status(response)} after {time.monotonic() - started:.1f} s"
        raw = '{"prompt": "a \\ud800", "steps": 1, "width": 16, "height": 16}'
        rows["lone surrogate in prompt"] = status(httpx.post(url + "/sdapi/v1/txt2img", content=raw, timeout=120,
                                                             headers={"Content-Type": "application/json"}))
        raw = '{"prompt": "a", "negative_prompt": "\\ud800", "steps": 1, "width": 16, "height": 16}'
        rows["lone surrogate in negative prompt"] = status(httpx.post(url + "/sdapi/v1/txt2img", content=raw, timeout=120,
                                                                      headers={"Content-Type": "application/json"}))
        info = PngImagePlugin.PngInfo()
        info.add_text("parameters", 'a tree\nSteps: 2, Sampler: "Euler \\q a", Seed: 1')
        rows["png-info, parameters with a bad JSON escape"] = status(httpx.post(url + "/sdapi/v1/png-info", timeout=60, json={
            "image": png_b64(Image.new("RGB", (8, 8)), pnginfo=info)}))
        nested = {}
        for _ in range(300):
            nested = {"a": nested}
        rows["override_settings nested 300 deep"] = status(httpx.post(url + "/sdapi/v1/txt2img", timeout=120, content=json.dumps(
            {"prompt": "x", "steps": 1, "width": 16, "height": 16, "override_settings": nested}),
            headers={"Content-Type": "application/json"}))
        rows["cross-site form POST to /interrupt"] = status(httpx.post(url + "/sdapi/v1/interrupt", headers={
            "Origin": "http://evil.example", "Content-Type": "application/x-www-form-urlencoded"}))
        rows["BMP start picture"] = status(httpx.post(url + "/sdapi/v1/img2img", timeout=120, json={
            "prompt": "", "steps": 1, "init_images": [png_b64(Image.new("RGB", (16, 16)), "BMP")],
            "override_settings": {"sd_model_checkpoint": "latent"}}))
        sock = socket.create_connection(("127.0.0.1", server.port))
        sock.sendall(b"GET /info HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        sock.settimeout(20)
        started = time.monotonic()
        try:
            sock.recv(1024)
            rows["half-open connection (headers never finished)"] = f"closed by the server after {time.monotonic() - started:.0f} s"
        except socket.timeout:
            rows["half-open connection (headers never finished)"] = "still open after 20 s"
        sock.close()
        box = {}
        held = threading.Thread(target=lambda: box.setdefault("r", attempt(lambda: httpx.post(url + "/sdapi/v1/txt2img", timeout=120, json={
            "prompt": "long", "steps": 150, "width": 128, "height": 128, "batch_size": 16,
            "override_settings": {"sd_model_checkpoint": "text"}}))))
        held.start()
        wait_for_step(url)
        server.process.send_signal(signal.SIGINT)
        held.join(120)
        try:
            code = server.process.wait(90)
        except subprocess.TimeoutExpired:
            code = "none: still running 90 s later"
        rows["Ctrl+C with a job running"] = (f"the request: {status(box['r']) if 'r' in box else 'no answer'}; "
                                             f"server exit {code}")
    finally:
        server.stop()

    key = "ключ-секрет-42"
    server = Serve(env, "--model", text, "--api-key", key)
    try:
        response = httpx.get(server.url + "/sdapi/v1/options", headers={"Authorization": ("Bearer " + key).encode()})
        rows["non-ASCII API key sent by Bearer"] = status(response)
    finally:
        server.stop()
    rows["--api-key '   ' at start"] = cli(env, "serve", "--model", text, "--api-key", "   ", "--port", "0", timeout=60)
    rows["--max-size -5"] = cli(env, "serve", "--model", text, "--max-size", "-5", "--port", "0", timeout=60)

    # -- the CLI and training cases
    (tmp / "a-file").write_text("x")
    rows["--out under a file (unwritable)"] = cli(env, "generate", "x", "--model", text, "--out", tmp / "a-file" / "x.png")
    Image.new("1", (10_000, 10_000)).save(tmp / "bomb.png")
    rows["--init-image: 100 M-pixel PNG of 12 kB"] = cli(env, "generate", "x", "--model", latent, "--init-image", tmp / "bomb.png")
    result = subprocess.run([sys.executable, "-m", "noisecraft.cli", "generate", b"caf\xe9", "--model", str(text), "--out",
                             str(tmp / "u.png")], capture_output=True, env=env, timeout=300)
    rows["prompt argument that is not UTF-8"] = ("traceback" if b"Traceback" in result.stderr else
                                                 f"exit {result.returncode}, one sentence")
    for name, header in {"header is a list": [1], "data_offsets not numbers": {"t": {"dtype": "F32", "shape": [1], "data_offsets": "ab"}},
                         "metadata not text": {"__metadata__": {"format": 5}}}.items():
        raw = json.dumps(header).encode()
        bad = tmp / f"{name.replace(' ', '-')}.safetensors"
        bad.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * 64)
        rows[f"generate --model <{name}>"] = cli(env, "generate", "x", "--model", bad)
        rows[f"info <{name}>"] = cli(env, "info", bad)
    first = cli(env, "generate", "a", "--model", text, "--steps", "1", "--seed", "1", "--out", tmp / "same.png")
    content = (tmp / "same.png").read_bytes()
    cli(env, "generate", "b", "--model", text, "--steps", "1", "--seed", "2", "--out", tmp / "same.png")
    rows["--out to an existing file"] = "overwritten" if (tmp / "same.png").read_bytes() != content else \
        f"kept; the new one is {'same-1.png' if (tmp / 'same-1.png').exists() else '?'} ({first})"
    data = tmp / "subjects-damaged.safetensors"
    raw = bytearray(indexed.read_bytes())
    (size,) = struct.unpack("<Q", raw[:8])
    start, end = json.loads(raw[8:8 + size])["subjects.vectors"]["data_offsets"]
    raw[8 + size + (start + end) // 2] ^= 0x40
    data.write_bytes(bytes(raw))
    rows["model whose subject index has a flipped bit"] = cli(env, "generate", "a rocket", "--model", data, "--steps", "1",
                                                             "--out", tmp / "s.png")
    color_dataset(tmp / "data")
    config = tmp / "c.toml"
    config.write_text('[model]\nkind = "pixel"\nimage_size = 16\ntext_encoder = ""\n'
                      'unet = { model_channels = 32, channel_mult = [1, 2], num_res_blocks = 1, attention_resolutions = [], num_head_channels = 16 }\n'
                      '[data]\npath = "data"\n[train]\nsteps = 2\nbatch_size = 2\nsample_every = 0\nout = "run"\n')
    rows["train --set train.lr=nan"] = cli(env, "train", config, "--no-progress", "--set", "train.lr=nan", "--steps", "1")
    cli(env, "train", config, "--no-progress")
    config.write_text(config.read_text().replace("model_channels = 32", "model_channels = 64"))
    rows["resume after changing the model size"] = cli(env, "train", config, "--no-progress", "--steps", "4")
    (tmp / "run" / "checkpoint.safetensors").write_bytes(b"\x10\0\0\0\0\0\0\0{" + b" " * 40)
    rows["resume from a damaged checkpoint"] = cli(env, "train", config, "--no-progress", "--steps", "4")
    sidecars = tmp / "latin1"
    sidecars.mkdir()
    for k in range(2):
        Image.new("RGB", (16, 16), "red").save(sidecars / f"{k}.png")
    (sidecars / "0.txt").write_bytes("caf\xe9".encode("latin-1"))
    config.write_text(config.read_text().replace('path = "data"', 'path = "latin1"').replace('out = "run"', 'out = "run2"'))
    rows["train on a caption file that is not UTF-8"] = cli(env, "train", config, "--no-progress", "--steps", "1")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--src", default=None, help="the src/ folder of the tree to probe (default: this one)")
    args = parser.parse_args()
    env = dict(os.environ, PYTHONPATH=str(Path(args.src).resolve())) if args.src else dict(os.environ)
    with tempfile.TemporaryDirectory() as tmp:
        rows = probe(env, Path(tmp))
    print("| case | what happened |\n|---|---|")
    for case, result in rows.items():
        print(f"| {case} | {result.replace('|', '/')} |")
    print(f"\nprobe's own peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
