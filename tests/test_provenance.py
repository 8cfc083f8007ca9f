"""Provenance: C2PA signing checked with c2pa's own Reader (the real library), the invisible watermark,
the local identity, and `verify`'s verdicts and sentences."""

from __future__ import annotations

import io
import json
import os
import stat
import struct
import zlib

import c2pa
import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from PIL import Image, ImageDraw, ImageFilter

from noisecraft.errors import UserError
from noisecraft.pngmeta import format_parameters
from noisecraft.provenance import (Ingredient, detect, embed, finish, fits, load_identity, local_identity,
                                   new_mark_id, root_certificate, sign, verify, write)
from noisecraft.provenance.watermark import LENGTH, payload, read_bits

PARAMETERS = format_parameters("a palm tree", "blurry", Steps=20, Seed=1, Size="256x256", Model_hash="0123456789",
                               Model="emoji")


def picture(seed: int = 0, width: int = 512, height: int = 512) -> Image.Image:
    """A natural-looking test picture: smooth colour gradients, blurred shapes, a little sensor noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    base = np.stack([rng.uniform(40, 200) + rng.uniform(-80, 80) * x + rng.uniform(-60, 60) * y for _ in range(3)], -1)
    image = Image.fromarray(np.clip(base, 0, 255).astype("uint8"))
    draw = ImageDraw.Draw(image)
    for _ in range(12):
        cx, cy, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(10, width / 4)
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([cx - r, cy - r * rng.uniform(0.3, 1), cx + r, cy + r],
                                                                  fill=colour)
    noisy = np.asarray(image.filter(ImageFilter.GaussianBlur(2)), float) + rng.normal(0, 3, (height, width, 3))
    image = Image.fromarray(np.clip(noisy, 0, 255).astype("uint8"))
    image.info["parameters"] = PARAMETERS
    return image


@pytest.fixture(scope="module")
def identity(tmp_path_factory):
    return local_identity(tmp_path_factory.mktemp("identity") / "id")


def read_store(data: bytes, kind: str) -> tuple[str, dict]:
    """c2pa's own verdict: (validation_state, the manifest store JSON)."""
    with c2pa.Reader(f"image/{kind}", io.BytesIO(data)) as reader:
        return reader.get_validation_state(), json.loads(reader.json())


def failure_codes(store: dict) -> list[str]:
    return [f["code"] for f in store["validation_results"]["activeManifest"]["failure"]]


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    chunks, pos = [], 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos: pos + 4])
        chunks.append((data[pos + 4: pos + 8], data[pos + 8: pos + 8 + length]))
        pos += 12 + length
    return chunks


def png_from_chunks(chunks) -> bytes:
    out = b"\x89PNG\r\n\x1a\n"
    for kind, body in chunks:
        out += struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    return out


def one_pixel_changed(signed: bytes) -> bytes:
    """The signed PNG with one pixel changed and everything else (manifest chunk, parameters) kept:
    decode, change pixel (10, 10), encode, put the original caBX manifest chunk back after IHDR."""
    image = Image.open(io.BytesIO(signed)).convert("RGB")
    r, g, b = image.getpixel((10, 10))
    image.putpixel((10, 10), ((r + 40) % 256, g, b))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    manifest = [c for c in png_chunks(signed) if c[0] == b"caBX"]
    text = [c for c in png_chunks(signed) if c[0] == b"tEXt"]
    fresh = png_chunks(buffer.getvalue())
    assert manifest and text
    return png_from_chunks(fresh[:1] + manifest + text + fresh[1:])


def exif_parameters(data: bytes) -> str:
    comment = Image.open(io.BytesIO(data)).getexif().get_ifd(0x8769)[0x9286]
    assert comment[:8] == b"UNICODE\0"
    return comment[8:].decode("utf-16-be")


def one_sentence(message: str) -> bool:
    return "\n" not in message and ". " not in message and not message.endswith(".") and len(message) < 300


# ------------------------------------------------------------------------------------------- signing

@pytest.mark.parametrize("kind", ["png", "jpeg", "webp"])
def test_a_signed_picture_validates_with_c2pa_and_verify_says_untrusted_self_signed(identity, kind):
    data = finish(picture(1, 256, 256), kind, 90, identity=identity, watermark=0x1234ABCD)
    state, store = read_store(data, kind)
    assert state == "Valid"  # signature and hashes check; "Trusted" would need the root in a trust list
    assert failure_codes(store) == ["signingCredential.untrusted"]
    success = {s["code"] for s in store["validation_results"]["activeManifest"]["success"]}
    assert {"claimSignature.validated", "assertion.dataHash.match"} <= success
    active = store["manifests"][store["active_manifest"]]
    assert active["claim_generator_info"][0]["name"] == "noisecraft"
    (actions,) = [a["data"]["actions"] for a in active["assertions"] if a["label"] == "c2pa.actions.v2"]
    assert actions[0]["action"] == "c2pa.created"
    assert actions[0]["digitalSourceType"] == "http://cv.iptc.org/newsroom/digitalsourcetype/trainedAlgorithmicMedia"
    assert actions[0]["softwareAgent"]["name"] == "noisecraft"
    assert actions[0]["parameters"]["model"] == {"name": "emoji", "hash": "0123456789"}

    report = verify(data)
    assert report.state == "untrusted" and report.signer["local"]
    assert report.reasons == ["signingCredential.untrusted: the signer's certificate is in no trust list this verifier uses"]
    assert report.watermark.found and report.watermark_matches and report.manifest_watermark == "1234abcd"
    text = report.text()
    assert "untrusted: the signature is intact and the picture is unchanged since signing" in text
    assert "self-signed noisecraft local identity" in text and "mismatch" not in text
    assert report.parameters == PARAMETERS
    json.dumps(report.as_dict())


@pytest.mark.parametrize("kind", ["png", "jpeg", "webp"])
def test_signing_keeps_the_generation_parameters(identity, kind):
    data = finish(picture(2, 256, 256), kind, 90, identity=identity, watermark=False)
    assert read_store(data, kind)[0] == "Valid"
    if kind == "png":
        assert Image.open(io.BytesIO(data)).info["parameters"] == PARAMETERS
    else:
        assert exif_parameters(data) == PARAMETERS


def test_one_changed_pixel_makes_the_manifest_invalid(identity):
    signed = finish(picture(3, 256, 256), "png", identity=identity, watermark=False)
    tampered = one_pixel_changed(signed)
    state, store = read_store(tampered, "png")
    assert state == "Invalid" and "assertion.dataHash.mismatch" in failure_codes(store)
    report = verify(tampered)
    assert report.state == "invalid"
    assert any(r.startswith("assertion.dataHash.mismatch: the picture's bytes differ") for r in report.reasons)
    assert "invalid: the picture or its manifest was changed after signing" in report.text()
    assert report.parameters == PARAMETERS  # still there: only the pixels changed


def test_a_changed_byte_of_jpeg_data_makes_it_invalid(identity):
    signed = bytearray(finish(picture(4, 256, 256), "jpeg", 90, identity=identity, watermark=False))
    signed[len(signed) - 200] ^= 0x10  # inside the entropy-coded scan, after every header and the manifest
    report = verify(bytes(signed))
    assert report.state == "invalid" and "changed after signing" in report.text()


def test_an_unsigned_picture_says_none_and_a_resaved_one_keeps_only_its_watermark(identity, tmp_path):
    unsigned = finish(picture(5, 256, 256), "png", watermark=False)
    report = verify(unsigned)
    assert report.state == "none" and report.reasons == [] and report.signer is None
    assert "Content Credentials: none: the file carries no C2PA manifest" in report.text()
    assert not report.watermark.found

    signed = finish(picture(5), "png", identity=identity, watermark=0xCAFE0001)
    buffer = io.BytesIO()
    Image.open(io.BytesIO(signed)).save(buffer, "PNG")  # what an editor's "save as" does: the manifest is gone
    path = write(tmp_path / "resaved.png", buffer.getvalue())
    report = verify(path)
    assert report.state == "none" and report.watermark.mark_id == 0xCAFE0001
    assert "found, id cafe0001 (no Content Credentials to compare it with)" in report.text()


def test_an_edit_of_a_signed_picture_keeps_its_manifest_as_the_parent(identity):
    first = finish(picture(6, 256, 256), "png", identity=identity, watermark=False)
    first_label = read_store(first, "png")[1]["active_manifest"]
    edit = finish(picture(7, 256, 256), "png", identity=identity, watermark=False, action="c2pa.edited",
                  ingredients=[Ingredient(first, "png", "palm.png")])
    state, store = read_store(edit, "png")
    assert state == "Valid" and len(store["manifests"]) == 2
    active = store["manifests"][store["active_manifest"]]
    (parent,) = active["ingredients"]
    assert parent["relationship"] == "parentOf" and parent["active_manifest"] == first_label
    (actions,) = [a["data"]["actions"] for a in active["assertions"] if a["label"] == "c2pa.actions.v2"]
    assert [a["action"] for a in actions] == ["c2pa.opened", "c2pa.edited"]
    report = verify(edit)
    assert report.state == "untrusted" and report.manifests == 2
    assert report.ingredients == [{"title": "palm.png", "format": "image/png", "relationship": "parentOf",
                                   "credentials": "untrusted"}]


def test_a_layout_records_its_logo_and_photo_as_placed_components(identity):
    logo = finish(picture(8, 64, 64), "png", watermark=False)
    photo = finish(picture(9, 96, 64), "jpeg", 85, watermark=False)
    data = sign(finish(picture(10, 256, 256), "png", watermark=False), "png", identity, title="menu.png",
                model_name="emoji", model_hash=None,
                ingredients=[Ingredient(logo, "png", "logo.png", "componentOf"),
                             Ingredient(photo, "jpeg", "photo.jpg", "componentOf")])
    state, store = read_store(data, "png")
    assert state == "Valid"
    active = store["manifests"][store["active_manifest"]]
    assert [(i["title"], i["relationship"]) for i in active["ingredients"]] == [("logo.png", "componentOf"),
                                                                               ("photo.jpg", "componentOf")]
    report = verify(data)
    assert [a["action"] for a in report.actions] == ["c2pa.created", "c2pa.placed", "c2pa.placed"]
    assert report.actions[0]["source_type"] == "compositeWithTrainedAlgorithmicMedia"
    assert "ingredient: photo.jpg (componentOf, image/jpeg; no Content Credentials of its own)" in report.text()


def test_an_edit_needs_its_source_and_a_creation_has_none(identity):
    data = finish(picture(11, 64, 64), "png", watermark=False)
    with pytest.raises(ValueError, match="exactly one parentOf"):
        sign(data, "png", identity, title="x", model_name=None, model_hash=None, action="c2pa.edited")
    with pytest.raises(ValueError, match="no parentOf"):
        sign(data, "png", identity, title="x", model_name=None, model_hash=None,
             ingredients=[Ingredient(data, "png", "source.png")])


def test_the_local_root_as_a_trust_anchor_makes_it_valid(identity, tmp_path):
    data = finish(picture(12, 256, 256), "png", identity=identity, watermark=False)
    folder = tmp_path / "other"
    assert verify(data, trust_anchors=root_certificate(folder)).state == "untrusted"  # another computer's root
    report = verify(data, trust_anchors=identity.cert_chain_pem.split(b"-----END CERTIFICATE-----\n")[1]
                    + b"-----END CERTIFICATE-----\n")
    assert report.state == "valid" and report.reasons == []
    assert "valid: signed by a trusted certificate" in report.text()


# ------------------------------------------------------------------------------------------ identity

def test_the_local_identity_is_made_once_in_the_config_folder_with_private_keys(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    first = local_identity()
    folder = tmp_path / "config" / "noisecraft" / "identity"
    assert sorted(p.name for p in folder.iterdir()) == ["root.key", "root.pem", "signer.key", "signer.pem"]
    assert stat.S_IMODE(os.stat(folder / "signer.key").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(folder / "root.key").st_mode) == 0o600
    again = local_identity()
    assert again == first and again.self_signed and again.algorithm == "es256"
    assert "PRIVATE" not in repr(again)
    cert = x509.load_pem_x509_certificates(first.cert_chain_pem)[0]
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False


def test_a_signer_key_that_no_longer_matches_is_issued_again_from_the_same_root(tmp_path):
    first = local_identity(tmp_path / "id")
    other = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    (tmp_path / "id" / "signer.key").write_bytes(other)
    again = local_identity(tmp_path / "id")
    assert again.private_key_pem != first.private_key_pem
    assert again.cert_chain_pem.endswith(root_certificate(tmp_path / "id"))
    assert verify(finish(picture(13, 64, 64), "png", identity=again, watermark=False)).state == "untrusted"


def test_load_identity_errors_are_one_sentence(identity, tmp_path):
    folder = tmp_path / "id"
    local_identity(folder)
    cert, key = folder / "signer.pem", folder / "signer.key"
    assert load_identity(cert, key).name == "noisecraft local signer"
    (tmp_path / "junk.pem").write_text("hello")
    (tmp_path / "locked.key").write_bytes(serialization.load_pem_private_key(key.read_bytes(), None).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.BestAvailableEncryption(b"pw")))
    (tmp_path / "other.key").write_bytes(ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    signer_pem, root_pem = cert.read_bytes().split(b"-----END CERTIFICATE-----\n")[:2]
    (tmp_path / "reversed.pem").write_bytes(root_pem + b"-----END CERTIFICATE-----\n" + signer_pem
                                            + b"-----END CERTIFICATE-----\n")
    cases = [(tmp_path / "missing.pem", key, "no such file"), (tmp_path / "reversed.pem", key, "put the certificate"),
             (tmp_path / "junk.pem", key, "not a PEM certificate"),
             (cert, tmp_path / "junk.pem", "not a PEM private key"), (cert, tmp_path / "locked.key", "is encrypted"),
             (cert, tmp_path / "other.key", "does not belong to certificate"),
             (folder / "root.pem", folder / "root.key", "is self-signed"), (tmp_path, key, "is a folder"),
             (cert, folder / "root.key", "is the key of the CA")]
    for cert_path, key_path, words in cases:
        with pytest.raises(UserError) as caught:
            load_identity(cert_path, key_path)
        assert words in str(caught.value) and one_sentence(str(caught.value)), str(caught.value)


# ----------------------------------------------------------------------------------------- watermark

def test_the_watermark_round_trips_on_a_512_picture_and_survives_jpeg_75():
    image, mark = picture(20), new_mark_id()
    marked = embed(image, mark)
    assert marked.size == image.size and marked.info["parameters"] == PARAMETERS
    difference = np.asarray(marked, float) - np.asarray(image, float)
    assert 10 * np.log10(255**2 / np.mean(difference**2)) > 38  # measured 41-42 dB
    found = detect(marked)
    assert found.found and found.mark_id == mark and found.magic_errors == 0
    buffer = io.BytesIO()
    marked.save(buffer, "JPEG", quality=75)
    compressed = Image.open(io.BytesIO(buffer.getvalue()))
    accuracy = np.mean(np.array(read_bits(compressed)) == np.array(payload(mark)))
    assert accuracy >= 0.95  # measured 1.000 on 16 pictures of 512x512 (benchmarks/watermark_robustness.py)
    assert detect(compressed).mark_id == mark


def test_a_transparent_picture_keeps_its_alpha():
    image = picture(29, 256, 256).convert("RGBA")
    image.putalpha(Image.linear_gradient("L").resize((256, 256)))
    marked = embed(image, 99)
    assert marked.mode == "RGBA" and marked.getchannel("A").tobytes() == image.getchannel("A").tobytes()
    assert detect(marked).mark_id == 99


def test_an_unmarked_picture_has_no_watermark():
    for seed in (21, 22, 23):
        result = detect(picture(seed))
        assert not result.found and result.mark_id is None and len(result.bits) == LENGTH


def test_a_picture_too_small_for_the_watermark_is_left_unchanged(identity):
    small = picture(24, 200, 200)
    assert not fits(small) and fits(picture(25, 256, 256))
    assert embed(small, 7) is small
    result = detect(small)  # read at 400x400 only, in case it is a downscaled copy of a marked picture
    assert not result.found and result.note == "read at twice the size"
    report = verify(finish(small, "png", identity=identity))
    assert report.manifest_watermark is None and "Watermark: not found (read at twice the size)" in report.text()
    tiny = picture(26, 100, 100)
    assert detect(tiny).bits is None
    assert "not checked: the picture is too small to carry one" in verify(finish(tiny, "png")).text()


def test_a_downscaled_copy_is_read_at_twice_its_size():
    mark = new_mark_id()
    half = embed(picture(26), mark).resize((256, 256), Image.LANCZOS)
    result = detect(half)
    assert result.found and result.mark_id == mark and result.note == "read at twice the size"


def test_a_large_picture_is_read_from_its_top_band():
    mark = new_mark_id()
    marked = embed(picture(27, 1100, 1000), mark)  # 1.1 M pixels: read from its top 952 rows (whole blocks, full width)
    assert read_bits(marked) == tuple(payload(mark)) and detect(marked).mark_id == mark
    assert detect(picture(28, 1100, 1000)).found is False


# ----------------------------------------------------------------------------------- verify's errors

def test_verify_refuses_what_is_not_a_picture_in_one_sentence(tmp_path):
    (tmp_path / "notes.txt").write_text("not a picture")
    for source, words in [(tmp_path / "notes.txt", "is not a picture noisecraft can check"),
                          (tmp_path / "missing.png", "no such file"), (b"GIF89a....", "is not a picture")]:
        with pytest.raises(UserError) as caught:
            verify(source)
        assert words in str(caught.value) and one_sentence(str(caught.value))


def test_write_is_atomic_and_leaves_no_temp_file(tmp_path):
    path = write(tmp_path / "x.png", b"one")
    write(path, b"two")
    assert path.read_bytes() == b"two" and [p.name for p in tmp_path.iterdir()] == ["x.png"]
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
