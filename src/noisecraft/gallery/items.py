"""What the gallery hands out: an `Item` (one picture's row) and a `CheckReport` (what a check found)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Item:
    """One picture in the gallery: how it was made, where it came from, and its content hash.

    `parent_id` is the picture it was made from (img2img, upscale, ...; None for a fresh one, or
    once the parent is deleted), `operation` how ("generate", "img2img", "upscale", ...).
    """

    id: int
    created: float  # unix time
    prompt: str
    negative_prompt: str
    model: str
    seed: int | None
    width: int
    height: int
    settings: dict
    source: str  # who asked: "page", "api", "cli", ...
    parent_id: int | None
    operation: str
    strength: float | None
    favourite: bool
    sha256: str

    @property
    def file(self) -> str:
        """The picture's file name (never a path: where the folder is stays on the server)."""
        return f"{self.sha256}.png"

    def to_json(self) -> dict[str, Any]:
        """The item as a JSON-ready dict, with its file name under "file"."""
        return {**asdict(self), "settings": dict(self.settings), "file": self.file}

    @classmethod
    def from_row(cls, row) -> "Item":
        values = dict(row._mapping)
        values["settings"] = json.loads(values["settings"] or "{}", parse_constant=lambda _: None)
        values["favourite"] = bool(values["favourite"])
        return cls(**values)


@dataclass
class CheckReport:
    """What the consistency check found and repaired when the gallery opened (or `Gallery.check()` ran).

    temp_files: half-written leftovers of a crash, removed. orphan_files: whole pictures with no
    row (a crash between the rename and the commit; the caller never got an item), removed.
    missing_files: rows whose picture file was gone, listed in `missing_ids` and removed (unless
    the folder held no pictures at all: then `note` says why they were kept). unknown_files:
    files the store did not write, left alone. items: the pictures in the gallery afterwards.
    """

    items: int = 0
    temp_files: int = 0
    orphan_files: int = 0
    missing_files: int = 0
    missing_ids: list[int] = field(default_factory=list)
    unknown_files: int = 0
    note: str = ""

    @property
    def clean(self) -> bool:
        """True when there was nothing to repair or report."""
        return not (self.temp_files or self.orphan_files or self.missing_files or self.unknown_files or self.note)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "clean": self.clean}

    def __str__(self) -> str:
        if self.clean:
            return f"gallery: {self.items} picture(s), all consistent"
        parts = [f"{n} {what}" for n, what in [(self.temp_files, "temp file(s) removed"),
                                               (self.orphan_files, "file(s) without a row removed"),
                                               (self.missing_files, "row(s) whose file was missing"),
                                               (self.unknown_files, "unknown file(s) left alone")] if n]
        return f"gallery: {self.items} picture(s); " + ", ".join(parts) + (f"; {self.note}" if self.note else "")
