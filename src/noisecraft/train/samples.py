"""Sample grids written during training, so progress can be seen, not only read off a loss."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont

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


LABEL_WIDTH = 150


def labelled_rows(rows: list[tuple[str, list[Image.Image]]], cell: int | None = 128, title: str = "") -> Image.Image:
    """Rows of pictures on white, each with its label on the left (none when every label is empty) and an
    optional title on top; `cell`: each picture scaled so its longer side is that many pixels (None: as is)."""
    font = ImageFont.load_default(14)
    scaled = []
    for label, pictures in rows:
        if cell is not None:
            pictures = [p.resize((round(p.width * cell / max(p.size)), round(p.height * cell / max(p.size))),
                                 Image.Resampling.LANCZOS) for p in pictures]
        scaled.append((label, pictures))
    left = LABEL_WIDTH if any(label for label, _ in rows) else 0
    top = 28 if title else 0
    width = left + max((sum(p.width for p in pictures) for _, pictures in scaled), default=1)
    heights = [max((p.height for p in pictures), default=1) for _, pictures in scaled]
    sheet = Image.new("RGB", (width, top + sum(heights)), "white")
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((6, 6), title[:160], fill="black", font=font)
    y = top
    for (label, pictures), height in zip(scaled, heights):
        x = left
        for picture in pictures:
            sheet.paste(picture.convert("RGB"), (x, y))
            x += picture.width
        draw.multiline_text((6, y + 6), label, fill="black", font=font)
        y += height
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
    pipe = Pipeline(config, trainer.ema, trainer.vae, trainer.text_encoder, device=trainer.device)
    pictures = []
    for prompt in s.prompts:
        pictures += pipe(Request(prompt, steps=s.steps, guidance_scale=s.guidance_scale, sampler=s.sampler, seed=s.seed, num_images=4))
    rows = [(prompt[:24], pictures[4 * k : 4 * k + 4]) for k, prompt in enumerate(s.prompts)]
    return save_png(labelled_rows(rows, cell=None), path, parameters=f"training samples, step {trainer.step}")
