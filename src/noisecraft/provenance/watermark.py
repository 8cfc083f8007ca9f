"""An invisible watermark that carries a 32-bit noisecraft id in the pixels (invisible-watermark's dwtDctSvd).

The payload is 48 bits: 16 magic bits (0xA71C, eight ones, so an all-0 or all-1 read is 8 bits
away) then the 32-bit id, most significant bit first. dwtDctSvd (invisible-watermark 0.2) takes the
U (blue-difference) channel, its one-level Haar DWT, and in each 4x4 block of the approximation
band quantises the block DCT's largest singular value to carry one bit (step 36), the 48 bits
repeating over the blocks in reading order; reading takes a majority over the repeats.

`embed` uses that block coder (`EmbedDwtDctSvd.encode_frame`) but its own colour and wavelet
steps: the library's encoder puts the detail bands back swapped (horizontal for vertical) and
truncates floats into uint8, which costs 4.7 dB of PSNR (37.3 against 42.0), makes colour
fringes at edges (on average 630 pixels of a 512x512 picture off by more than 30 levels) and
lowers the bit accuracy after JPEG q75 from 100% to 97% (found in 14 of 20 pictures, not 20).
Here only the U change is added back to the RGB pixels, rounded. Any dwtDctSvd decoder (the
library's `WatermarkDecoder("bits", 48)`) reads these marks.

A picture needs at least 256x256 pixels of area (the library's limit, and what we measured: at
192x192 the bit accuracy after JPEG q75 falls to 99%, at 128x128 to 92%) and 16 pixels a side.
`detect` says found when at most `MAX_MAGIC_ERRORS` (1) of the 16 magic bits differ: on random
bits that happens with probability 17/65536 = 0.026% per read (two reads, as-is and 2x, for a
small picture: 0.05%). benchmarks/watermark_robustness.py measures what survives.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import cv2
import numpy as np
import pywt
from imwatermark import WatermarkDecoder
from imwatermark.dwtDctSvd import EmbedDwtDctSvd
from PIL import Image

MAGIC, MAGIC_BITS, ID_BITS = 0xA71C, 16, 32
LENGTH = MAGIC_BITS + ID_BITS
MAX_MAGIC_ERRORS = 1
MIN_PIXELS, MIN_SIDE = 256 * 256, 16
SCALE, BLOCK, CHANNEL = 36, 4, 1  # the library's dwtDctSvd defaults: step 36 on U, 4x4 blocks
UPSCALE_BELOW = 512 * 512  # a picture smaller than this is also read at twice its size (a downscaled copy)
READ_PIXELS = 1024 * 1024  # a larger picture is read from a top band of about this many pixels (see read_bits)
METHOD = "invisible-watermark dwtDctSvd, 48 bits: 16 magic (0xA71C) + 32 id"
# How a change of U moves B, G and R (OpenCV's BT.601 YUV): the column of the inverse transform.
_U_TO_BGR = (cv2.cvtColor(np.array([[[0, 1, 0]]], np.float32), cv2.COLOR_YUV2BGR)
             - cv2.cvtColor(np.zeros((1, 1, 3), np.float32), cv2.COLOR_YUV2BGR))[0, 0].astype(np.float64)


@dataclass(frozen=True)
class Detection:
    """What `detect` read: `found` when the magic matched within `MAX_MAGIC_ERRORS`; `mark_id` then;
    `bits` the 48 bits read (None when the picture is too small to read); `note` says how."""

    found: bool
    mark_id: int | None
    bits: tuple[int, ...] | None
    magic_errors: int | None
    note: str = ""

    def as_dict(self) -> dict:
        return {"found": self.found, "id": None if self.mark_id is None else f"{self.mark_id:08x}",
                "magic_errors": self.magic_errors, "note": self.note}


def new_mark_id() -> int:
    """A random 32-bit watermark id."""
    return secrets.randbits(ID_BITS)


def fits(image: Image.Image) -> bool:
    """Whether `image` is large enough to carry the watermark (256x256 pixels of area, 16 a side)."""
    width, height = image.size
    return width * height >= MIN_PIXELS and min(width, height) >= MIN_SIDE


def payload(mark_id: int) -> list[int]:
    """The 48 bits for `mark_id`: magic then id, most significant bit first."""
    if not 0 <= mark_id < 2**ID_BITS:
        raise ValueError(f"a watermark id is 32 bits, not {mark_id!r}")
    word = (MAGIC << ID_BITS) | mark_id
    return [(word >> (LENGTH - 1 - i)) & 1 for i in range(LENGTH)]


def embed(image: Image.Image, mark_id: int) -> Image.Image:
    """A copy of `image` carrying `mark_id` (RGB; an alpha channel is kept, `info` copied). A picture
    too small for the watermark (`fits` is False) comes back unchanged, the same object."""
    bits = payload(mark_id)
    if not fits(image):
        return image
    rgba = image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)
    rgb = np.asarray(image.convert("RGB"))
    bgr = rgb[..., ::-1].astype(np.float64)
    u = cv2.cvtColor(np.ascontiguousarray(rgb[..., ::-1]), cv2.COLOR_BGR2YUV)[..., CHANNEL].astype(np.float64)
    rows, cols = (u.shape[0] // 4) * 4, (u.shape[1] // 4) * 4
    approx, details = pywt.dwt2(u[:rows, :cols], "haar")
    EmbedDwtDctSvd(bits, wmLen=LENGTH, block=BLOCK).encode_frame(approx, SCALE)
    change = np.zeros_like(u)
    change[:rows, :cols] = pywt.idwt2((approx, details), "haar") - u[:rows, :cols]
    marked = np.clip(np.rint(bgr + change[..., None] * _U_TO_BGR), 0, 255).astype(np.uint8)
    result = Image.fromarray(np.ascontiguousarray(marked[..., ::-1]))
    if rgba:
        result.putalpha(image.convert("RGBA").getchannel("A"))
    result.info = dict(image.info)
    return result


def read_bits(image: Image.Image) -> tuple[int, ...] | None:
    """The 48 bits a dwtDctSvd decoder reads from `image` as it is, or None when it is too small.

    A picture over `READ_PIXELS` is read from its top rows only (whole 8-pixel block rows, full
    width: the blocks keep their numbers, so the bits repeat as in the whole picture), which keeps
    an 8K photo to a second instead of half a minute (the decoder takes an SVD per 8x8 block)."""
    if not fits(image):
        return None
    width, height = image.size
    if width * height > READ_PIXELS:
        image = image.crop((0, 0, width, max(MIN_SIDE, READ_PIXELS // width // 8 * 8)))
    bgr = np.ascontiguousarray(np.asarray(image.convert("RGB"))[..., ::-1])
    return tuple(int(b) for b in WatermarkDecoder("bits", LENGTH).decode(bgr, "dwtDctSvd"))


def judge(bits: tuple[int, ...] | None, note: str = "") -> Detection:
    """The verdict on 48 read bits: found when the magic is within `MAX_MAGIC_ERRORS`."""
    if bits is None:
        return Detection(False, None, None, None, note or "the picture is too small to carry the watermark")
    word = int("".join(map(str, bits)), 2)
    errors = bin((word >> ID_BITS) ^ MAGIC).count("1")
    found = errors <= MAX_MAGIC_ERRORS
    return Detection(found, word & (2**ID_BITS - 1) if found else None, bits, errors, note)


def detect(image: Image.Image) -> Detection:
    """Read the watermark from `image` as it is; a small picture (under 512x512 of area) is read at
    twice its size too, since a downscaled copy of a marked picture may still carry it then."""
    first = judge(read_bits(image))
    width, height = image.size
    if first.found or width * height >= UPSCALE_BELOW:
        return first
    second = judge(read_bits(image.convert("RGB").resize((width * 2, height * 2), Image.BICUBIC)),
                   "read at twice the size")
    return second if second.found or first.bits is None else first
