"""A campaign plan: a CSV file, one row per item (a picture, or pictures composed into layouts).

    id,prompt,preset,layout,sizes,headline,cta
    monday,a bowl of spaghetti,Menu item,social-post;story,,Pasta Monday,Book a table

Known columns: `id` (the item's file name stem; default: the row number and the prompt's first words),
`prompt` (or `subject`), `negative`, `preset`, `layout` (layout templates, `;`-separated), `sizes` (pictures
without a layout: WxH, `;`-separated; default the model's size), `image` (a photo to use instead of drawing
one, relative to the plan), `seed`. Every other column is a text field of the layouts (headline, cta, price...).
Empty cells are left out. Rows are checked when they are made, so one bad row is reported and the rest go on.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import UserError, shown

KNOWN = ("id", "prompt", "subject", "negative", "preset", "layout", "sizes", "image", "seed")
MAX_PLAN_BYTES = 4 * 2**20
MAX_ROWS = 10_000


@dataclass(frozen=True)
class Item:
    row: int  # 1 = the first row after the header
    name: str
    prompt: str = ""
    negative: str = ""
    preset: str = ""
    layouts: tuple[str, ...] = ()
    sizes: tuple[str, ...] = ()
    image: str = ""
    seed: str = ""
    texts: dict[str, str] = field(default_factory=dict)

    def key(self, context: str = "") -> str:
        """A fingerprint of what this row asks for (and of `context`: the kit, the model): a rerun redoes a row
        only when this changes or its files are gone."""
        text = json.dumps([asdict(self), context], sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def slug(text: str, limit: int = 32) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit].strip("-")


def _split(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in re.split(r"[;|]", value) if part.strip())


def read_plan(path: str | Path) -> list[Item]:
    """The plan's rows as `Item`s; a file that cannot be a plan is one sentence."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"{path}: no such plan file; give a .csv file with a header row")
    if path.stat().st_size > MAX_PLAN_BYTES:
        raise UserError(f"{path} is larger than {MAX_PLAN_BYTES // 2**20} MB; split the campaign into several plans")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise UserError(f"{path} is not UTF-8 text; save the plan as CSV (UTF-8)") from None
    rows = list(csv.DictReader(io.StringIO(text)))
    header = [h.strip().lower() for h in (csv.DictReader(io.StringIO(text)).fieldnames or [])]
    if not {"prompt", "subject", "image"} & set(header):
        raise UserError(f"{path}: the header needs a prompt (or subject, or image) column; it has "
                        f"{shown(', '.join(header)) if header else 'no columns'}")
    if len(rows) > MAX_ROWS:
        raise UserError(f"{path} has {len(rows)} rows; a plan takes at most {MAX_ROWS}")
    items, names = [], set()
    for number, raw in enumerate(rows, start=1):
        cells = {(k or "").strip().lower(): (v or "").strip() for k, v in raw.items() if isinstance(v, str)}
        prompt = cells.get("prompt") or cells.get("subject", "")
        name = slug(cells.get("id", "")) or f"{number:03d}-{slug(prompt or Path(cells.get('image', 'item')).stem, 24)}"
        while name in names:
            name += f"-{number}"
        names.add(name)
        items.append(Item(row=number, name=name, prompt=prompt, negative=cells.get("negative", ""),
                          preset=cells.get("preset", ""), layouts=_split(cells.get("layout", "")),
                          sizes=_split(cells.get("sizes", "")), image=cells.get("image", ""), seed=cells.get("seed", ""),
                          texts={k: v for k, v in cells.items() if k not in KNOWN and k and v}))
    return items
