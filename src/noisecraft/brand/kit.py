"""A brand kit: a folder with `brand.toml` (colours, logo, fonts, house style, words, signing) and its files.

    kit = load_kit("trattoria/")
    prompt, negative = kit.apply("a bowl of ramen", "")     # banned words refused; style and colours added
    picture = kit.finish(picture)                            # the colour step (palette.recolour)
    style = kit.style()                                      # colours, fonts and logo for the layouts

`brand.toml` is described, with every key, in the starter kit `noisecraft brand init DIR` writes.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError, shown
from ..pngmeta import amend_parameters
from .palette import RGB, colour_name, hex_rgb, recolour

ROLES = ("primary", "secondary", "accent", "background", "text")
PROMPT_ROLES = ("primary", "secondary", "accent", "background")  # the colours named in prompts (not the text's)
FONT_ROLES = ("heading", "body")
MAX_FILE_BYTES = 256 * 1024
KEYS = {"name", "palette", "logo", "fonts", "style", "words", "size", "sizes", "signing"}


@dataclass(frozen=True)
class Signing:
    sign: bool = False  # sign every picture made with this kit
    certificate: Path | None = None  # PEM chain; none: noisecraft's local self-signed identity
    key: Path | None = None


@dataclass(frozen=True)
class BrandKit:
    name: str
    folder: Path
    palette: dict[str, RGB]  # role -> colour; roles are ROLES, extra colours are "extra-1", ...
    logo: Path | None = None
    fonts: dict[str, Path] = field(default_factory=dict)
    style_words: str = ""
    preset: str | None = None
    negative: str = ""
    required: tuple[str, ...] = ()
    banned: tuple[str, ...] = ()
    sizes: tuple[tuple[int, int], ...] = ()
    colour_strength: float = 0.5
    signing: Signing = Signing()

    @property
    def colours(self) -> list[RGB]:
        return list(self.palette.values())

    def colour_words(self) -> str:
        """The palette as words a text encoder reads: "colour palette of brick red, cream and forest green"."""
        names = list(dict.fromkeys(colour_name(self.palette[r]) for r in PROMPT_ROLES if r in self.palette))
        if not names:
            return ""
        return "colour palette of " + (names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1])

    def check_words(self, text: str, what: str = "the prompt") -> None:
        """A banned word in `text` is refused with one sentence naming it."""
        for word in self.banned:
            if re.search(rf"(?<!\w){re.escape(word)}(?!\w)", text, flags=re.IGNORECASE):
                raise UserError(f"{what} uses {word!r}, which the {self.name} brand kit bans; leave it out",
                                field="prompt")

    def apply(self, prompt: str, negative: str = "") -> tuple[str, str]:
        """(prompt, negative) on brand: banned words refused, then the house style words, the required words
        that are missing and the palette's colour names added; the kit's negative prompt joined to `negative`."""
        self.check_words(prompt)
        missing = [w for w in self.required if not re.search(rf"(?<!\w){re.escape(w)}(?!\w)", prompt, re.IGNORECASE)]
        parts = [prompt.strip(), self.style_words, *missing, self.colour_words()]
        return ", ".join(p for p in parts if p), ", ".join(p for p in (negative.strip(), self.negative) if p)

    def finish(self, image, strength: float | None = None):
        """The colour step: the picture pulled toward the palette (`strength` default the kit's; 0 off), its
        parameters text (when it has one) amended with the kit's name and the strength used."""
        strength = self.colour_strength if strength is None else strength
        picture = recolour(image, self.colours, strength)
        if picture.info.get("parameters"):
            picture.info["parameters"] = amend_parameters(picture.info["parameters"], Brand=self.name,
                                                          Colour_strength=f"{strength:g}")
        return picture

    def style(self):
        """The kit's colours, fonts and logo as `noisecraft.layouts.Style` (the default fonts where it names none)."""
        from ..layouts import Style, load_logo

        base = Style.default()
        colours = {**base.colours, **{r: c for r, c in self.palette.items() if r in ROLES}}
        logo = load_logo(self.logo) if self.logo else None
        return Style(colours=colours, fonts={**base.fonts, **self.fonts}, logo=logo)


def brand_prompt(kit: BrandKit | None, prompt: str, negative: str, preset_names: list[str], presets: list) -> tuple[str, str]:
    """(prompt, negative) with the presets named (`kit`'s default preset when none is) and then the kit's words;
    a banned word in the user's prompt is refused before anything is added to it."""
    from ..presets import find

    if kit is not None:
        kit.check_words(prompt)
    for name in preset_names or ([kit.preset] if kit is not None and kit.preset else []):
        prompt, negative = find(presets, name).apply(prompt, negative)
    return kit.apply(prompt, negative) if kit is not None else (prompt, negative)


def load_kit(folder: str | Path) -> BrandKit:
    """The kit in `folder` (or the `brand.toml` file given), every value checked; mistakes are one sentence."""
    path = Path(folder).expanduser()
    path = path / "brand.toml" if path.is_dir() else path
    if not path.is_file():
        raise UserError(f"{folder}: no brand kit there (a folder with brand.toml); `noisecraft brand init {folder}` "
                        "writes a starter kit")
    if path.stat().st_size > MAX_FILE_BYTES:
        raise UserError(f"{path} is larger than {MAX_FILE_BYTES // 1024} kB; a brand.toml is a few kB")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8-sig"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"{path} is not valid TOML ({error}); fix the line it names") from None
    return _kit(raw, path.parent, path.name)


def _table(raw: dict, key: str, where: str) -> dict:
    value = raw.get(key, {})
    if not isinstance(value, dict):
        raise UserError(f"{where}: [{key}] should be a table of keys, not {shown(value)}")
    return value


def _text(value, what: str) -> str:
    if not isinstance(value, str):
        raise UserError(f"{what} should be text in quotes, not {shown(value)}")
    return value.strip()


def _words(value, what: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(w, str) and w.strip() for w in value):
        raise UserError(f"{what} should be a list of words in quotes, such as [\"neon\", \"cartoon\"]")
    return tuple(w.strip() for w in value)


def _file(folder: Path, value, what: str, suffixes: tuple[str, ...]) -> Path:
    path = (folder / _text(value, what)).expanduser()
    if not path.is_file():
        raise UserError(f"{what} names {path}, which is not there; put the file in the kit or fix the name")
    if path.suffix.lower() not in suffixes:
        raise UserError(f"{what} names {path.name}; give a {' or '.join(suffixes)} file")
    return path


def _size(text, what: str) -> tuple[int, int]:
    match = re.fullmatch(r"\s*(\d{1,4})\s*[xX]\s*(\d{1,4})\s*", str(text))
    if not match or not all(8 <= int(v) <= 4096 for v in match.groups()):
        raise UserError(f"{what} is {shown(text)}; give WIDTHxHEIGHT in pixels, such as \"1024x1024\"")
    return int(match[1]), int(match[2])


def _kit(raw: dict, folder: Path, where: str) -> BrandKit:
    unknown = sorted(set(raw) - KEYS)
    if unknown:
        raise UserError(f"{where}: unknown key {unknown[0]!r}; the keys are {', '.join(sorted(KEYS))}")
    name = _text(raw.get("name", folder.name), f"{where}: name") or folder.name
    colours = _table(raw, "palette", where)
    extra = colours.pop("extra", [])
    if set(colours) - set(ROLES):
        raise UserError(f"{where}: palette role {sorted(set(colours) - set(ROLES))[0]!r} is not one of "
                        f"{', '.join(ROLES)} (list more colours as extra = [...])")
    palette = {r: hex_rgb(colours[r], f"{where}: palette.{r}") for r in ROLES if r in colours}
    palette |= {f"extra-{k + 1}": hex_rgb(c, f"{where}: palette.extra") for k, c in enumerate(_words(extra, "extra"))}
    if not palette:
        raise UserError(f"{where}: the [palette] has no colours; give at least primary = \"#RRGGBB\"")
    logo = _table(raw, "logo", where).get("file")
    fonts = _table(raw, "fonts", where)
    if set(fonts) - set(FONT_ROLES):
        raise UserError(f"{where}: font role {sorted(set(fonts) - set(FONT_ROLES))[0]!r} is not heading or body")
    style, words, signing = (_table(raw, k, where) for k in ("style", "words", "signing"))
    strength = style.get("colour_strength", 0.5)
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0 <= strength <= 1:
        raise UserError(f"{where}: style.colour_strength is {shown(strength)}; give a number from 0 (off) to 1")
    sizes = raw.get("sizes", [raw["size"]] if "size" in raw else [])
    return BrandKit(
        name=name, folder=folder, palette=palette,
        logo=_file(folder, logo, f"{where}: logo.file", (".png", ".svg")) if logo else None,
        fonts={r: _file(folder, p, f"{where}: fonts.{r}", (".ttf", ".otf")) for r, p in fonts.items()},
        style_words=_text(style.get("words", ""), f"{where}: style.words"),
        preset=_text(style["preset"], f"{where}: style.preset") if style.get("preset") else None,
        negative=_text(style.get("negative", ""), f"{where}: style.negative"),
        required=_words(words.get("required", []), f"{where}: words.required"),
        banned=_words(words.get("banned", []), f"{where}: words.banned"),
        sizes=tuple(_size(s, f"{where}: sizes") for s in (sizes if isinstance(sizes, list) else [sizes])),
        colour_strength=float(strength),
        signing=Signing(sign=bool(signing.get("sign", bool(signing.get("certificate")))),
                        certificate=_file(folder, signing["certificate"], f"{where}: signing.certificate",
                                          (".pem", ".crt", ".cer")) if signing.get("certificate") else None,
                        key=_file(folder, signing["key"], f"{where}: signing.key", (".pem", ".key"))
                        if signing.get("key") else None),
    )
