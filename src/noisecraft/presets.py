"""Presets (A1111 calls them styles): words that turn a subject into a fuller prompt, and a negative
prompt. One file (`presets.toml` in the package) serves the page's chips, `generate --preset`, the
A1111 API's `styles` and OpenAI's `style`; A1111's styles.csv and Fooocus' style JSON read the same way.

    preset = find(builtin(), "Menu item")
    prompt, negative = preset.apply("a bowl of ramen", "")
"""

from __future__ import annotations

import csv
import io
import json
import re
import tomllib
from dataclasses import asdict, dataclass
from importlib.resources import files
from pathlib import Path

from .errors import UserError

PLACEHOLDER = "{prompt}"
MAX_FILE_BYTES = 4 * 2**20


@dataclass(frozen=True)
class Preset:
    id: str
    label: str
    prompt: str  # a template: {prompt} is the user's text (no placeholder: the words go after it)
    negative: str = ""
    chip: bool = True  # shown among the page's preset chips

    def apply(self, prompt: str, negative: str = "") -> tuple[str, str]:
        """(prompt, negative prompt) with this preset's words."""
        if PLACEHOLDER in self.prompt:
            text = self.prompt.replace(PLACEHOLDER, prompt.strip())
        else:
            text = ", ".join(filter(None, [prompt.strip(), self.prompt]))
        text = re.sub(r"^(,\s*)+", "", text.strip())  # an empty subject leaves no leading comma
        return text, ", ".join(filter(None, [negative.strip(), self.negative.strip()]))

    def to_json(self) -> dict:
        return asdict(self)


def builtin() -> list[Preset]:
    """noisecraft's own presets."""
    return _from_toml((files("noisecraft") / "presets.toml").read_text(encoding="utf-8"), "presets.toml")


def load(path: str | Path) -> list[Preset]:
    """Presets from a file: noisecraft TOML, A1111 styles.csv (name, prompt, negative_prompt) or Fooocus style JSON."""
    path = Path(path).expanduser()
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise UserError(f"{path} is larger than {MAX_FILE_BYTES // 2**20} MB; a presets file is a few kB")
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise UserError(f"{path}: no such presets file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"{path} cannot be read as a UTF-8 presets file ({error.__class__.__name__})") from None
    readers = {".toml": _from_toml, ".csv": _from_a1111_csv, ".json": _from_fooocus_json}
    if path.suffix.lower() not in readers:
        raise UserError(f"{path}: presets files are .toml (noisecraft), .csv (A1111 styles) or .json (Fooocus styles)")
    return readers[path.suffix.lower()](text, path.name)


def combined(paths: list[str | Path] = ()) -> list[Preset]:
    """The built-in presets, then those of `paths` (a later preset with the same id replaces an earlier one)."""
    found = {p.id: p for p in builtin()}
    for path in paths:
        found |= {p.id: p for p in load(path)}
    return list(found.values())


def find(presets: list[Preset], name: str) -> Preset:
    """The preset called `name` (its id or label, any case)."""
    wanted = name.strip().lower()
    for preset in presets:
        if wanted in (preset.id.lower(), preset.label.lower()):
            return preset
    raise UserError(f"unknown preset {name!r}; choose one of: {', '.join(p.label for p in presets)}", field="preset")


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "preset"


def _preset(raw: dict, where: str) -> Preset:
    label = str(raw.get("label") or raw.get("name") or raw.get("id") or "").strip()
    if not label:
        raise UserError(f"{where}: every preset needs a name")
    prompt, negative = raw.get("prompt", ""), raw.get("negative", raw.get("negative_prompt", ""))
    if not isinstance(prompt, str) or not isinstance(negative, str):
        raise UserError(f"{where}: the prompt and negative prompt of {label!r} must be text")
    return Preset(str(raw.get("id") or _slug(label)), label, prompt.strip(), negative.strip(), bool(raw.get("chip", True)))


def _from_toml(text: str, name: str) -> list[Preset]:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise UserError(f"{name} is not valid TOML ({error})") from None
    items = data.get("preset", [])
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise UserError(f"{name}: presets are [[preset]] tables with id, label, prompt and negative")
    return [_preset(item, f"{name}, preset {k + 1}") for k, item in enumerate(items)]


def _from_a1111_csv(text: str, name: str) -> list[Preset]:
    rows = list(csv.DictReader(io.StringIO(text)))
    if rows and "name" not in rows[0]:
        raise UserError(f"{name}: an A1111 styles.csv starts with the header name,prompt,negative_prompt")
    return [_preset(row, f"{name}, row {k + 2}") for k, row in enumerate(rows) if (row.get("name") or "").strip()]


def _from_fooocus_json(text: str, name: str) -> list[Preset]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise UserError(f"{name} is not valid JSON ({error.msg} at line {error.lineno})") from None
    if not isinstance(data, list) or not all(isinstance(i, dict) for i in data):
        raise UserError(f"{name}: a Fooocus style file is a JSON list of {{name, prompt, negative_prompt}}")
    return [_preset(item, f"{name}, style {k + 1}") for k, item in enumerate(data)]
