"""`Gallery`: the picture library every made picture goes into (a folder, a database, one API).

The folder holds the pictures (`images/`, content-addressed PNGs that carry their `parameters`
text) and, by default, the SQLite database `gallery.db`; a PostgreSQL URL lets a team share one
database (the pictures still live in the folder, which all its servers must share).

Nothing is lost or left half-made by a crash (kill -9 included): a picture's file is written
(temp file, fsync, rename, fsync of the folder) before its row is committed, and a deleted
picture's file is removed before the deletion commits. So a crash can leave only a temp file, a
file with no row, or (mid-delete) a row whose file is gone; the check that runs on every open
removes all three and says so in `Gallery.report`. The store writes only inside its folder, and
only to names made from sha256 digests.

Safe to call from many threads: each call takes a connection from the engine's pool for one
short transaction, and the calls that touch files hold the database's write lock.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path
from typing import Any

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.exc import SQLAlchemyError

from ..errors import UserError
from . import files
from .database import open_engine, reason, shown_url, parse_url, writing
from .items import CheckReport, Item
from .schema import IMAGES, migrate
from .search import matching

MOST_PER_PAGE = 200
LINEAGE_DEPTH = 1000
ADD_DETAILS = {"negative_prompt": "", "model": "", "seed": None, "settings": None, "source": "page",
               "parent_id": None, "operation": "generate", "strength": None}
INT64 = 2**63


class Gallery:
    """The picture library in `folder`; `url` names its database (default: SQLite in the folder).

    Opening creates the folder, migrates the database to the current schema and runs `check()`
    (its report: `self.report`). A URL that cannot be used raises `UserError`.
    """

    def __init__(self, folder: str | Path, url: str | None = None):
        self.folder = Path(folder).expanduser().absolute()
        try:
            files.ensure_dir(self.folder)
        except OSError as exc:
            raise UserError(f"cannot create the gallery folder {self.folder}: {exc.strerror or exc}") from None
        self.images = self.folder / "images"
        self.url = url or f"sqlite:///{self.folder / 'gallery.db'}"
        self.engine = open_engine(self.url)
        try:
            migrate(self.engine)
            self.report = self.check()
        except SQLAlchemyError as exc:
            self.engine.dispose()
            parsed = parse_url(self.url)
            raise UserError(f"cannot set up the gallery database {shown_url(parsed)}: {reason(exc, parsed)}") from None
        except BaseException:
            self.engine.dispose()
            raise

    def __repr__(self) -> str:
        return f"Gallery({str(self.folder)!r}, url={shown_url(parse_url(self.url))!r})"

    def __enter__(self) -> "Gallery":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Close the database connections (the gallery is not usable afterwards)."""
        self.engine.dispose()

    # -- adding --------------------------------------------------------------------------------

    def add(self, png: bytes, *, prompt: str, width: int, height: int, **details: Any) -> Item:
        """Store one picture (its PNG bytes, kept as given) and its row; returns the new `Item`.

        Keyword details, all optional: negative_prompt (""), model (""), seed (None), settings
        (a JSON-ready dict, None = {}), source ("page"), parent_id (None: the picture it was made
        from, which must be in the gallery), operation ("generate"), strength (None).
        """
        unknown = sorted(set(details) - set(ADD_DETAILS))
        if unknown:
            raise TypeError(f"Gallery.add() got an unexpected keyword argument {unknown[0]!r}")
        row = _row(png, {**ADD_DETAILS, **details, "prompt": prompt, "width": width, "height": height})
        path = files.picture_path(self.images, row["sha256"])
        with writing(self.engine) as conn:
            parent = row["parent_id"]
            if parent is not None and conn.execute(select(IMAGES.c.id).where(IMAGES.c.id == parent)).first() is None:
                raise UserError(f"there is no picture {parent} in the gallery to be this one's parent", "parent_id")
            written = files.write_picture(path, bytes(png))
            try:
                new_id = conn.execute(insert(IMAGES).values(**row)).inserted_primary_key[0]
            except BaseException:
                if written:  # a new file no row can need (the write lock is ours); the check would remove it too
                    files.remove_file(path)
                raise
        return Item(id=new_id, **{**row, "settings": json.loads(row["settings"], parse_constant=lambda _: None)})

    # -- reading -------------------------------------------------------------------------------

    def get(self, id: int) -> Item | None:
        """The picture with this id, or None."""
        if not _valid_id(id):
            return None
        with self.engine.connect() as conn:
            row = conn.execute(select(IMAGES).where(IMAGES.c.id == id)).first()
        return Item.from_row(row) if row else None

    def search(self, query: str | None = None, *, model: str | None = None, favourite: bool | None = None,
               since: float | None = None, until: float | None = None, before: int | None = None,
               limit: int = 50) -> tuple[list[Item], int | None]:
        """Pictures matching every word of `query` and every filter given, newest first, one page.

        `since <= created < until` (unix times); `before` is the cursor from the previous page (ids
        below it); `limit` is kept within 1..200. Returns the page and the cursor for the next one
        (None when this page is the last).
        """
        limit = max(1, min(MOST_PER_PAGE, int(limit)))
        where = []
        text_match = matching(self.engine.dialect.name, query)
        if text_match is not None:
            where.append(text_match)
        if model is not None:
            where.append(IMAGES.c.model == model)
        if favourite is not None:
            where.append(IMAGES.c.favourite == bool(favourite))
        if since is not None:
            where.append(IMAGES.c.created >= float(since))
        if until is not None:
            where.append(IMAGES.c.created < float(until))
        if before is not None:
            where.append(IMAGES.c.id < min(int(before), INT64 - 1))
        statement = select(IMAGES).where(*where).order_by(IMAGES.c.id.desc()).limit(limit + 1)
        with self.engine.connect() as conn:
            rows = conn.execute(statement).all()
        items = [Item.from_row(row) for row in rows[:limit]]
        return items, (items[-1].id if len(rows) > limit else None)

    def count(self) -> int:
        """How many pictures the gallery holds."""
        with self.engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(IMAGES)).scalar_one()

    def path(self, item: Item) -> Path:
        """The picture's PNG file (inside the folder, named by its sha256 only)."""
        return files.picture_path(self.images, item.sha256)

    def lineage(self, id: int) -> list[Item]:
        """The picture, its parent, its grandparent, ... (empty when there is no such picture)."""
        chain: list[Item] = []
        seen: set[int] = set()
        item = self.get(id)
        while item is not None and item.id not in seen and len(chain) < LINEAGE_DEPTH:
            chain.append(item)
            seen.add(item.id)
            item = self.get(item.parent_id) if item.parent_id is not None else None
        return chain

    # -- changing ------------------------------------------------------------------------------

    def set_favourite(self, id: int, value: bool) -> Item | None:
        """Mark or unmark the picture as a favourite; returns it, or None when there is no such picture."""
        if not _valid_id(id):
            return None
        with writing(self.engine) as conn:
            conn.execute(update(IMAGES).where(IMAGES.c.id == id).values(favourite=bool(value)))
        return self.get(id)

    def delete(self, id: int) -> bool:
        """Remove the picture's row and its file (kept while another row has the same content); False if absent."""
        if not _valid_id(id):
            return False
        with writing(self.engine) as conn:
            sha = conn.execute(select(IMAGES.c.sha256).where(IMAGES.c.id == id)).scalar()
            if sha is None:
                return False
            conn.execute(delete(IMAGES).where(IMAGES.c.id == id))
            if not self._referenced(conn, sha):
                files.remove_file(files.picture_path(self.images, sha))  # before the commit: see the module doc
        return True

    def check(self) -> CheckReport:
        """Find and repair what a crash can leave (see `CheckReport`), under the write lock."""
        report = CheckReport()
        with writing(self.engine) as conn:
            found = files.scan(self.images)
            for path in found.temps:
                files.remove_file(path)
            report.temp_files = len(found.temps)
            report.unknown_files = len(found.unknown)
            known = set(conn.execute(select(IMAGES.c.sha256).distinct()).scalars())
            orphans = sorted(set(found.pictures) - known)
            for sha in orphans:
                files.remove_file(found.pictures[sha])
            report.orphan_files = len(orphans)
            missing = sorted(known - set(found.pictures))
            ids = []
            for start in range(0, len(missing), 500):
                chunk = missing[start:start + 500]
                ids += conn.execute(select(IMAGES.c.id).where(IMAGES.c.sha256.in_(chunk))).scalars().all()
            report.missing_files, report.missing_ids = len(ids), sorted(ids)
            if ids and not found.pictures:
                report.note = (f"the folder {self.images} holds none of the pictures the database lists, so their "
                               f"rows were kept; open the gallery with the folder they are in")
            else:
                for start in range(0, len(ids), 500):
                    conn.execute(delete(IMAGES).where(IMAGES.c.id.in_(ids[start:start + 500])))
            report.items = conn.execute(select(func.count()).select_from(IMAGES)).scalar_one()
        return report

    def _referenced(self, conn, sha: str) -> bool:
        return conn.execute(select(IMAGES.c.id).where(IMAGES.c.sha256 == sha).limit(1)).first() is not None


def _valid_id(id) -> bool:
    return isinstance(id, int) and not isinstance(id, bool) and 0 < id < 2**31


def _text(value, name: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"the picture's {name} must be text, not {type(value).__name__}")
    return value.replace("\x00", "")  # PostgreSQL's text cannot hold NUL


def _row(png, given: dict[str, Any]) -> dict[str, Any]:
    """The row `add` inserts for `png` and the `given` details, every value checked (ValueError otherwise)."""
    width, height, seed, settings = given["width"], given["height"], given["seed"], given["settings"]
    parent_id, strength = given["parent_id"], given["strength"]
    if not isinstance(png, (bytes, bytearray, memoryview)) or not bytes(png[:8]) == files.PNG_SIGNATURE:
        raise ValueError("the picture is not a PNG file (its bytes must start with the PNG signature)")
    for name, value in (("width", width), ("height", height)):
        if not isinstance(value, int) or isinstance(value, bool) or not 0 < value < 2**31:
            raise ValueError(f"the picture's {name} must be a positive whole number, not {value!r:.40}")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or not -INT64 <= seed < INT64):
        raise ValueError(f"the seed must be a whole number that fits in 64 bits, not {seed!r:.40}")
    if parent_id is not None and not _valid_id(parent_id):
        raise ValueError(f"the parent id must be a picture's id, not {parent_id!r:.40}")
    if strength is not None and (not isinstance(strength, (int, float)) or not math.isfinite(strength)):
        raise ValueError(f"the strength must be a finite number, not {strength!r:.40}")
    if settings is not None and not isinstance(settings, dict):
        raise ValueError(f"the settings must be a dict, not {type(settings).__name__}")
    try:
        settings_json = json.dumps(settings or {}, default=str)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"the settings cannot be stored as JSON ({exc})") from None
    texts = {name: _text(given[name], name.replace("_", " ")) for name in
             ("prompt", "negative_prompt", "model", "source", "operation")}
    return {"created": time.time(), **texts, "seed": seed, "width": width, "height": height,
            "settings": settings_json, "parent_id": parent_id,
            "strength": None if strength is None else float(strength), "favourite": False,
            "sha256": hashlib.sha256(png).hexdigest()}
