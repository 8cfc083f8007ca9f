"""Golden outputs: what `noisecraft` prints and what `noisecraft serve` answers, recorded once and
compared on every run, so a refactor that changes a byte a user sees is caught.

Everything goes through the installed command (`python -m noisecraft.cli ...`) and a real
`noisecraft serve` process, never through internal classes, so the recording outlives any
reshaping of the code behind them.

    python tests/golden.py --write      # record tests/golden/ anew (after a change that is meant)

Pictures are stored as PNG files and compared pixel by pixel (`MAX_PIXEL_DIFFERENCE`: CPU kernels
may round differently on another processor); every text (stdout, stderr, parameters, JSON bodies)
is compared exactly, after `normalise` replaces what varies between runs (temporary folders,
timings, timestamps, ports).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))

from helpers import serving, tiny_model_file  # noqa: E402

GOLDEN = Path(__file__).parent / "golden"
MAX_PIXEL_DIFFERENCE = 2  # of 255


def cli(*args, cwd=None) -> dict:
    result = subprocess.run([sys.executable, "-m", "noisecraft.cli", *map(str, args)], capture_output=True, text=True,
                            cwd=cwd, timeout=300)
    return {"rc": result.returncode, "stdout": result.stdout, "stderr": result.stderr}


HASHES: dict[str, str] = {}  # a test model's A1111 hash -> its name (see `record`)


def normalise(text: str, tmp: Path) -> str:
    import noisecraft

    text = text.replace(str(tmp), "TMP").replace(str(Path(noisecraft.__file__).parent), "PACKAGE")
    for digest, name in HASHES.items():
        text = text.replace(digest, name)
    text = re.sub(r"in \d+\.\d s", "in N s", text)
    text = re.sub(r'"job_timestamp": "\d+"', '"job_timestamp": "T"', text)
    return text


def png_record(data: bytes, name: str, pictures: dict) -> dict:
    """A picture as its parameters text and a file name under golden/ (the pixels are compared there)."""
    image = Image.open(io.BytesIO(data))
    image.load()
    pictures[name] = image
    parameters = image.info.get("parameters")
    for digest, label in HASHES.items():
        parameters = parameters.replace(digest, label) if parameters else parameters
    return {"png": name, "size": list(image.size), "mode": image.mode, "parameters": parameters}


def record(tmp: Path) -> tuple[dict, dict[str, Image.Image]]:
    """Run the commands and requests; return the texts and the pictures they made."""
    tmp.mkdir(parents=True, exist_ok=True)
    pictures: dict[str, Image.Image] = {}
    texts: dict[str, object] = {}
    pixel = tiny_model_file(tmp / "tiny.safetensors")
    latent = tiny_model_file(tmp / "latent" / "model.safetensors", kind="latent", text=False)
    # The same weights do not always make the same file: safetensors writes its metadata in a random
    # order, so a test model's hash varies between runs. Each is compared by name instead.
    for file, name in ((pixel, "HASH-TINY"), (latent, "HASH-LATENT")):
        HASHES[hashlib.sha256(file.read_bytes()).hexdigest()[:10]] = name
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(tmp / "in.png")
    mask = np.zeros((16, 16), dtype=np.uint8)
    mask[:, 8:] = 255
    Image.fromarray(mask).save(tmp / "mask.png")

    def generate(key: str, *args, files: list[str]):
        out = cli("generate", *args)
        out["stdout"], out["stderr"] = normalise(out["stdout"], tmp), normalise(out["stderr"], tmp)
        out["files"] = [png_record(Path(tmp, f).read_bytes(), f"{key}-{k}.png", pictures) for k, f in enumerate(files)]
        texts[key] = out

    generate("cli-txt2img", "a palm tree", "--model", pixel, "--steps", 3, "--seed", 5, "--num-images", 2, "--size", "16x32",
             "--sampler", "euler_a", "--negative", "blurry", "--guidance", 4, "--out", tmp / "out",
             files=["out/a-palm-tree-5.png", "out/a-palm-tree-6.png"])
    generate("cli-builtin", "a palm tree", "--steps", 3, "--seed", 2, "--out", tmp / "palm.png", files=["palm.png"])
    generate("cli-builtin-paraphrase", "a carved halloween pumpkin", "--steps", 3, "--seed", 1, "--sampler", "ddim",
             "--out", tmp / "pumpkin.png", files=["pumpkin.png"])
    generate("cli-img2img", "x", "--model", latent, "--init-image", tmp / "in.png", "--strength", 0.6, "--steps", 4,
             "--seed", 1, "--out", tmp / "i2i.png", files=["i2i.png"])
    generate("cli-inpaint", "x", "--model", latent, "--init-image", tmp / "in.png", "--mask", tmp / "mask.png",
             "--steps", 4, "--seed", 2, "--sampler", "dpmpp_2m_sde", "--out", tmp / "inpaint.png", files=["inpaint.png"])
    generate("cli-outpaint", "x", "--model", latent, "--init-image", tmp / "in.png", "--outpaint", "4,0,4,0",
             "--steps", 3, "--seed", 3, "--out", tmp / "wide.png", files=["wide.png"])
    for key, args in {"cli-info-tiny": ["info", pixel], "cli-info-latent": ["info", latent.parent], "cli-info-builtin": ["info"],
                      "cli-samplers": ["samplers"],
                      "cli-error-size": ["generate", "x", "--model", pixel, "--size", "17x16"],
                      "cli-error-sampler": ["generate", "x", "--model", pixel, "--sampler", "nope"],
                      "cli-error-empty": ["generate", "", "--model", pixel],
                      "cli-error-strength": ["generate", "x", "--model", pixel, "--strength", "0.5"]}.items():
        out = cli(*args)
        texts[key] = {k: normalise(v, tmp) if isinstance(v, str) else v for k, v in out.items()}
    texts["http"] = record_http(tmp, pixel, latent, pictures)
    return texts, pictures


def record_http(tmp: Path, pixel: Path, latent: Path, pictures: dict) -> dict:
    import httpx

    with serving("--model", pixel, "--model", latent.parent, "--device", "cpu") as (url, _):
        answers: dict[str, object] = {}

        def ask(key: str, method: str, path: str, body=None):
            response = httpx.request(method, url + path, json=body, timeout=120)
            try:
                payload = response.json()
            except ValueError:
                payload = response.text
            if isinstance(payload, dict) and isinstance(payload.get("images"), list):
                payload["images"] = [png_record(base64.b64decode(b), f"{key}-{k}.png", pictures)
                                     for k, b in enumerate(payload["images"])]
            if isinstance(payload, dict) and isinstance(payload.get("info"), str) and payload["info"].startswith("{"):
                payload["info"] = json.loads(normalise(payload["info"], tmp))
            answers[key] = {"status": response.status_code, "body": json.loads(normalise(json.dumps(payload), tmp))}
            return payload

        for path in ("/info", "/sdapi/v1/sd-models", "/sdapi/v1/options", "/sdapi/v1/samplers", "/sdapi/v1/schedulers",
                     "/sdapi/v1/scripts", "/queue", "/sdapi/v1/progress"):
            ask("GET " + path, "GET", path)
        answers["GET /sdapi/v1/progress"]["body"]["state"]["job_timestamp"] = "T"
        ask("txt2img", "POST", "/sdapi/v1/txt2img", {"prompt": "a red square", "negative_prompt": "blurry", "seed": 7,
                                                     "batch_size": 2, "n_iter": 2, "steps": 3, "cfg_scale": 4, "width": 16,
                                                     "height": 32, "sampler_name": "Euler a"})
        ask("txt2img-karras", "POST", "/sdapi/v1/txt2img", {"prompt": "a blue square", "seed": 123, "steps": 4,
                                                            "sampler_name": "DPM++ 2M", "scheduler": "Karras",
                                                            "width": 16, "height": 16})
        ask("txt2img-defaults", "POST", "/sdapi/v1/txt2img", {"prompt": "a green square", "seed": 1})
        image = base64.b64encode((tmp / "in.png").read_bytes()).decode()
        mask = base64.b64encode((tmp / "mask.png").read_bytes()).decode()
        ask("img2img", "POST", "/sdapi/v1/img2img", {"prompt": "", "seed": 3, "steps": 4, "denoising_strength": 0.5,
                                                     "sampler_name": "Euler", "init_images": [image], "mask": mask,
                                                     "override_settings": {"sd_model_checkpoint": "latent"}})
        ask("png-info", "POST", "/sdapi/v1/png-info", {"image": base64.b64encode(_png_bytes(pictures["txt2img-0.png"])).decode()})
        for key, body in {"422-width": {"width": 17}, "422-sampler": {"sampler_name": "nope"},
                          "422-prompt": {"prompt": "   "}, "422-cfg": {"cfg_scale": 200}, "422-scheduler": {"scheduler": "sgm"},
                          "422-model": {"override_settings": {"sd_model_checkpoint": "nope"}}}.items():
            ask(key, "POST", "/sdapi/v1/txt2img", {"prompt": "a square", "steps": 2, "width": 16, "height": 16} | body)
        ask("options-set", "POST", "/sdapi/v1/options", {"sd_model_checkpoint": "latent"})
        ask("GET /sdapi/v1/options after", "GET", "/sdapi/v1/options")
        return answers


def _png_bytes(image: Image.Image) -> bytes:
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    if image.info.get("parameters"):
        info.add_text("parameters", image.info["parameters"])
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def pixel_difference(a: Image.Image, b: Image.Image) -> int:
    x, y = np.asarray(a, dtype=np.int16), np.asarray(b, dtype=np.int16)
    if x.shape != y.shape:
        return 255
    return int(np.abs(x - y).max()) if x.size else 0


def write(tmp: Path) -> None:
    texts, pictures = record(tmp)
    GOLDEN.mkdir(exist_ok=True)
    for old in GOLDEN.glob("*.png"):
        old.unlink()
    for name, image in pictures.items():
        image.save(GOLDEN / name, pnginfo=None)
    (GOLDEN / "outputs.json").write_text(json.dumps(texts, indent=1, ensure_ascii=False, sort_keys=True) + "\n")
    digest = hashlib.sha256((GOLDEN / "outputs.json").read_bytes()).hexdigest()[:12]
    print(f"wrote {len(pictures)} pictures and outputs.json ({digest}) to {GOLDEN}")


if __name__ == "__main__":
    import tempfile

    if "--write" not in sys.argv:
        sys.exit("usage: python tests/golden.py --write")
    os.environ.setdefault("PYTHONHASHSEED", "0")
    with tempfile.TemporaryDirectory() as tmp:
        write(Path(tmp))
