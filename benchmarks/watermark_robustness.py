"""How well noisecraft's invisible watermark survives what happens to pictures, as a markdown table.

    python benchmarks/watermark_robustness.py [--pictures 20] [--size 512] [FILE ...]

Each picture (FILE ... or --pictures synthetic ones: smooth gradients, blurred shapes, a little
noise) gets a 32-bit id (seeded, so a rerun gives the same table); then per change: the bit
accuracy of the 48 bits read (mean and worst over the pictures) and the found rate (magic within
1 bit and the right id). A read "as is" is one dwtDctSvd decode of the changed picture;
`detect()` is what `noisecraft verify` does (a picture under 512x512 is read at twice its size
too). For comparison: invisible-watermark's own dwtDctSvd encoder (swapped detail bands,
truncation) and its dwtDct method, same 48 bits, and unmarked pictures (false positives). PSNR is
of the marked picture against the original.
"""

from __future__ import annotations

import argparse
import io
import time

import numpy as np
from imwatermark import WatermarkDecoder, WatermarkEncoder
from PIL import Image, ImageDraw, ImageFilter

from noisecraft.provenance.watermark import LENGTH, detect, embed, judge, payload, read_bits


def synthetic(seed: int, size: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    base = np.stack([rng.uniform(40, 200) + rng.uniform(-80, 80) * x + rng.uniform(-60, 60) * y for _ in range(3)], -1)
    image = Image.fromarray(np.clip(base, 0, 255).astype("uint8"))
    draw = ImageDraw.Draw(image)
    for _ in range(12):
        cx, cy, r = rng.uniform(0, size), rng.uniform(0, size), rng.uniform(10, size / 4)
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([cx - r, cy - r * rng.uniform(0.3, 1), cx + r, cy + r],
                                                                  fill=colour)
    noisy = np.asarray(image.filter(ImageFilter.GaussianBlur(2)), float) + rng.normal(0, 3, (size, size, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype("uint8"))


def jpeg(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def half(image: Image.Image) -> Image.Image:
    return image.resize((image.width // 2, image.height // 2), Image.LANCZOS)


def crop(image: Image.Image) -> Image.Image:
    """The middle 90% of each side (10% cropped, 5% from every edge)."""
    dx, dy = image.width // 20, image.height // 20
    return image.crop((dx, dy, image.width - dx, image.height - dy))


CHANGES = {
    "no change": lambda m: m,
    "JPEG q75": lambda m: jpeg(m, 75),
    "JPEG q50": lambda m: jpeg(m, 50),
    "resize 0.5, read as is": half,
    "resize 0.5, back up to the original size": lambda m: half(m).resize(m.size, Image.BICUBIC),
    "10% crop (5% off each edge)": crop,
}


def stock(image: Image.Image, bits: list[int], method: str) -> Image.Image:
    encoder = WatermarkEncoder()
    encoder.set_watermark("bits", bits)
    bgr = np.ascontiguousarray(np.asarray(image.convert("RGB"))[..., ::-1])
    return Image.fromarray(np.ascontiguousarray(encoder.encode(bgr, method)[..., ::-1]))


def stock_bits(image: Image.Image, method: str) -> tuple[int, ...] | None:
    if image.width * image.height < 256 * 256:
        return None
    bgr = np.ascontiguousarray(np.asarray(image.convert("RGB"))[..., ::-1])
    return tuple(int(b) for b in WatermarkDecoder("bits", LENGTH).decode(bgr, method))


def psnr(a: Image.Image, b: Image.Image) -> float:
    error = np.mean((np.asarray(a.convert("RGB"), float) - np.asarray(b.convert("RGB"), float)) ** 2)
    return float("inf") if error == 0 else 10 * np.log10(255**2 / error)


def score(bits, mark: int) -> tuple[float, bool]:
    """(bit accuracy, found with the right id) of 48 read bits (None: too small to read: 0.5, not found)."""
    if bits is None:
        return 0.5, False
    result = judge(tuple(bits))
    return float(np.mean(np.array(bits) == np.array(payload(mark)))), bool(result.found and result.mark_id == mark)


def measure(pictures: list[Image.Image]) -> list[tuple[str, str, list[float], list[bool], list[float]]]:
    rows: dict[tuple[str, str], tuple[list, list, list]] = {}

    def add(change, method, accuracy_found, quality=None):
        accuracies, founds, qualities = rows.setdefault((change, method), ([], [], []))
        accuracies.append(accuracy_found[0])
        founds.append(accuracy_found[1])
        if quality is not None:
            qualities.append(quality)

    marks = np.random.default_rng(0).integers(0, 2**32, len(pictures))  # fixed ids: a rerun gives the same table
    for image, mark in zip(pictures, marks.tolist()):
        marked = embed(image, mark)
        quality = psnr(image, marked)
        for change, apply in CHANGES.items():
            add(change, "noisecraft dwtDctSvd", score(read_bits(apply(marked)), mark), quality)
        result = detect(half(marked))
        add("resize 0.5, detect() (reads 2x too)", "noisecraft dwtDctSvd",
            (score(result.bits, mark)[0], bool(result.found and result.mark_id == mark)), quality)
        for method, label in (("dwtDctSvd", "invisible-watermark dwtDctSvd encoder"), ("dwtDct", "invisible-watermark dwtDct")):
            theirs = stock(image, payload(mark), method)
            for change in ("no change", "JPEG q75"):
                add(change, label, score(stock_bits(CHANGES[change](theirs), method), mark), psnr(image, theirs))
        add("unmarked picture (false positives)", "noisecraft dwtDctSvd", score(read_bits(image), mark))
    return [(change, method, *values) for (change, method), values in rows.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="*", help="pictures to mark (default: synthetic ones)")
    parser.add_argument("--pictures", type=int, default=20, help="how many synthetic pictures (without FILEs)")
    parser.add_argument("--size", type=int, default=512, help="synthetic picture side in pixels")
    args = parser.parse_args()
    if args.files:
        pictures = [Image.open(path).convert("RGB") for path in args.files]
    else:
        pictures = [synthetic(seed, args.size) for seed in range(args.pictures)]
    started = time.perf_counter()
    rows = measure(pictures)
    sizes = sorted({p.size for p in pictures})
    print(f"{len(pictures)} pictures ({', '.join(f'{w}x{h}' for w, h in sizes)}), 48 bits each, "
          f"{time.perf_counter() - started:.1f} s\n")
    print("| change | method | bit accuracy, mean | worst | found | PSNR dB |")
    print("|---|---|---|---|---|---|")
    for change, method, accuracies, founds, qualities in rows:
        shown = f"{np.mean(qualities):.1f}" if qualities else ""
        print(f"| {change} | {method} | {np.mean(accuracies):.3f} | {np.min(accuracies):.3f} | "
              f"{sum(founds)}/{len(founds)} | {shown} |")


if __name__ == "__main__":
    main()
