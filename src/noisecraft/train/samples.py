"""Sample grids written during training, so progress can be seen, not only read off a loss."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image, ImageDraw

from ..images import to_pil
from ..pipeline import Pipeline
from ..pngmeta import save_png
from ..settings import Request


def grid(images: list[Image.Image], columns: int) -> Image.Image:
    width, height = images[0].size
    rows = -(-len(images) // columns)
    sheet = Image.new("RGB", (columns * width, rows * height), "white")
    for index, image in enumerate(images):
        sheet.paste(image.convert("RGB"), ((index % columns) * width, (index // columns) * height))
    return sheet


@torch.no_grad()
def sample_grid(trainer, path: Path) -> Path:
    """One row per sample prompt (4 seeds each) for diffusion models; originals over reconstructions for a VAE."""
    config = trainer.model_config
    if config.kind == "vae":
        x = trainer.data.images[:: max(1, len(trainer.data) // 8)][:8].float().div(127.5).sub(1).to(trainer.device)
        recon = trainer.ema.decode(trainer.ema.encode(x).mode()).clamp(-1, 1)
        pictures = [to_pil((t + 1) / 2) for t in torch.cat([x, recon])]
        return save_png(grid(pictures, 8), path, parameters=f"autoencoder reconstructions, step {trainer.step}")
    s = trainer.config.sample
    pipe = Pipeline(config, trainer.ema, trainer.vae, trainer.text_encoder, device=trainer.device, name=config.name)
    pictures = []
    for prompt in s.prompts:
        pictures += pipe(Request(prompt, steps=s.steps, guidance_scale=s.guidance_scale, sampler=s.sampler, seed=s.seed, num_images=4))
    sheet = grid(pictures, 4)
    labelled = Image.new("RGB", (sheet.width + 160, sheet.height), "white")
    labelled.paste(sheet, (160, 0))
    draw = ImageDraw.Draw(labelled)
    for row, prompt in enumerate(s.prompts):
        draw.text((4, row * pictures[0].height + 4), prompt[:24], fill="black")
    return save_png(labelled, path, parameters=f"training samples, step {trainer.step}")
