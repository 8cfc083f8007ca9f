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

QUIET = {"log": lambda message: None}


def _add(tar, name, data: bytes, kind=tarfile.REGTYPE, link=""):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def _png(color, alpha=255):
    """64 px, transparent except a 32 px square of `color` in the middle."""
    buffer = io.BytesIO()
    image = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    image.paste(Image.new("RGBA", (32, 32), (*color, alpha)), (16, 16))
    image.save(buffer, "PNG")
    return buffer.getvalue()


def _package(path, name, files: dict, version=None):
    with tarfile.open(path, "w:gz") as tar:
        meta = {"name": name, "version": version or emoji.PACKAGES.get(name, "1.0.0"), "license": "MIT"}
        _add(tar, "package/package.json", json.dumps(meta).encode())
        for member, data in files.items():
            _add(tar, f"package/{member}", data)
    return path


def _tarballs(tmp_path, style="google"):
    entries = [
        {"name": "PALM TREE", "unified": "1F334", "image": "1f334.png", "category": "Animals & Nature",
         f"has_img_{style}": True},
        {"name": "WAVING HAND SIGN", "unified": "1F44B", "image": "1f44b.png", "category": "People & Body",
         f"has_img_{style}": True,
         "skin_variations": {
             "1F3FD": {"unified": "1F44B-1F3FD", "image": "1f44b-1f3fd.png", f"has_img_{style}": True},
             "1F3FF": {"unified": "1F44B-1F3FF", "image": "1f44b-1f3ff.png", f"has_img_{style}": True}}},
        {"name": "ROCKET", "unified": "1F680", "image": "1f680.png", "category": "Travel & Places",
         f"has_img_{style}": True},  # its image is missing from the tarball on purpose
    ]
    images = {"1f334.png": _png((0, 160, 0)), "1f44b.png": _png((250, 200, 0)),
              "1f44b-1f3fd.png": _png((160, 110, 60)), "1f44b-1f3ff.png": _png((90, 60, 30))}
    source = _package(tmp_path / f"emoji-datasource-{style}.tgz", f"emoji-datasource-{style}", {
        "emoji.json": json.dumps(entries).encode(),
        **{f"img/{style}/64/{name}": data for name, data in images.items()},
        f"img/{style}/32/1f334.png": _png((1, 2, 3)),  # other sizes are not read
    })
    data = [  # 1F44B-1F3FF has no CLDR entry: its name comes from the skin-tone codepoint
        {"label": "palm tree", "hexcode": "1F334", "tags": ["beach", "palm", "plant", "tree", "tropical"]},
        {"label": "waving hand", "hexcode": "1F44B", "tags": ["hello", "wave"],
         "skins": [{"label": "waving hand: medium skin tone", "hexcode": "1F44B-1F3FD"}]},
        {"label": "rocket", "hexcode": "1F680", "tags": ["space"]},
    ]
    base = _package(tmp_path / "emojibase-data.tgz", "emojibase-data", {"en/data.json": json.dumps(data).encode()})
    return [source, base]


def _rows(out):
    return {r["codepoint"]: r for r in map(json.loads, (out / "metadata.jsonl").read_text().splitlines())}


def test_builds_images_captions_and_licences(tmp_path):
    out = tmp_path / "out"
    stats = build_emoji_dataset(out, styles=("google",), tarballs=_tarballs(tmp_path), **QUIET)
    assert (stats.images, stats.skipped, stats.per_style, stats.skipped_per_style) == (4, 1, {"google": 4}, {"google": 1})
    assert stats.versions == {"emoji-datasource-google": emoji.DATASOURCE_VERSION, "emojibase-data": emoji.EMOJIBASE_VERSION}
    rows = _rows(out)
    assert set(rows) == {"1F334", "1F44B", "1F44B-1F3FD", "1F44B-1F3FF"}  # the rocket has no image
    palm = rows["1F334"]
    assert palm["file_name"] == "images/google/1f334.png" and palm["name"] == "palm tree"
    assert palm["style"] == "google" and palm["category"] == "Animals & Nature"
    assert palm["text"] == palm["texts"][0] and len(palm["texts"]) == 3
    assert palm["text"].startswith("palm tree, ") and palm["text"].endswith(", google style")
    assert sorted(palm["text"].split(", ")[1:-1]) == ["beach", "plant", "tropical"]  # "palm", "tree" are in the name
    assert palm["texts"][1:] == ["palm tree", "a palm tree emoji, google style"]
    skin = rows["1F44B-1F3FD"]
    assert skin["name"] == "waving hand: medium skin tone"
    assert "a waving hand emoji, medium skin tone, google style" in skin["texts"]
    assert "hello" in skin["text"] and "wave" in skin["text"]  # tags inherited from the base emoji
    assert rows["1F44B-1F3FF"]["name"] == "waving hand sign: dark skin tone"
    with Image.open(out / palm["file_name"]) as image:
        assert image.mode == "RGB" and image.size == (64, 64)
        assert image.getpixel((0, 0)) == (255, 255, 255)  # transparent became white
        assert image.getpixel((32, 32)) == (0, 160, 0)
    assert sorted(p.name for p in (out / "images" / "google").iterdir()) == sorted(
        r["file_name"].split("/")[-1] for r in rows.values())
    licenses = {p.name for p in (out / "LICENSES").iterdir()}
    assert licenses == {"ATTRIBUTION.md", "noto-emoji.md", "Apache-2.0.txt", "emoji-datasource-MIT.txt",
                        "emojibase-data-MIT.txt", "Unicode-3.0.txt"}  # no Twemoji notice without twitter
    assert "Apache License" in (out / "LICENSES" / "Apache-2.0.txt").read_text()
    assert f"emojibase-data {emoji.EMOJIBASE_VERSION}" in (out / "LICENSES" / "ATTRIBUTION.md").read_text()
    assert not (out / "metadata.jsonl.partial").exists()


def test_same_input_same_dataset_and_more_captions(tmp_path):
    tarballs = _tarballs(tmp_path)
    build_emoji_dataset(tmp_path / "a", styles=("google",), tarballs=tarballs, **QUIET)
    build_emoji_dataset(tmp_path / "b", styles=("google",), tarballs=tarballs, **QUIET)
    assert (tmp_path / "a" / "metadata.jsonl").read_bytes() == (tmp_path / "b" / "metadata.jsonl").read_bytes()
    build_emoji_dataset(tmp_path / "c", styles=("google",), tarballs=tarballs, captions_per_image=6, **QUIET)
    texts = _rows(tmp_path / "c")["1F334"]["texts"]
    assert len(texts) == 6 and len(set(texts)) == 6
    assert "palm tree, animals & nature, google style" in texts


def test_two_styles_from_a_dict_resized_without_skin_tones(tmp_path):
    google, base = _tarballs(tmp_path)
    twitter, _ = _tarballs(tmp_path, "twitter")
    tarballs = {"emoji-datasource-google": google, "emoji-datasource-twitter": twitter, "emojibase-data": base}
    stats = build_emoji_dataset(tmp_path / "out", size=32, tarballs=tarballs, skin_tones=False, **QUIET)
    assert stats.per_style == {"google": 2, "twitter": 2} and stats.skipped == 2
    rows = [json.loads(line) for line in (tmp_path / "out" / "metadata.jsonl").read_text().splitlines()]
    assert {r["file_name"] for r in rows} == {"images/google/1f334.png", "images/google/1f44b.png",
                                              "images/twitter/1f334.png", "images/twitter/1f44b.png"}
    assert all(r["text"].endswith(f"{r['style']} style") for r in rows)
    assert (tmp_path / "out" / "LICENSES" / "twemoji.md").exists()
    with Image.open(tmp_path / "out" / "images" / "twitter" / "1f334.png") as image:
        assert image.size == (32, 32) and image.mode == "RGB"


def test_wrong_or_missing_tarballs_are_explained(tmp_path):
    google, base = _tarballs(tmp_path)
    with pytest.raises(DatasetError, match="not emojibase-data"):
        build_emoji_dataset(tmp_path / "out", styles=("google",), tarballs={"emojibase-data": google}, **QUIET)
    with pytest.raises(DatasetError, match=r"no tarball of emoji-datasource-twitter.*--from-tarball"):
        build_emoji_dataset(tmp_path / "out", tarballs=[google, base], **QUIET)
    with pytest.raises(DatasetError, match="no tarball at"):
        build_emoji_dataset(tmp_path / "out", tarballs=[tmp_path / "nope.tgz"], **QUIET)
    (tmp_path / "junk.tgz").write_bytes(b"not a tarball")
    with pytest.raises(DatasetError, match="not a readable npm package"):
        build_emoji_dataset(tmp_path / "out", tarballs=[tmp_path / "junk.tgz"], **QUIET)
    assert not (tmp_path / "out" / "metadata.jsonl").exists()


def test_trainer_reads_the_dataset(tmp_path):
    from noisecraft.train.data import load_image_folder

    build_emoji_dataset(tmp_path / "out", styles=("google",), tarballs=_tarballs(tmp_path), **QUIET)
    data = load_image_folder(tmp_path / "out", 16)
    assert len(data) == 4 and all(len(ids) == 3 for ids in data.caption_ids)


def test_npm_missing_says_how_to_get_the_data_by_hand(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no npm on PATH
    with pytest.raises(DatasetError, match="--from-tarball") as error:
        build_emoji_dataset(tmp_path / "out", **QUIET)
    assert f"npm pack emoji-datasource-google@{emoji.DATASOURCE_VERSION}" in str(error.value)
    assert str(error.value).count(". ") == 0  # one sentence


def test_npm_failure_is_one_sentence_from_the_cli(tmp_path):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "npm").write_text("#!/bin/sh\necho 'npm error code ENOTFOUND' >&2\nexit 1\n")
    (fake / "npm").chmod(0o755)
    env = {"PATH": f"{fake}:/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-m", "noisecraft.cli", "data", "emoji", "--out", str(tmp_path / "o")],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 2 and "--from-tarball" in result.stderr and "Traceback" not in result.stderr
    assert "ENOTFOUND" in result.stdout  # npm's own reason is passed on


@pytest.mark.parametrize("member,kind,link", [
    ("package/../../escape.txt", tarfile.REGTYPE, ""),
    ("/tmp/noisecraft-absolute.txt", tarfile.REGTYPE, ""),
    ("package/img/google/64/link.png", tarfile.SYMTYPE, "../../../../../etc/passwd"),
])
def test_unsafe_tarball_member_is_refused(tmp_path, member, kind, link):
    evil = tmp_path / "evil.tgz"
    with tarfile.open(evil, "w:gz") as tar:
        _add(tar, "package/package.json", json.dumps({"name": "emojibase-data"}).encode())
        _add(tar, member, b"x", kind, link)
    with pytest.raises(DatasetError, match="unsafe path"):
        build_emoji_dataset(tmp_path / "out", styles=("google",), tarballs=[evil], **QUIET)
    assert not (tmp_path / "escape.txt").exists()
