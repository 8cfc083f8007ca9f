"""Tiny models and datasets shared by the tests: everything small enough for a 2-core CPU."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from PIL import Image

from noisecraft.train.config import DataSection, ModelSection, SampleSection, TrainConfig, TrainSection

COLORS = {"red": (220, 30, 30), "green": (30, 200, 60), "blue": (30, 60, 220), "yellow": (240, 220, 40)}

TINY_UNET = {
    "model_channels": 32,
    "channel_mult": [1, 2],
    "num_res_blocks": 1,
    "attention_resolutions": [2],
    "transformer_depth": 1,
    "num_head_channels": 16,
}

TINY_VAE = {"ch": 32, "ch_mult": [1, 2], "num_res_blocks": 1, "z_channels": 4, "embed_dim": 4}


def color_dataset(root: Path, size: int = 16, per_color: int = 2) -> Path:
    """Solid-colour squares with a half-size white square in the middle, captioned by colour."""
    rows = []
    for name, rgb in COLORS.items():
        for k in range(per_color):
            image = Image.new("RGB", (size, size), rgb)
            image.paste((255, 255, 255), (size // 4, size // 4, 3 * size // 4, 3 * size // 4))
            file = f"images/{name}-{k}.png"
            (root / "images").mkdir(parents=True, exist_ok=True)
            image.save(root / file)
            rows.append({"file_name": file, "text": f"a {name} square", "texts": [f"a {name} square", name]})
    (root / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def tiny_config(tmp: Path, *, kind: str = "pixel", text: bool = True, steps: int = 6, **train) -> TrainConfig:
    model = ModelSection(kind=kind, name="tiny", image_size=16, text_encoder="minilm" if text else None,
                         pooled=text, unet=dict(TINY_UNET), vae=dict(TINY_VAE))
    defaults = dict(steps=steps, batch_size=4, lr=1e-3, warmup_steps=2, log_every=2, sample_every=0,
                    checkpoint_every=3, out=str(tmp / "run"))
    return TrainConfig(model=model, data=DataSection(path=str(tmp / "data")),
                       train=TrainSection(**(defaults | train)),
                       sample=SampleSection(prompts=["a red square"], steps=4), base_dir=tmp)


def tiny_model_file(path: Path, *, kind: str = "pixel", text: bool = True, seed: int = 0, learnable: bool = False) -> Path:
    """A random-weight model file of the given kind, as `noisecraft train` would write it; `learnable`: with a
    non-zero output layer (a fresh UNet's is zero, so no adapter inside it could learn anything)."""
    import torch

    from noisecraft.checkpoints import ModelConfig, save_model_file
    from noisecraft.models.unet import UNet, UNetConfig
    from noisecraft.models.vae import AutoencoderKL, VAEConfig

    torch.manual_seed(seed)
    vae = AutoencoderKL(VAEConfig(**TINY_VAE)) if kind == "latent" else None
    channels = vae.config.embed_dim if vae else 3
    unet_config = UNetConfig(**TINY_UNET | {"in_channels": channels, "out_channels": channels,
                                            "context_dim": 384 if text else None, "adm_in_channels": 384 if text else None})
    unet = UNet(unet_config)
    if learnable:
        with torch.no_grad():
            unet.out[-1].weight.copy_(torch.randn(unet.out[-1].weight.shape) * 0.05)
    config = ModelConfig(kind=kind, unet=unet_config, vae=vae.config if vae else None,
                         text_encoder="minilm" if text else None, image_size=16, name="tiny",
                         defaults={"steps": 4, "guidance_scale": 3.0, "sampler": "euler"})
    parts = {"unet": unet.state_dict()} | ({"vae": vae.state_dict()} if vae else {})
    return save_model_file(path, config, parts)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_server(url: str, process: subprocess.Popen, timeout: float = 120) -> None:
    """Until `noisecraft serve` at `url` answers (a RuntimeError with its last words if it dies or takes too long)."""
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        try:
            httpx.get(url + "/queue", timeout=2)
            return
        except httpx.HTTPError:
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError("the server did not start: " + (process.stderr.read().decode()[-2000:] if process.stderr else ""))
            time.sleep(0.2)


@contextmanager
def serving(*args, env=None, **popen):
    """`noisecraft serve ARGS --port P` as a child process; yields (url, process) once it answers, then stops it."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "noisecraft.cli", "serve", *map(str, args), "--port", str(port)],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_server(url, process)
        yield url, process
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
