"""The JSON round trip shared by the network configs stored inside model files."""

from __future__ import annotations

import dataclasses


class JSONConfig:
    """Mixin for frozen dataclass configs: `to_dict` gives plain JSON types, `from_dict` rebuilds."""

    def to_dict(self) -> dict:
        """Plain JSON types: tuples become lists (the dataclass turns them back into tuples)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict):
        return cls(**data)
