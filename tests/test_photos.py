"""One's own photos for fine-tuning (issue 19): EXIF orientation, HEIC, captions (metadata.jsonl, .txt, the
template), aspect buckets, loss masks from transparency or a mask file, unreadable files named."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from noisecraft.errors import UserError
from noisecraft.train.photos import bucket_for, load_photos, template_caption


def test_buckets_follow_the_photo_shape():
    assert bucket_for((4032, 3024), 64 * 64, 8) == (72, 56)  # a phone photo, landscape 4:3
    assert bucket_for((3024, 4032), 64 * 64, 8) == (56, 72)
    assert bucket_for((1000, 1000), 64 * 64, 8) == (64, 64)
    assert bucket_for((1920, 1080), 512 * 512, 64) == (704, 384)
    assert template_caption("acme storefront", "storefront") == "a photo of acme storefront"
    assert template_caption("acme", "storefront") == "a photo of acme, storefront"


def test_photos_upright_heic_captions_and_masks(tmp_path):
    import pillow_heif

    pillow_heif.register_heif_opener()
    sideways = Image.new("RGB", (120, 90), (200, 30, 30))
    sideways.paste((30, 30, 200), (0, 0, 120, 20))  # a blue band along the top as the sensor saw it
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to view"
    sideways.save(tmp_path / "a-phone.jpg", exif=exif, quality=95)
    Image.new("RGB", (80, 60), (20, 160, 60)).save(tmp_path / "b-iphone.heic")
    product = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    product.paste((240, 200, 10, 255), (24, 24, 40, 40))  # a small product on a transparent background
    product.save(tmp_path / "c-product.png")
    Image.new("RGB", (64, 64), "white").save(tmp_path / "d-masked.png")
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))
    mask.save(tmp_path / "d-masked.mask.png")
    (tmp_path / "d-masked.txt").write_text("the acme shop window at night\n")
    (tmp_path / "e-broken.jpg").write_bytes(b"not a jpeg")
    photos = load_photos(tmp_path, "acme storefront", "storefront")
    assert [p.file for p in photos.photos] == ["a-phone.jpg", "b-iphone.heic", "c-product.png", "d-masked.png"]
    assert photos.skipped == ["e-broken.jpg: UnidentifiedImageError, not a photo noisecraft can read"]
    upright = photos.photos[0]
    assert upright.bucket == (56, 72)  # portrait once the EXIF rotation is applied
    pixels = np.asarray(upright.image).astype(int)
    assert pixels[:, -6:, 2].mean() > 150 and pixels[:, :6, 0].mean() > 150  # the band is now on the right
    assert np.abs(np.asarray(photos.photos[1].image).astype(int) - [20, 160, 60]).mean() < 8  # HEIC read
    weights = photos.photos[2].weights
    assert weights is not None and weights.mean() == pytest.approx(1.0, abs=1e-5)
    assert weights[32, 32] > 10 and weights[2, 2] == 0  # the small product weighs as much as a big one would
    assert photos.photos[3].weights[:, :30].mean() == pytest.approx(2.0, abs=0.1)  # mask file: left half only
    assert [p.caption for p in photos.photos] == ["a photo of acme storefront"] * 3 + ["the acme shop window at night"]
    assert photos.captioned == 1 and set(photos.buckets()) == {(56, 72), (72, 56), (64, 64)}


def test_metadata_captions_and_refusals(tmp_path):
    Image.new("RGB", (64, 48), "red").save(tmp_path / "one.jpg")
    (tmp_path / "metadata.jsonl").write_text(json.dumps({"file_name": "one.jpg", "text": "a red acme van"}) + "\n")
    assert load_photos(tmp_path, "acme").photos[0].caption == "a red acme van"
    with pytest.raises(UserError, match="no such folder of photos"):
        load_photos(tmp_path / "nope", "acme")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("hello")
    with pytest.raises(UserError, match="has no photos noisecraft can read"):
        load_photos(empty, "acme")
    Image.new("RGB", (64, 64), "white").save(empty / "tiny.png")
    Image.new("L", (64, 64), 0).save(empty / "tiny.mask.png")
    with pytest.raises(UserError, match="its mask keeps under 2% of the photo"):
        load_photos(empty, "acme")
