"""The emoji dataset: thousands of freely licensed drawings of everyday things, with captions.

`build_emoji_dataset` fetches pinned npm packages with npm's own client (`npm pack`), never a
hard-coded address, and writes an image folder with a ``metadata.jsonl`` that `noisecraft train`
reads. Images: ``emoji-datasource-google`` (Noto, Apache-2.0) and ``emoji-datasource-twitter``
(Twemoji, CC-BY 4.0), 64 px each. Names and keywords: ``emojibase-data`` (Unicode CLDR English).
Licences and attribution are copied into the dataset's ``LICENSES/`` folder.

Offline: run ``npm pack`` for the pinned packages on a connected machine and pass the ``.tgz``
files as ``tarballs=`` (``--from-tarball PATH`` on the command line).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from ..errors import UserError

# Pinned versions (the newest stable ones when pinned); change them only on purpose, since the
# dataset's images, names and captions follow from them.
DATASOURCE_VERSION = "16.0.0"  # emoji-datasource-google/-twitter: Noto v2.048, Twemoji v16.0.1, Emoji 16.0
EMOJIBASE_VERSION = "17.0.0"  # emojibase-data: CLDR English labels and tags
STYLES = ("google", "twitter")
PACKAGES = {f"emoji-datasource-{s}": DATASOURCE_VERSION for s in STYLES} | {"emojibase-data": EMOJIBASE_VERSION}
NPM_TIMEOUT_S = 1800

LICENSE_DIR = Path(__file__).parent / "licenses"
STYLE_LICENSES = {"google": ["noto-emoji.md", "Apache-2.0.txt"], "twitter": ["twemoji.md"]}
COMMON_LICENSES = ["emoji-datasource-MIT.txt", "emojibase-data-MIT.txt", "Unicode-3.0.txt"]
SKIN_TONES = {"1F3FB": "light skin tone", "1F3FC": "medium-light skin tone", "1F3FD": "medium skin tone",
              "1F3FE": "medium-dark skin tone", "1F3FF": "dark skin tone"}
_WANTED = re.compile(r"package\.json|emoji\.json|en/data\.json|img/[a-z]+/64/[0-9a-f-]+\.png")


class DatasetError(UserError):
    """The dataset cannot be built as asked; the message says what to do."""


@dataclass
class Stats:
    images: int = 0  # images written, all styles
    skipped: int = 0  # emoji (skin tones included) whose image a style lacks
    per_style: dict = field(default_factory=dict)  # style -> images written
    skipped_per_style: dict = field(default_factory=dict)
    versions: dict = field(default_factory=dict)  # package name -> version actually used

    def __str__(self) -> str:
        styles = ", ".join(f"{k}: {v}" for k, v in self.per_style.items())
        return f"{self.images} images ({styles}); {self.skipped} emoji without an image skipped"


# -- fetching and unpacking -------------------------------------------------------------------------
def _by_hand_hint(names=PACKAGES) -> str:
    specs = " ".join(f"{name}@{PACKAGES[name]}" for name in names)
    return f"on a connected machine run `npm pack {specs}` and pass each file with --from-tarball PATH"


def _npm_reason(stderr: str) -> str:
    """npm's error code and message, e.g. "code ECONNREFUSED; FetchError: request to ... failed"."""
    lines = [line.removeprefix("npm error").removeprefix("npm ERR!").strip() for line in stderr.splitlines()]
    lines = [line for line in lines if line and not line.startswith(("at ", "A complete log"))]
    code = [line for line in lines if line.startswith("code ")][:1]
    message = [line for line in lines if re.search(r"error:|\b40\d\b|not found|no matching", line, re.I)][:1]
    return "; ".join(code + message) or (lines[0] if lines else "")


def npm_pack(names: list[str], into: Path, log=print) -> list[Path]:
    """Download the pinned tarballs of `names` with `npm pack NAME@VERSION` into the folder `into`."""
    npm = shutil.which("npm")
    if npm is None:
        raise DatasetError(f"npm is not installed, so the emoji packages cannot be fetched; install Node.js "
                           f"or {_by_hand_hint(names)}")
    specs = [f"{name}@{PACKAGES[name]}" for name in names]
    log(f"fetching {' '.join(specs)} with npm pack")
    try:
        result = subprocess.run([npm, "pack", "--loglevel=error", *specs], cwd=into, capture_output=True,
                                text=True, timeout=NPM_TIMEOUT_S)
        failed, said = result.returncode != 0, _npm_reason(result.stderr)
    except (OSError, subprocess.TimeoutExpired) as error:
        failed, said = True, str(error)
    if failed:
        if said:
            log(f"npm said: {said}")
        raise DatasetError(f"`npm pack` could not fetch the emoji packages (offline or no access to the npm "
                           f"registry?); {_by_hand_hint(names)}")
    return sorted(into.glob("*.tgz"))


class Package:
    """An npm package tarball, checked member by member with tarfile's "data" filter (no absolute paths,
    nothing outside the folder, no device files or outward links) and the files we read unpacked into
    `into`: package.json, emoji.json, en/data.json and the 64 px images."""

    def __init__(self, path, into: Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise DatasetError(f"there is no tarball at {self.path}; give the path of a file made by `npm pack`")
        if not hasattr(tarfile, "data_filter"):  # added in Python 3.11.4
            raise DatasetError("unpacking npm tarballs safely needs Python 3.11.4 or newer; upgrade Python")
        into.mkdir(parents=True, exist_ok=True)
        self.root = None
        try:
            with tarfile.open(self.path, "r:*") as tar:
                for member in tar:  # one pass in order: no seeking back in a gzip stream
                    try:
                        if member.name.startswith(("/", "\\")):
                            raise tarfile.AbsolutePathError(member)
                        tarfile.data_filter(member, str(into))
                    except tarfile.FilterError:
                        raise DatasetError(f"{self.path} holds an unsafe path ({member.name}); "
                                           f"refusing to unpack it") from None
                    top, _, rest = member.name.partition("/")
                    if member.isfile() and _WANTED.fullmatch(rest):
                        tar.extract(member, into, filter="data")
                        if rest == "package.json":
                            self.root = into / top
        except (tarfile.TarError, OSError, EOFError):
            raise DatasetError(f"{self.path} is not a readable npm package tarball; make it with `npm pack`") from None
        if self.root is None:
            raise DatasetError(f"{self.path} has no package.json, so it is not an npm package tarball")
        meta = json.loads((self.root / "package.json").read_text(encoding="utf-8"))
        self.name, self.version = str(meta.get("name", "")), str(meta.get("version", ""))

    def file(self, name: str) -> Path:
        return self.root / name

    def read_json(self, name: str):
        path = self.file(name)
        if not path.is_file():
            raise DatasetError(f"{self.path} has no {name}; is it the right package?")
        return json.loads(path.read_text(encoding="utf-8"))


def _packages(tarballs, needed: list[str], tmp: Path, log) -> dict[str, Package]:
    """Open the given tarballs (a list of paths, or {package name: path}) or fetch the needed ones."""
    if tarballs is None:
        (tmp / "npm").mkdir()
        paths, expected = npm_pack(needed, tmp / "npm", log), {}
    elif isinstance(tarballs, dict):
        paths, expected = list(tarballs.values()), {str(Path(p)): n for n, p in tarballs.items()}
    elif isinstance(tarballs, (str, os.PathLike)):
        paths, expected = [tarballs], {}
    else:
        paths, expected = list(tarballs), {}
    packages = {}
    for i, path in enumerate(paths):
        package = Package(path, tmp / f"pkg{i}")
        if expected.get(str(Path(path)), package.name) != package.name:
            raise DatasetError(f"{path} is the package {package.name}, not {expected[str(Path(path))]}")
        if package.name not in needed:
            log(f"ignoring {path} ({package.name or 'unnamed package'}): not needed for styles asked")
            continue
        if package.name in packages:
            raise DatasetError(f"two tarballs of {package.name} were given ({packages[package.name].path} and "
                               f"{path}); pass one")
        if package.version != PACKAGES[package.name]:
            log(f"note: {package.name} {package.version} differs from the pinned {PACKAGES[package.name]}")
        packages[package.name] = package
    missing = [name for name in needed if name not in packages]
    if missing:
        raise DatasetError(f"no tarball of {missing[0]} was given; {_by_hand_hint(missing)}")
    return packages


# -- names and captions -----------------------------------------------------------------------------
def _strip_fe0f(hexcode: str) -> str:
    return "-".join(part for part in hexcode.upper().split("-") if part != "FE0F")


def cldr_index(emojibase: list[dict]) -> dict[str, dict]:
    """CLDR label and tags per hexcode (FE0F stripped), skin tones included (they inherit tags)."""
    index = {}
    for entry in emojibase:
        info = {"label": entry.get("label", ""), "tags": entry.get("tags") or []}
        index[_strip_fe0f(entry["hexcode"])] = info
        for skin in entry.get("skins") or []:
            index[_strip_fe0f(skin["hexcode"])] = {"label": skin.get("label", ""), "tags": info["tags"]}
    return index


def emoji_name(item: dict, parent: dict | None, cldr: dict) -> str:
    """The CLDR English name; without one, emoji-datasource's name plus the skin tones by codepoint."""
    info = cldr.get(_strip_fe0f(item["unified"]))
    if info and info["label"]:
        return info["label"]
    name = (parent or item).get("name", item["unified"]).lower()
    tones = [SKIN_TONES[p] for p in item["unified"].upper().split("-") if p in SKIN_TONES]
    return f"{name}: {', '.join(dict.fromkeys(tones))}" if parent and tones else name


def _article(noun: str) -> str:
    vowel = noun[:1].lower() in "aeiou" and not noun.lower().startswith(("uni", "use", "eu", "one"))
    return "an" if vowel or noun.lower().startswith("hour") else "a"


def captions(name: str, tags: list[str], category: str, style: str, count: int = 3, seed: str = "") -> list[str]:
    """`count` phrasings of one picture, to teach paraphrase, the same for the same input. The first,
    e.g. "palm tree, plant, tropical, beach, google style", is the main caption; then "palm tree",
    "a palm tree emoji, google style", other keyword orders and the category."""
    rng = random.Random(seed or f"{style}:{name}")
    words = [t for t in dict.fromkeys(tags) if t and t.lower() not in name.lower()]
    rng.shuffle(words)
    others = words[:]
    rng.shuffle(others)
    base, _, detail = name.partition(": ")  # "waving hand: medium skin tone", "flag: Japan"
    described = f"{_article(base)} {base} emoji" + (f", {detail}" if detail else "")
    style_words = f"{style} style"
    pool = [
        ", ".join([name, *words[:3], style_words]),
        name,
        f"{described}, {style_words}",
        ", ".join([name, *others[:3]]),
        ", ".join([name, category.lower(), style_words]) if category else "",
        ", ".join([described, *words[3:6]]),
    ]
    return [text for text in dict.fromkeys(pool) if text][:max(1, count)]


def subject_phrases(rows: list[dict]) -> dict[str, str]:
    """Phrase -> emoji name for a subject index (noisecraft.subjects): each picture's main caption
    without its style words ("palm tree, plant, beach, tropical"); the names themselves are added there."""
    return {row["text"].removesuffix(f", {row['style']} style"): row["name"] for row in rows}


# -- building ---------------------------------------------------------------------------------------
def _flatten(path: Path, size: int) -> Image.Image:
    """RGB with the transparent parts white, at `size` px (LANCZOS where it is not the source's 64)."""
    with Image.open(path) as image:
        image = image.convert("RGBA")
        flat = Image.alpha_composite(Image.new("RGBA", image.size, (255, 255, 255, 255)), image).convert("RGB")
    if flat.size != (size, size):
        flat = flat.resize((size, size), Image.Resampling.LANCZOS)
    return flat


def _write_licenses(out: Path, styles, stats: Stats) -> None:
    licenses = out / "LICENSES"
    licenses.mkdir(exist_ok=True)
    for name in COMMON_LICENSES + [f for s in styles for f in STYLE_LICENSES[s]]:
        shutil.copyfile(LICENSE_DIR / name, licenses / name)
    made = "\n".join(f"- {name} {version}" for name, version in stats.versions.items())
    text = (LICENSE_DIR / "ATTRIBUTION.md").read_text(encoding="utf-8")
    (licenses / "ATTRIBUTION.md").write_text(f"{text}\n## This copy\n\nBuilt by noisecraft from these npm "
                                             f"packages:\n\n{made}\n\nImages: {stats}.\n", encoding="utf-8")


def build_emoji_dataset(out_dir, styles=STYLES, size: int = 64, tarballs=None, captions_per_image: int = 3,
                        skin_tones: bool = True, log=print) -> Stats:
    """Write ``images/<style>/<codepoint>.png``, ``metadata.jsonl`` and ``LICENSES/`` under `out_dir`.

    `tarballs`: None to fetch the pinned packages with `npm pack`; else the package tarballs (a list of
    paths, or {package name: path}), each recognised by its package.json name. `metadata.jsonl` is
    written last, under a temporary name then renamed, so its presence means the build finished.
    """
    out = Path(out_dir).expanduser()
    styles = tuple(styles)
    unknown = [s for s in styles if s not in STYLES]
    if unknown or not styles:
        raise DatasetError(f"unknown emoji style {unknown[0] if unknown else '(none)'}; choose from: {', '.join(STYLES)}")
    if not 8 <= size <= 512:
        raise DatasetError(f"--size must be from 8 to 512 pixels, not {size}")
    if captions_per_image < 1:
        raise DatasetError(f"captions per image must be at least 1, not {captions_per_image}")
    needed = [f"emoji-datasource-{s}" for s in styles] + ["emojibase-data"]
    stats, rows = Stats(), []
    with tempfile.TemporaryDirectory(prefix="noisecraft-emoji-") as tmp:
        packages = _packages(tarballs, needed, Path(tmp), log)
        stats.versions = {name: packages[name].version for name in needed}
        cldr = cldr_index(packages["emojibase-data"].read_json("en/data.json"))
        out.mkdir(parents=True, exist_ok=True)
        (out / "metadata.jsonl").unlink(missing_ok=True)  # a killed rebuild must not look finished
        for style in styles:
            package = packages[f"emoji-datasource-{style}"]
            written = skipped = 0
            (out / "images" / style).mkdir(parents=True, exist_ok=True)
            for entry in package.read_json("emoji.json"):
                variants = [(entry, None)]
                if skin_tones:
                    variants += [(v, entry) for v in (entry.get("skin_variations") or {}).values()]
                for item, parent in variants:
                    source = package.file(f"img/{style}/64/{item.get('image', '')}")
                    if not item.get(f"has_img_{style}") or not source.is_file():
                        skipped += 1
                        continue
                    name = emoji_name(item, parent, cldr)
                    tags = (cldr.get(_strip_fe0f(item["unified"])) or {}).get("tags") or []
                    category = entry.get("category") or ""
                    texts = captions(name, tags, category, style, captions_per_image, f"{style}:{item['unified']}")
                    file = f"images/{style}/{item['unified'].lower()}.png"
                    _flatten(source, size).save(out / file)
                    rows.append({"file_name": file, "text": texts[0], "texts": texts, "name": name, "style": style,
                                 "category": category, "codepoint": item["unified"]})
                    written += 1
            stats.per_style[style], stats.skipped_per_style[style] = written, skipped
            stats.images += written
            stats.skipped += skipped
            log(f"{style}: {written} images, {skipped} emoji without a {style} image skipped")
    _write_licenses(out, styles, stats)
    partial = out / "metadata.jsonl.partial"
    with open(partial, "w", encoding="utf-8") as handle:
        handle.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, out / "metadata.jsonl")
    return stats
