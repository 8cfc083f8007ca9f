"""`noisecraft campaign plan.csv`: every row made, with predictable names, a contact sheet, a manifest and a ZIP.

Each row's files are written atomically, then the row is recorded in `manifest.json` (also written
atomically), so a kill loses at most the row being made; a rerun skips every row whose record matches
what the row asks for now (`Item.key`) and whose files are all there. A row that fails (a banned word,
a text too long for its box, a missing photo) is recorded with its one-sentence reason and the rest go on.
"""

from __future__ import annotations

import json
import re
import sys
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError
from ..files import replacing, write_bytes
from .making import Maker, Piece
from .plan import Item, read_plan, slug
from .sheet import contact_sheet

SEED_STRIDE = 10  # row k's pictures use seeds base + 10 k ..., so its slots and sizes never share a seed with the next row


@dataclass
class Outcome:
    made: list[str] = field(default_factory=list)  # item ids
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # item id -> why
    files: list[Path] = field(default_factory=list)
    seconds: float = 0.0


def _texts_for(template, texts: dict[str, str]) -> dict[str, str]:
    """The row's texts that `template` has a slot for (a grid's caption1.. included)."""
    fields = template.text_fields()
    grid = [f.split("1..")[0] for f in fields if "1.." in f]
    return {k: v for k, v in texts.items() if k in fields or any(k.startswith(g) and k[len(g):].isdigit() for g in grid)}


def make_item(maker: Maker, item: Item, out: Path, plan_folder: Path, base_seed: int) -> list[Path]:
    """The files of one row, written into `out`."""
    from ..images import load_picture
    from ..layouts import load_template

    seed = int(item.seed) if item.seed.lstrip("-").isdigit() else base_seed + SEED_STRIDE * item.row
    photo = load_picture(plan_folder / item.image, f"the image {item.image}") if item.image else None
    if not item.prompt and photo is None:
        raise UserError("the row has no prompt and no image; give one of them")
    written = []
    if item.layouts:
        templates = [load_template(name) for name in item.layouts]
        used = set().union(*(_texts_for(t, item.texts) for t in templates))
        unused = sorted(set(item.texts) - used)
        if unused:
            raise UserError(f"the column {unused[0]!r} is no text of the {', '.join(item.layouts)} layout "
                            f"(its texts: {', '.join(templates[0].text_fields())})")
        for template in templates:
            images = {template.image_fields()[0]: photo} if photo is not None and template.image_fields() else {}
            piece = maker.layout(template, _texts_for(template, item.texts), images, prompt=item.prompt,
                                 negative=item.negative, preset=item.preset, seed=seed)
            written.append(maker.write(piece, out / f"{item.name}-{slug(template.name)}.png"))
        return written
    if item.texts:
        raise UserError(f"the row has texts ({', '.join(sorted(item.texts))}) but no layout to put them in")
    if photo is not None:
        raise UserError("the row has an image but no layout to put it in; give a layout or leave out the image")
    for k, text in enumerate(item.sizes or [""]):
        size = _size(text) if text else None
        picture = maker.picture(item.prompt, item.negative, item.preset, seed + k, size)
        suffix = f"-{size[0]}x{size[1]}" if size else ""
        written.append(maker.write(Piece(picture), out / f"{item.name}{suffix}.png"))
    return written


def _size(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"\s*(\d{1,5})\s*[xX]\s*(\d{1,5})\s*", text)
    if not match or not all(8 <= int(v) <= 8192 for v in match.groups()):
        raise UserError(f"the size {text!r} is not WxH from 8 to 8192 pixels a side, such as 1080x1350")
    return int(match[1]), int(match[2])


def _load_manifest(path: Path) -> dict:
    """The rows recorded so far (by item id); a manifest that cannot be read is set aside, not trusted."""
    if not path.exists():
        return {}
    try:
        return {row["id"]: row for row in json.loads(path.read_text(encoding="utf-8"))["items"]}
    except (ValueError, KeyError, TypeError):
        path.replace(path.with_suffix(f".unreadable-{int(time.time())}.json"))
        return {}


def _write_manifest(path: Path, info: dict, rows: dict) -> None:
    write_bytes(path, json.dumps({**info, "items": list(rows.values())}, indent=2).encode())


def _done(row: dict | None, key: str, out: Path) -> bool:
    return bool(row) and row.get("key") == key and row.get("status") == "done" and all(
        (out / name).is_file() for name in row.get("files", []))


def run_campaign(plan: str | Path, out: str | Path, maker: Maker, *, context: str = "", seed: int = 0,
                 progress: bool = True) -> Outcome:
    """Make every row of `plan` into `out`; see the module's docstring. `context` (the kit and model) is part
    of each row's key, so changing the model or the kit remakes the rows."""
    from tqdm import tqdm

    started = time.perf_counter()
    items = read_plan(plan)
    out = Path(out).expanduser()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"cannot make the folder {out} ({error.strerror or error}); choose another --out") from None
    for leftover in out.glob(".*.tmp"):  # a killed run's half-written file: never renamed into place
        leftover.unlink(missing_ok=True)
    manifest = out / "manifest.json"
    rows = _load_manifest(manifest)
    info = {"plan": str(Path(plan).name), "brand": maker.kit.name if maker.kit else None,
            "model": getattr(maker.pipe, "name", None), "signed": maker.sign}
    outcome = Outcome()
    bar = tqdm(items, desc="campaign", unit="item", disable=not progress)
    for item in bar:
        key = item.key(context + f"|seed {seed}|sign {maker.sign}")
        if _done(rows.get(item.name), key, out):
            outcome.skipped.append(item.name)
            continue
        bar.set_postfix_str(item.name)
        began = time.perf_counter()
        try:
            files = make_item(maker, item, out, Path(plan).expanduser().parent, seed)
        except (UserError, OSError) as error:
            message = str(error) if isinstance(error, UserError) else f"could not read or write a file ({error})"
            rows[item.name] = {"id": item.name, "row": item.row, "key": key, "status": "failed", "error": message}
            outcome.failed[item.name] = message
            if progress:
                tqdm.write(f"row {item.row} ({item.name}): {message}", file=sys.stderr)
        else:
            rows[item.name] = {"id": item.name, "row": item.row, "key": key, "status": "done",
                               "files": [p.name for p in files], "prompt": item.prompt, "layouts": list(item.layouts),
                               "seconds": round(time.perf_counter() - began, 2)}
            outcome.made.append(item.name)
        _write_manifest(manifest, info, rows)
    bar.close()
    names = [item.name for item in items]
    rows = {name: rows[name] for name in names if name in rows}  # rows no longer in the plan are dropped
    _write_manifest(manifest, info, rows)
    outcome.files = [out / f for row in rows.values() if row.get("status") == "done" for f in row["files"]]
    _sheets_and_zip(out, outcome.files, info, manifest)
    outcome.seconds = time.perf_counter() - started
    return outcome


def _sheets_and_zip(out: Path, files: list[Path], info: dict, manifest: Path) -> None:
    from PIL import Image

    pictures = []
    for path in files:
        with Image.open(path) as image:
            image.thumbnail((600, 600))
            pictures.append((path.name, image.convert("RGB")))
    title = f"{info['brand'] or 'noisecraft'} campaign: {len(files)} picture(s) from {info['plan']}"
    sheet = contact_sheet(pictures, title)
    for suffix, kind, options in ((".png", "PNG", {}), (".pdf", "PDF", {"resolution": 150.0})):
        with replacing(out / f"contact-sheet{suffix}") as handle:
            sheet.save(handle, kind, **options)
    with replacing(out / "campaign.zip") as handle, zipfile.ZipFile(handle, "w", zipfile.ZIP_STORED) as archive:
        for path in [*files, manifest, out / "contact-sheet.png", out / "contact-sheet.pdf"]:
            archive.write(path, path.name)
