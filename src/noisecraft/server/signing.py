"""Signed pictures over HTTP: when `serve --sign` is on, or the request's brand kit signs, every picture the
server hands out or keeps gets the invisible watermark and Content Credentials (`noisecraft.provenance`),
encoded once per picture so the gallery's file and the answer's bytes are the same signed file."""

from __future__ import annotations

from ..pngmeta import image_bytes
from .context import Context
from .jobs import Job


def signs(ctx: Context, kit=None) -> bool:
    """Whether pictures made for this request are signed: the server's --sign, or the kit's `sign`."""
    return ctx.settings.sign or bool(kit is not None and kit.signing.sign)


def carries_credentials(data: bytes) -> bool:
    """Whether a PNG file holds a C2PA manifest (its `caBX` chunk): an edit of a signed picture is signed too."""
    return data.startswith(b"\x89PNG") and b"caBX" in data


def identity(ctx: Context, kit=None):
    """Who signs: the kit's own certificate, else the server's (--certificate), else the local identity."""
    from ..provenance import load_identity, local_identity

    if kit is not None and kit.signing.certificate and kit.signing.key:
        return load_identity(kit.signing.certificate, kit.signing.key)
    return ctx.settings.identity or local_identity()


def picture_file(ctx: Context, job: Job, image, format: str = "png", quality: int | None = None) -> bytes:
    """`image` as a file's bytes (its parameters inside); signed when `job.signer` says so, once per picture
    and format (the gallery and the answer share the file)."""
    if job.signer is None:
        return image_bytes(image, format, quality)
    key = (id(image), format, quality)
    if key not in job.files:
        from ..provenance import Ingredient, finish

        parent = (Ingredient(job.source, "png", "source picture", "parentOf"),) if job.source else ()
        job.files[key] = finish(image, format, quality, identity=job.signer, title=f"noisecraft.{format}",
                                action="c2pa.edited" if parent else "c2pa.created", ingredients=parent)
    return job.files[key]
