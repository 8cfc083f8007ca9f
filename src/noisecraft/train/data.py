"""Image folders with captions, read once into memory.

Two common caption conventions are understood:

* ``metadata.jsonl`` beside the images (Hugging Face ``imagefolder``): one JSON object per line
  with ``file_name`` and ``text`` (noisecraft's own datasets add ``texts``, several captions per
  image, one picked at random each time the image is drawn);
* a ``.txt`` file beside each image with the same stem (kohya / A1111 style).

Unreadable images are skipped and counted, never fatal; a folder with no images is a user error.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import UserError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif"}


@dataclass
class ImageCaptionSet:
    """All images as one uint8 tensor [N, C, S, S] and, per image, a list of caption indices."""

    images: torch.Tensor
    captions: list[str]  # unique caption strings
    caption_ids: list[list[int]]  # per image, the indices of its captions
    files: list[str]
    skipped: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return self.images.shape[0]


def _entries_from_jsonl(root: Path) -> list[tuple[Path, list[str]]]:
    entries = []
    try:
        lines = (root / "metadata.jsonl").read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as error:
        raise UserError(f"{root / 'metadata.jsonl'} is not UTF-8 text (byte {error.start}); save it as UTF-8") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            texts = row.get("texts") or [row["text"]]
            entries.append((root / row["file_name"], [str(t) for t in texts]))
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
            raise UserError(f"{root / 'metadata.jsonl'} line {number} is not a JSON object with 'file_name' and 'text'") from None
    return entries


def _entries_from_sidecars(root: Path, log=print) -> list[tuple[Path, list[str]]]:
    """Each image with the caption in the .txt beside it; an image whose caption is not UTF-8 is left out, with a warning."""
    entries = []
    for path in sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
        caption = path.with_suffix(".txt")
        try:
            text = caption.read_text(encoding="utf-8").strip() if caption.exists() else ""
        except UnicodeDecodeError:
            log(f"skipped {path}: its caption {caption.name} is not UTF-8 text (save it as UTF-8 to train on it)")
            continue
        entries.append((path, [text]))
    return entries


def load_image(path: Path, size: int, channels: int = 3) -> torch.Tensor:
    """Open, flatten alpha onto white, centre-crop to a square and resize to `size`: uint8 [C, S, S]."""
    with Image.open(path) as image:
        image.load()
        if image.mode in ("RGBA", "LA", "P") or "transparency" in image.info:
            image = image.convert("RGBA")
            background = Image.new("RGBA", image.size, (255, 255, 255, 255))
            image = Image.alpha_composite(background, image)
        image = image.convert("RGB" if channels == 3 else "L")
        image = ImageOps.fit(image, (size, size), Image.Resampling.LANCZOS)
    array = np.asarray(image, dtype=np.uint8)
    if array.ndim == 2:
        array = array[..., None]
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


def load_image_folder(root: str | Path, size: int, channels: int = 3, log=print) -> ImageCaptionSet:
    """Read every captioned image under `root` at `size` x `size` pixels."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise UserError(f"the data folder {root} does not exist")
    entries = _entries_from_jsonl(root) if (root / "metadata.jsonl").exists() else _entries_from_sidecars(root, log)
    if not entries:
        raise UserError(f"{root} holds no images (looked for {', '.join(sorted(IMAGE_SUFFIXES))} files)")
    images, caption_ids, files, skipped = [], [], [], []
    index: dict[str, int] = {}
    for path, texts in entries:
        try:
            images.append(load_image(path, size, channels))
        except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError):
            skipped.append(str(path))
            continue
        files.append(str(path.relative_to(root)) if path.is_relative_to(root) else str(path))
        caption_ids.append([index.setdefault(t, len(index)) for t in texts])
    if skipped:
        log(f"skipped {len(skipped)} unreadable image(s), e.g. {skipped[0]}")
    if not images:
        raise UserError(f"none of the {len(entries)} images in {root} could be read")
    return ImageCaptionSet(torch.stack(images), list(index), caption_ids, files, skipped)


def epoch_order(n: int, epoch: int, seed: int) -> torch.Tensor:
    """The data order of one epoch: a permutation fixed by (seed, epoch), so resume is exact."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=generator)


def batch_indices(n: int, step: int, batch_size: int, seed: int) -> torch.Tensor:
    """The dataset indices of global batch `step`: consecutive slices of consecutive epoch orders."""
    start = step * batch_size
    out, filled = [], 0
    while filled < batch_size:
        epoch, offset = divmod(start + filled, n)
        take = min(batch_size - filled, n - offset)
        out.append(epoch_order(n, epoch, seed)[offset : offset + take])
        filled += take
    return torch.cat(out)
