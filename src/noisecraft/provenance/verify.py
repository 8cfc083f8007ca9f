"""What a picture file says about itself: its Content Credentials, its watermark, its parameters.

The manifest's state is one of
- "valid": the signature and every hash check, and the signer's certificate chains to a trusted root;
- "untrusted": the signature and every hash check (the picture is unchanged since it was signed),
  but the signer's certificate is in no trust list this verifier uses. noisecraft uses none
  unless given `trust_anchors`, so a local self-signed identity always reads this way, and so
  does a CA-issued certificate that is not in the anchors given;
- "invalid": c2pa found a fault, most often a hash mismatch: the picture (or its manifest) was
  changed after signing;
- "none": the file carries no manifest (never signed, or re-saved by a tool that drops it).
Nothing is fetched over the network (no OCSP, no remote manifests).
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import c2pa

from ..errors import UserError
from ..images import load_picture
from .identity import LOCAL_ORGANIZATION
from .signing import SETTINGS, WATERMARK_LABEL
from .watermark import MIN_PIXELS, Detection, detect

UNTRUSTED = "signingCredential.untrusted"
MAX_BYTES = 256 * 2**20
EXPLAINED = {
    UNTRUSTED: "the signer's certificate is in no trust list this verifier uses",
    "assertion.dataHash.mismatch": "the picture's bytes differ from the bytes that were signed: it was changed after signing",
    "assertion.boxesHash.mismatch": "the picture's bytes differ from the bytes that were signed: it was changed after signing",
    "assertion.hashedURI.mismatch": "an assertion of the manifest was changed after signing",
    "claimSignature.mismatch": "the signature does not match the manifest: the manifest was changed after signing",
    "signingCredential.expired": "the signer's certificate had expired",
    "signingCredential.revoked": "the signer's certificate was revoked",
    "signingCredential.invalid": "the signer's certificate is not valid for signing",
    "claimSignature.outsideValidity": "it was signed outside the certificate's validity period",
}
HEADLINES = {
    "valid": "valid: signed by a trusted certificate, and the picture is unchanged since signing",
    "untrusted": "untrusted: the signature is intact and the picture is unchanged since signing, "
                 "but the signer is in no trust list this verifier uses",
    "invalid": "invalid: {what}",
    "none": "none: the file carries no C2PA manifest (never signed, or re-saved by a tool that drops it)",
}


@dataclass
class Report:
    """The verdict on one picture file (see the module docstring for `state`)."""

    source: str
    format: str
    size: tuple[int, int] | None
    state: str
    reasons: list[str] = field(default_factory=list)
    signer: dict | None = None
    generator: str | None = None
    actions: list[dict] = field(default_factory=list)
    ingredients: list[dict] = field(default_factory=list)
    manifests: int = 0
    manifest_watermark: str | None = None  # the watermark id the manifest records (8 hex digits)
    watermark: Detection | None = None
    parameters: str | None = None

    @property
    def watermark_matches(self) -> bool | None:
        """Whether the watermark read is the one the manifest records (None: nothing to compare)."""
        if self.watermark is None or not self.watermark.found or self.manifest_watermark is None:
            return None
        return f"{self.watermark.mark_id:08x}" == self.manifest_watermark

    def text(self) -> str:
        """The lines `noisecraft verify` prints."""
        size = f", {self.size[0]}x{self.size[1]}" if self.size else ""
        lines = [f"{self.source}: {self.format}{size}", "Content Credentials: " + self._headline()]
        lines += [f"  why: {reason}" for reason in self.reasons]
        if self.signer:
            lines.append(f"  signer: {_signer_text(self.signer, self.state)}")
        if self.generator:
            lines.append(f"  made with: {self.generator}")
        lines += [f"  action: {_action_text(action)}" for action in self.actions]
        lines += [f"  ingredient: {_ingredient_text(ingredient)}" for ingredient in self.ingredients]
        if self.manifests:
            lines.append(f"  manifests in the file: {self.manifests}")
        lines.append("Watermark: " + self._watermark_text())
        if self.parameters:
            lines += ["Parameters:"] + [f"  {line}" for line in self.parameters.splitlines()]
        else:
            lines.append("Parameters: none")
        return "\n".join(lines)

    def as_dict(self) -> dict:
        """The report as JSON-ready values."""
        return {"source": self.source, "format": self.format, "size": list(self.size) if self.size else None,
                "manifest": {"state": self.state, "reasons": self.reasons, "signer": self.signer,
                             "generator": self.generator, "actions": self.actions, "ingredients": self.ingredients,
                             "manifests": self.manifests, "watermark_id": self.manifest_watermark},
                "watermark": None if self.watermark is None else
                self.watermark.as_dict() | {"matches_manifest": self.watermark_matches},
                "parameters": self.parameters}

    def _headline(self) -> str:
        changed = any("mismatch" in reason.split(":")[0] for reason in self.reasons)
        what = "the picture or its manifest was changed after signing" if changed else "c2pa found a fault in it"
        return HEADLINES[self.state].format(what=what)

    def _watermark_text(self) -> str:
        mark, recorded = self.watermark, self.manifest_watermark
        if mark is None:
            return "not checked (the pixels cannot be decoded)"
        if mark.bits is None:
            return f"not checked: the picture is too small to carry one (under {MIN_PIXELS:,} pixels)"
        if not mark.found:
            text = "not found" + (f" ({mark.note})" if mark.note else "")
            return text + (f", though the Content Credentials record id {recorded} (was it cropped, resized "
                           "or re-compressed?)" if recorded else "")
        text = f"found, id {mark.mark_id:08x}" + (f" ({mark.note})" if mark.note else "")
        if self.watermark_matches:
            return text + ", the id the Content Credentials record"
        if recorded:
            return text + f", but the Content Credentials record id {recorded}"
        if self.state == "none":
            return text + " (no Content Credentials to compare it with)"
        return text + " (the Content Credentials record no watermark)"


def verify(source: str | os.PathLike | bytes, *, trust_anchors: bytes | None = None) -> Report:
    """Check a picture file (a path, or its bytes): manifest state and summary, watermark, parameters.
    `trust_anchors` (PEM root certificates, e.g. `identity.root_certificate()`) are trusted signers."""
    name, data = _read(source)
    kind = _sniff(data, name)
    report = Report(name, {"png": "PNG", "jpeg": "JPEG", "webp": "WebP"}[kind], None, "none")
    _read_manifest(report, data, kind, trust_anchors)
    try:
        picture = load_picture(io.BytesIO(data), name)
    except UserError:
        return report  # a damaged picture: its manifest was read, its pixels cannot be
    report.size = picture.size
    report.parameters = parameters_text(picture)
    report.watermark = detect(picture)
    return report


def parameters_text(picture) -> str | None:
    """The A1111 `parameters` text: the PNG text chunk, or EXIF UserComment (JPEG, WebP)."""
    if picture.info.get("parameters"):
        return picture.info["parameters"]
    comment = picture.getexif().get_ifd(0x8769).get(0x9286)
    if not isinstance(comment, bytes) or len(comment) < 8:
        return comment or None
    head, body = comment[:8], comment[8:]
    encoding = {b"UNICODE\0": "utf-16-be", b"ASCII\0\0\0": "ascii"}.get(head, "utf-8")  # UTF-16 BE as A1111 writes
    return body.decode(encoding, errors="replace").rstrip("\0") or None


def _read(source) -> tuple[str, bytes]:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return "the file", bytes(source)
    path = Path(source).expanduser()
    try:
        if path.stat().st_size > MAX_BYTES:
            raise UserError(f"{source} is over {MAX_BYTES // 2**20} MB, larger than any picture noisecraft checks")
        return str(source), path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{source}: no such file") from None
    except IsADirectoryError:
        raise UserError(f"{source} is a folder; give a picture file") from None
    except OSError as error:
        raise UserError(f"{source} cannot be read ({error.strerror or error})") from None


def _sniff(data: bytes, name: str) -> str:
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    raise UserError(f"{name} is not a picture noisecraft can check (use PNG, JPEG or WebP)")


def _read_manifest(report: Report, data: bytes, kind: str, trust_anchors: bytes | None) -> None:
    settings = json.loads(json.dumps(SETTINGS))
    if trust_anchors:
        settings["trust"] = {"user_anchors": trust_anchors.decode("ascii", errors="replace")}
    context = c2pa.Context(settings=c2pa.Settings.from_dict(settings))
    try:
        reader = c2pa.Reader.try_create(f"image/{kind}", io.BytesIO(data), None, context)
        if reader is None:
            return
        with reader:
            store = json.loads(reader.json())
    except c2pa.C2paError as error:
        report.state, report.reasons = "invalid", [f"the manifest cannot be read: {' '.join(str(error).split())[:300]}"]
        return
    finally:
        context.close()
    failures = store.get("validation_results", {}).get("activeManifest", {}).get("failure", [])
    if not failures and not store.get("validation_results"):
        failures = store.get("validation_status", [])
    failures = sorted(failures, key=lambda f: f.get("code") == UNTRUSTED)  # what broke first, then the trust
    report.state = _state(store.get("validation_state"), failures)
    report.reasons = [f"{f['code']}: {EXPLAINED.get(f['code'], f.get('explanation', ''))}" for f in failures]
    active = store.get("manifests", {}).get(store.get("active_manifest"), {})
    report.manifests = len(store.get("manifests", {}))
    _summarise(report, active)


def _state(validation_state: str | None, failures: list[dict]) -> str:
    codes = {failure.get("code") for failure in failures}
    if validation_state == "Invalid" or codes - {UNTRUSTED}:
        return "invalid"
    if validation_state in ("Trusted", None) and not codes:  # None: an ingredient, judged by its failures
        return "valid"
    return "untrusted"


def _summarise(report: Report, manifest: dict) -> None:
    info = manifest.get("signature_info") or {}
    if info:
        report.signer = {"name": info.get("common_name"), "issuer": info.get("issuer"),
                         "algorithm": str(info.get("alg", "")).upper(),
                         "local": info.get("issuer") == LOCAL_ORGANIZATION}
    generators = manifest.get("claim_generator_info") or []
    if generators:
        report.generator = " ".join(str(generators[0].get(k)) for k in ("name", "version") if generators[0].get(k))
    for assertion in manifest.get("assertions", []):
        if assertion.get("label", "").startswith("c2pa.actions"):
            report.actions += [_action(a) for a in assertion.get("data", {}).get("actions", [])]
        elif assertion.get("label") == WATERMARK_LABEL:
            report.manifest_watermark = str(assertion.get("data", {}).get("id"))
    for ingredient in manifest.get("ingredients", []):
        results = ingredient.get("validation_results", {}).get("activeManifest", {})
        report.ingredients.append({"title": ingredient.get("title"), "format": ingredient.get("format"),
                                   "relationship": ingredient.get("relationship"),
                                   "credentials": _state(None, results.get("failure", []))
                                   if ingredient.get("active_manifest") else "none"})


def _action(action: dict) -> dict:
    agent = action.get("softwareAgent")
    agent = " ".join(str(agent.get(k)) for k in ("name", "version") if agent.get(k)) if isinstance(agent, dict) else agent
    parameters = action.get("parameters") or {}
    return {"action": action.get("action"), "software": agent,
            "source_type": (action.get("digitalSourceType") or "").rsplit("/", 1)[-1] or None,
            "model": parameters.get("model"), "ingredients": len(parameters.get("ingredients", []))}


def _signer_text(signer: dict, state: str) -> str:
    text = f"{signer['name']}, issued by {signer['issuer']} ({signer['algorithm']})"
    if signer.get("local") and state == "valid":
        text += ": a self-signed noisecraft local identity, trusted here through the trust anchors given"
    elif signer.get("local"):
        text += ": a self-signed noisecraft local identity, in no public trust list (it shows who signed only " \
                "to someone who trusts its root certificate)"
    return text


def _action_text(action: dict) -> str:
    text = action["action"] or "?"
    if action.get("source_type"):
        text += f" ({action['source_type']})"
    if action.get("software"):
        text += f" by {action['software']}"
    model = action.get("model") or {}
    if model:
        text += ", model " + " ".join([str(model.get("name", "?"))] + ([f"(hash {model['hash']})"] if model.get("hash") else []))
    if action.get("ingredients"):
        text += f", {action['ingredients']} ingredient(s)"
    return text


def _ingredient_text(ingredient: dict) -> str:
    credentials = {"none": "no Content Credentials of its own"}.get(ingredient["credentials"],
                                                                    f"its own Content Credentials, as checked when it was used: "
                                                                    f"{ingredient['credentials']}")
    return f"{ingredient['title']} ({ingredient['relationship']}, {ingredient['format']}; {credentials})"
