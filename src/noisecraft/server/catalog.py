"""The models a server offers, named as AUTOMATIC1111 names checkpoints.

Clients pick a model by name (``/sdapi/v1/options``, ``override_settings``), never by path: the
list is fixed when the server starts, from its ``--model`` arguments.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError


@dataclass(frozen=True)
class ModelEntry:
    """One model the server can load: `path` None is the built-in model."""

    name: str
    path: Path | None
    hash: str = ""

    @property
    def title(self) -> str:
        """A1111's ``sd_model_checkpoint`` value: ``name [hash]``."""
        return f"{self.name} [{self.hash}]" if self.hash else self.name

    @property
    def filename(self) -> str:
        """The file's name alone: a server never shows clients its folders."""
        return self.path.name if self.path is not None else "builtin"


class Catalog:
    """The server's models, first one the default; looked up by title, name, hash or file name."""

    def __init__(self, entries: list[ModelEntry]):
        if not entries:
            raise UserError("the server needs at least one model")
        self.entries = list(entries)

    @classmethod
    def from_paths(cls, paths: list[str | os.PathLike | None] | None) -> "Catalog":
        """Describe each `--model` argument (None or "builtin" is the built-in model) without loading it."""
        from ..checkpoints import identify

        entries: list[ModelEntry] = []
        for raw in paths or [None]:
            source = identify(raw)
            entries.append(ModelEntry(source.name, None if source.builtin else source.path.resolve(), source.hash))
        seen: dict[str, int] = {}
        unique = []
        for entry in entries:  # two files called model.safetensors in folders of the same name
            seen[entry.name] = seen.get(entry.name, 0) + 1
            if seen[entry.name] > 1:
                entry = ModelEntry(f"{entry.name}-{seen[entry.name]}", entry.path, entry.hash)
            unique.append(entry)
        return cls(unique)

    @property
    def default(self) -> ModelEntry:
        return self.entries[0]

    def find(self, text: str) -> ModelEntry | None:
        """The entry a client means by `text`: its title, name, short hash or file name (any case)."""
        wanted = str(text).strip().lower()
        for key in ("title", "name", "hash", "filename"):
            for entry in self.entries:
                value = getattr(entry, key)
                if value and value.lower() == wanted:
                    return entry
        stem = wanted.rsplit(" [", 1)[0]  # a title with another hash: the name decides
        for entry in self.entries:
            if entry.name.lower() == stem:
                return entry
        return None
