"""The emoji dataset builder, on tiny fake npm tarballs made here (no network)."""

import io
import json
import subprocess
import sys
import tarfile

import pytest
from PIL import Image

from noisecraft.datasets import emoji
from noisecraft.datasets.emoji import DatasetError, build_emoji_dataset


def _add(tar, name, data: bytes):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _png(color, alpha=255):
    buffer = io.BytesIO()
    image = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    image.paste(Image.new("RGBA", (32, 32), (*color, alpha)), (16, 16))
    image.save(buffer, "PNG")
    return buffer.getvalue()


def _tarballs(tmp_path):
    google = tmp_path / "emoji-datasource-google.tgz"
    entries = [
        {"name": "PALM TREE", "unified": "1F334", "image": "1f334.png", "category": "Animals & Nature", "has_img_google": True},
        {"name": "WAVING HAND SIGN", "unified": "1F44B", "image": "1f44b.png", "category": "People & Body", "has_img_google": True,
         "skin_variations": {"1F3FD": {"unified": "1F44B-1F3FD", "image": "1f44b-1f3fd.png", "has_img_google": True}}},
        {"name": "ROCKET", "unified": "1F680", "image": "1f680.png", "category": "Travel & Places", "has_img_google": True},
    ]
    with tarfile.open(google, "w:gz") as tar:
        _add(tar, "package/package.json", json.dumps({"name": "emoji-datasource-google"}).encode())
        _add(tar, "package/emoji.json", json.dumps(entries).encode())
        _add(tar, "package/img/google/64/1f334.png", _png((0, 160, 0)))
        _add(tar, "package/img/google/64/1f44b.png", _png((250, 200, 0)))
        _add(tar, "package/img/google/64/1f44b-1f3fd.png", _png((160, 110, 60)))
        # 1f680.png is missing on purpose
    base = tmp_path / "emojibase-data.tgz"
    data = [
        {"label": "palm tree", "hexcode": "1F334", "tags": ["beach", "palm", "plant", "tree", "tropical"]},
        {"label": "waving hand", "hexcode": "1F44B", "tags": ["hello", "wave"],
         "skins": [{"label": "waving hand: medium skin tone", "hexcode": "1F44B-1F3FD"}]},
    ]
    with tarfile.open(base, "w:gz") as tar:
        _add(tar, "package/package.json", json.dumps({"name": "emojibase-data"}).encode())
        _add(tar, "package/en/data.json", json.dumps(data).encode())
    return [google, base]


def test_builds_images_captions_and_licences(tmp_path):
    stats = build_emoji_dataset(tmp_path / "out", styles=("google",), tarballs=_tarballs(tmp_path), log=lambda m: None)
    assert stats.images == 3 and stats.skipped == 1 and stats.per_style == {"google": 3}
    rows = [json.loads(line) for line in (tmp_path / "out" / "metadata.jsonl").read_text().splitlines()]
    palm = next(r for r in rows if r["codepoint"] == "1F334")
    assert palm["text"].startswith("palm tree, ") and palm["text"].endswith("google style")
    assert "palm tree" in palm["texts"] and "a palm tree emoji" in palm["texts"]
    assert any(tag in palm["text"] for tag in ("beach", "plant", "tropical"))
    skin = next(r for r in rows if r["codepoint"] == "1F44B-1F3FD")
    assert skin["name"] == "waving hand: medium skin tone" and "wave" in " ".join(skin["texts"])
    with Image.open(tmp_path / "out" / palm["file_name"]) as image:
        assert image.mode == "RGB" and image.size == (64, 64)
        assert image.getpixel((0, 0)) == (255, 255, 255)  # transparent became white
        assert image.getpixel((32, 32)) == (0, 160, 0)
    licenses = {p.name for p in (tmp_path / "out" / "LICENSES").iterdir()}
    assert {"ATTRIBUTION.md", "noto-emoji.md", "Apache-2.0.txt", "emojibase-data-MIT.txt"} <= licenses
    assert not (tmp_path / "out" / "metadata.jsonl.tmp").exists()


def test_resize_and_no_skin_tones(tmp_path):
    stats = build_emoji_dataset(tmp_path / "out", styles=("google",), size=32, tarballs=_tarballs(tmp_path),
                                skin_tones=False, log=lambda m: None)
    assert stats.images == 2
    with Image.open(tmp_path / "out" / "images" / "google" / "1f334.png") as image:
        assert image.size == (32, 32)


def test_trainer_reads_the_dataset(tmp_path):
    from noisecraft.train.data import load_image_folder

    build_emoji_dataset(tmp_path / "out", styles=("google",), tarballs=_tarballs(tmp_path), log=lambda m: None)
    data = load_image_folder(tmp_path / "out", 16)
    assert len(data) == 3 and len(data.caption_ids[0]) >= 3


def test_npm_missing_says_how_to_get_the_data_by_hand(tmp_path, monkeypatch):
    monkeypatch.setattr(emoji.shutil, "which", lambda name: None)
    with pytest.raises(DatasetError, match="--from-tarball"):
        build_emoji_dataset(tmp_path / "out", log=lambda m: None)


def test_npm_failure_is_one_sentence_from_the_cli(tmp_path, monkeypatch):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "npm").write_text("#!/bin/sh\necho 'npm ERR! network' >&2\nexit 1\n")
    (fake / "npm").chmod(0o755)
    env = {"PATH": f"{fake}:/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-m", "noisecraft.cli", "data", "emoji", "--out", str(tmp_path / "o")],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 2 and "--from-tarball" in result.stderr and "Traceback" not in result.stderr


def test_path_traversal_member_is_refused(tmp_path):
    evil = tmp_path / "evil.tgz"
    with tarfile.open(evil, "w:gz") as tar:
        _add(tar, "package/package.json", json.dumps({"name": "emojibase-data"}).encode())
        _add(tar, "package/../../escape.txt", b"x")
    with pytest.raises(DatasetError, match="unsafe path"):
        build_emoji_dataset(tmp_path / "out", styles=("google",), tarballs=[evil], log=lambda m: None)
    assert not (tmp_path / "escape.txt").exists()
