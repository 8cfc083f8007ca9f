"""The running job's picture so far, for `/sdapi/v1/progress`: its first image's x0 estimate as a PNG."""

from __future__ import annotations

import base64

import torch

from ..images import to_pil
from ..pngmeta import png_bytes
from .jobs import Job


def preview(job: Job) -> str | None:
    """The running job's first image as the sampler currently sees it (its x0 estimate), as base64 PNG."""
    x0, pipe = job.preview, job.pipe
    if x0 is None or pipe is None:
        return None
    with torch.inference_mode():
        pixels = pipe.decode(x0)[0]
    return base64.b64encode(png_bytes(to_pil(pixels), parameters="")).decode("ascii")
