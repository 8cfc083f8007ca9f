"""The upscalers a server offers, by A1111's names: the pixel resamplers, the upscaler files given
at start (`--upscaler FILE`), and A1111's latent modes (done here as Lanczos in pixels, then redrawn)."""

from __future__ import annotations

from ..upscale import RESAMPLERS
from .errors import FieldError

LATENT_MODES = ("Latent", "Latent (antialiased)", "Latent (bicubic)", "Latent (bicubic antialiased)",
                "Latent (nearest)", "Latent (nearest-exact)")


def pick(name: str | None, files: dict, loc: str):
    """What `upscale.enlarge` takes for an A1111 upscaler name: a resampler's name or a loaded file."""
    if not name or name == "None" or name in LATENT_MODES:
        return "Lanczos"
    if name in RESAMPLERS:
        return name
    if name in files:
        return files[name]
    names = ", ".join(["None", *RESAMPLERS, *files, "Latent"])
    raise FieldError(loc, f"unknown upscaler {name!r}; this server has: {names}")


def listing(files: dict) -> list[dict]:
    """GET /sdapi/v1/upscalers: A1111's entries (a file's name only, never its folder)."""
    plain = [{"name": name, "model_name": None, "model_path": None, "model_url": None, "scale": 4}
             for name in ("None", *RESAMPLERS)]
    return plain + [{"name": name, "model_name": up.architecture, "model_path": getattr(up, "filename", None),
                     "model_url": None, "scale": up.scale} for name, up in files.items()]
