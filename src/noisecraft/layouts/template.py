"""Layout templates: TOML files (the built-in ones in `templates/`) read into a `Template`.

A template file holds a name, a description, a size ("1080x1080", "A4", "18x24in") with the dpi
for print and the other sizes it suits, the background colour role, and `[[box]]` tables in drawing
order (see `boxes.py` for the kinds and their keys; `templates/*.toml` for examples). Anything wrong
in a file is one `UserError` sentence that names the file and the fault.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, replace
from pathlib import Path

from ..errors import UserError
from .boxes import Box, Grid, ImageSlot, LogoBox, Panel, Rect, TextSlot
from .sizes import canvas_pixels, is_print
from .style import COLOUR_ROLES, FONT_ROLES

BUILT_IN = Path(__file__).parent / "templates"
KINDS = ("image", "text", "logo", "panel", "grid")


@dataclass(frozen=True)
class Template:
    name: str
    description: str
    size: tuple[int, int]  # pixels
    dpi: int
    background: str  # a colour role
    boxes: tuple[Box | Grid, ...]
    size_name: str = ""  # the size as the file said it ("A4", "1080x1080")
    sizes: tuple[str, ...] = ()  # the sizes this template suits, the first being its own
    source: str = ""  # where it was read from

    @property
    def is_print(self) -> bool:
        return is_print(self.size_name)

    def resized(self, size: str) -> Template:
        """The same template on another canvas: "Letter", "24x36in", "1080x1350" (boxes are relative)."""
        return replace(self, size=canvas_pixels(size, self.dpi), size_name=size)

    @property
    def grid(self) -> Grid | None:
        return next((box for box in self.boxes if isinstance(box, Grid)), None)

    def text_fields(self) -> list[str]:
        """The names of the text slots, a grid's as "caption1..caption6"."""
        return self._names(TextSlot)

    def image_fields(self) -> list[str]:
        """The names of the image slots, a grid's as "image1..image6"."""
        return self._names(ImageSlot)

    def _names(self, kind) -> list[str]:
        names = []
        for box in self.boxes:
            if isinstance(box, kind):
                names.append(box.name)
            elif isinstance(box, Grid):
                names += [f"{b.name}1..{b.name}{box.max_count}" for b in box.cell if isinstance(b, kind)]
        return names

    def layout(self, count: int = 0) -> list[Box]:
        """The boxes in drawing order, a grid expanded to `count` cells."""
        boxes: list[Box] = []
        for box in self.boxes:
            boxes += box.expand(count, self.size) if isinstance(box, Grid) else [box]
        return boxes


def templates() -> list[str]:
    """The names of the built-in templates."""
    return sorted(path.stem for path in BUILT_IN.glob("*.toml"))


def load_template(name_or_path: str | Path, size: str | None = None) -> Template:
    """A built-in template by name ("social-post") or a template file by path, optionally on another
    canvas `size` ("Letter", "24x36in"). An unknown name or a bad file is a one-sentence `UserError`."""
    text = str(name_or_path)
    path = Path(text).expanduser()
    if path.suffix.lower() != ".toml" and "/" not in text and "\\" not in text:
        if text not in templates():
            raise UserError(f"there is no template called {text!r}; the built-in ones are {', '.join(templates())}, "
                            "or give the path of a .toml file", field="template")
        path = BUILT_IN / f"{text}.toml"
    if not path.is_file():
        raise UserError(f"the template file {path} does not exist", field="template")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise UserError(f"the template file {path} is not UTF-8 text", field="template") from None
    except tomllib.TOMLDecodeError as error:
        raise UserError(f"the template file {path} is not valid TOML ({error})", field="template") from None
    template = _Reader(path).template(data)
    return template.resized(size) if size else template


class _Reader:
    """Reads one file's tables, each fault one sentence naming the file and the place."""

    def __init__(self, path: Path):
        self.path = path

    def fail(self, where: str, what: str):
        raise UserError(f"the template file {self.path} is not valid: {where} {what}", field="template")

    def take(self, table: dict, key: str, kind, where: str, default=...):
        if key not in table:
            if default is ...:
                self.fail(where, f"needs {key!r}")
            return default
        value = table[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            self.fail(where, f"has {key} = {value!r}, which is not {_KIND_NAMES[kind]}")
        return value

    def choice(self, table: dict, key: str, options, where: str, default=...):
        value = self.take(table, key, str, where, default)
        if value is not None and value not in options:
            self.fail(where, f"has {key} = {value!r}; use one of {', '.join(options)}")
        return value

    def fraction(self, table: dict, key: str, where: str, default=..., low=0.0):
        value = self.take(table, key, float, where, default)
        if not low <= value <= 1:
            self.fail(where, f"has {key} = {value!r}, which is not from {low:g} to 1")
        return value

    def only(self, table: dict, keys: set[str], where: str):
        unknown = sorted(set(table) - keys)
        if unknown:
            self.fail(where, f"has unknown key(s) {', '.join(unknown)}; known are {', '.join(sorted(keys))}")

    def template(self, data: dict) -> Template:
        self.only(data, {"name", "description", "size", "sizes", "dpi", "background", "box"}, "the top level")
        name = self.take(data, "name", str, "the top level")
        size_name = self.take(data, "size", str, "the top level")
        dpi = self.take(data, "dpi", int, "the top level", 300)
        try:
            size = canvas_pixels(size_name, dpi)
            sizes = [size_name] + [s for s in self.take(data, "sizes", list, "the top level", []) if s != size_name]
            for other in sizes:
                canvas_pixels(other, dpi)
        except UserError as error:
            self.fail("the top level", f"has a bad size ({error})")
        boxes = self.take(data, "box", list, "the top level")
        if not boxes or not all(isinstance(b, dict) for b in boxes):
            self.fail("the top level", "needs at least one [[box]] table")
        read = tuple(self.box(b, f"box {i} ({b.get('name', b.get('kind', '?'))!s})", grid_ok=True)
                     for i, b in enumerate(boxes, start=1))
        if sum(isinstance(b, Grid) for b in read) > 1:
            self.fail("the top level", "has more than one grid")
        self.unique(read)
        return Template(name=name, description=self.take(data, "description", str, "the top level", ""),
                        size=size, dpi=dpi, background=self.choice(data, "background", COLOUR_ROLES, "the top level",
                                                                   "background"),
                        boxes=read, size_name=size_name, sizes=tuple(sizes), source=str(self.path))

    def unique(self, boxes):
        names = [b.name for b in boxes if isinstance(b, (ImageSlot, TextSlot))]
        for grid in (b for b in boxes if isinstance(b, Grid)):
            names += [f"{n}{i}" for n in grid.slot_names() for i in range(1, grid.max_count + 1)]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            self.fail("the top level", f"names {', '.join(twice)} more than once")

    def rect(self, table: dict, where: str) -> Rect:
        x, y = self.fraction(table, "x", where), self.fraction(table, "y", where)
        w, h = self.fraction(table, "w", where, low=0.001), self.fraction(table, "h", where, low=0.001)
        if x + w > 1.0001 or y + h > 1.0001:
            self.fail(where, "reaches beyond its canvas (x + w and y + h must be at most 1)")
        return Rect(x, y, w, h)

    def box(self, table: dict, where: str, grid_ok: bool) -> Box | Grid:
        kind = self.choice(table, "kind", KINDS if grid_ok else KINDS[:-1], where)
        common = {"kind", "x", "y", "w", "h"}
        if kind == "image":
            self.only(table, common | {"name", "fit", "radius"}, where)
            return ImageSlot(self.name(table, where), self.rect(table, where),
                             self.choice(table, "fit", ("cover", "contain"), where, "cover"),
                             self.fraction(table, "radius", where, 0.0))
        if kind == "text":
            return self.text(table, where, common)
        if kind == "logo":
            self.only(table, common | {"align"}, where)
            return LogoBox(self.rect(table, where), self.choice(table, "align", _ALIGN, where, "center"))
        if kind == "panel":
            self.only(table, common | {"colour", "radius", "opacity"}, where)
            return Panel(self.rect(table, where), self.choice(table, "colour", COLOUR_ROLES, where, "primary"),
                         self.fraction(table, "radius", where, 0.0), self.fraction(table, "opacity", where, 1.0))
        return self.grid(table, where, common)

    def name(self, table: dict, where: str) -> str:
        name = self.take(table, "name", str, where)
        if not name.replace("_", "").replace("-", "").isalnum():
            self.fail(where, f"has the name {name!r}; use letters, digits, - and _")
        return name

    def text(self, table: dict, where: str, common: set[str]) -> TextSlot:
        self.only(table, common | {"name", "font", "colour", "font_size", "unit", "align", "valign", "max_lines",
                                   "default", "required", "fill", "radius", "backing"}, where)
        sizes = self.take(table, "font_size", list, where)
        numbers = all(isinstance(s, (int, float)) and not isinstance(s, bool) and s > 0 for s in sizes)
        if len(sizes) != 2 or not numbers or sizes[0] > sizes[1]:
            self.fail(where, f"has font_size = {sizes!r}; give [smallest, largest], two positive numbers")
        max_lines = self.take(table, "max_lines", int, where, 1)
        if not 1 <= max_lines <= 50:
            self.fail(where, f"has max_lines = {max_lines}, which is not from 1 to 50")
        return TextSlot(self.name(table, where), self.rect(table, where),
                        font=self.choice(table, "font", FONT_ROLES, where, "body"),
                        colour=self.choice(table, "colour", COLOUR_ROLES, where, "text"),
                        font_size=(float(sizes[0]), float(sizes[1])),
                        unit=self.choice(table, "unit", ("canvas", "pt", "px"), where, "canvas"),
                        align=self.choice(table, "align", _ALIGN, where, "left"),
                        valign=self.choice(table, "valign", ("top", "middle", "bottom"), where, "top"),
                        max_lines=max_lines, default=self.take(table, "default", str, where, None),
                        required=self.take(table, "required", bool, where, True),
                        fill=self.choice(table, "fill", COLOUR_ROLES, where, None),
                        radius=self.fraction(table, "radius", where, 0.0),
                        backing=self.choice(table, "backing", ("auto", "always"), where, "auto"))

    def grid(self, table: dict, where: str, common: set[str]) -> Grid:
        self.only(table, common | {"min", "max", "gap", "cell_aspect", "cell"}, where)
        low, high = self.take(table, "min", int, where, 2), self.take(table, "max", int, where, 6)
        if not 1 <= low <= high <= 12:
            self.fail(where, f"has min = {low} and max = {high}; use 1 <= min <= max <= 12")
        cells = self.take(table, "cell", list, where)
        cell = tuple(self.box(b, f"{where} cell box {i}", grid_ok=False) for i, b in enumerate(cells, start=1))
        if not cell:
            self.fail(where, "needs at least one [[box.cell]] table")
        aspect = self.take(table, "cell_aspect", float, where, 0.8)
        if not 0.1 <= aspect <= 10:
            self.fail(where, f"has cell_aspect = {aspect}, which is not from 0.1 to 10")
        return Grid(self.rect(table, where), cell, low, high, self.fraction(table, "gap", where, 0.03), aspect)


_ALIGN = ("left", "center", "right")
_KIND_NAMES = {str: "text", int: "a whole number", float: "a number", bool: "true or false", list: "a list"}
