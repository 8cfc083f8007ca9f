"""The running job's picture so far, for `/sdapi/v1/progress`: cheap, bounded, cached.

Polling must not cost a decode per call (a 512 x 512 decode per poll once let 30 pollers exhaust
memory): the picture is the latents' linear RGB approximation (`LatentCodec.approximate`, at the
latents' resolution), made at most once per sampling step of a job and by one poller at a time;
the others get the last one made.
"""

from __future__ import annotations

import base64
import threading

import torch

from ..images import to_pil
from ..pngmeta import png_bytes
from .jobs import Job

LARGEST = 256  # pixels on the long side of a preview


class Previews:
    def __init__(self):
        self._lock = threading.Lock()
        self._last: tuple[tuple, str | None] | None = None  # ((job id, batch, step), base64 PNG)

    def get(self, job: Job) -> str | None:
        """The job's current picture as base64 PNG (or None before its first step)."""
        key, last = (job.id, job.chunk, job.step), self._last
        if last is not None and last[0] == key:
            return last[1]
        if not self._lock.acquire(blocking=False):  # another poller is making it: the last one of this job, if any
            return last[1] if last is not None and last[0][0] == job.id else None
        try:
            x0, pipe = job.preview, job.pipe
            picture = None if x0 is None or pipe is None else _encode(pipe.codec.approximate(x0), pipe.config.downsample_factor)
            self._last = (key, picture)
            return picture
        finally:
            self._lock.release()


def _encode(pixels: torch.Tensor, factor: int) -> str:
    """A PNG at the picture's size (latents are `factor` times smaller), at most LARGEST pixels wide."""
    image = to_pil(pixels)
    width, height = image.width * factor, image.height * factor
    scale = min(1.0, LARGEST / max(width, height))
    image = image.resize((max(1, round(width * scale)), max(1, round(height * scale))), resample=0)
    return base64.b64encode(png_bytes(image, parameters="")).decode("ascii")
