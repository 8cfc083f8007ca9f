"""Content Credentials (C2PA 2.x manifests, with c2pa-python 0.38 / c2pa-rs 0.91): what made the picture, signed.

A manifest says: made by noisecraft <version> (claim_generator_info); one `c2pa.actions.v2`
assertion whose actions are
- a new picture: `c2pa.created`, digitalSourceType trainedAlgorithmicMedia (IPTC), softwareAgent
  noisecraft, parameters naming the model; a layout with componentOf ingredients (logos, photos)
  is compositeWithTrainedAlgorithmicMedia and has one `c2pa.placed` action per component;
- an img2img / inpaint / outpaint / upscale: `c2pa.opened` of the parentOf ingredient (the source,
  whose own manifest, if it has one, becomes part of this one's store), then `c2pa.edited` (or
  `c2pa.resized` for an upscale) by the trained model.
The watermark id, when there is one, is an `org.noisecraft.watermark` assertion. (C2PA's own
`c2pa.watermarked` action needs a soft-binding assertion of a registered algorithm; ours is not.)

c2pa's thumbnail is turned off: it doubled a 512x512 PNG (788 KB to 1.66 MB) and the picture is its
own thumbnail. No timestamp authority is used, so a signature has no trusted time and is checked
against the certificate's validity now. Every other chunk (the PNG `parameters` text, EXIF)
is left as it is: c2pa adds its manifest beside them.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import c2pa

from ..errors import UserError
from ..version import __version__
from .watermark import METHOD

IPTC = "http://cv.iptc.org/newsroom/digitalsourcetype/"
TRAINED, COMPOSITE = IPTC + "trainedAlgorithmicMedia", IPTC + "compositeWithTrainedAlgorithmicMedia"
MIME = {"png": "image/png", "jpeg": "image/jpeg", "jpg": "image/jpeg", "webp": "image/webp"}
ACTIONS = ("c2pa.created", "c2pa.edited", "c2pa.resized")
RELATIONSHIPS = ("parentOf", "componentOf")
WATERMARK_LABEL = "org.noisecraft.watermark"
SETTINGS = {"builder": {"thumbnail": {"enabled": False}},
            "verify": {"remote_manifest_fetch": False, "ocsp_fetch": False}}  # offline: nothing is fetched
AGENT = {"name": "noisecraft", "version": __version__}


@dataclass(frozen=True)
class Ingredient:
    """A picture that went into this one: the source of an edit (`parentOf`) or a logo or photo
    placed in a layout (`componentOf`). `data` is the file's bytes, as read (its own manifest,
    if it has one, is kept as this one's history)."""

    data: bytes
    format: str
    title: str
    relationship: str = "parentOf"

    def __post_init__(self):
        if self.relationship not in RELATIONSHIPS:
            raise ValueError(f"an ingredient is parentOf or componentOf, not {self.relationship!r}")
        mime_type(self.format)


def mime_type(format: str) -> str:
    """The MIME type for png, jpeg or webp."""
    try:
        return MIME[format.lower()]
    except KeyError:
        raise UserError(f"Content Credentials are written into PNG, JPEG or WebP pictures, not {format!r}") from None


def manifest(title: str, model_name: str | None, model_hash: str | None, action: str = "c2pa.created",
             ingredients: tuple[Ingredient, ...] = (), watermark_id: int | None = None) -> dict:
    """The manifest definition `sign` hands to c2pa (ingredient k is labelled `ingredient-k`)."""
    if action not in ACTIONS:
        raise ValueError(f"action is one of {', '.join(ACTIONS)}, not {action!r}")
    parents = [k for k, i in enumerate(ingredients) if i.relationship == "parentOf"]
    components = [k for k, i in enumerate(ingredients) if i.relationship == "componentOf"]
    if action == "c2pa.created" and parents:
        raise ValueError("a created picture has no parentOf ingredient; sign an edit with action='c2pa.edited'")
    if action != "c2pa.created" and len(parents) != 1:
        raise ValueError(f"an edit ({action}) has exactly one parentOf ingredient, its source, not {len(parents)}")
    model = {key: value for key, value in (("name", model_name), ("hash", model_hash)) if value}
    made = {"action": action, "softwareAgent": AGENT, "parameters": {"model": model} if model else {},
            "digitalSourceType": COMPOSITE if action == "c2pa.created" and components else TRAINED}
    if action == "c2pa.created":
        actions = [made]
    else:
        actions = [{"action": "c2pa.opened", "softwareAgent": AGENT,
                    "parameters": {"ingredientIds": [f"ingredient-{parents[0]}"]}}, made]
    actions += [{"action": "c2pa.placed", "softwareAgent": AGENT, "parameters": {"ingredientIds": [f"ingredient-{k}"]}}
                for k in components]
    assertions = [{"label": "c2pa.actions.v2", "data": {"actions": actions}}]
    if watermark_id is not None:
        assertions.append({"label": WATERMARK_LABEL, "data": {"id": f"{watermark_id:08x}", "method": METHOD}})
    return {"claim_generator_info": [AGENT], "title": title, "assertions": assertions}


def sign(data: bytes, format: str, identity, *, title: str, model_name: str | None, model_hash: str | None,
         action: str = "c2pa.created", ingredients=(), watermark_id: int | None = None) -> bytes:
    """`data` (a PNG, JPEG or WebP file's bytes) with a signed C2PA manifest embedded; `identity`
    signs (see identity.py). Its other metadata (the PNG `parameters` chunk, EXIF) is kept."""
    ingredients = tuple(ingredients)
    definition = manifest(title, model_name, model_hash, action, ingredients, watermark_id)
    context = c2pa.Context(settings=c2pa.Settings.from_dict(SETTINGS))
    try:
        with c2pa.Builder(definition, context=context) as builder:
            for k, ingredient in enumerate(ingredients):
                builder.add_ingredient({"title": ingredient.title, "relationship": ingredient.relationship,
                                        "label": f"ingredient-{k}"}, mime_type(ingredient.format),
                                       io.BytesIO(ingredient.data))
            with signer(identity) as chosen:
                out = io.BytesIO()
                builder.sign(chosen, mime_type(format), io.BytesIO(data), out)
    except c2pa.C2paError as error:
        raise UserError(f"the picture could not be signed: {_reason(error)}") from None
    finally:
        context.close()
    return out.getvalue()


def signer(identity) -> c2pa.Signer:
    """A c2pa Signer for `identity` (no timestamp authority)."""
    info = c2pa.C2paSignerInfo(identity.algorithm.encode(), identity.cert_chain_pem, identity.private_key_pem, None)
    return c2pa.Signer.from_info(info)


def _reason(error: Exception) -> str:
    """c2pa's message, one line (it names the class first, e.g. "Signature: the certificate is invalid")."""
    text = " ".join(str(error).split())
    return text[:300].rstrip(".")
