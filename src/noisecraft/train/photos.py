"""A folder of one's own photos for fine-tuning: phone pictures of any size and way up, a few captioned.

    photos = load_photos("acme/", name="acme storefront", class_word="storefront", pixels=64 * 64, factor=8)
    for photo in photos.photos: photo.image, photo.caption, photo.weights, photo.bucket

- JPEG, PNG, WebP and HEIC/HEIF (iPhone photos, through `pillow-heif`); EXIF orientation applied, so a
  photo taken sideways trains the right way up.
- Captions: `metadata.jsonl` (`file_name`, `text`) or a `.txt` beside the photo; otherwise a template from
  the name and class word ("a photo of acme storefront, storefront"). No captioning model is available
  offline, so noisecraft does not write captions of its own.
- Aspect-ratio buckets: each photo is cropped (centred) and resized to the bucket of about `pixels` pixels
  (multiples of `factor`) nearest its own aspect, so nothing is squashed and little is cut.
- Loss masks: a transparent PNG's alpha, or a `<stem>.mask.png` beside the photo (white = the subject),
  becomes per-pixel loss weights scaled to average 1 over the photo, so a small product weighs as much as a
  large one and the background is ignored.
- A file that cannot be read is skipped and named; a folder with no photos is one sentence.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import UserError
from .data import _entries_from_jsonl

PHOTO_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".heic", ".heif"}
ASPECTS = (1 / 2, 9 / 16, 2 / 3, 3 / 4, 4 / 5, 1.0, 5 / 4, 4 / 3, 3 / 2, 16 / 9, 2.0)  # width / height
MAX_PHOTOS = 1000
MASK_FLOOR = 0.02  # a mask that keeps under 2% of the photo is a mistake, not a subject


@dataclass
class Photo:
    file: str
    image: Image.Image  # RGB at `bucket`
    caption: str
    bucket: tuple[int, int]  # (width, height)
    weights: np.ndarray | None = None  # [height, width] float32 loss weights averaging 1; None: every pixel counts


@dataclass
class PhotoSet:
    photos: list[Photo]
    skipped: list[str] = field(default_factory=list)  # "file: why"
    captioned: int = 0  # photos with a caption of their own (not the template)
    name: str = ""  # what the photos show ("acme storefront"): the words that call it after training
    class_word: str = ""  # its kind ("storefront"): the prompt of prior-preservation pictures

    @property
    def prompt(self) -> str:
        """The template caption: what samples during training and the before/after sheet draw."""
        return template_caption(self.name, self.class_word)

    def buckets(self) -> dict[tuple[int, int], list[int]]:
        """Photo indices by bucket (a batch draws from one bucket)."""
        groups: dict[tuple[int, int], list[int]] = {}
        for k, photo in enumerate(self.photos):
            groups.setdefault(photo.bucket, []).append(k)
        return groups


def template_caption(name: str, class_word: str = "") -> str:
    return f"a photo of {name}" + (f", {class_word}" if class_word and class_word not in name else "")


def bucket_for(size: tuple[int, int], pixels: int, factor: int) -> tuple[int, int]:
    """The (width, height) in multiples of `factor`, about `pixels` pixels, whose aspect (one of ASPECTS) is
    nearest the photo's."""
    aspect = min(ASPECTS, key=lambda a: abs(math.log(a * size[1] / size[0])))
    width = max(factor, round(math.sqrt(pixels * aspect) / factor) * factor)
    height = max(factor, round(math.sqrt(pixels / aspect) / factor) * factor)
    return width, height


def open_photo(path: Path) -> Image.Image:
    """The photo the right way up (EXIF orientation applied), HEIC/HEIF included, fully read."""
    if path.suffix.lower() in (".heic", ".heif"):
        import pillow_heif

        pillow_heif.register_heif_opener()
    with Image.open(path) as image:
        image.load()
        return ImageOps.exif_transpose(image)


def _fit(image: Image.Image, bucket: tuple[int, int], resample) -> Image.Image:
    return ImageOps.fit(image, bucket, method=resample, centering=(0.5, 0.5))


def _weights(alpha: Image.Image | None, bucket: tuple[int, int], file: str) -> np.ndarray | None:
    if alpha is None:
        return None
    mask = np.asarray(_fit(alpha.convert("L"), bucket, Image.Resampling.BILINEAR), dtype=np.float32) / 255.0
    if mask.mean() < MASK_FLOOR:
        raise UserError(f"{file}: its mask keeps under {MASK_FLOOR:.0%} of the photo; paint the subject white")
    return mask / mask.mean()


def _captions(folder: Path) -> dict[Path, str]:
    if (folder / "metadata.jsonl").is_file():
        return {path.resolve(): texts[0] for path, texts in _entries_from_jsonl(folder)}
    return {}


def load_photos(folder: str | Path, name: str, class_word: str = "", pixels: int = 64 * 64, factor: int = 8) -> PhotoSet:
    """Every photo in `folder` (not its subfolders), in its bucket, with its caption and loss weights."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise UserError(f"{folder}: no such folder of photos")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in PHOTO_SUFFIXES and not p.stem.endswith(".mask"))
    if len(files) > MAX_PHOTOS:
        raise UserError(f"{folder} has {len(files)} photos; fine-tuning takes at most {MAX_PHOTOS} (5-30 is typical)")
    listed, found = _captions(folder), PhotoSet([], name=name, class_word=class_word)
    for path in files:
        try:
            image = open_photo(path)
            mask_file = path.with_name(path.stem + ".mask.png")
            alpha = open_photo(mask_file) if mask_file.exists() else image.getchannel("A") if "A" in image.getbands() else None
        except (OSError, UnidentifiedImageError, ValueError) as error:
            found.skipped.append(f"{path.name}: {error.__class__.__name__}, not a photo noisecraft can read")
            continue
        bucket = bucket_for(image.size, pixels, factor)
        rgb = Image.alpha_composite(Image.new("RGBA", image.size, "white"), image.convert("RGBA")).convert("RGB")
        caption = listed.get(path.resolve()) or _sidecar(path)
        found.captioned += bool(caption)
        found.photos.append(Photo(path.name, _fit(rgb, bucket, Image.Resampling.LANCZOS),
                                  caption or template_caption(name, class_word), bucket,
                                  _weights(alpha, bucket, path.name)))
    if not found.photos:
        raise UserError(f"{folder} has no photos noisecraft can read (JPEG, PNG, WebP or HEIC)"
                        + (f"; skipped: {found.skipped[0]}" if found.skipped else ""))
    return found


def _sidecar(path: Path) -> str:
    caption = path.with_suffix(".txt")
    try:
        return caption.read_text(encoding="utf-8").strip() if caption.is_file() else ""
    except UnicodeDecodeError:
        raise UserError(f"{caption} is not UTF-8 text; save it as UTF-8") from None
